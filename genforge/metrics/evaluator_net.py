"""Evaluators: small frozen CNN classifiers whose penultimate layer is the feature space of every metric.

An FID computed on Inception features of 28x28 digits, or on some other
project's digit classifier, has no scale anyone else shares. genforge ships its
own evaluator per data set instead, trained on the train split only with a
fixed seed, stored as ``NAME.safetensors`` + ``NAME.json`` (data set, split,
test accuracy, SHA-256 of the weights), and every score carries that hash.

Where an evaluator comes from, in order: the package itself
(``genforge/metrics/evaluators/``: ``mnist5k`` and ``fashion-mnist``, so every
user of a bundled data set scores with the same file, whatever their CPU or
thread count), the cache (``$GENFORGE_CACHE/evaluators/``, else
``$XDG_CACHE_HOME/genforge/evaluators/``, ``~/.cache`` when unset), or it is trained on first use and written to
the cache. Training is never silent: :func:`get_evaluator` says so with an
estimate of the time (a few timed steps, scaled) and a progress bar, and a
caller with a time budget (``max_seconds``) gets :class:`EvaluatorUnavailable`
instead of a training longer than the budget.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from torch import nn
from torch.nn import functional as F

from genforge.data import augment, load_splits, to_tensor
from genforge.devices import pick
from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.io import cache_dir as cache_dir_of, read_json
from genforge.models.files import read_weights, write_weights

FORMAT = "genforge-evaluator"
FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).parent / "evaluators"
VALUE_RANGE = "-1,1"
FEATURE_DIM = 128


@dataclass(frozen=True)
class TrainRecipe:
    """How an evaluator (and the CAS classifier, which must match it) is trained."""

    steps: int = 0              # 0: chosen from the train split size, see steps_for()
    batch_size: int = 128
    lr: float = 2e-3            # Adam, cosine decay to 0
    weight_decay: float = 1e-4
    shift: int = 1              # augmentation: whole-pixel shifts only; no flips (digits and clothes are not
    rotate: float = 0.0         # mirror-symmetric), no rotation (it cost Fashion-MNIST ~1% accuracy)
    seed: int = 0

    def steps_for(self, n_train: int) -> int:
        """30 epochs, but at least 1,000 and at most 5,000 steps: ~20 s for mnist5k, ~2 min for Fashion-MNIST
        on two CPU cores."""
        if self.steps:
            return self.steps
        return int(min(5000, max(1000, math.ceil(30 * n_train / self.batch_size))))


class EvaluatorNet(nn.Module):
    """conv3x3-BN-ReLU-maxpool stages (widths 16, 32, 64, 64, ...), pooled to 3x3, then a 128-d embedding.

    Three stages for 28x28 and 32x32 inputs (28 -> 14 -> 7 -> 3); one more per doubling of the side, so
    the 3x3 adaptive pool only ever averages neighbouring cells. ``features`` is the penultimate layer.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, ...],
                 feature_dim: int = FEATURE_DIM):
        super().__init__()
        c_in = image_shape[0]
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(c_in, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=2)]
            c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3), nn.Flatten())  # (b, widths[-1] * 9)
        self.embed = nn.Sequential(nn.Linear(c_in * 9, feature_dim), nn.ReLU(inplace=True))  # (b, feature_dim)
        self.head = nn.Sequential(nn.Dropout(p=0.3), nn.Linear(feature_dim, num_classes))  # (b, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def default_widths(image_shape: tuple[int, int, int]) -> tuple[int, ...]:
    side = min(image_shape[1:])
    stages = max(3, math.ceil(math.log2(side)) - 2)
    return (16, 32) + (64,) * (stages - 2)


class Evaluator:
    """A frozen evaluator: the network in eval mode, its metadata (``meta``) and its weights hash.

    ``features(x)`` and ``features_and_probs(x)`` take uint8 images (n, h, w) or (n, h, w, c) and return
    float64 numpy arrays.
    """

    def __init__(self, net: EvaluatorNet, meta: dict, path: str = ""):
        self.net = net.eval().requires_grad_(False)
        self.meta = meta
        self.path = path

    @property
    def sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def identity(self) -> dict:
        """What travels with every score: which ruler measured it."""
        keys = ("name", "data", "image_shape", "num_classes", "weights_sha256", "test_accuracy", "test_size")
        return {k: self.meta[k] for k in keys}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Evaluator":
        """Run the network on ``device`` (a torch.device or name); features still come back as numpy."""
        self.net.to(device)
        return self

    @torch.inference_mode()
    def _run(self, x: np.ndarray, batch_size: int, progress: bool = False,
             desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
        x = x[..., None] if x.ndim == 3 else x
        feats, logits = [], []
        device = self.device
        with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False,
                  dynamic_ncols=True) as bar:
            for i in range(0, len(x), batch_size):
                f = self.net.features(to_tensor(np.ascontiguousarray(x[i:i + batch_size]), VALUE_RANGE).to(device))
                feats.append(f)
                logits.append(self.net.head(f))
                bar.update(len(f))
        return (torch.cat(feats).cpu().double().numpy(),  # float64 on the CPU: MPS has none
                torch.softmax(torch.cat(logits).cpu().double(), dim=1).numpy())

    def features(self, x: np.ndarray, batch_size: int = 500, progress: bool = False,
                 desc: str = "features") -> np.ndarray:
        """(n, feature_dim) penultimate activations; eval mode, so a batch never affects its neighbours.
        ``progress``: a bar over the images on stderr, labelled ``desc``."""
        return self._run(x, batch_size, progress, desc)[0]

    def features_and_probs(self, x: np.ndarray, batch_size: int = 500, progress: bool = False,
                           desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
        """(features (n, feature_dim), class probabilities (n, num_classes)) in one pass."""
        return self._run(x, batch_size, progress, desc)


# ---------------------------------------------------------------------------------------------- training


def train_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, recipe: TrainRecipe = TrainRecipe(),
                     widths: tuple[int, ...] | None = None, progress: bool = False,
                     desc: str = "classifier", device=None) -> EvaluatorNet:
    """Train an :class:`EvaluatorNet` on uint8 images (n, h, w, c) and labels; the same seed, the same weights.

    The evaluators and the CAS classifier both come from here, so "trained on real" and "trained on
    generated" differ only in their data. ``device``: where the network trains (default the CPU); the
    batches and their augmentation are drawn on the CPU either way, so the data order is the same on every
    device (the weights still differ in the last bits between devices).
    """
    device = torch.device(device or "cpu")
    shape = (x.shape[3], x.shape[1], x.shape[2])
    steps = recipe.steps_for(len(x))
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout draws from the global RNG: seed it, then restore the caller's
        torch.manual_seed(recipe.seed)
        net = EvaluatorNet(shape, num_classes, widths or default_widths(shape)).to(device)
        gen = torch.Generator().manual_seed(recipe.seed + 1)  # batches and augmentation
        data = to_tensor(x, VALUE_RANGE)  # (n, c, h, w)
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        batch = min(recipe.batch_size, len(x))
        per_epoch = max(1, len(x) // batch)
        net.train()
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False,
                   dynamic_ncols=True)  # its ETA is the estimate a user waits on
        for step in range(steps):
            i = step % per_epoch
            if i == 0:
                perm = torch.randperm(len(x), generator=gen)
            idx = perm[i * batch:(i + 1) * batch]
            xb = augment(data[idx], gen, shift=recipe.shift, rotate=recipe.rotate).to(device)  # (b, c, h, w)
            loss = F.cross_entropy(net(xb), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if progress and (step + 1) % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
    return net.eval()


class EvaluatorUnavailable(GenforgeError):
    """No shipped or cached evaluator, and training one would take longer than the caller allows."""


def estimate_train_seconds(n_train: int, image_shape: tuple[int, int, int], num_classes: int,
                           recipe: TrainRecipe = TrainRecipe(), probe_steps: int = 5) -> float:
    """Seconds :func:`train_classifier` would take here: a few steps of a throwaway network, timed and scaled.

    Measured rather than looked up, because the same recipe takes ~20 s on one machine and minutes on a
    loaded one. Costs about ``probe_steps + 2`` training steps; the caller's RNG state is left untouched.
    """
    shape = tuple(int(s) for s in image_shape)
    steps = recipe.steps_for(n_train)
    batch = min(recipe.batch_size, n_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = EvaluatorNet(shape, num_classes, default_widths(shape)).train()
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        data = torch.rand(batch, *shape) * 2 - 1  # (b, c, h, w): only the cost matters, not the values
        yb = torch.randint(num_classes, (batch,))
        gen = torch.Generator().manual_seed(0)
        timings = []
        for _ in range(probe_steps + 2):  # the first two steps pay one-off allocation and thread start-up
            t0 = time.perf_counter()
            xb = augment(data, gen, shift=recipe.shift, rotate=recipe.rotate)  # as train_classifier does
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            timings.append(time.perf_counter() - t0)
    return steps * float(np.median(timings[2:]))


@torch.inference_mode()
def accuracy(net: EvaluatorNet, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    net.eval()
    device = next(net.parameters()).device
    x = x[..., None] if x.ndim == 3 else x
    right = 0
    for i in range(0, len(x), batch_size):
        batch = to_tensor(np.ascontiguousarray(x[i:i + batch_size]), VALUE_RANGE).to(device)
        pred = net(batch).argmax(1).cpu().numpy()
        right += int((pred == y[i:i + batch_size]).sum())
    return right / len(x)


def data_sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def train_evaluator(spec: str, image_size: int = 28, channels: int = 0, recipe: TrainRecipe = TrainRecipe(),
                    progress: bool = True, splits=None, device: str = "cpu", bars: bool | None = None) -> Evaluator:
    """Train the evaluator of data ``spec`` on its train split (split seed 0) and test it on its test split.

    ``splits``: ``load_splits(spec, image_size=..., channels=...)`` when the caller has it already.
    ``device``: auto, cpu, cuda, cuda:N or mps (:func:`genforge.devices.pick`). The CPU is the default: an
    evaluator is a ruler, and the same seed gives the same weights only on the same kind of device (the
    device is recorded in its JSON). ``progress``: say what happens on stderr; ``bars``: a bar over the
    training steps there too (default: when ``progress`` and stderr is a terminal).
    """
    dev = pick(device)
    bars = (progress and sys.stderr.isatty()) if bars is None else bool(bars)
    splits = splits or load_splits(spec, image_size=image_size, channels=channels)
    if splits.train.y is None or splits.num_classes < 2:
        raise DataError(f"{spec}: has no class labels; genforge evaluators are classifiers and need labelled "
                        "data (folder:DIR with one subfolder per class, or an npz with y)")
    shape = splits.image_shape
    widths = default_widths(shape)
    steps = recipe.steps_for(len(splits.train))
    if progress:
        print(f"genforge: training the evaluator for {spec} {_shape_str(shape)} on its train split "
              f"({len(splits.train)} images, {steps} steps, seed {recipe.seed})", file=sys.stderr)
    t0 = time.perf_counter()
    net = train_classifier(splits.train.x, splits.train.y, splits.num_classes, recipe, widths, bars,
                           desc=f"evaluator {spec}", device=dev)
    acc = accuracy(net, splits.test.x, splits.test.y)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": evaluator_key(spec, shape),
            "data": spec, "image_shape": list(shape), "num_classes": splits.num_classes,
            "class_names": splits.class_names, "widths": list(widths), "feature_dim": FEATURE_DIM,
            "value_range": VALUE_RANGE, "split": "train", "split_seed": 0, "train_size": len(splits.train),
            "train_sha256": data_sha256(splits.train.x),
            "train_recipe": {**recipe.__dict__, "steps": steps},
            "test_accuracy": round(acc, 6), "test_size": len(splits.test), "train_seconds": 0.0,
            # CPU float reductions depend on the thread count: same seed, same threads, same weights
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "device": dev.type}
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    if progress:
        print(f"genforge: evaluator test accuracy {100 * acc:.2f}% on {len(splits.test)} test images "
              f"({meta['train_seconds']:.0f} s)", file=sys.stderr)
    return Evaluator(net.cpu(), meta)  # kept on the CPU, like a loaded one; Evaluator.to moves it


def save_evaluator(evaluator: Evaluator, directory: str | Path) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` (with the weights' SHA-256) into ``directory``."""
    directory = Path(directory)
    name = evaluator.meta["name"]
    weights, json_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    evaluator.meta = write_weights(weights, json_path, evaluator.net.state_dict(), evaluator.meta, FORMAT, stamp=True)
    evaluator.path = str(weights)
    return json_path


def load_evaluator(path: str | Path) -> Evaluator:
    """Load ``NAME.json`` + ``NAME.safetensors``: fields, header and SHA-256 checked before any weight is used."""
    path = Path(path)
    json_path = path.with_suffix(".json")
    weights = path.with_suffix(".safetensors")
    meta = read_json(json_path, ModelFileError, label=f"evaluator {json_path}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"evaluator {json_path}: not a genforge evaluator (format {FORMAT!r} "
                             f"version {FORMAT_VERSION})")
    checks = {"name": str, "data": str, "image_shape": list, "num_classes": int, "widths": list,
              "feature_dim": int, "weights_sha256": str, "test_accuracy": float, "test_size": int}
    for key, typ in checks.items():
        if not isinstance(meta.get(key), typ):
            raise ModelFileError(f"evaluator {json_path}: field '{key}' missing or not a {typ.__name__}")
    shape = meta["image_shape"]
    if len(shape) != 3 or shape[0] not in (1, 3) or not all(isinstance(s, int) and 4 <= s <= 4096 for s in shape[1:]):
        raise ModelFileError(f"evaluator {json_path}: field 'image_shape' must be [c, h, w], got {shape}")
    if not (2 <= meta["num_classes"] <= 100_000 and 1 <= meta["feature_dim"] <= 65536 and meta["widths"]
            and all(isinstance(w, int) and 1 <= w <= 4096 for w in meta["widths"])):
        raise ModelFileError(f"evaluator {json_path}: num_classes, feature_dim or widths out of range")
    args = (tuple(shape), meta["num_classes"], tuple(meta["widths"]), meta["feature_dim"])
    with torch.device("meta"):
        skeleton = EvaluatorNet(*args)
    tensors = read_weights(weights, json_path, meta, skeleton.state_dict(), what="evaluator",
                           hint="delete it to retrain a cached one")
    net = EvaluatorNet(*args)
    net.load_state_dict(tensors, strict=True)
    return Evaluator(net, meta, str(weights))


# ------------------------------------------------------------------------------------------ where they live


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _shape_str(shape) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


def evaluator_key(spec: str, image_shape: tuple[int, int, int]) -> str:
    """``mnist5k-28x28x1``; specs with a path get a short hash of the spec, so two folders never collide."""
    spec = spec.strip()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_.")[:60]
    if ":" in spec:
        slug += "-" + hashlib.sha256(spec.encode()).hexdigest()[:10]
    return f"{slug}-{_shape_str(image_shape)}"


def cache_dir() -> Path:
    """$GENFORGE_CACHE/evaluators, else $XDG_CACHE_HOME/genforge/evaluators (~/.cache when unset)."""
    return cache_dir_of("evaluators")


def find_evaluator(spec: str, image_shape: tuple[int, int, int]) -> Path | None:
    key = evaluator_key(spec, image_shape)
    for directory in (SHIPPED_DIR, cache_dir()):
        if (directory / f"{key}.json").is_file():
            return directory / f"{key}.json"
    return None


def get_evaluator(spec: str, image_shape: tuple[int, int, int], recipe: TrainRecipe = TrainRecipe(),
                  progress: bool = True, max_seconds: float | None = None, device: str = "cpu",
                  bars: bool | None = None) -> Evaluator:
    """The evaluator for data ``spec`` at ``image_shape`` (c, h, w): shipped, cached, or trained now and cached.

    Training one is announced with its estimated time and shown with a progress bar. ``max_seconds``: the
    longest the caller will wait for that training; when the estimate is longer, :class:`EvaluatorUnavailable`
    is raised before anything is trained (its message says how to train the evaluator ahead of time).
    ``device``: where one trained now trains (the estimate is timed on the CPU); the result is on the CPU.
    ``bars``: as in :func:`train_evaluator`.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or image_shape[0] not in (1, 3) or image_shape[1] != image_shape[2]:
        raise GenforgeError(f"evaluators take square images with 1 or 3 channels, got (c, h, w) = {image_shape}")
    found = find_evaluator(spec, image_shape)
    if found is not None:
        return load_evaluator(found)
    target = cache_dir()
    splits = load_splits(spec, image_size=image_shape[1], channels=image_shape[0])
    where = f"{spec} {_shape_str(image_shape)}"
    if splits.train.y is None or splits.num_classes < 2:  # train_evaluator's clear error, without the probe
        return train_evaluator(spec, recipe=recipe, progress=progress, splits=splits, device=device, bars=bars)
    estimate = estimate_train_seconds(len(splits.train), splits.image_shape, splits.num_classes, recipe)
    if max_seconds is not None and estimate > max_seconds:
        raise EvaluatorUnavailable(
            f"no evaluator for {where} (shipped or cached), and training one would take about "
            f"{_duration(estimate)} here, more than the {_duration(max_seconds)} allowed; train it once ahead "
            f"with: genforge evaluator train --data {spec} --image-size {image_shape[1]}")
    if progress:
        print(f"genforge: no evaluator for {where} yet: training one now, about {_duration(estimate)} "
              f"(once; cached in {target})", file=sys.stderr)
    evaluator = train_evaluator(spec, recipe=recipe, progress=progress, splits=splits, device=device, bars=bars)
    save_evaluator(evaluator, target)
    return evaluator
