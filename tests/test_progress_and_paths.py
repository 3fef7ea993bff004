"""Progress bars, the time left under --max-seconds, TensorBoard tag groups, XDG paths, the run report,
heat maps for the top K only, and --device passed through (CPU results unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genforge.io import user_dir
from genforge.training.log import RunLogger, remaining_seconds, tensorboard_tag


# ---------------------------------------------------------------------------------------------- time left

def test_remaining_is_the_budget_left_when_the_steps_would_take_longer():
    # 10 of 10,000 steps in 3 s: the steps alone would take ~50 min, but a 30 s budget leaves 27 s
    assert remaining_seconds(10, 0, 10_000, 3.0, max_seconds=30) == pytest.approx(27.0)
    # without a budget it is the step estimate
    assert remaining_seconds(10, 0, 10_000, 3.0) == pytest.approx(9990 * 0.3)
    # the steps finish first: the step estimate wins
    assert remaining_seconds(90, 0, 100, 9.0, max_seconds=3600) == pytest.approx(1.0)
    # a resumed run counts its rate from the step it resumed at
    assert remaining_seconds(510, 500, 1000, 2.0) == pytest.approx(490 * 0.2)
    assert remaining_seconds(0, 0, 100, 0.0) is None
    assert remaining_seconds(0, 0, 100, 0.0, max_seconds=30) == 30


def test_training_bar_shows_the_budget_left_not_the_steps(tmp_path):
    now = [1000.0]
    logger = RunLogger(tmp_path, 10_000, 0, tensorboard=False, quiet=False, max_seconds=30, clock=lambda: now[0],
                       progress=True)
    try:
        now[0] += 3.0
        logger.log(10, {"loss": 1.0})
        assert logger.remaining() == pytest.approx(27.0)
        assert "<00:27" in str(logger.bar)  # what the user reads; tqdm's own count to 10,000 steps says ~50 min
        now[0] += 40.0
        assert logger.remaining() == 0
    finally:
        logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_training_bar_quiet_without_a_terminal(tmp_path):
    logger = RunLogger(tmp_path, 10, 0, tensorboard=False, quiet=False)  # pytest's stderr is not a terminal
    assert logger.bar.disable
    logger.close()


# ---------------------------------------------------------------------------------------------- TensorBoard

def test_tensorboard_tags_grouped_and_jsonl_keys_flat(tmp_path):
    assert tensorboard_tag("val_fid") == "val/fid"
    assert tensorboard_tag("loss_d") == "train/loss_d"
    assert tensorboard_tag("images_per_sec") == "train/images_per_sec"
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, 10, 0, tensorboard=True, quiet=True)
    logger.log(5, {"loss_g": 0.5, "images_per_sec": 100.0, "val_fid": 12.0})
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss_g", "train/images_per_sec", "val/fid"}
    assert set(json.loads((tmp_path / "metrics.jsonl").read_text())) == {"step", "loss_g", "images_per_sec",
                                                                          "val_fid"}


# ---------------------------------------------------------------------------------------------- progress bars

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "models"


class RecordingBar:
    """Stands in for tqdm: records what a bar was asked to show."""

    made: list = []

    def __init__(self, *args, total=None, disable=False, desc="", **kwargs):
        self.total, self.disable, self.desc, self.updates = total, disable, desc, []
        RecordingBar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


def test_sampling_bar_counts_samples_and_keeps_the_pixels(capsys, monkeypatch):
    import numpy as np

    import genforge
    from genforge.generation import sample, sampling

    model = genforge.load(LEGACY / "ddpm")
    quiet = sample(model, 7, seed=3, batch_size=3, steps=3)
    assert capsys.readouterr().err == ""  # off by default in the Python API
    shown = sample(model, 7, seed=3, batch_size=3, steps=3, progress=True)
    assert "sampling" in capsys.readouterr().err
    assert np.array_equal(quiet.x, shown.x) and np.array_equal(quiet.z, shown.z)
    RecordingBar.made = []
    monkeypatch.setattr(sampling, "tqdm", RecordingBar)
    again = sample(model, 7, seed=3, batch_size=3, steps=3, progress=True)
    (bar,) = RecordingBar.made
    assert not bar.disable and bar.total == 7 and bar.updates == [3, 3, 1]  # over samples, batch by batch
    assert np.array_equal(again.x, quiet.x)
    assert np.array_equal(model.sample(7, seed=3, batch_size=3, steps=3, progress=True).x, quiet.x)


def test_cli_progress_flag_on_the_long_commands():
    import click

    from genforge.apps.cli import augment
    from genforge.apps.inspection.cli import fit
    from genforge.cli.options import show_progress
    from genforge.cli.sample import sample
    from genforge.metrics.cli import eval_command

    assert show_progress(True) is True and show_progress(False) is False
    assert show_progress(None) is False  # pytest's stderr is not a terminal: quiet unless asked
    for cmd in (sample, eval_command, fit, augment):
        names = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
        assert {"--progress", "--no-progress"} <= names, cmd.name


def test_cli_sample_with_progress_writes_the_same_file(tmp_path, capsys):
    import numpy as np

    from genforge.cli import main

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", str(LEGACY / "dcgan"), "--n", "9", "--out", str(a), "--no-progress"]) == 0
    assert "sampling" not in capsys.readouterr().err
    assert main(["sample", str(LEGACY / "dcgan"), "--n", "9", "--out", str(b), "--progress"]) == 0
    assert "sampling" in capsys.readouterr().err
    with np.load(a) as fa, np.load(b) as fb:
        assert np.array_equal(fa["x"], fb["x"])


# ---------------------------------------------------------------------------------------------- XDG paths

def test_user_dir_follows_xdg_and_falls_back_to_the_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    assert user_dir("config") == home / ".config" / "genforge"
    assert user_dir("data") == home / ".local" / "share" / "genforge"
    assert user_dir("cache") == home / ".cache" / "genforge"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the spec: relative paths are ignored
    assert user_dir("config") == tmp_path / "cfg" / "genforge"
    assert user_dir("data") == tmp_path / "data" / "genforge"
    assert user_dir("cache") == home / ".cache" / "genforge"
    with pytest.raises(ValueError, match="kind must be one of"):
        user_dir("state")


def test_every_home_file_follows_xdg(monkeypatch, tmp_path):
    from genforge.data.series import tep
    from genforge.generation import provenance
    from genforge.metrics import evaluator_net
    from genforge.serve import audit, keys

    for var in ("GENFORGE_KEYS_FILE", "GENFORGE_AUDIT_KEY", "GENFORGE_AUDIT_KEY_FILE", "GENFORGE_LEDGER",
                "GENFORGE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert keys.default_keys_file() == tmp_path / "cfg" / "genforge" / "keys.json"
    assert audit.default_audit_log() == tmp_path / "data" / "genforge" / "audit.jsonl"
    assert provenance.default_ledger() == tmp_path / "data" / "genforge" / "ledger.jsonl"
    assert evaluator_net.cache_dir() == tmp_path / "cache" / "genforge" / "evaluators"
    assert tep.cache_dir() == tmp_path / "cache" / "genforge" / "tep"
    key = audit.load_key(create=True)  # the audit key file is made under XDG_CONFIG_HOME
    assert len(key) >= 16 and (tmp_path / "cfg" / "genforge" / "audit.key").is_file()
    # the genforge-specific variables still come first
    monkeypatch.setenv("GENFORGE_KEYS_FILE", str(tmp_path / "k.json"))
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "gc"))
    assert keys.default_keys_file() == tmp_path / "k.json"
    assert evaluator_net.cache_dir() == tmp_path / "gc" / "evaluators"
