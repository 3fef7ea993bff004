"""Resume state that cannot be trusted never resumes: a flipped byte in state.pt is caught by the SHA-256 that
state.json records, a state with missing keys, wrong shapes or a bad step is refused with one line naming the
file, the release weights' config.json fields are checked, an encrypted run cannot be resumed in plaintext by
accident, debris of a killed checkpoint write is swept, and the NaN message after a resume says whether the
state was verified."""

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genforge
from genforge import crypto
from genforge.errors import ConfigError, ModelFileError, TrainingError
from genforge.models import MODELS
from genforge.training import train
from genforge.training.checkpoint import last_checkpoint


def _resume_cli(run: Path, steps: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genforge", "train", "--resume", str(run), "--quiet",
                           "--max-steps", str(steps)], capture_output=True, text=True, timeout=120)


def _rewrite_state(ckpt: Path, change) -> None:
    """Load state.pt, let ``change`` alter the dict, save it and record its digest as a writer would: the file
    is intact, its content is not what this run needs."""
    state = torch.load(ckpt / "state.pt", weights_only=True)
    change(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    (ckpt / "state.pt").write_bytes(buf.getvalue())
    if (ckpt / "state.json").is_file():  # (checkpoints of older versions have none)
        record = json.loads((ckpt / "state.json").read_text())
        record.update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), bytes=len(buf.getvalue()))
        (ckpt / "state.json").write_text(json.dumps(record))


@pytest.fixture
def keyring():
    return crypto.add_key(None, "k1", "test keyring")


@pytest.fixture
def vae_run(tmp_path, tiny_config):
    """A 2-step vae-mlp run written through a config file, so the CLI can resume it."""
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2, checkpoint_every=2), run, quiet=True)
    return run


def test_four_flipped_bytes_in_state_never_resume(vae_run):
    state = last_checkpoint(vae_run) / "state.pt"
    blob = bytearray(state.read_bytes())
    for i in range(4):  # inside a tensor's data: torch.load would accept it and resume silently
        blob[len(blob) // 2 + i] ^= 0x01
    state.write_bytes(bytes(blob))
    result = _resume_cli(vae_run, 4)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state) in lines[0] and "SHA-256" in lines[0], result.stderr
    assert last_checkpoint(vae_run).name == "step_00000002"  # nothing written


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("optimizers"), "key 'optimizers' missing"),
    (lambda s: s["nets"]["decoder"].update({"net.0.weight": torch.zeros(3, 3)}), r"'nets.decoder.net.0.weight' is \(3, 3\)"),
    (lambda s: s["optimizers"]["vae"]["state"][0].update(exp_avg=torch.zeros(2)), "moment 'exp_avg' of parameter 0"),
    (lambda s: s.update(step=-1), "step -1 must be a non-negative integer"),
    (lambda s: s.update(step="2"), "'step' is a str"),
    (lambda s: s.update(step=True), "'step' is a bool"),
])
def test_resume_state_schema_is_checked(vae_run, tiny_config, change, message):
    _rewrite_state(last_checkpoint(vae_run), change)
    with pytest.raises(ModelFileError, match=message) as err:
        train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True, quiet=True)
    assert str(last_checkpoint(vae_run) / "state.pt") in str(err.value) and "\n" not in str(err.value)
    assert last_checkpoint(vae_run).name == "step_00000002"


def test_bad_state_is_exit_2_from_the_cli(vae_run):
    _rewrite_state(last_checkpoint(vae_run), lambda s: s.pop("ema"))
    result = _resume_cli(vae_run, 4)
    assert result.returncode == 2 and "key 'ema' missing" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_without_digest_resumes_unverified_with_a_note(vae_run, tiny_config, capsys):
    (last_checkpoint(vae_run) / "state.json").unlink(missing_ok=True)  # as written before state.json existed
    assert train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True).step == 4
    assert "no recorded SHA-256" in capsys.readouterr().err
    assert (last_checkpoint(vae_run) / "state.json").is_file()  # its successor carries one


def test_damaged_state_record_is_an_error(vae_run, tiny_config):
    (last_checkpoint(vae_run) / "state.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="state.json: unreadable or not JSON"):
        train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True, quiet=True)


@pytest.mark.parametrize("field, value", [
    ("class_names", ["a", "b"]),          # a conditional model with 10 classes
    ("step", -3),
    ("data", 42),
    ("privacy", {"epsilon": "lots"}),
    ("value_range", "0,255"),
])
def test_release_config_fields_are_checked(tmp_path, tiny_config, field, value):
    result = train(tiny_config("cvae-conv", max_steps=2, checkpoint_every=2), tmp_path / "r", quiet=True)
    path = result.checkpoint / "config.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=f"config.json: field '{field}'"):
        genforge.load(tmp_path / "r")


def test_encrypted_run_does_not_resume_in_plaintext_without_opt_in(tmp_path, tiny_config, keyring, monkeypatch):
    monkeypatch.delenv(crypto.ENV_KEY, raising=False)
    monkeypatch.delenv(crypto.ENV_KEY_FILE, raising=False)
    run = tmp_path / "r"
    train(tiny_config("gan-mlp", max_steps=2, encrypt=True), run, quiet=True, keyring=keyring)
    with pytest.raises(ConfigError, match="--allow-plaintext"):
        train(tiny_config("gan-mlp", max_steps=4), run, resume=True, quiet=True, keyring=keyring)
    assert last_checkpoint(run).name == "step_00000002"
    result = train(tiny_config("gan-mlp", max_steps=4), run, resume=True, quiet=True, keyring=keyring,
                   allow_plaintext=True)
    assert not crypto.is_encrypted(result.checkpoint / "state.pt")  # what the user opted into


def test_stale_temporary_checkpoints_are_swept_with_a_note(vae_run, tiny_config, capsys):
    debris = [vae_run / "checkpoints" / ".step_00000003.tmp4242", vae_run / "checkpoints" / ".step_00000002.old77"]
    for d in debris:
        d.mkdir()
        (d / "state.pt").write_bytes(b"half a checkpoint")
    train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True)
    assert not any(d.exists() for d in debris)
    assert "removed 2 unfinished checkpoint directories" in capsys.readouterr().err


def _poison_after(monkeypatch, calls_before_nan: int):
    vae = MODELS["vae-mlp"].method
    original, calls = vae.Trainer.train_step, {"n": 0}

    def step(self, x, y, noise, step=0):
        out = original(self, x, y, noise, step)
        calls["n"] += 1
        if calls["n"] > calls_before_nan:
            out["loss"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(vae.Trainer, "train_step", step)


def test_nan_after_a_verified_resume_says_the_state_was_not_corrupt(vae_run, tiny_config, monkeypatch):
    _poison_after(monkeypatch, 0)
    with pytest.raises(TrainingError, match="whose SHA-256 matched the digest recorded .* not corrupt"):
        train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True, quiet=True)


def test_nan_after_an_unverified_resume_names_both_causes(vae_run, tiny_config, monkeypatch):
    (last_checkpoint(vae_run) / "state.json").unlink(missing_ok=True)
    _poison_after(monkeypatch, 0)
    with pytest.raises(TrainingError, match="may be damaged, or the training diverged"):
        train(tiny_config("vae-mlp", max_steps=4), vae_run, resume=True, quiet=True)


def test_cli_resume_of_an_encrypted_run_needs_allow_plaintext(tmp_path, tiny_config, keyring, monkeypatch):
    """The issue's probe: `genforge train --resume RUN --set encrypt=false` wrote plaintext with exit 0."""
    from genforge.cli import main

    key_file = tmp_path / "key"
    crypto.write_key_file(key_file, keyring)
    monkeypatch.setenv(crypto.ENV_KEY_FILE, str(key_file))
    run = tmp_path / "r"
    train(tiny_config("gan-mlp", max_steps=2, encrypt=True), run, quiet=True, keyring=keyring)
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--set", "encrypt=false", "--quiet"]) == 2
    assert last_checkpoint(run).name == "step_00000002"
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--set", "encrypt=false", "--quiet",
                 "--allow-plaintext"]) == 0
    assert not crypto.is_encrypted(last_checkpoint(run) / "state.pt")
