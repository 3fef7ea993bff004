"""Inspection (anomaly detection): every detector, the threshold, files, the CLI and each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genforge.apps import inspection
from genforge.apps.inspection.detectors import DETECTORS
from genforge.cli import main
from genforge.errors import DataError, GenforgeError, ModelFileError

# Tiny options: every detector fits in well under a second.
TINY = {"vae": {"z_dim": 4, "base_channels": 4, "steps": 6, "batch_size": 16},
        "ganomaly": {"z_dim": 4, "base_channels": 4, "steps": 6, "batch_size": 16},
        "pca": {}, "knn": {"k": 3}}


@pytest.fixture(scope="module")
def digits():
    """Zeros as the normal class (train / val) and a labelled test mix, from the embedded mnist5k."""
    from genforge.data import load_splits

    splits = load_splits("mnist5k", seed=0)
    rng = np.random.default_rng(0)
    train = splits.train.x[splits.train.y == 0][:120]
    val = splits.val.x[splits.val.y == 0]
    pick = rng.permutation(len(splits.test))[:120]
    return train, val, splits.test.x[pick], splits.test.y[pick] != 0


@pytest.mark.parametrize("name", list(DETECTORS))
def test_each_detector_fits_scores_and_reloads_bit_identical(name, digits, tmp_path):
    train, val, test, _ = digits
    det = inspection.fit(name, train, val, fpr=0.1, seed=0, options=TINY[name])
    scored = det.score(test)
    assert scored.score.shape == (len(test),) and np.isfinite(scored.score).all()
    assert scored.residual.shape == (len(test), 28, 28) and (scored.residual >= 0).all()
    assert np.array_equal(scored.anomaly, scored.score > det.threshold)

    inspection.save(det, tmp_path / "det")
    again = inspection.load(tmp_path / "det")
    rescored = again.score(test)
    assert again.threshold == det.threshold
    assert np.array_equal(rescored.score, scored.score)         # bit for bit, not approximately
    assert np.array_equal(rescored.residual, scored.residual)
    assert np.array_equal(rescored.anomaly, scored.anomaly)


@pytest.mark.parametrize("name", ["pca", "knn"])
def test_baselines_separate_other_digits_from_zeros(name, digits):
    train, val, test, truth = digits
    det = inspection.fit(name, train, val, options=TINY[name])
    assert inspection.auroc(det.score(test).score, truth) > 0.9


def test_vae_detector_learns_what_normal_looks_like(digits):
    """Two hundred ELBO steps of a tiny VAE score the other digits above the zeros it was trained on."""
    train, val, test, truth = digits
    det = inspection.fit("vae", train, val, options={"z_dim": 8, "base_channels": 8, "steps": 200,
                                                      "batch_size": 32})
    assert inspection.auroc(det.score(test).score, truth) > 0.75
    stats = det.meta["options"]["stats"]
    assert set(stats) == {"residual", "elbo", "latent"} and all(s["std"] > 0 for s in stats.values())


def test_threshold_flags_the_target_share_of_normal_validation_scores():
    scores = np.arange(100, dtype=np.float64)[::-1]              # 0..99, order must not matter
    t = inspection.choose_threshold(scores, 0.05)
    assert t == 94.0 and (scores > t).sum() == 5
    assert inspection.choose_threshold(scores, 0.001) == 99.0    # no false positive allowed: the maximum
    assert (scores > inspection.choose_threshold(scores, 0.5)).sum() == 50


def test_threshold_comes_from_validation_images_only(digits):
    train, val, _, _ = digits
    det = inspection.fit("pca", train, val, fpr=0.2)
    val_scores = det.score(val).score
    assert det.threshold == inspection.choose_threshold(val_scores, 0.2)
    assert det.meta["val_fpr"] == (val_scores > det.threshold).mean() <= 0.2
    assert det.meta["val_scores"]["n"] == len(val)


def test_auroc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 60).astype(float)                # many ties
    truth = rng.random(60) < 0.4
    pos, neg = scores[truth], scores[~truth]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert inspection.auroc(scores, truth) == pytest.approx(pairwise, abs=1e-12)
    fpr, tpr = inspection.roc_curve(scores, truth)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise, abs=1e-12)


def test_f1_counts():
    counts = inspection.detection_counts(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert (counts["tp"], counts["fp"], counts["fn"], counts["tn"]) == (2, 1, 1, 1)
    assert counts["f1"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("n", [0, 1])
def test_fitting_on_an_empty_or_single_image_set_is_refused(n, digits):
    train, val, _, _ = digits
    with pytest.raises(DataError, match=f"normal training images: {n} image"):
        inspection.fit("pca", train[:n], val)


def test_pca_keeps_the_fewest_components_for_its_variance_and_refuses_a_bad_share(digits):
    train, val, _, _ = digits
    small, full = inspection.fit("pca", train, val, options={"variance": 0.5}), \
        inspection.fit("pca", train, val, options={"variance": 1.0})
    k = small.method.components.shape[0]
    assert 1 <= k < full.method.components.shape[0] <= len(train)
    flat = train.reshape(len(train), -1).astype(np.float64) / 255  # the share really is the fewest that explain 50%
    s = np.linalg.svd(flat - flat.mean(0), compute_uv=False) ** 2
    explained = np.cumsum(s) / s.sum()
    assert explained[k - 1] > 0.5 >= explained[k - 2] if k > 1 else explained[0] > 0.5
    with pytest.raises(GenforgeError, match="variance must be in \\(0, 1\\], got 0"):
        inspection.fit("pca", train, val, options={"variance": 0})


def test_scoring_another_size_or_channel_count_is_refused(digits):
    train, val, _, _ = digits
    det = inspection.fit("pca", train, val)
    with pytest.raises(DataError, match="32x32x1.*fit on 28x28x1"):
        det.score(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(DataError, match="28x28x3.*fit on 28x28x1"):
        det.score(np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        det.score(np.zeros((2, 28, 28), np.float32))


def test_unknown_detector_is_refused(digits):
    train, val, _, _ = digits
    with pytest.raises(GenforgeError, match="unknown detector 'autoencoder'; choose one of vae, ganomaly"):
        inspection.fit("autoencoder", train, val)
    with pytest.raises(GenforgeError, match="vae: unknown score 'magic'"):
        inspection.fit("vae", train, val, options={"score": "magic"})


def test_a_normal_class_that_does_not_exist_is_refused(digits_npz):
    with pytest.raises(DataError, match="no class '10'; classes are 0..9"):
        inspection.load_normal(digits_npz, normal_classes=["10"])
    with pytest.raises(DataError, match="no class 'Zebra'"):
        inspection.load_normal(digits_npz, normal_classes=["Zebra"])
    normal = inspection.load_normal(digits_npz, anomaly_classes=["3"])
    assert normal.normal_classes == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_a_class_filter_on_unlabelled_data_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 255, (30, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="has no class labels"):
        inspection.load_normal(f"npz:{path}", normal_classes=["1"])
    assert inspection.load_normal(f"npz:{path}").normal_classes is None  # every image is normal


def test_an_altered_detector_file_is_refused(digits, tmp_path):
    train, val, _, _ = digits
    inspection.save(inspection.fit("knn", train, val), tmp_path)
    blob = bytearray((tmp_path / inspection.WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (tmp_path / inspection.WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        inspection.load(tmp_path)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_fit_score_report_end_to_end(digits_npz, tmp_path, capsys):
    det, res = tmp_path / "det", tmp_path / "res"
    assert main(["inspect", "fit", digits_npz, "--normal-class", "1", "--detector", "vae", "--out", str(det),
                 "--set", "steps=4", "--set", "z_dim=4", "--set", "base_channels=4", "--fpr", "0.1", "--quiet"]) == 0
    meta = json.loads((det / "detector.json").read_text())
    assert meta["detector"] == "vae" and meta["data"]["normal_classes"] == [1] and meta["target_fpr"] == 0.1

    assert main(["inspect", "score", str(det), digits_npz, "--out", str(res)]) == 0
    summary = json.loads((res / "summary.json").read_text())
    rows = (res / "scores.csv").read_text().splitlines()
    assert len(rows) == summary["n"] + 1 and rows[0] == "index,score,label,class,truth"
    assert 0 <= summary["auroc"] <= 1 and "f1" in summary                # ones are normal, the rest anomalies
    written = sorted(int(p.stem) for p in (res / "heatmaps").glob("*.png"))
    assert written and len(written) == summary["heatmaps"] <= summary["n"]  # the top 32 and the report's cases
    assert "AUROC" in capsys.readouterr().out

    assert main(["inspect", "report", str(res)]) == 0
    page = (res / "report.html").read_text()
    assert "ROC" in page and "missed anomalies" in page and page.count("data:image/png;base64") >= 3


def test_cli_bad_inputs_exit_2_with_the_value_named(digits_npz, tmp_path, capsys):
    det = tmp_path / "det"
    assert main(["inspect", "fit", digits_npz, "--normal-class", "Zebra", "--detector", "pca",
                 "--out", str(det)]) == 2
    assert "no class 'Zebra'" in capsys.readouterr().err
    assert main(["inspect", "fit", digits_npz, "--detector", "svm", "--out", str(det)]) == 2
    assert "unknown detector 'svm'" in capsys.readouterr().err
    assert main(["inspect", "fit", digits_npz, "--detector", "vae", "--set", "depth=3", "--out", str(det)]) == 2
    assert "--set depth: not an option of the vae detector" in capsys.readouterr().err

    assert main(["inspect", "fit", digits_npz, "--normal-class", "1", "--detector", "pca", "--out", str(det),
                 "--quiet"]) == 0
    big = tmp_path / "big.npz"
    np.savez(big, x=np.random.default_rng(0).integers(0, 255, (20, 32, 32), dtype=np.uint8))
    assert main(["inspect", "score", str(det), f"npz:{big}", "--split", "all", "--out", str(tmp_path / "r")]) == 2
    assert "not 28x28" in capsys.readouterr().err
    assert main(["inspect", "score", str(det), f"npz:{big}", "--split", "all", "--resize", "--no-heatmaps",
                 "--out", str(tmp_path / "r")]) == 0
    assert main(["inspect", "report", str(tmp_path / "nothing")]) == 2
    assert "not an inspection results directory" in capsys.readouterr().err
