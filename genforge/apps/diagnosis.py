"""Fault diagnosis with scarce faults: which fault is this window, when only K faulty runs per fault were seen?

    from genforge.apps import diagnosis
    from genforge.models.var import var_generator
    data = diagnosis.tep_windows(load_tep("faults=1-21;seeds=0-2"), window=20)
    result = diagnosis.experiment(data, k=1, generator=var_generator(2), seeds=(0, 1, 2))
    result["real"]["mean"], result["real+synthetic"]["mean"]          # test accuracy, mean over seeds

For each seed: K training runs are drawn per fault, their windows train a classifier (the series evaluator's
1-D CNN and recipe, genforge.metrics.series); a second classifier trains on the same windows plus windows from
a class-conditional generator fitted on those same K runs only (never on test runs); both are scored on the
windows after the fault onset of every test run. The generator is any callable
(x, y, n_per_class, seed) -> (x_new, y_new): the VAR baseline (genforge.models.var.var_generator) or a genforge
conditional model. Synthetic data does not always help; the result says which way it went, per K.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genforge.data.series.base import fit_normalization, sliding_windows
from genforge.errors import DataError, GenforgeError
from genforge.metrics.series import SeriesRecipe, classifier_accuracy, train_series_classifier

Generator = Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


@dataclass(eq=False)
class DiagnosisData:
    """Windows grouped by training run, and the test windows; classes are faults (0..F-1), normal excluded."""

    run_windows: list[np.ndarray]  # per training run: float32 (n_r, C, w), standardized
    run_class: np.ndarray  # int64 (R,) the fault class of each training run
    test_x: np.ndarray  # float32 (N, C, w)
    test_y: np.ndarray  # int64 (N,)
    class_names: list[str]


def tep_windows(data, window: int = 20, stride: int | None = None, faults: tuple[int, ...] | None = None,
                skip: int = 0) -> DiagnosisData:
    """Diagnosis windows from simulated TEP runs (genforge.data.series.tep.TEPData), standardized per channel
    with the normal training runs' statistics. Training: each faulty training run from sample `skip` on (the
    fault is on from its first sample); test: each faulty test run from its onset on (no window straddles it)."""
    stride = stride or max(1, window // 2)
    faults = tuple(faults or data.protocol.faults)
    tr, te = data.train, data.test
    normal = [tr.x[r, :, : int(tr.length[r])] for r in np.flatnonzero(tr.fault == 0)]
    if not normal:
        raise DataError("TEP data has no normal training run to standardize with")
    # per-channel z-score over every sample of every normal run, seen as one (1, C, total) example
    norm = fit_normalization(np.concatenate(normal, axis=1)[None], "zscore")

    runs, cls, tx, ty = [], [], [], []
    for k, f in enumerate(faults):
        for r in np.flatnonzero(tr.fault == f):
            w = sliding_windows(norm.apply(tr.x[r, :, skip:int(tr.length[r])]), window, stride)  # (n, C, window)
            if len(w):
                runs.append(w)
                cls.append(k)
        for r in np.flatnonzero(te.fault == f):
            w = sliding_windows(norm.apply(te.x[r, :, data.protocol.onset:int(te.length[r])]), window, window)
            tx.append(w)
            ty.append(np.full(len(w), k, np.int64))
    c = tr.x.shape[1]
    return DiagnosisData(runs, np.array(cls, np.int64), np.concatenate(tx) if tx else np.zeros((0, c, window)),
                         np.concatenate(ty) if ty else np.zeros(0, np.int64), [f"IDV{f:02d}" for f in faults])


def _summary(accs: list[float]) -> dict:
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": [float(a) for a in accs]}


def experiment(data: DiagnosisData, k: int, *, generator: Generator | None = None, synthetic_per_class: int = 0,
               seeds: tuple[int, ...] = (0, 1, 2), recipe: SeriesRecipe = SeriesRecipe(), log=None) -> dict:
    """Accuracy on the test windows of classifiers trained on K runs per fault (real), and on those plus
    generated windows (real+synthetic, when `generator` is given), over `seeds`.

    synthetic_per_class: generated windows per fault (0: as many as the real windows of a fault's K runs).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GenforgeError(f"K must be a positive whole number of runs per fault, got {k!r}")
    n_classes = len(data.class_names)
    counts = np.bincount(data.run_class, minlength=n_classes)
    if counts.min() < k:
        short = int(np.argmin(counts))
        raise DataError(f"{data.class_names[short]} has {counts[short]} training run(s), fewer than K={k}")
    if not len(data.test_x):
        raise DataError("no test windows to score the diagnosis on")
    real_acc, mixed_acc = [], []
    t0 = time.perf_counter()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        picked = [int(r) for c in range(n_classes) for r in rng.choice(np.flatnonzero(data.run_class == c), k,
                                                                        replace=False)]
        x = np.concatenate([data.run_windows[r] for r in picked])
        y = np.concatenate([np.full(len(data.run_windows[r]), data.run_class[r], np.int64) for r in picked])
        rec = dataclasses.replace(recipe, seed=seed)
        real_acc.append(classifier_accuracy(train_series_classifier(x, y, n_classes, rec), data.test_x, data.test_y))
        if generator is not None:
            per_class = synthetic_per_class or int(np.ceil(len(x) / n_classes))
            xs, ys = generator(x, y, per_class, seed)
            net = train_series_classifier(np.concatenate([x, xs]), np.concatenate([y, ys]), n_classes, rec)
            mixed_acc.append(classifier_accuracy(net, data.test_x, data.test_y))
        if log:
            log(f"K={k} seed {seed}: real {real_acc[-1]:.3f}"
                + (f", real+synthetic {mixed_acc[-1]:.3f}" if mixed_acc else ""))
    out = {"k": k, "classes": n_classes, "test_windows": len(data.test_x), "real": _summary(real_acc),
           "seconds": round(time.perf_counter() - t0, 1)}
    if mixed_acc:
        out["real+synthetic"] = _summary(mixed_acc)
        out["synthetic_helps"] = bool(np.mean(mixed_acc) > np.mean(real_acc))
    return out
