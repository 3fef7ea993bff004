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


def test_training_bar_quiet_without_a_terminal_and_the_log_line_says_the_time_left(tmp_path, capsys):
    now = [50.0]
    logger = RunLogger(tmp_path, 10_000, 0, tensorboard=False, quiet=False, max_seconds=30, clock=lambda: now[0])
    assert logger.bar.disable  # pytest's stderr is not a terminal
    now[0] += 3.0
    logger.log(10, {"loss": 1.0})
    logger.close()
    assert "step 10: loss=1 (00:27 left)" in capsys.readouterr().err  # the plain line of a log file or a pipe


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
    logged = set(json.loads((tmp_path / "metrics.jsonl").read_text())) - {"page_faults_per_s", "system_share"}
    assert logged == {"step", "loss_g", "images_per_sec", "val_fid"}  # flat keys, as users parse them


# ---------------------------------------------------------------------------------------------- progress bars

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "models"


class RecordingBar:
    """Stands in for tqdm: records what a bar was asked to show."""

    made: list = []

    def __init__(self, iterable=None, *args, total=None, disable=False, desc="", **kwargs):
        self.iterable, self.total, self.disable, self.desc, self.updates = iterable, total, disable, desc, []
        RecordingBar.made.append(self)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text


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
    assert tep.cache_dir() == tmp_path / "gc" / "tep"


# ---------------------------------------------------------------------------------------------- genforge report

def test_report_draws_validation_curves_over_every_step_and_the_last_grids(tmp_path, capsys):
    """A tiny real run on mnist5k, scored by its shipped evaluator every 2 steps."""
    import re

    from genforge.cli import main
    from genforge.config import from_dict
    from genforge.metrics.report import read_metrics, series, validation_panels
    from genforge.training import check_config, train

    cfg = check_config(from_dict({"data": "mnist5k", "model": "dcgan", "base_channels": 4, "z_dim": 8,
                                  "batch_size": 16, "max_steps": 10, "log_every": 2, "sample_every": 2,
                                  "checkpoint_every": 2, "grid_n": 4, "tensorboard": False, "num_threads": 1,
                                  "eval_every": 2, "eval_n": 64, "eval_share": 0}, "test"), "test")
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    records, bad = read_metrics(run / "metrics.jsonl")
    panels = validation_panels(series(records))
    assert panels["FID (validation split)"]["val_fid"][0] == [2, 4, 6, 8, 10]  # every step it was measured at
    assert set(panels["precision, recall, density, coverage"]) == {"val_precision", "val_recall", "val_density",
                                                                     "val_coverage"}
    assert not any("val_kid_std" in curves for curves in panels.values())  # a band around KID, not a panel
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'alt="validation curves"' in page and "Measured at 5 step(s)" in page
    shown = re.findall(r'alt="(step_\d+\.png)"', page)
    assert shown == ["step_00000010.png", "step_00000008.png", "step_00000006.png", "step_00000004.png"]
    assert '{"dir"' not in page and "checkpoints: best: " in page  # pointers read out, not dumped as JSON
    assert "<th>best FID (step" in page


def test_report_with_one_validation_has_a_table_not_one_point_plots(tmp_path):
    from genforge.metrics.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "loss": 1.0 / s, "images_per_sec": 100.0} for s in (1, 2, 3)]
    lines[-1].update({"val_fid": 42.5, "val_recall": 0.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = build_report(run)
    assert "Measured at 1 step(s)" in page and "<td>42.5</td>" in page
    assert 'alt="validation curves"' not in page


# ---------------------------------------------------------------------------------------------- eval: bars, device

def test_eval_shows_bars_for_sampling_and_features_and_cpu_scores_are_unchanged(monkeypatch, tmp_path):
    import genforge
    from genforge.generation import sampling
    from genforge.metrics import evaluator_net
    from genforge.metrics.evaluate import evaluate

    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))  # mnist5k's evaluator ships: nothing trains
    model = genforge.load(LEGACY / "dcgan")
    plain = evaluate(model, data="mnist5k", n=64, seed=2, with_cas=False, progress=False)
    RecordingBar.made = []
    monkeypatch.setattr(sampling, "tqdm", RecordingBar)
    monkeypatch.setattr(evaluator_net, "tqdm", RecordingBar)
    shown = evaluate(model, data="mnist5k", n=64, seed=2, with_cas=False, progress=False, bars=True, device="cpu")
    bars = {bar.desc: bar for bar in RecordingBar.made if not bar.disable}
    assert bars["sampling"].total == 64 and sum(bars["sampling"].updates) == 64
    assert sum(bars["features: samples"].updates) == 64
    assert {"features: test split", "features: real subset"} <= set(bars)
    assert shown["rows"] == plain["rows"]  # bars and an explicit cpu change no score


def test_eval_and_classifier_training_take_a_device(monkeypatch):
    import numpy as np
    import torch

    from genforge.data import load_splits
    from genforge.metrics.evaluate import evaluate
    from genforge.metrics.evaluator_net import TrainRecipe, train_classifier

    splits = load_splits("mnist5k")
    x, y = splits.train.x[:64], splits.train.y[:64]
    recipe = TrainRecipe(steps=3, batch_size=16)
    a = train_classifier(x, y, 10, recipe)
    b = train_classifier(x, y, 10, recipe, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    if not torch.cuda.is_available():
        from genforge.errors import GenforgeError

        with pytest.raises(GenforgeError, match="no CUDA device is available here"):
            evaluate(LEGACY / "dcgan", data="mnist5k", n=64, device="cuda")
    assert np.isfinite(a(torch.zeros(1, 1, 28, 28)).detach().numpy()).all()


# ---------------------------------------------------------------------------------------------- inspection

def test_inspection_fit_and_score_take_a_device_and_show_a_bar(digits_npz, tmp_path, monkeypatch):
    import numpy as np

    from genforge.apps import inspection
    from genforge.apps.inspection import detectors

    normal = inspection.load_normal(digits_npz, normal_classes=["1"])
    options = {"steps": 6, "z_dim": 4, "base_channels": 4}
    base = inspection.fit("vae", normal.train, normal.val, seed=1, options=options)
    RecordingBar.made = []
    monkeypatch.setattr(detectors, "tqdm", RecordingBar)
    shown = inspection.fit("vae", normal.train, normal.val, seed=1, options=options, device="cpu", progress=True)
    (bar,) = RecordingBar.made
    assert not bar.disable and bar.total == 6 and bar.desc == "vae detector" and sum(bar.updates) == 6
    assert shown.threshold == base.threshold and shown.meta["device"] == "cpu"
    inspection.save(shown, tmp_path / "det")
    loaded = inspection.load(tmp_path / "det", device="cpu")
    assert np.array_equal(loaded.score(normal.val).score, base.score(normal.val).score)


def test_heatmaps_for_the_top_k_and_the_reports_cases(tmp_path):
    import numpy as np

    from genforge.apps.inspection.report import WORST, heatmap_indices, write_results
    from genforge.apps.inspection.inspector import Scored

    score = np.arange(100, dtype=np.float64)[::-1].copy()  # image 0 scores highest
    assert list(heatmap_indices(score, None, 5)) == [0, 1, 2, 3, 4]
    assert len(heatmap_indices(score, None, None)) == 100 and len(heatmap_indices(score, None, 0)) == 0
    truth = np.zeros(100, dtype=bool)
    truth[[10, 98]] = True  # 98: an anomaly with one of the lowest scores, which the report shows as missed
    chosen = set(heatmap_indices(score, truth, 3).tolist())
    assert {0, 1, 2, 98} <= chosen and len(chosen) <= 3 + 2 * WORST

    class FakeDetector:
        name, threshold = "pca", 50.0
        meta = {"target_fpr": 0.05, "residual_scale": 1.0}

    x = np.zeros((100, 8, 8), dtype=np.uint8)
    scored = Scored(score, score > 50, np.zeros((100, 8, 8), dtype=np.float32))
    summary = write_results(tmp_path / "res", FakeDetector(), scored, x, heatmaps=7)
    names = sorted(p.name for p in (tmp_path / "res" / "heatmaps").glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(7)] and summary["heatmaps"] == 7


def test_augment_bar_counts_every_k_seed_and_stage(monkeypatch, digits_npz):
    from genforge.apps import augment

    def fake_seed(splits, recipe, k, seed, options, device, keep=None, stage=None):
        for name in augment.STAGES:
            stage(name)
        return {"k": k, "seed": seed, "real_only": 0.5, "real_plus_synthetic": 0.6}

    RecordingBar.made = []
    monkeypatch.setattr(augment, "tqdm", RecordingBar)
    monkeypatch.setattr(augment, "run_seed", fake_seed)
    rows = []
    result = augment.run(digits_npz, "unused.yaml", [1, 2], [0, 1, 2], progress=rows.append, bars=True)
    (bar,) = RecordingBar.made
    assert not bar.disable and bar.total == 2 * 3 * len(augment.STAGES) == sum(bar.updates)
    assert len(rows) == 6 and len(result["summary"]) == 2


def test_cli_heatmaps_all_or_a_count(digits_npz, tmp_path, capsys):
    from genforge.cli import main

    det = tmp_path / "det"
    assert main(["inspect", "fit", digits_npz, "--normal-class", "1", "--detector", "pca", "--out", str(det),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["inspect", "score", str(det), digits_npz, "--out", str(tmp_path / "all"), "--heatmaps", "all"]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert len(list((tmp_path / "all" / "heatmaps").glob("*.png"))) == summary["n"] == summary["heatmaps"]
    assert main(["inspect", "score", str(det), digits_npz, "--out", str(tmp_path / "r"), "--heatmaps", "lots"]) == 2
    assert "--heatmaps 'lots': give a number of images (0 or more) or 'all'" in capsys.readouterr().err
