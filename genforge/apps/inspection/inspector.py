"""Quality inspection by anomaly detection: learn what normal images look like, flag what does not fit.

    from genforge.apps import inspection
    normal = inspection.load_normal("fashion-mnist", normal_classes=["Sneaker"])
    det = inspection.fit("vae", normal.train, normal.val, fpr=0.05)   # fit on normal images only
    inspection.save(det, "detectors/sneaker")                          # detector.safetensors + detector.json
    det = inspection.load("detectors/sneaker")
    result = det.score(images)   # uint8 (n, h, w[, c]): result.score (n,), result.anomaly (n,), result.residual

The detectors (``inspection_detectors.py``) share one interface; this module holds what is common to
them: the decision threshold, chosen on a validation split of NORMAL images at a target false-positive
rate (never on test images, whose labels a factory does not have), the score statistics stored with the
model, the shape checks, and the files. A reloaded detector scores bit for bit as the one that was fitted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge.apps.inspection.detectors import DETECTORS
from genforge.data import load_splits, to_tensor
from genforge.devices import pick
from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.io import read_json
from genforge.models.files import read_weights, write_weights
from genforge.version import __version__

FORMAT = "genforge-detector"
FORMAT_VERSION = 1
WEIGHTS = "detector.safetensors"
CONFIG = "detector.json"
DEFAULT_FPR = 0.05


@dataclass(eq=False)
class Scored:
    """What a detector says about each image."""

    score: np.ndarray      # float64 (n,): higher is more anomalous
    anomaly: np.ndarray    # bool (n,): score above the detector's threshold
    residual: np.ndarray   # float32 (n, h, w): where the image differs from normal (channel mean)


@dataclass(eq=False)
class NormalData:
    """Normal images to fit on (train) and to choose the threshold on (val), from one data source."""

    train: np.ndarray                 # uint8 (n, h, w, c)
    val: np.ndarray                   # uint8 (m, h, w, c)
    spec: str
    normal_classes: list[int] | None  # None: the source is unlabelled, every image is normal
    class_names: list[str] | None


class Detector:
    """A fitted detector: the method (``inspection_detectors``), its threshold and the statistics of its
    scores on the normal validation images. Build with :func:`fit`, or :func:`load` a saved one."""

    def __init__(self, method, meta: dict, device=None):
        self.method = method
        self.meta = meta
        self.device = torch.device(device or "cpu")  # where score() computes; see to()

    def to(self, device: str = "cpu") -> "Detector":
        """Score on ``device``: auto, cpu, cuda, cuda:N or mps (:func:`genforge.devices.pick`)."""
        self.device = pick(device) if isinstance(device, str) else torch.device(device)
        self.method.to(self.device)
        return self

    @property
    def name(self) -> str:
        return self.meta["detector"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def threshold(self) -> float:
        return self.meta["threshold"]

    def score(self, images: np.ndarray) -> Scored:
        """Score uint8 images (n, h, w) or (n, h, w, c) of the size and channel count the detector was fit on."""
        x = as_tensor(images, self.image_shape).to(self.device)
        score, residual = self.method.score(x)
        return Scored(score, score > self.threshold, residual)

    def __repr__(self) -> str:
        return (f"Detector({self.name}, image_shape={self.image_shape}, threshold={self.threshold:.6g}, "
                f"target_fpr={self.meta['target_fpr']})")


# ------------------------------------------------------------------------------------------------ inputs


def _shape_str(shape) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


def as_tensor(images: np.ndarray, image_shape: tuple[int, int, int] | None = None,
              what: str = "images") -> torch.Tensor:
    """uint8 (n, h, w) or (n, h, w, c) -> float32 (n, c, h, w) in [0, 1], checked against ``image_shape``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{what}: expected uint8 images (n, h, w) or (n, h, w, c), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")
    x = images[..., None] if images.ndim == 3 else images
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    shape = (x.shape[3], x.shape[1], x.shape[2])
    if image_shape is not None and shape != tuple(image_shape):
        raise DataError(f"{what} are {_shape_str(shape)} (h x w x channels), but the detector was fit on "
                        f"{_shape_str(image_shape)} images: give images of that size and channel count")
    return to_tensor(np.ascontiguousarray(x), "0,1")


def resolve_classes(names: list[str] | None, wanted: list[str | int], spec: str) -> list[int]:
    """Class indices from indices or names (``3`` or ``"Dress"``); unknown ones are an error naming them."""
    if names is None:
        raise DataError(f"{spec}: has no class labels, so there is no class to pick; leave out "
                        "--normal-class to treat every image as normal")
    out = []
    for item in wanted:
        text = str(item).strip()
        if text in names:
            out.append(names.index(text))
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            out.append(int(text))
        else:
            raise DataError(f"{spec}: no class {text!r}; classes are 0..{len(names) - 1}: {', '.join(names)}")
    return sorted(set(out))


def load_normal(spec: str, normal_classes: list[str | int] | None = None,
                anomaly_classes: list[str | int] | None = None, *, image_size: int = 28, channels: int = 0,
                max_train: int = 0, seed: int = 0, splits=None) -> NormalData:
    """The normal images of data ``spec`` (any ``genforge.data.load_splits`` source), train and val splits.

    normal_classes: keep these classes (indices or names); anomaly_classes: keep all classes but these
    (the one-class-out protocol). Neither: every image is normal. max_train > 0 keeps a seeded random
    subset of that many training images. ``splits``: the result of ``load_splits`` when the caller has it.
    """
    if normal_classes and anomaly_classes:
        raise GenforgeError("give normal classes or anomaly classes, not both")
    splits = splits or load_splits(spec, image_size=image_size, channels=channels, seed=seed)
    classes = None
    if normal_classes or anomaly_classes:
        picked = resolve_classes(splits.class_names, list(normal_classes or anomaly_classes), spec)
        classes = picked if normal_classes else [c for c in range(splits.num_classes) if c not in picked]
        if not classes:
            raise DataError(f"{spec}: no class is left as normal once {anomaly_classes} are taken out")
    train, val = splits.train, splits.val
    keep_train = np.isin(train.y, classes) if classes is not None else np.ones(len(train), dtype=bool)
    keep_val = np.isin(val.y, classes) if classes is not None else np.ones(len(val), dtype=bool)
    x_train, x_val = train.x[keep_train], val.x[keep_val]
    if max_train and len(x_train) > max_train:
        pick = np.random.default_rng(seed).permutation(len(x_train))[:max_train]
        x_train = x_train[np.sort(pick)]
    return NormalData(x_train, x_val, spec, classes, splits.class_names)


# ------------------------------------------------------------------------------------------- threshold


def choose_threshold(val_scores: np.ndarray, fpr: float) -> float:
    """The smallest threshold that flags at most ``fpr`` of the normal validation scores (``score > t``).

    With n scores, floor(fpr * n) of them may lie above it: the threshold is the (n - floor(fpr * n))-th
    smallest score. Test images never enter here.
    """
    s = np.sort(np.asarray(val_scores, dtype=np.float64))
    allowed = math.floor(fpr * len(s) + 1e-9)
    return float(s[len(s) - 1 - allowed])


def score_stats(scores: np.ndarray) -> dict:
    q = np.quantile(scores, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return {"n": len(scores), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max()),
            "quantiles": {k: float(v) for k, v in zip(("1", "5", "25", "50", "75", "95", "99"), q)}}


def _check_fit_inputs(name: str, train: np.ndarray, val: np.ndarray, fpr: float) -> None:
    if name not in DETECTORS:
        raise GenforgeError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if not (isinstance(fpr, (int, float)) and not isinstance(fpr, bool) and 0 < fpr < 1):
        raise GenforgeError(f"target false-positive rate must be in (0, 1), got {fpr!r}")
    for what, x in (("normal training images", train), ("normal validation images", val)):
        n = len(x) if hasattr(x, "__len__") else 0
        if n < 2:
            raise DataError(f"{what}: {n} image{'s' if n != 1 else ''}; a detector needs at least 2 normal "
                            "images to fit (and many more to be any good)")


def fit(name: str, train: np.ndarray, val: np.ndarray, *, fpr: float = DEFAULT_FPR, seed: int = 0,
        options: dict | None = None, log=None, data: dict | None = None, device: str = "cpu",
        progress: bool = False) -> Detector:
    """Fit detector ``name`` on normal ``train`` images and set its threshold on normal ``val`` images.

    train, val: uint8 (n, h, w) or (n, h, w, c), normal images only. fpr: the share of normal validation
    images allowed above the threshold. options: the detector's own (see ``inspection_detectors``), e.g.
    ``{"steps": 600}`` for ``vae``. data: what to record about where the images came from. device: where it
    fits (auto, cpu, cuda, cuda:N or mps); the batch order and seeds are the same on every device, the last
    bits of the weights are not. The fitted detector scores on the same device (:meth:`Detector.to`).
    progress: a bar over the training steps on stderr (vae, ganomaly).
    """
    _check_fit_inputs(name, train, val, fpr)
    dev = pick(device)
    x = as_tensor(train, what="normal training images")
    shape = tuple(x.shape[1:])
    x_val = as_tensor(val, shape, what="normal validation images").to(dev)
    x = x.to(dev)
    try:
        method = DETECTORS[name](shape, **(options or {}))
    except TypeError as e:
        raise GenforgeError(f"detector {name!r}: bad option ({e})") from None
    t0 = time.perf_counter()
    method.fit(x, seed=seed, log=log, progress=progress)
    fit_seconds = time.perf_counter() - t0
    val_scores, val_maps = method.score(x_val)
    threshold = choose_threshold(val_scores, fpr)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "detector": name,
            "options": method.options(), "image_shape": list(shape), "threshold": threshold,
            "target_fpr": float(fpr), "val_fpr": float((val_scores > threshold).mean()),
            "val_scores": score_stats(val_scores),
            # heat maps of every image share one colour scale: the 99.9th percentile of normal residual pixels
            "residual_scale": float(max(np.quantile(val_maps, 0.999), 1e-12)),
            "train_size": len(x), "seed": int(seed), "fit_seconds": round(fit_seconds, 2),
            "data": data or {}, "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": dev.type}
    return Detector(method, meta, dev)


# ------------------------------------------------------------------------------------------------ files


def save(detector: Detector, directory: str | Path) -> Path:
    """Write ``detector.safetensors`` and ``detector.json`` (threshold, statistics, SHA-256) atomically."""
    directory = Path(directory)
    meta = {**detector.meta, "options": detector.method.options(), "genforge_version": __version__}
    detector.meta = write_weights(directory / WEIGHTS, directory / CONFIG, detector.method.tensors(), meta, FORMAT,
                                  stamp=True)
    return directory


def load(directory: str | Path, device: str = "cpu") -> Detector:
    """Load a saved detector: JSON fields, safetensors header and SHA-256 checked before any tensor is used.
    ``device``: where it scores (auto, cpu, cuda, cuda:N or mps)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    path = directory / CONFIG
    meta = read_json(path, ModelFileError,
                     missing="missing (not a detector directory; make one with genforge inspect fit)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: not a genforge detector (format {FORMAT!r} version {FORMAT_VERSION})")
    checks = {"detector": str, "options": dict, "image_shape": list, "threshold": float, "target_fpr": float,
              "weights_sha256": str, "residual_scale": float}
    for key, typ in checks.items():
        if not isinstance(meta.get(key), typ):
            raise ModelFileError(f"{path}: field '{key}' missing or not a {typ.__name__}")
    if meta["detector"] not in DETECTORS:
        raise ModelFileError(f"{path}: unknown detector {meta['detector']!r}; this genforge has "
                             f"{', '.join(DETECTORS)}")
    shape = meta["image_shape"]
    if (len(shape) != 3 or shape[0] not in (1, 3)
            or not all(isinstance(s, int) and 4 <= s <= 4096 for s in shape[1:])):
        raise ModelFileError(f"{path}: field 'image_shape' must be [c, h, w], got {shape}")
    cls = DETECTORS[meta["detector"]]
    try:
        with torch.device("meta"):  # the expected tensors, without allocating them
            skeleton = cls(tuple(shape), **meta["options"])
        expected = skeleton.tensors()
    except (TypeError, ValueError, GenforgeError) as e:
        raise ModelFileError(f"{path}: field 'options' does not describe a {meta['detector']} detector ({e})") \
            from None
    tensors = read_weights(directory / WEIGHTS, path, meta, expected)
    method = cls(tuple(shape), **meta["options"])
    method.load_tensors(tensors)
    return Detector(method, meta).to(device)


# ---------------------------------------------------------------------------------------------- metrics


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (truth: True for anomalies); ties count half, as in the Mann-Whitney U statistic.

    NaN when only one kind of image is present (scikit-learn would raise: a summary row shows NaN instead).
    """
    from sklearn.metrics import roc_auc_score  # heavy import (~1-3 s with scipy): only when test labels are scored

    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, scores))


def roc_curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) from (0, 0) as the threshold falls through every distinct score."""
    from sklearn.metrics import roc_curve as sk_roc_curve  # heavy import (~1-3 s with scipy), as in auroc

    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():  # one rate is undefined (0 / 0): keep the plot's line flat at 0
        steps = len(np.unique(scores))
        rate = np.r_[0.0, np.ones(steps)]
        zero = np.zeros(steps + 1)
        return (zero, rate) if truth.all() else (rate, zero)
    fpr, tpr, _ = sk_roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr


def detection_counts(anomaly: np.ndarray, truth: np.ndarray) -> dict:
    """Confusion counts, precision, recall, F1 and false-positive rate of the thresholded decisions."""
    anomaly, truth = np.asarray(anomaly, dtype=bool), np.asarray(truth, dtype=bool)
    tp, fp = int((anomaly & truth).sum()), int((anomaly & ~truth).sum())
    fn, tn = int((~anomaly & truth).sum()), int((~anomaly & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
            "fpr": fp / (fp + tn) if fp + tn else 0.0}
