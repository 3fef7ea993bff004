"""Evaluation: the metrics behave as their papers say, the evaluator is the one that was shipped, results from
different evaluators are never mixed, and every bad input is a clear error."""

import io
import itertools
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from genforge.cli import main
from genforge.data import load_splits
from genforge.errors import GenforgeError, ModelFileError
from genforge.metrics import (TrainingEvaluator, TrainRecipe, check_images, compare, density_coverage, evaluate,
                              fid, frechet_distance, get_evaluator, kid, load_evaluator, precision_recall, scores)
from genforge.metrics.evaluate import cas
from genforge.metrics.evaluator_net import (SHIPPED_DIR, EvaluatorUnavailable, data_sha256, estimate_train_seconds,
                                           evaluator_key, find_evaluator)

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Evaluators trained on first use go to a temporary cache, never to the user's."""
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def evaluator():
    return get_evaluator("mnist5k", (1, 28, 28))


@pytest.fixture(scope="module")
def splits():
    return load_splits("mnist5k")


@pytest.fixture(scope="module")
def test_features(evaluator, splits):
    return evaluator.features(splits.test.x)


def _blur(x: np.ndarray, radius: float) -> np.ndarray:
    if radius == 0:
        return x
    return np.stack([np.asarray(Image.fromarray(im[..., 0]).filter(ImageFilter.GaussianBlur(radius)))
                     for im in x])[..., None]


# ------------------------------------------------------------------------------------ the shipped evaluator


def test_shipped_evaluator_is_small_accurate_and_hashed(evaluator):
    assert evaluator.path.startswith(str(SHIPPED_DIR)) and evaluator.name == "mnist5k-28x28x1"
    assert Path(evaluator.path).stat().st_size < 1_000_000
    meta = evaluator.meta
    assert meta["test_accuracy"] >= 0.97 and meta["split"] == "train" and len(meta["weights_sha256"]) == 64
    assert evaluator.identity()["weights_sha256"] == meta["weights_sha256"]


def test_evaluator_accuracy_holds_on_the_test_split(evaluator, splits):
    probs = evaluator.features_and_probs(splits.test.x)[1]
    assert (probs.argmax(1) == splits.test.y).mean() == pytest.approx(evaluator.meta["test_accuracy"], abs=1e-9)


def test_altered_evaluator_file_is_refused(tmp_path):
    for f in SHIPPED_DIR.glob("mnist5k-28x28x1.*"):
        shutil.copy(f, tmp_path / f.name)
    weights = tmp_path / "mnist5k-28x28x1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        load_evaluator(tmp_path / "mnist5k-28x28x1.json")
    weights.write_bytes(bytes(data[:1000]))  # truncated: caught by the header check first
    with pytest.raises(ModelFileError, match="truncated|outside the file"):
        load_evaluator(tmp_path / "mnist5k-28x28x1.json")


def test_features_do_not_depend_on_batch_size(evaluator, splits):
    x = splits.val.x[:64]
    whole = evaluator.features(x, batch_size=64)
    assert np.allclose(evaluator.features(x, batch_size=7), whole, atol=1e-5)
    assert np.allclose(evaluator.features(x[:1], batch_size=1), whole[:1], atol=1e-5)


def test_evaluator_trained_on_first_use_then_cached(tmp_path, monkeypatch, digits_npz, capsys):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    first = get_evaluator(digits_npz, (1, 28, 28), recipe=TrainRecipe(steps=3, batch_size=32))
    assert "training one now" in capsys.readouterr().err
    key = evaluator_key(digits_npz, (1, 28, 28))
    assert (tmp_path / "evaluators" / f"{key}.safetensors").is_file()
    again = get_evaluator(digits_npz, (1, 28, 28))
    assert "training" not in capsys.readouterr().err and again.sha256 == first.sha256


def test_evaluator_train_command_refuses_to_replace_a_ruler(tmp_path, digits_npz, capsys):
    args = ["evaluator", "train", "--data", digits_npz, "--train-steps", "3", "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "sha256" in out
    (json_path,) = (tmp_path / "ev").glob("*.json")
    meta = json.loads(json_path.read_text())
    assert meta["data"] == digits_npz and meta["split"] == "train" and meta["train_recipe"]["steps"] == 3
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["evaluator", "list"]) == 0
    assert "mnist5k-28x28x1" in capsys.readouterr().out


def test_training_a_missing_evaluator_is_announced_with_an_estimate_and_a_bar(tmp_path, digits_npz, capsys):
    get_evaluator(digits_npz, (1, 28, 28), recipe=TrainRecipe(steps=3, batch_size=32))
    err = capsys.readouterr().err
    assert "training one now, about " in err and " s (once; cached in " in err  # the estimate, before any step
    assert f"evaluator {digits_npz}:" not in err  # stderr is not a terminal here: no bar unless asked
    shutil.rmtree(tmp_path / "cache")
    get_evaluator(digits_npz, (1, 28, 28), recipe=TrainRecipe(steps=3, batch_size=32), bars=True)
    err = capsys.readouterr().err
    assert "training one now, about " in err
    assert f"evaluator {digits_npz}:" in err  # the progress bar's label (tqdm, on stderr)


def test_a_time_budget_refuses_to_train_an_evaluator_it_cannot_afford(tmp_path, digits_npz):
    with pytest.raises(EvaluatorUnavailable, match=r"about \d+ s here, more than the 0 s allowed; train it once ahead "
                                                    r"with: genforge evaluator train --data npz:"):
        get_evaluator(digits_npz, (1, 28, 28), max_seconds=0.001)
    assert not (tmp_path / "cache" / "evaluators").exists()  # nothing trained, nothing cached
    # a budget the estimate fits in trains as before
    assert get_evaluator(digits_npz, (1, 28, 28), recipe=TrainRecipe(steps=2, batch_size=32), max_seconds=600)


def test_the_estimate_is_measured_scales_with_steps_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    short = estimate_train_seconds(4000, (1, 28, 28), 10, TrainRecipe(steps=10))
    long = estimate_train_seconds(4000, (1, 28, 28), 10, TrainRecipe(steps=100_000))
    assert torch.equal(torch.get_rng_state(), state)
    assert 0 < short < long and long > 10  # 100,000 steps of even a tiny CNN take more than 10 s on any CPU


def test_validation_is_skipped_with_a_note_when_the_run_is_too_short_to_train_an_evaluator(tmp_path, digits_npz,
                                                                                         splits):
    notes = []
    val_x = splits.val.x[:64]
    # 3 steps of training cannot justify a 1,000-step evaluator: skipped, and the note says how to get one
    assert TrainingEvaluator.for_run(digits_npz, val_x, (1, 28, 28), n=20, max_steps=3, log=notes.append) is None
    assert len(notes) == 1 and "validation skipped" in notes[-1] and "1000 steps" in notes[-1]
    assert f"genforge evaluator train --data {digits_npz}" in notes[-1]
    # a long run with a seconds budget shorter than the measured estimate: skipped as well
    assert TrainingEvaluator.for_run(digits_npz, val_x, (1, 28, 28), n=20, max_steps=10**6, max_seconds=0.001,
                                     log=notes.append) is None
    assert len(notes) == 2 and "validation skipped" in notes[-1] and "0 s allowed" in notes[-1]
    assert not (tmp_path / "cache" / "evaluators").exists()
    # a shipped evaluator is always used, however short the run
    val = TrainingEvaluator.for_run("mnist5k", val_x, (1, 28, 28), n=20, max_steps=1, max_seconds=0.001,
                                    log=notes.append)
    assert isinstance(val, TrainingEvaluator) and len(notes) == 2
    assert val.evaluator.path.startswith(str(SHIPPED_DIR))


def test_fashion_mnist_evaluator_ships_and_is_the_one_found(tmp_path):
    """The shipped file, not a cache or a fresh training, is the Fashion-MNIST ruler: every user's FIDs compare."""
    path = find_evaluator("fashion-mnist", (1, 28, 28))
    assert path == SHIPPED_DIR / "fashion-mnist-28x28x1.json"
    ev = get_evaluator("fashion-mnist", (1, 28, 28), max_seconds=0.001)  # found, so never trained
    assert ev.sha256 == "8b70ad0b059219fd2161596bdfaafb8fc616213d565e574bb81a1c89c2c1e29c"
    assert ev.meta["data"] == "fashion-mnist" and ev.meta["split"] == "train" and ev.num_classes == 10
    assert ev.meta["test_accuracy"] > 0.92 and ev.meta["test_size"] == 10_000
    assert (SHIPPED_DIR / "fashion-mnist-28x28x1.safetensors").stat().st_size < 1_000_000
    from genforge.data.sources import FASHION_DIR  # the data set itself is an optional Debian package

    if FASHION_DIR.is_dir():  # and it was trained on exactly the split genforge makes
        assert ev.meta["train_sha256"] == data_sha256(load_splits("fashion-mnist").train.x)


def test_unlabelled_data_cannot_make_an_evaluator(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    np.savez(tmp_path / "u.npz", x=np.random.default_rng(0).integers(0, 255, (40, 28, 28), dtype=np.uint8))
    with pytest.raises(GenforgeError, match="no class labels"):
        get_evaluator(f"npz:{tmp_path / 'u.npz'}", (1, 28, 28))


# ----------------------------------------------------------------------------------------- the metrics


def test_identical_sets_score_perfectly(test_features):
    f = test_features
    assert fid(f, f) < 1e-6
    assert precision_recall(f, f) == (1.0, 1.0)
    density, coverage = density_coverage(f, f)
    # each real ball holds its centre and its k nearest neighbours: (k + 1) / k when the sets are the same
    assert coverage == 1.0 and density == pytest.approx((scores.DC_K + 1) / scores.DC_K)


def test_noise_scores_far_from_real_data(evaluator, splits, test_features):
    noise = np.random.default_rng(0).integers(0, 256, (500, 28, 28, 1), dtype=np.uint8)
    f = evaluator.features(noise)
    real = evaluator.features(splits.val.x)
    assert fid(test_features, f) > 50 * fid(test_features, real)
    precision, recall = precision_recall(test_features, f)
    assert recall < 0.02 and precision < 0.02
    assert kid(test_features, f, subsets=5)[0] > 100 * abs(kid(test_features, real, subsets=5)[0])


def test_one_repeated_image_is_caught_by_recall(evaluator, splits, test_features):
    collapsed = evaluator.features(np.repeat(splits.val.x[:1], 500, axis=0))
    precision, recall = precision_recall(test_features, collapsed)
    assert recall < 0.02 and precision == 1.0  # a real-looking image, but only one
    _, coverage = density_coverage(test_features, collapsed)
    assert coverage < 0.05
    assert scores.class_entropy(evaluator.features_and_probs(np.repeat(splits.val.x[:1], 10, axis=0))[1]) == 0.0


def test_more_blur_gives_larger_fid_step_by_step(evaluator, splits, test_features):
    fids = [fid(test_features, evaluator.features(_blur(splits.val.x, r))) for r in (0, 0.5, 1.0, 1.5, 2.0)]
    assert all(a < b for a, b in itertools.pairwise(fids)), fids


def test_fid_agrees_with_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) + 0.5
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real  # the pytorch-fid route
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    # and a singular covariance (fewer samples than dimensions) is no problem for the eigenvalue route
    c = rng.normal(size=(10, 24))
    assert np.isfinite(fid(a, c)) and fid(a, c) > 0


def test_kid_is_unbiased_and_reports_its_spread(evaluator, splits, test_features):
    real = evaluator.features(splits.val.x)
    mean, std = kid(test_features, real, subsets=20, subset_size=200)
    assert abs(mean) < 3 * std + 1e-9 and std > 0  # same distribution: around zero, either sign


def test_inception_score_is_high_for_real_digits_and_robust_to_order(evaluator, splits):
    probs = evaluator.features_and_probs(splits.test.x)[1]
    order = np.argsort(splits.test.y, kind="stable")  # sorted by class, as data sets often are
    is_mean, _ = scores.inception_score(probs[order])
    assert is_mean > 8.5 and scores.class_entropy(probs) > 0.99 * np.log(10)


def test_metrics_refuse_too_few_samples():
    f = np.random.default_rng(0).normal(size=(3, 8))
    with pytest.raises(GenforgeError, match="needs at least 4 samples"):
        precision_recall(f, f)
    with pytest.raises(GenforgeError, match="FID needs at least 2"):
        fid(f[:1], f)


# ------------------------------------------------------------------------------------ evaluation runs


def test_eval_npz_prints_real_row_and_writes_hashed_json(tmp_path, splits, evaluator, capsys):
    samples = tmp_path / "s.npz"
    pick = np.random.default_rng(0).choice(len(splits.val), 300, replace=False)  # the split is sorted by class
    np.savez(samples, x=splits.val.x[pick, ..., 0], y=splits.val.y[pick])
    out = tmp_path / "r.json"
    assert main(["eval", str(samples), "--data", "mnist5k", "--out", str(out), "--seed", "3", "--no-cas"]) == 0
    table = capsys.readouterr().out
    assert "real data (train subset vs test)" in table and "samples (seed 3)" in table and "match" in table
    result = json.loads(out.read_text())
    assert result["evaluator"]["weights_sha256"] == evaluator.sha256
    assert result["n"] == 300 and result["seed"] == 3 and result["rows"]["real"]["n"] == 300
    assert result["rows"]["samples"]["class_match"] > 0.95
    # real held-out digits score near the real-data reference
    assert result["rows"]["samples"]["fid"] < 1.5 * result["rows"]["real"]["fid"]


def test_eval_model_defaults_to_its_data(tmp_path, tiny_config, capsys):
    from genforge.training import train

    train(tiny_config("vae-mlp", max_steps=2, checkpoint_every=2), tmp_path / "run", quiet=True)
    result = evaluate(tmp_path / "run", data="mnist5k", n=60, seed=1, progress=False)
    assert result["kind"] == "model" and result["model"]["step"] == 2 and result["rows"]["samples"]["n"] == 60
    assert any("fewer than the 128 feature dimensions" in note for note in result["notes"])
    assert main(["eval", str(tmp_path / "run"), "--n", "8", "--data", "mnist5k"]) == 0
    assert "real data" in capsys.readouterr().out


def test_results_from_different_evaluators_are_never_compared(tmp_path, splits, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, x=splits.val.x[:100, ..., 0])
    first = tmp_path / "a.json"
    assert main(["eval", str(samples), "--data", "mnist5k", "--out", str(first)]) == 0
    result = json.loads(first.read_text())
    assert compare(result, result) == []
    other = json.loads(first.read_text())
    other["evaluator"]["weights_sha256"] = "0" * 64
    with pytest.raises(GenforgeError, match="different evaluators"):
        compare(result, other)
    (tmp_path / "b.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["eval", str(samples), "--data", "mnist5k", "--baseline", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "different evaluators" in err and len(err.strip().splitlines()) == 1


def _npz(tmp_path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((50, 784), np.uint8)}, "expected (N, H, W) or (N, H, W, C)"),
    ({"x": np.zeros((50, 28, 28, 2), np.uint8)}, "expected (N, H, W) or (N, H, W, C)"),
    ({"x": np.full((50, 28, 28), 0.5, np.float32)}, "must be uint8 images 0-255"),
    ({"x": np.full((50, 28, 28), 300, np.int64)}, "values from 300 to 300"),
    ({"x": np.where(np.eye(28)[None] > 0, np.nan, 0.5).repeat(50, 0).astype(np.float32)}, "NaN or infinite"),
    ({"x": np.zeros((50, 28, 28), bool)}, "dtype bool"),
    ({"x": np.zeros((5, 28, 28), np.uint8)}, "needs at least 6 samples"),
    ({"x": np.zeros((50, 28, 28), np.uint8), "y": np.arange(40)}, "y has shape (40,) for 50 samples"),
    ({"x": np.zeros((50, 28, 28), np.uint8), "y": np.full(50, 12)}, "labels from 12 to 12"),
    ({"images": np.zeros((50, 28, 28), np.uint8)}, "no array named 'x'"),
])
def test_bad_samples_are_one_clear_error(tmp_path, capsys, arrays, message):
    assert main(["eval", _npz(tmp_path, **arrays), "--data", "mnist5k", "--no-cas"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_eval_cli_errors(tmp_path, capsys):
    path = _npz(tmp_path, x=np.zeros((50, 28, 28), np.uint8))
    assert main(["eval", path]) == 2
    assert "give --data SPEC" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.npz"), "--data", "mnist5k"]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "pickle.npz").write_bytes(b"not a zip")
    assert main(["eval", str(tmp_path / "pickle.npz"), "--data", "mnist5k"]) == 2
    assert "not an .npz archive" in capsys.readouterr().err
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 3, dtype=object))
    assert main(["eval", str(tmp_path / "obj.npz"), "--data", "mnist5k"]) == 2
    assert "pickle" in capsys.readouterr().err


def test_check_images_accepts_grey_and_integer_pixels_of_the_right_shape():
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    out = check_images(x.astype(np.int32), "t", (1, 28, 28))
    assert out.dtype == np.uint8 and out.shape == (2, 28, 28, 1) and (out[..., 0] == x).all()
    with pytest.raises(GenforgeError, match="samples are 32x32 with 1 channel"):
        check_images(np.zeros((2, 32, 32), np.uint8), "t", (1, 28, 28))
    with pytest.raises(GenforgeError, match="with 3 channel"):
        check_images(np.zeros((2, 28, 28, 3), np.uint8), "t", (1, 28, 28))


def test_cas_tells_real_labels_from_shuffled(evaluator, splits):
    pick = np.random.default_rng(0).choice(len(splits.train), 256, replace=False)
    x, y = splits.train.x[pick], splits.train.y[pick]
    shuffled = np.random.default_rng(0).permutation(y)
    sub = slice(0, 200)
    good = cas(evaluator, x, y, splits.test.x[sub], splits.test.y[sub], steps=40)
    bad = cas(evaluator, x, shuffled, splits.test.x[sub], splits.test.y[sub], steps=40)
    assert good["generated"] > bad["generated"] + 0.3 and good["real"] == evaluator.meta["test_accuracy"]


# ---------------------------------------------------------------------------------- during training


def test_training_evaluator_scores_quickly(splits):
    val = TrainingEvaluator("mnist5k", splits.val.x, splits.image_shape, n=2000, seed=0)
    images = splits.train.x[np.random.default_rng(0).choice(len(splits.train), 2000, replace=False)]
    t0 = time.perf_counter()
    out = val(images[..., 0])
    elapsed = time.perf_counter() - t0
    assert set(out) >= {"val_fid", "val_kid", "val_precision", "val_recall", "val_density", "val_coverage"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert out["val_recall"] > 0.7 and out == val(images)  # same images, same scores
    assert elapsed < 10  # ~1-2 s on two cores; generous for a shared CI machine
    noise = np.random.default_rng(1).integers(0, 256, (2000, 28, 28), dtype=np.uint8)
    assert val(noise)["val_fid"] > 20 * out["val_fid"]
    assert len(val.evaluator_sha256) == 64
    with pytest.raises(GenforgeError, match="NaN"):
        val(np.full((2000, 28, 28), np.nan, np.float32))


# ----------------------------------------------------------------------------------------------- report


def test_report_is_one_self_contained_page(tmp_path, tiny_config, capsys):
    from genforge.training import train

    run = tmp_path / "run"
    train(tiny_config("dcgan", max_steps=4, sample_every=2), run, quiet=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "val_fid": 12.5, "val_recall": 0.4}) + "\n")
        f.write('{"step": 5, "loss_d": 0.')  # a line cut short by a crash
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # losses, validation, images/s, the sample grid
    assert "Validation scores" in page and "step_00000004.png" in page and "model: dcgan" in page
    assert "1 unreadable line(s) skipped" in page
    # self-contained: nothing fetched from anywhere. The embedded pictures' base64 can spell "http" by chance
    # (case-insensitively, about one 30 KB blob in twenty), so they are taken out before looking
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in text.lower().replace("http-equiv", "")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "run directory not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- Inception hook


def test_inception_weights_are_checked_and_loaded_safely(tmp_path):
    from genforge.metrics.inception import FIDInceptionV3, inception_features, load_inception

    torch.manual_seed(0)
    net = FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # torchvision Inception3, 1008 classes, no aux
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception.pth")
    loaded, sha = load_inception(tmp_path / "pt_inception.pth")
    assert len(sha) == 64
    assert inception_features(loaded, np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 2048)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelFileError, match="not the pytorch-fid FID Inception weights"):
        load_inception(tmp_path / "wrong.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    (tmp_path / "evil.pth").write_bytes(buf.getvalue())
    with pytest.raises(ModelFileError, match="not a PyTorch state dict of plain tensors"):
        load_inception(tmp_path / "evil.pth")
    with pytest.raises(ModelFileError, match="genforge downloads nothing"):
        load_inception(tmp_path / "missing.pth")
