"""Fault detection on sensor series: PCA T^2 / SPE, isolation forest, reconstruction; threshold, runs, files, CLI.

A small synthetic plant stands in for the Tennessee Eastman process: 6 sensors driven by 2 latent factors plus
noise, so normal operation has the correlation structure PCA monitors; a fault is a bias on one sensor from a
known onset. One test runs `genforge inspect` on a seconds-long tep-studio simulation (skipped without it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge.apps.inspection import series as fd
from genforge.apps.inspection.series_report import build_series_report
from genforge.cli import main
from genforge.errors import DataError, GenforgeError, ModelFileError

C, ONSET = 6, 100
MIX = np.random.default_rng(99).normal(size=(C, 2))  # how the 2 latent factors drive the 6 sensors


def plant_run(length: int, seed: int, fault_channel: int | None = None, bias: float = 0.0) -> np.ndarray:
    """(C, length) in 'engineering units' (offset and scaled per sensor); a bias on one sensor from ONSET on."""
    rng = np.random.default_rng(seed)
    latent = np.cumsum(rng.normal(scale=0.3, size=(2, length)), axis=1) * 0.2 + rng.normal(size=(2, length))
    x = MIX @ latent + 0.1 * rng.normal(size=(C, length))
    if fault_channel is not None:
        x[fault_channel, ONSET:] += bias
    return (x * np.arange(1, C + 1)[:, None] + 50.0).astype(np.float32)


@pytest.fixture(scope="module")
def normal_runs():
    return [plant_run(400, s) for s in range(3)]


@pytest.mark.parametrize("name", ["pca-t2", "pca-spe"])
def test_detector_raises_alarms_after_the_onset_and_points_at_the_faulty_sensor(name, normal_runs):
    det = fd.fit_on_runs(name, normal_runs, window=1, fpr=0.01)
    # a bias of 3 (sensor 3's unscaled units; x4 its scale) leaves the 2-factor plane: SPE and T^2 see it at once
    fault = plant_run(300, 7, fault_channel=3, bias=3.0 * 4)
    rs = det.score_run(fault, onset=ONSET)
    assert rs.delay is not None and rs.delay <= 5
    assert rs.detection_rate > 0.9 and rs.false_alarm_rate <= 0.05
    assert int(np.argmax(rs.contributions)) == 3  # the operator is pointed at sensor 3
    assert abs(rs.contributions.sum() - 1) < 1e-9
    quiet = det.score_run(plant_run(300, 8), onset=ONSET)
    assert quiet.detection_rate < 0.1  # a normal run: few alarms either side of the "onset"


def test_isolation_forest_sees_a_shift_of_several_sensors_but_not_one_sensor_alone(normal_runs):
    """The forest's known weakness, kept visible: a split picks one of the 6 sensors at random and trees stop at
    depth 8, so a point far out on ONE sensor lands in the same leaf as the most extreme normal point on it
    (its score does not grow with the bias), while a shift of three sensors is isolated early."""
    det = fd.fit_on_runs("iforest", normal_runs, window=1, fpr=0.05)
    one = [det.score_run(plant_run(300, 7, fault_channel=3, bias=b), onset=ONSET).score for b in (40.0, 400.0)]
    assert np.array_equal(one[0], one[1])
    three = plant_run(300, 7)
    three[3:, ONSET:] += 30.0
    rs = det.score_run(three, onset=ONSET)
    assert rs.delay is not None and rs.delay <= 5 and rs.detection_rate > 0.4 and rs.false_alarm_rate <= 0.05
    assert int(np.argmax(rs.contributions)) in (3, 4, 5)


def test_threshold_keeps_the_target_false_alarm_rate_on_normal_validation_windows(normal_runs):
    det = fd.fit_on_runs("pca-spe", normal_runs, window=3, fpr=0.05)
    assert det.meta["val_fpr"] <= 0.05 and det.meta["val_windows"] == 3 * (80 - 2)
    val = fd.run_windows(normal_runs, 3, 0.8, 1.0)
    assert (det.score_windows(val)[0] > det.threshold).mean() == det.meta["val_fpr"]


def test_other_normal_runs_can_set_the_threshold_and_then_every_training_sample_fits(normal_runs):
    """val_runs: runs the detector never trained on set the threshold (what a network that learns its training
    runs closely needs); the training runs are then used whole."""
    other = [plant_run(300, s) for s in (20, 21)]
    det = fd.fit_on_runs("pca-spe", normal_runs, window=3, fpr=0.05, val_runs=other)
    assert det.meta["train_windows"] == 3 * (400 - 2) and det.meta["val_windows"] == 2 * (300 - 2)
    val = fd.run_windows(other, 3)
    assert (det.score_windows(val)[0] > det.threshold).mean() == det.meta["val_fpr"] <= 0.05
    # the same training windows, another threshold: the one set on the tails of the training runs
    assert det.threshold != fd.fit_on_runs("pca-spe", normal_runs, window=3, fpr=0.05).threshold
    with pytest.raises(DataError, match="normal validation windows are 5 x 3, training windows 6 x 3"):
        fd.fit_on_runs("pca-spe", normal_runs, window=3, val_runs=[r[:5] for r in other])


def test_a_long_run_is_scored_a_chunk_of_windows_at_a_time(normal_runs, monkeypatch):
    """score_run copies (and standardizes) at most SCORE_CHUNK windows at a time, so its memory does not grow
    with the run's length beyond the scores; chunking changes no score."""
    det = fd.fit_on_runs("pca-spe", normal_runs, window=3)
    run = plant_run(300, 7, fault_channel=2, bias=6.0)
    monkeypatch.setattr(fd, "SCORE_CHUNK", 16)
    whole = det.score_windows(fd.run_windows([run], 3))  # every window built first, as score_run once did
    sizes, standardize = [], det._standardize
    monkeypatch.setattr(det, "_standardize",
                        lambda x, where, first=0: sizes.append(len(x)) or standardize(x, where, first))
    rs = det.score_run(run, onset=ONSET)
    assert max(sizes) == 16 and sum(sizes) == 298
    assert np.array_equal(rs.score, whole[0]) and rs.alarm.sum() == (whole[0] > det.threshold).sum()


def test_t2_contributions_sum_to_the_statistic(normal_runs):
    det = fd.fit_on_runs("pca-t2", normal_runs, window=2)
    x = fd.run_windows([plant_run(50, 5)], 2)
    z = (x - det.mean[:, None]) / det.std[:, None]
    flat = z.reshape(len(z), -1)
    t = flat @ det.method.components.T
    t2 = (t ** 2 / det.method.eigenvalues).sum(1)  # Hotelling's T^2 in the principal subspace
    score, contrib = det.score_windows(x)
    np.testing.assert_allclose(score, t2, rtol=1e-9)
    np.testing.assert_allclose(contrib.sum(1), score, rtol=1e-9)


def test_isolation_forest_scored_from_its_arrays_matches_scikit_learn(normal_runs):
    det = fd.fit_on_runs("iforest", normal_runs, window=2, options={"trees": 20})
    x = fd.run_windows([plant_run(120, 9, fault_channel=1, bias=5.0)], 2)
    z = (x - det.mean[:, None]) / det.std[:, None]
    ours, _ = det.method.score(z)
    theirs = -det.method.sklearn.score_samples(z.reshape(len(z), -1))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_reconstruction_detector_takes_any_callable(normal_runs):
    def blur(x):  # a stand-in model: each window's per-channel mean, a poor but honest reconstruction
        return np.repeat(x.mean(2, keepdims=True), x.shape[2], axis=2)

    det = fd.fit_on_runs("recon", normal_runs, window=4, reconstruct=blur)
    rs = det.score_run(plant_run(300, 3, fault_channel=0, bias=8.0), onset=ONSET)
    assert rs.false_alarm_rate <= 0.1 and rs.detection_rate < 0.5  # a bias is not a jump within a window
    steps = plant_run(300, 3)
    # a sensor chattering from the onset (+-50 about its mean; normal spread within a window is ~10): the window
    # mean cannot follow it
    steps[2, ONSET::2] += 100.0
    rs = det.score_run(steps, onset=ONSET)
    assert rs.detection_rate > 0.9 and int(np.argmax(rs.contributions)) == 2
    with pytest.raises(GenforgeError, match="bare callable cannot be saved"):
        fd.save_series(det, "unused")


def test_reload_scores_bit_identical_and_an_altered_file_is_refused(normal_runs, tmp_path):
    fault = plant_run(300, 7, fault_channel=2, bias=6.0)
    for name in ("pca-spe", "iforest"):
        det = fd.fit_on_runs(name, normal_runs, window=2, options={"trees": 10} if name == "iforest" else None)
        fd.save_series(det, tmp_path / name)
        again = fd.load_series_detector(tmp_path / name)
        a, b = det.score_run(fault, ONSET), again.score_run(fault, ONSET)
        assert np.array_equal(a.score, b.score) and a.delay == b.delay and again.threshold == det.threshold
    weights = tmp_path / "pca-spe" / fd.WEIGHTS
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        fd.load_series_detector(tmp_path / "pca-spe")


def test_scoring_another_channel_count_or_window_length_is_refused(normal_runs):
    det = fd.fit_on_runs("pca-spe", normal_runs, window=5)
    with pytest.raises(DataError, match=r"5 channel\(s\), but the detector was fit on 6 channel\(s\)"):
        det.score_run(plant_run(200, 1)[:5])
    with pytest.raises(DataError, match=r"6 channel\(s\) x 4 samples, but the detector was fit on 6 channel\(s\) "
                                        r"x 5 samples"):
        det.score_windows(np.zeros((3, 6, 4)))
    with pytest.raises(DataError, match="3 samples, fewer than the detector's window of 5"):
        det.score_run(plant_run(3, 1))
    bad = plant_run(200, 1)
    bad[4, 17] = np.nan
    with pytest.raises(DataError, match=r"run: channel 4, sample 17 is nan"):
        det.score_run(bad)


def test_bad_fit_inputs_are_refused(normal_runs):
    with pytest.raises(GenforgeError, match="unknown series detector 'svm'"):
        fd.fit_on_runs("svm", normal_runs, window=1)
    with pytest.raises(GenforgeError, match="no option 'k'"):
        fd.fit_on_runs("pca-spe", normal_runs, window=1, options={"k": 3})
    with pytest.raises(GenforgeError, match="false-alarm rate must be in"):
        fd.fit_on_runs("pca-spe", normal_runs, window=1, fpr=1.5)
    with pytest.raises(DataError, match="no part of the normal runs is 500 samples long"):
        fd.fit_on_runs("pca-spe", normal_runs, window=500)


def _npz_log(path, x):
    np.savez(path, x=x.T, channels=np.array([f"s{i}" for i in range(len(x))]))
    return f"series-npz:{path}"


def test_cli_fit_score_report_on_a_log(normal_runs, tmp_path, capsys):
    normal = _npz_log(tmp_path / "normal.npz", np.concatenate(normal_runs, axis=1))
    faulty = _npz_log(tmp_path / "faulty.npz", plant_run(300, 7, fault_channel=3, bias=3.0))
    det, res = tmp_path / "det", tmp_path / "res"
    assert main(["inspect", "fit", normal, "--detector", "pca-spe", "--window", "2", "--fpr", "0.01",
                 "--out", str(det)]) == 0
    assert "threshold" in capsys.readouterr().out
    assert main(["inspect", "score", str(det), faulty, "--onset", str(ONSET), "--out", str(res)]) == 0
    out = capsys.readouterr().out
    assert "log: 1 of 1 run(s) alarmed after the onset" in out and "median delay 0 samples" in out
    summary = json.loads((res / "summary.json").read_text())
    run = summary["runs"][0]
    assert run["delay"] == 0 and run["top_channels"][0][0] == "s3"
    assert main(["inspect", "report", str(res)]) == 0
    page = (res / "report.html").read_text()
    assert "per-sensor contribution" in page and page.count("data:image/png;base64") == 2
    # another channel count than the detector's: one line naming both
    five = _npz_log(tmp_path / "five.npz", plant_run(300, 7)[:5])
    assert main(["inspect", "score", str(det), five, "--out", str(tmp_path / "r2")]) == 2
    assert "5 channel(s), but the detector was fit on 6 channel(s)" in capsys.readouterr().err
    assert main(["inspect", "fit", normal, "--detector", "pca-spe", "--set", "k=3", "--out", str(det)]) == 2
    assert "--set k: not an option of the pca-spe detector" in capsys.readouterr().err
    assert main(["inspect", "fit", "ucr:GunPoint", "--out", str(tmp_path / "d3")]) == 2
    assert "fault detection runs on recordings" in capsys.readouterr().err
    # --val-data: another normal log sets the threshold; every window of DATA trains
    other = _npz_log(tmp_path / "other.npz", plant_run(300, 20))
    assert main(["inspect", "fit", normal, "--window", "2", "--val-data", other, "--out", str(tmp_path / "d4")]) == 0
    assert f"299 normal validation windows of {other}" in capsys.readouterr().out
    saved = json.loads((tmp_path / "d4" / "detector.json").read_text())
    assert saved["data"]["val_spec"] == other and saved["train_windows"] == 3 * 400 - 1  # the three runs as one log
    assert main(["inspect", "fit", normal, "--val-data", five, "--out", str(tmp_path / "d5")]) == 2
    assert f"{five}: 5 channels; the detector fits 6 of {normal}" in capsys.readouterr().err
    assert not (tmp_path / "d5").exists()
    assert main(["inspect", "fit", "mnist5k", "--val-data", other, "--out", str(tmp_path / "d6")]) == 2
    assert "--val-data is for sensor series" in capsys.readouterr().err


def test_cli_on_a_short_tep_simulation(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tep_studio")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = "tep:faults=1;seeds=0;train=60;test=60;onset=20;warmup=4"  # ~4 s of simulation
    det, res = tmp_path / "det", tmp_path / "res"
    assert main(["inspect", "fit", spec, "--detector", "pca-t2", "--quiet", "--out", str(det)]) == 0
    assert main(["inspect", "score", str(det), spec, "--out", str(res)]) == 0
    summary = json.loads((res / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["IDV00 seed 0", "IDV01 seed 0"]
    assert set(summary["faults"]) == {"normal", "IDV01"}
    assert len(summary["runs"][1]["top_channels"]) == 5
    assert main(["inspect", "report", str(res)]) == 0
    assert "IDV01 seed 0" in build_series_report(res)


@pytest.fixture(scope="module")
def plant_models(tmp_path_factory, normal_runs):
    """A 1-D VAE, a 1-D DDPM and a 1-D autoregressive model trained for a few steps on the normal plant log
    (windows of 16 samples)."""
    from genforge.config import from_dict
    from genforge.training import check_config, train

    root = tmp_path_factory.mktemp("plant")
    log = _npz_log(root / "normal.npz", np.concatenate(normal_runs, axis=1))
    runs = {}
    for model, extra in (("vae-1d", {"z_dim": 4}), ("ddpm-1d", {}), ("ar-1d", {})):
        cfg = check_config(from_dict({"data": log, "series_window": 16, "series_stride": 4, "model": model,
                                      "base_channels": 8, "batch_size": 32, "max_steps": 40, "g_lr": 3e-3,
                                      "log_every": 20, "sample_every": 0, "checkpoint_every": 40,
                                      "tensorboard": False, "num_threads": 1, **extra}, "test"), "test")
        train(cfg, root / model, quiet=True)
        runs[model] = str(root / model)
    return log, runs


@pytest.mark.parametrize("model", ["vae-1d", "ddpm-1d", "ar-1d"])
def test_reconstruction_detector_on_a_trained_series_model(model, plant_models, tmp_path, capsys, monkeypatch):
    log, runs = plant_models
    det = fd.fit_spec("recon", log, 1, options={"model": runs[model]}, fpr=0.05)
    assert det.shape == (C, 16) and det.meta["val_fpr"] <= 0.05
    chatter = plant_run(300, 3)
    chatter[2, ONSET::2] += 100.0
    rs = det.score_run(chatter, onset=ONSET)
    assert rs.detection_rate > 0.9 and rs.false_alarm_rate <= 0.2 and int(np.argmax(rs.contributions)) == 2
    fd.save_series(det, tmp_path / "det")
    again = fd.load_series_detector(tmp_path / "det")  # rebuilt from the run named in detector.json
    assert np.array_equal(again.score_run(chatter, ONSET).score, rs.score)
    with pytest.raises(GenforgeError, match="does not match"):
        fd.fit_spec("recon", log, 8, options={"model": runs[model]})
    # the model is read once: for its window length and for its reconstruction
    from genforge.generation import model as gm

    loads, load = [], gm.load
    monkeypatch.setattr(gm, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
    fd.fit_spec("recon", log, 1, options={"model": runs[model]}, fpr=0.05)
    assert len(loads) == 1
    # the CLI path: genforge inspect fit ... --detector recon --set model=RUN
    assert main(["inspect", "fit", log, "--detector", "recon", "--set", f"model={runs[model]}", "--out",
                 str(tmp_path / "cli")]) == 0
    assert "16 sample(s)" in capsys.readouterr().out


def test_genforge_eval_scores_a_series_model_with_the_series_scores(plant_models, tmp_path, capsys, monkeypatch):
    """`genforge eval RUN` on a series model: the discriminative and predictive scores beside the real-vs-real
    row (the plant log is unlabelled, so there is no evaluator and no FD / TSTR, and the note says so)."""
    import functools

    from genforge.metrics import series as ms

    _, runs = plant_models
    # the CLI's 5 x 500 post-hoc steps take minutes on two busy cores; the path is the same with fewer
    monkeypatch.setattr(ms, "evaluate_series_model",
                        functools.partial(ms.evaluate_series_model, seeds=2, posthoc_steps=40))
    out = tmp_path / "eval.json"
    assert main(["eval", runs["vae-1d"], "--n", "32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "discr." in text and "real (held out vs train)" in text and "no class labels" in text
    result = json.loads(out.read_text())
    assert result["format"] == "genforge-eval-series" and result["n"] == 32
    for row in result["rows"].values():
        assert 0 <= row["discriminative"] <= 0.5 and row["predictive"] > 0
