"""Training: one run per family, the run directory, exact resume, NaN handling, signals, atomic checkpoints."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genforge
from genforge.errors import ConfigError, GenforgeError, TrainingError
from genforge.models import MODELS
from genforge.training import checkpoint as ckpt_module
from genforge.training import train
from genforge.training.checkpoint import last_checkpoint, load_state
from conftest import TINY


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


# every recipe with a tiny setting (conftest.TINY): images on the tiny digits, 1-D models on the sensor log, tables
# on the bundled diabetes table; text and the audio pictures train in their own files
@pytest.mark.parametrize("model", [m for m in MODELS if m in TINY])
def test_train_each_family_writes_a_complete_run(tmp_path, tiny_config, model):
    run = tmp_path / "run"
    result = train(tiny_config(model), run, quiet=True)
    assert result.step == 4 and result.checkpoint == run / "checkpoints" / "step_00000004"
    assert (run / "config.yaml").is_file()
    assert [m["step"] for m in _metrics(run)] == [2, 4]
    assert all(m["images_per_sec"] > 0 and all(v == v for v in m.values()) for m in _metrics(run))
    for name in ("model.safetensors", "config.json", "state.pt"):
        assert (result.checkpoint / name).is_file()
    assert (run / "samples" / "step_00000004.png").is_file()
    # keep_checkpoints=2: steps 2 and 4 remain; the release weights load without the trainer
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    model_ = genforge.load(run)
    expected = {("c", "h", "w"): (3, 28, 28), ("d",): (3,)}.get(MODELS[model].axes, (3, 2, 32))  # series (n, c, t);
    # tables: 3 structured rows
    assert model_.meta["step"] == 4 and model_.sample(3, seed=1).x.shape == expected


def test_vae_learns(tmp_path, tiny_config):
    train(tiny_config("vae-mlp", max_steps=60, log_every=1, checkpoint_every=60, g_lr=1e-3), tmp_path / "r",
          quiet=True)
    losses = [m["loss"] for m in _metrics(tmp_path / "r")]
    assert losses[-1] < 0.5 * losses[0]  # -ELBO per image, in nats: ~540 untrained


def test_gan_updates_both_networks(tmp_path, tiny_config):
    cfg = tiny_config("gan-mlp", max_steps=2, checkpoint_every=2)
    train(cfg, tmp_path / "r", quiet=True)
    state = load_state(last_checkpoint(tmp_path / "r"))
    torch.manual_seed(cfg.seed)
    from genforge.models import build_networks

    init = build_networks("gan-mlp", (1, 28, 28), cfg.z_dim, cfg.base_channels)
    for role in ("generator", "discriminator"):
        before = init[role].state_dict()["net.0.weight"]
        assert not torch.equal(before, state["nets"][role]["net.0.weight"]), role
        assert state["optimizers"][role]["state"], role  # Adam moments exist: the optimizer stepped


@pytest.mark.parametrize("model", ["dcgan", "vae-conv", "cddpm-1d"])
def test_resume_continues_exactly(tmp_path, tiny_config, model):
    """N steps, then a resume to 2N, gives the same weights as 2N steps in one go."""
    once = train(tiny_config(model, max_steps=8, checkpoint_every=4), tmp_path / "once", quiet=True)
    half = train(tiny_config(model, max_steps=4, checkpoint_every=4), tmp_path / "twice", quiet=True)
    assert half.step == 4
    again = train(tiny_config(model, max_steps=8, checkpoint_every=4), tmp_path / "twice", resume=True, quiet=True)
    assert again.step == 8
    a, b = load_state(once.checkpoint), load_state(again.checkpoint)
    for role in a["nets"]:
        for key, tensor in a["nets"][role].items():
            assert torch.equal(tensor, b["nets"][role][key]), (role, key)
    for role in a["ema"]:
        for key, tensor in a["ema"][role].items():
            assert torch.equal(tensor, b["ema"][role][key]), (role, key)
    wa = load_file(once.checkpoint / "model.safetensors")
    wb = load_file(again.checkpoint / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [m["step"] for m in _metrics(tmp_path / "twice")] == [2, 4, 6, 8]


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_config):
    a = train(tiny_config("gan-mlp"), tmp_path / "a", quiet=True)
    b = train(tiny_config("gan-mlp"), tmp_path / "b", quiet=True)
    c = train(tiny_config("gan-mlp", seed=1), tmp_path / "c", quiet=True)
    wa, wb, wc = (load_file(r.checkpoint / "model.safetensors") for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["generator.net.0.weight"], wc["generator.net.0.weight"])


def test_existing_run_is_never_clobbered(tmp_path, tiny_config):
    train(tiny_config("vae-mlp"), tmp_path / "r", quiet=True)
    with pytest.raises(GenforgeError, match="already holds a training run"):
        train(tiny_config("vae-mlp"), tmp_path / "r", quiet=True)
    with pytest.raises(GenforgeError, match="nothing to resume"):
        train(tiny_config("vae-mlp"), tmp_path / "empty", resume=True, quiet=True)


def test_conditional_model_needs_labels(tmp_path, tiny_config):
    unlabeled = tmp_path / "u.npz"
    import numpy as np

    np.savez(unlabeled, x=np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8))
    with pytest.raises(ConfigError, match="class-conditional but data .* has no labels"):
        train(tiny_config("cdcgan", data=f"npz:{unlabeled}"), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()


def test_batch_larger_than_data(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="batch_size 4096 .* is larger than the training split"):
        train(tiny_config("vae-mlp", batch_size=4096), tmp_path / "r", quiet=True)


def _poison(monkeypatch, from_step, times=None):
    """Make the VAE's step return a NaN loss from step ``from_step`` on (``times`` times at most)."""
    vae = MODELS["vae-mlp"].method
    original = vae.Trainer.train_step
    calls = {"n": 0, "poisoned": 0}

    def step(self, x, y, noise, step=0):
        out = original(self, x, y, noise, step)
        calls["n"] += 1
        if calls["n"] >= from_step and (times is None or calls["poisoned"] < times):
            calls["poisoned"] += 1
            for p in self.decoder.parameters():
                p.data.fill_(float("nan"))
            out["loss"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(vae.Trainer, "train_step", step)


def test_nan_loss_stops_and_keeps_good_checkpoint(tmp_path, tiny_config, monkeypatch):
    _poison(monkeypatch, from_step=6)
    run = tmp_path / "r"
    with pytest.raises(TrainingError, match=r"non-finite .* by step 6; .*last good checkpoint is step 4"):
        train(tiny_config("vae-mlp", max_steps=10, log_every=2, checkpoint_every=2), run, quiet=True)
    assert last_checkpoint(run).name == "step_00000004"
    model = genforge.load(run)
    assert all(torch.isfinite(p).all() for p in model.nets["decoder"].parameters())


def test_nan_loss_rolls_back_when_configured(tmp_path, tiny_config, monkeypatch):
    _poison(monkeypatch, from_step=6, times=1)
    run = tmp_path / "r"
    result = train(tiny_config("vae-mlp", max_steps=10, log_every=2, checkpoint_every=2, nan_policy="rollback"),
                   run, quiet=True)
    state = load_state(result.checkpoint)
    assert result.step == 10 and state["rollbacks"] == 1 and state["lr_scale"] == 0.5
    assert state["optimizers"]["vae"]["param_groups"][0]["lr"] == pytest.approx(0.5 * 2e-4)
    assert all(torch.isfinite(p).all() for p in genforge.load(run).nets["decoder"].parameters())


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, tiny_config, monkeypatch):
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2), run, quiet=True)
    before = (last_checkpoint(run) / "model.safetensors").read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_config("vae-mlp", max_steps=4), run, resume=True, quiet=True)
    assert last_checkpoint(run).name == "step_00000002"
    assert (last_checkpoint(run) / "model.safetensors").read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no debris
    monkeypatch.undo()
    assert train(tiny_config("vae-mlp", max_steps=4), run, resume=True, quiet=True).step == 4


def test_malicious_resume_state_refused(tmp_path, tiny_config):
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=2), run, quiet=True)

    # A protocol-0 pickle, written by hand, that calls os.system("touch .../pwned") when unpickled.
    evil = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    (last_checkpoint(run) / "state.pt").write_bytes(evil)
    with pytest.raises(GenforgeError, match="SHA-256 does not match state.json"):  # refused before unpickling
        train(tiny_config("vae-mlp", max_steps=4), run, resume=True, quiet=True)
    (last_checkpoint(run) / "state.json").unlink()  # a checkpoint from before the digest: weights_only refuses it
    with pytest.raises(GenforgeError, match="not a valid resume state"):
        train(tiny_config("vae-mlp", max_steps=4), run, resume=True, quiet=True)
    assert not (tmp_path / "pwned").exists()


def test_max_seconds_stops_and_checkpoints(tmp_path, tiny_config):
    result = train(tiny_config("gan-mlp", max_steps=10**6, max_seconds=1.0, checkpoint_every=10**5), tmp_path / "r",
                   quiet=True)
    assert 0 < result.step < 10**6 and result.checkpoint.name == f"step_{result.step:08d}"


def test_max_seconds_reached_during_validation_stops_without_scoring_again(tmp_path, tiny_config, monkeypatch):
    """The budget runs out while step k is validated: k is checkpointed and scored, and the loop stops there
    (before, it trained step k + 1 and validated that too)."""
    from genforge.metrics.validation import TrainingEvaluator

    real = TrainingEvaluator.__call__

    def slow(self, images):
        time.sleep(1.5)  # longer than the whole budget
        return real(self, images)

    monkeypatch.setattr(TrainingEvaluator, "__call__", slow)
    run = tmp_path / "r"
    result = train(tiny_config("vae-mlp", data="mnist5k", max_steps=10**6, max_seconds=1.0, eval_every=3, eval_n=20,
                               checkpoint_every=10**5, eval_share=0), run, quiet=True)  # no budget: every one scored
    scored = [m["step"] for m in _metrics(run) if "val_fid" in m]
    assert scored == [result.step] and result.step <= 3
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == result.step


def test_tensorboard_events_written(tmp_path, tiny_config):
    train(tiny_config("vae-mlp", tensorboard=True, sample_every=2), tmp_path / "r", quiet=True)
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "r" / "samples" / "step_00000002.png").is_file()


def test_sigterm_checkpoints_and_resumes(tmp_path, digits_npz):
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "genforge", "train", str(Path(__file__).parent.parent / "genforge/recipes/mnist5k-gan-mlp.yaml"),
           "--out", str(run), "--quiet", "--data", digits_npz, "--batch-size", "16", "--max-steps", "100000",
           "--log-every", "1", "--checkpoint-every", "100000", "--sample-every", "0", "--no-tensorboard",
           "--num-threads", "1", "--eval-every", "0"]  # no evaluator to train first: the signal must reach a running loop
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    assert step >= 3 and "Traceback" not in err
    resumed = subprocess.run([sys.executable, "-m", "genforge", "train", "--resume", str(run), "--quiet",
                              "--max-steps", str(step + 2)], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == step + 2


def test_validation_scores_and_best_checkpoint(tmp_path, tiny_config):
    """eval_every: validation FID and friends reach metrics.jsonl, and best.json points at the best step."""
    run = tmp_path / "r"  # mnist5k: its shipped evaluator scores, none is trained under the test's clock
    train(tiny_config("vae-mlp", data="mnist5k", max_steps=6, eval_every=3, eval_n=20, checkpoint_every=100,
                      eval_share=0), run,  # no validation budget: this tests the scoring (test_validation_budget.py)
          quiet=True)
    lines = [m for m in _metrics(run) if "val_fid" in m]
    assert [m["step"] for m in lines] == [3, 6]
    assert all(m["val_fid"] >= 0 and 0 <= m["val_recall"] <= 1 for m in lines)
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["val_fid"] == min(m["val_fid"] for m in lines)
    assert best["dir"] == f"step_{best['step']:08d}" and (run / "checkpoints" / best["dir"]).is_dir()
    assert genforge.load(run).meta["step"] == best["step"]  # a run directory loads its best weights


def test_grids_come_through_the_generation_plan(tmp_path, tiny_config, monkeypatch):
    """The training grid is what `genforge sample` draws from the saved model with seed + 3: the same latents,
    each class in turn, through genforge.generation's one plan (which the loop now calls)."""
    import numpy as np
    from PIL import Image

    from genforge.generation import make_grid, sampling

    seeds, real_plan = [], sampling.plan
    monkeypatch.setattr(sampling, "plan", lambda model, n, seed=0, *a, **k: seeds.append((n, seed)) or
                        real_plan(model, n, seed, *a, **k))
    cfg = tiny_config("cdcgan", grid_n=20, max_steps=2, checkpoint_every=2)
    train(cfg, tmp_path / "r", quiet=True)
    assert seeds == [(20, cfg.seed + 3)]
    monkeypatch.undo()
    grid = np.asarray(Image.open(tmp_path / "r" / "samples" / "step_00000002.png"))
    model = genforge.load(tmp_path / "r")
    drawn = genforge.generation.sample(model, 20, seed=cfg.seed + 3)
    assert list(drawn.y) == [i % 10 for i in range(20)]
    np.testing.assert_array_equal(grid, make_grid(drawn.x, nrow=10))
