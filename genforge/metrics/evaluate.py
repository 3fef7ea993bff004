"""Scoring samples: ``evaluate`` (what ``genforge eval`` runs), the real-data reference row, CAS, tables.

Every score is computed in one evaluator's feature space and carries that evaluator's SHA-256; results
from different evaluators are refused by :func:`compare` rather than set side by side. Every table has a
reference row: the same metrics for real images (a random train subset against the test split), so
"FID 4.1" always reads as "FID 4.1 where real data scores 0.3".
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from genforge.data.npz import read_npz_arrays
from genforge.data import load_splits
from genforge.devices import pick
from genforge.errors import GenforgeError
from genforge.generation import sample
from genforge.generation.model import load as load_model
from genforge.io import read_json
from genforge.modalities import MODALITIES
from genforge.metrics import scores
from genforge.metrics import series as series_eval
from genforge.metrics.evaluator_net import (Evaluator, TrainRecipe, accuracy, data_sha256, get_evaluator,
                                            train_classifier)
from genforge.metrics.inception import inception_fid
from genforge.version import __version__

FORMAT = "genforge-eval"
FORMAT_VERSION = 1
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
MAX_EVAL_SAMPLES = 200_000

# column key, header, format; the order of the table and of the JSON
COLUMNS = [("fid", "FID", "{:.2f}"), ("kid", "KID", "{:.4g}"), ("precision", "prec", "{:.3f}"),
           ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("is", "IS", "{:.2f}"), ("class_entropy", "class H", "{:.3f}"), ("class_match", "match", "{:.3f}")]


# ------------------------------------------------------------------------------------------ input checks


def check_images(x, where: str, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """uint8 (n, h, w, c) from uint8 (n, h, w) or (n, h, w, c), or a clear error naming ``where``.

    Integer arrays within 0-255 are taken as they are; floats are refused (with a hint), NaN or infinite
    values are named as such, since they mean a diverged generator rather than a format slip.
    """
    if not isinstance(x, np.ndarray):
        raise GenforgeError(f"{where}: expected a numpy array of images, got {type(x).__name__}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise GenforgeError(f"{where}: x has shape {x.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if 0 in x.shape[:3]:
        raise GenforgeError(f"{where}: x has shape {x.shape}: no images, or images without pixels")
    if x.dtype.kind == "f":
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            raise GenforgeError(f"{where}: {int((~finite).sum())} of {len(x)} samples hold NaN or infinite values "
                                f"(first at index {int(np.argmin(finite))}): the generator diverged or the file "
                                "is corrupt")
        raise GenforgeError(f"{where}: x is {x.dtype} with values from {x.min():.4g} to {x.max():.4g}; samples "
                            "must be uint8 images 0-255 (from floats in [0, 1]: (x * 255).round().astype(np.uint8))")
    if x.dtype.kind not in "ui":
        raise GenforgeError(f"{where}: x has dtype {x.dtype}; samples must be uint8 images 0-255")
    if x.dtype != np.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise GenforgeError(f"{where}: x ({x.dtype}) holds values from {lo} to {hi}; pixel values must be "
                                "0-255 (uint8)")
        x = x.astype(np.uint8)
    x = x[..., None] if x.ndim == 3 else x
    if image_shape is not None and (x.shape[3], x.shape[1], x.shape[2]) != tuple(image_shape):
        c, h, w = image_shape
        raise GenforgeError(f"{where}: samples are {x.shape[1]}x{x.shape[2]} with {x.shape[3]} channel(s); the "
                            f"data and its evaluator are {h}x{w} with {c}")
    return x


def check_labels(y, n: int, num_classes: int, where: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.ndim != 1 or len(y) != n or y.dtype.kind not in "ui":
        raise GenforgeError(f"{where}: y must be integer class labels of shape ({n},), got "
                            f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise GenforgeError(f"{where}: y holds labels from {y.min()} to {y.max()}; the evaluator knows classes "
                            f"0 to {num_classes - 1}")
    return y.astype(np.int64)


def _is_series(data: str) -> bool:
    """Whether a data spec's prefix is a series source (an image spec, "mnist5k", has no prefix to match)."""
    return data.strip().partition(":")[0] in MODALITIES["series"].sources


def read_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` and optional ``y`` from an npz of samples (encrypted or not), read as training data is: each
    header checked and charged to the data budget before its array is read (:mod:`genforge.data.npz`)."""
    path = Path(path)
    if not path.is_file():
        raise GenforgeError(f"samples file not found: {path}")
    arrays = read_npz_arrays(path, ("x", "y"), "the samples")
    return arrays["x"], arrays.get("y")


# ---------------------------------------------------------------------------------------------- scoring


def score_features(real_f: np.ndarray, fake_f: np.ndarray, fake_p: np.ndarray, fake_y: np.ndarray | None = None,
                   seed: int = 0, kid_subsets: int = KID_SUBSETS) -> dict:
    """Every metric of ``fake`` against ``real``, from features (and the fakes' class probabilities).

    FID and KID use all samples. Precision/recall and density/coverage use equal-sized random subsets
    (m = the smaller set), as both papers do: their k-NN radii shrink as a set grows, so unequal sizes
    would move the scores.
    """
    scores.need(len(fake_f), scores.DC_K + 1, "precision/recall and density/coverage")
    scores.need(len(real_f), scores.DC_K + 1, "precision/recall and density/coverage")
    rng = np.random.default_rng(seed)
    m = min(len(real_f), len(fake_f))
    real_m = real_f[np.sort(rng.choice(len(real_f), m, replace=False))] if len(real_f) > m else real_f
    fake_m = fake_f[np.sort(rng.choice(len(fake_f), m, replace=False))] if len(fake_f) > m else fake_f
    kid, kid_std = scores.kid(real_f, fake_f, subsets=kid_subsets, subset_size=KID_SUBSET_SIZE, seed=seed)
    precision, recall = scores.precision_recall(real_m, fake_m)
    density, coverage = scores.density_coverage(real_m, fake_m)
    is_mean, is_std = scores.inception_score(fake_p)
    out = {"n": len(fake_f), "fid": scores.fid(real_f, fake_f), "kid": kid, "kid_std": kid_std,
           "precision": precision, "recall": recall, "density": density, "coverage": coverage, "pr_dc_n": m,
           "is": is_mean, "is_std": is_std, "class_entropy": scores.class_entropy(fake_p)}
    if fake_y is not None:
        out["class_match"] = scores.class_match(fake_p, fake_y)
    return out


def cas(evaluator: Evaluator, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
        seed: int = 0, steps: int | None = None, progress: bool = False) -> dict:
    """Classification accuracy score (Ravuri and Vinyals 2019): a classifier trained on generated samples only,
    tested on the real test split, beside the same classifier trained on the real train split.

    "The same classifier" is the evaluator: same network, same recipe (steps, augmentation), only the data
    differs; its test accuracy is the real-data figure. ``steps`` overrides the recipe's (for quick checks;
    the two figures are then no longer like for like). The classifier trains on the evaluator's device.
    """
    recipe = TrainRecipe(**{**evaluator.meta.get("train_recipe", {}), "seed": seed})
    if steps is not None:
        recipe = dataclasses.replace(recipe, steps=steps)
    net = train_classifier(x, y, evaluator.num_classes, recipe, tuple(evaluator.meta["widths"]), progress,
                           desc="CAS classifier", device=evaluator.device)
    return {"generated": accuracy(net, test_x, test_y), "real": evaluator.meta["test_accuracy"],
            "n_generated": len(x), "n_real": evaluator.meta.get("train_size"), "steps": recipe.steps,
            "test_size": len(test_x)}


def _sample_model(model, n: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The one sampling function every entry point calls; conditional models cycle through every class.

    A cluster-guided model is scored as the unconditional model it is: its clusters are not classes, so
    no labels come back (no class match, no CAS)."""
    samples = sample(model, n, seed=seed, progress=progress)
    return samples.x, model.class_labels(samples)


def evaluate(source, data: str | None = None, n: int = 10000, seed: int = 0, inception_weights: str | None = None,
             with_cas: bool = True, baseline: dict | None = None, progress: bool = True, bars: bool | None = None,
             device: str = "cpu") -> dict:
    """Score a model (a run or model directory, or a loaded model) or an npz of samples against real test data.

    Returns the JSON-ready result: the evaluator's identity and hash, the sample count and seed, a row for
    the samples and a reference row for real data (a random train subset of the same size, at most the whole
    train split, against the test split), CAS when the samples have labels, notes on anything to keep in
    mind. ``baseline``: an earlier result (see :func:`load_result`); one from another evaluator or other
    reference data is refused before any scoring, and its notes join this result's.

    ``progress``: say what is being done on stderr; ``bars``: progress bars there too, for sampling, features
    and CAS (default: when ``progress`` and stderr is a terminal). ``device``: where the model and the
    evaluator run (auto, cpu, cuda, cuda:N, mps; see :func:`genforge.devices.pick`); an evaluator that has
    to be trained first trains on the CPU, so that it is the same ruler everywhere.
    """
    bars = (progress and sys.stderr.isatty()) if bars is None else bool(bars)
    dev = pick(device)
    def say(text: str) -> None:
        if progress:
            print(f"genforge: {text}", file=sys.stderr)

    if isinstance(n, bool) or not isinstance(n, int) or not scores.DC_K < n <= MAX_EVAL_SAMPLES:
        raise GenforgeError(f"--n must be an integer from {scores.DC_K + 1} to {MAX_EVAL_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GenforgeError(f"--seed must be a non-negative integer, got {seed!r}")
    model = None
    if isinstance(source, (str, Path)) and str(source).endswith(".npz") and data and _is_series(data):
        x, y = read_samples(source)  # float (N, C, T) series in the data's units: the series scores
        return series_eval.evaluate_series_model(None, data, n, seed, x=x, y=y, source=str(source), say=say)
    if isinstance(source, (str, Path)) and str(source).endswith(".npz"):
        if not data:
            raise GenforgeError(f"{source}: give --data SPEC, the real data these samples should be scored against")
        x, y = read_samples(source)
        x = check_images(x, str(source))
        kind, what, n = "npz", str(source), len(x)
        if y is not None and (y.ndim != 1 or len(y) != n):
            raise GenforgeError(f"{source}: y has shape {y.shape} for {n} samples; expected one label per sample, "
                                f"shape ({n},)")
        scores.need(n, scores.DC_K + 1, "precision/recall and density/coverage")
    else:
        model = load_model(source, device=dev) if isinstance(source, (str, Path)) else source
        data = data or model.meta.get("data")
        if not data:
            raise GenforgeError(f"{model.path}: the model does not say what data it was trained on; give --data SPEC")
        if model.modality.name == "series":  # sensor series have their own scores (genforge.metrics.series)
            return series_eval.evaluate_series_model(model, data, n, seed, say=say)
        kind, what = "model", str(model.path)
        say(f"sampling {n} images from {model.path} (seed {seed})")
        x, y = _sample_model(model, n, seed, bars)
        x = check_images(x, f"{model.path} samples")

    shape = (x.shape[3], x.shape[1], x.shape[2])
    evaluator = get_evaluator(data, shape, progress=progress, bars=bars).to(dev)
    if y is not None:
        y = check_labels(y, n, evaluator.num_classes, what)
    splits = load_splits(data, image_size=shape[1], channels=shape[0])
    test, train = splits.test, splits.train
    result = {"format": FORMAT, "format_version": FORMAT_VERSION, "genforge_version": __version__,
              "evaluator": evaluator.identity(), "source": what, "kind": kind, "data": data,
              "reference": {"split": "test", "size": len(test)}, "n": n, "seed": seed}
    notes = compare(result, baseline) if baseline is not None else []  # refuse a mismatch before any work
    if model is not None:
        result["model"] = {"name": model.name, "step": model.meta.get("step"),
                           "weights_sha256": model.meta.get("weights_sha256")}
    if evaluator.meta.get("train_sha256") not in (None, data_sha256(train.x)):
        notes.append(f"the train split of {data} differs from the one the evaluator was trained on: scores stay "
                     "comparable with others from this evaluator, but its quoted test accuracy may not hold")
    n_ref = min(n, len(train))
    ref_idx = np.sort(np.random.default_rng(seed).choice(len(train), n_ref, replace=False))
    ref_x = train.x[ref_idx]
    ref_y = train.y[ref_idx] if y is not None else None  # class match of real data: the evaluator's agreement
    if n < evaluator.meta["feature_dim"]:
        notes.append(f"{n} samples is fewer than the {evaluator.meta['feature_dim']} feature dimensions: "
                     "FID is strongly biased upward at this size; use --n 2000 or more")
    if n != n_ref:
        notes.append(f"the real-data row uses all {n_ref} train images (there are no more); FID and KID of "
                     f"{n} samples are compared with it")

    say(f"scoring {n} samples against the {data} test split ({len(test)} images) with evaluator "
        f"{evaluator.name} ({evaluator.sha256[:12]})")
    t0 = time.perf_counter()
    test_f = evaluator.features(test.x, progress=bars, desc="features: test split")
    fake_f, fake_p = evaluator.features_and_probs(x, progress=bars, desc="features: samples")
    ref_f, ref_p = evaluator.features_and_probs(ref_x, progress=bars, desc="features: real subset")
    with scores.one_blas_thread():
        result["rows"] = {"samples": score_features(test_f, fake_f, fake_p, y, seed),
                          "real": score_features(test_f, ref_f, ref_p, ref_y, seed)}
    say(f"scored in {time.perf_counter() - t0:.1f} s")
    result.update({"cas": None, "inception": None, "notes": notes})
    if y is not None and with_cas:
        say(f"CAS: training a classifier on the {n} generated samples only (the evaluator's recipe)")
        result["cas"] = cas(evaluator, x, y, test.x, test.y, seed, progress=bars)
    if inception_weights is not None:
        say(f"Inception-v3 FID with {inception_weights} (slow on a CPU: about 6 GFLOP per image)")
        result["inception"] = inception_fid(inception_weights, test.x, x, ref_x)
    return result


# ------------------------------------------------------------------------------ results: read, compare, print


def load_result(path: str | Path) -> dict:
    """Read the JSON that ``genforge eval --json`` wrote, checking that it is one."""
    path = Path(path)
    result = read_json(path, GenforgeError, missing="eval result not found")
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise GenforgeError(f"{path}: not a genforge eval result (write one with genforge eval ... --json FILE)")
    sha = result.get("evaluator", {}).get("weights_sha256") if isinstance(result.get("evaluator"), dict) else None
    if not isinstance(sha, str) or not isinstance(result.get("rows"), dict):
        raise GenforgeError(f"{path}: eval result without an evaluator hash or rows; it cannot be compared")
    result["loaded_from"] = str(path)  # for messages; not part of what eval writes
    return result


def compare(result: dict, baseline: dict) -> list[str]:
    """Check that two results may stand side by side; return notes on what still differs.

    Scores from different evaluators live on different scales, so a hash mismatch is an error, never a
    footnote. Different reference data is an error too; a different sample count is a note (FID and KID
    depend on it).
    """
    baseline_name = baseline.get("loaded_from", "the baseline")
    ours, theirs = result["evaluator"]["weights_sha256"], baseline["evaluator"]["weights_sha256"]
    if ours != theirs:
        raise GenforgeError(f"{baseline_name} was scored with evaluator {baseline['evaluator'].get('name')} "
                            f"({theirs[:12]}), this eval with {result['evaluator']['name']} ({ours[:12]}): scores "
                            "from different evaluators are on different scales and are not compared")
    if result.get("data") != baseline.get("data") or result.get("reference") != baseline.get("reference"):
        raise GenforgeError(f"{baseline_name} was scored against {baseline.get('data')} "
                            f"({baseline.get('reference')}), this eval against {result.get('data')} "
                            f"({result.get('reference')}): not the same reference data")
    notes = []
    if result.get("n") != baseline.get("n"):
        notes.append(f"{baseline_name} scored {baseline.get('n')} samples, this eval {result.get('n')}: FID and "
                     "KID shift with the sample count")
    return notes


def _row(label: str, row: dict, columns) -> str:
    cells = [f"{label:<34}", f"{row.get('n', ''):>7}"]
    for key, _, fmt in columns:
        value = row.get(key)
        cells.append(f"{fmt.format(value) if isinstance(value, (int, float)) else '-':>9}")
    return " ".join(cells)


def format_table(result: dict, baseline: dict | None = None) -> str:
    """The printable table: the samples row, the real-data reference row (and a baseline row), CAS, notes."""
    if result.get("format") == series_eval.EVAL_FORMAT:
        return series_eval.format_series_table(result)
    ev, rows = result["evaluator"], result["rows"]
    s, r = rows["samples"], rows["real"]
    columns = [c for c in COLUMNS if c[0] != "class_match" or "class_match" in s]
    what = result["source"]
    if result.get("model"):
        what += f" ({result['model']['name']}, step {result['model'].get('step')})"
    table = [f"{what} against the {result['data']} test split ({result['reference']['size']} images)",
             f"evaluator {ev['name']}  sha256 {ev['weights_sha256'][:16]}  test accuracy "
             f"{100 * ev['test_accuracy']:.2f}%", "",
             " ".join([f"{'':<34}", f"{'n':>7}"] + [f"{h:>9}" for _, h, _ in columns]),
             _row(f"samples (seed {result['seed']})", s, columns)]
    if baseline is not None:
        table.append(_row(baseline.get("loaded_from", "baseline")[-34:], baseline["rows"]["samples"], columns))
    table.append(_row("real data (train subset vs test)", r, columns))
    prose = [f"Features: the evaluator's penultimate layer. KID std over subsets {s['kid_std']:.3g} (real "
             f"{r['kid_std']:.3g}); precision/recall k={scores.PR_K} and density/coverage k={scores.DC_K} on "
             f"{s['pr_dc_n']} points a side; IS and class H (entropy of predicted classes, max "
             f"{np.log(ev['num_classes']):.3f}) use the evaluator as classifier"
             + ("; match: share classified as the class asked for." if "class_match" in s else ".")]
    if result.get("cas"):
        c = result["cas"]
        prose.append(f"CAS (Ravuri and Vinyals 2019): a classifier trained on the {c['n_generated']} generated "
                     f"samples scores {100 * c['generated']:.2f}% on the real test split; the same classifier "
                     f"trained on {c['n_real']} real train images scores {100 * c['real']:.2f}%.")
    if result.get("inception"):
        i = result["inception"]
        prose.append(f"Inception-v3 FID ({i['weights']}): samples {i['fid']:.2f}, real data {i['fid_real']:.2f}.")
    prose += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(table + [""] + [textwrap.fill(p, 110, subsequent_indent="  ") for p in prose]) + "\n"
