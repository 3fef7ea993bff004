"""The baseline every series generator must beat: a vector autoregression per class, fitted by least squares.

    var = VARBaseline(order=2).fit(x, y)          # x float (N, C, T) windows, y int (N,) classes (or None)
    x_new, y_new = var.sample(100, seed=0)        # classes drawn in the training proportions
    x_new, _ = var.sample(10, y=np.full(10, 3))   # or named

Model (per class k): x_t = c + A_1 x_{t-1} + ... + A_p x_{t-p} + e_t, e_t ~ N(0, S), every coefficient
from one ridge-stabilized least-squares fit over all time steps t >= p of the class's windows, S the
covariance of its residuals. A sample starts from the first p steps of a random training window of its
class (the VAR has no model of where a window starts) and runs the recursion with Gaussian noise.

No neural network, no training loop, seconds on a CPU: the "is the deep model worth it" row of the series
benchmark (benchmarks/timeseries.py) and the stand-in generator of the diagnosis experiment's tests. An
unstable fit (a root outside the unit circle, e.g. from one short window) would run off to infinity, so
samples are clipped to the training range widened by one range on each side; `notes` says when that happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genforge.errors import DataError

RIDGE = 1e-3  # relative to the mean diagonal of the normal equations: keeps a collinear plant's fit solvable


@dataclass(eq=False)
class _ClassVAR:
    coef: np.ndarray    # (1 + C * p, C): intercept row, then the lag-1 block, lag-2 block, ...
    chol: np.ndarray    # (C, C) Cholesky factor of the residual covariance
    starts: np.ndarray  # (M, C, p) the first p steps of each training window of the class
    lo: np.ndarray      # (C,) clip bounds
    hi: np.ndarray


@dataclass(eq=False)
class VARBaseline:
    order: int = 2
    classes: dict[int, _ClassVAR] = field(default_factory=dict)
    prior: np.ndarray | None = None  # (K,) class frequencies of the training windows
    shape: tuple[int, int] | None = None  # (C, T)
    notes: list[str] = field(default_factory=list)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> VARBaseline:
        """Fit one VAR(order) per class of float (N, C, T) windows `x` (labels `y`, or one class)."""
        if not isinstance(x, np.ndarray) or x.ndim != 3 or not np.isfinite(x).all():
            raise DataError(f"VAR baseline: expected finite float windows (N, channels, time), got "
                            f"{getattr(x, 'shape', type(x).__name__)}")
        n, c, t = x.shape
        p = self.order
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise DataError(f"VAR baseline: order must be a positive whole number, got {p!r}")
        if t <= p:
            raise DataError(f"VAR baseline: windows of {t} samples are too short for order {p}")
        y = np.zeros(n, np.int64) if y is None else np.asarray(y, np.int64)
        if y.shape != (n,) or (n and y.min() < 0):
            raise DataError(f"VAR baseline: need {n} non-negative class labels, got shape {y.shape}")
        self.shape, self.classes, self.notes = (c, t), {}, []
        self.prior = np.bincount(y).astype(np.float64) / n
        for k in np.unique(y):
            self.classes[int(k)] = self._fit_class(x[y == k].astype(np.float64))
        return self

    def _fit_class(self, x: np.ndarray) -> _ClassVAR:
        n, c, t = x.shape
        p = self.order
        # Rows: every (window, t >= p). Regressors [1, x_{t-1}, ..., x_{t-p}] (rows, 1 + C p); targets x_t (rows, C).
        lags = [x[:, :, p - j:t - j] for j in range(1, p + 1)]                    # each (n, C, t - p)
        reg = np.concatenate([np.ones((n, 1, t - p))] + lags, axis=1)             # (n, 1 + C p, t - p)
        reg = reg.transpose(0, 2, 1).reshape(-1, 1 + c * p)
        target = x[:, :, p:].transpose(0, 2, 1).reshape(-1, c)
        gram = reg.T @ reg
        ridge = RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram))
        ridge[0, 0] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(gram + ridge, reg.T @ target)                      # (1 + C p, C)
        resid = target - reg @ coef
        cov = resid.T @ resid / max(len(resid) - 1, 1) + 1e-9 * np.eye(c)
        lo, hi = x.min(axis=(0, 2)), x.max(axis=(0, 2))
        return _ClassVAR(coef, np.linalg.cholesky(cov), x[:, :, :p].copy(), lo - (hi - lo), hi + (hi - lo))

    def sample(self, n: int, y: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """n windows float32 (n, C, T) and their classes int64 (n,): `y` if given, else drawn from the prior."""
        if not self.classes:
            raise DataError("VAR baseline: sample() before fit()")
        rng = np.random.default_rng(seed)
        c, t = self.shape
        p = self.order
        if y is None:
            y = rng.choice(len(self.prior), size=n, p=self.prior)
        y = np.asarray(y, np.int64)
        missing = sorted(set(np.unique(y).tolist()) - set(self.classes))
        if missing:
            raise DataError(f"VAR baseline: class {missing[0]} was not in the training windows")
        out = np.zeros((n, c, t))
        clipped = 0
        for k, m in self.classes.items():
            idx = np.flatnonzero(y == k)
            if not len(idx):
                continue
            xs = np.zeros((len(idx), c, t))
            xs[:, :, :p] = m.starts[rng.integers(0, len(m.starts), len(idx))]
            for s in range(p, t):
                reg = np.concatenate([np.ones((len(idx), 1))] + [xs[:, :, s - j] for j in range(1, p + 1)], axis=1)
                step = reg @ m.coef + rng.standard_normal((len(idx), c)) @ m.chol.T
                bounded = np.clip(step, m.lo, m.hi)
                clipped += int((bounded != step).sum())
                xs[:, :, s] = bounded
            out[idx] = xs
        if clipped:
            self.notes.append(f"{clipped} sampled values clipped to the widened training range (an unstable fit)")
        return out.astype(np.float32), y


def var_generator(order: int = 2):
    """A generator callable for the diagnosis experiment: (x, y, n_per_class, seed) -> (x_new, y_new), one
    VAR per class fitted on (x, y) and `n_per_class` windows sampled for every class present."""

    def generate(x: np.ndarray, y: np.ndarray, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        var = VARBaseline(order=order).fit(x, y)
        wanted = np.repeat(np.unique(y), n_per_class)
        return var.sample(len(wanted), y=wanted, seed=seed)

    return generate
