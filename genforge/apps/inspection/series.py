"""Fault detection on sensor series: learn normal operation, raise alarms over time, point at the sensors.

    from genforge.apps.inspection import series as fd
    det = fd.fit_series("pca-spe", train_windows, val_windows, fpr=0.01)   # normal operation only, (N, C, w)
    fd.save_series(det, "detectors/tep-spe"); det = fd.load_series_detector("detectors/tep-spe")
    run = det.score_run(x_run, onset=160)    # a whole run (C, L): score and alarm per sample from w - 1 on,
    run.delay, run.detection_rate, run.false_alarm_rate, run.contributions   # the diagnosis an operator reads

Every detector scores a window of w samples (w = 1 is the classical static monitor, w > 1 a dynamic one,
as DPCA's lagged vectors) and splits its score into per-channel contributions that sum to it:

    pca-t2    Hotelling's T^2 in the principal subspace: z P L^-1 P^T z^T (P the components explaining `variance`
              of normal operation, L their eigenvalues); contributions (z P L^-1/2 P^T)_j^2 summed over the window
              (the "complete decomposition" of Alcala & Qin 2011, which sums exactly to T^2)
    pca-spe   the squared prediction error ||z - z P P^T||^2 (Q statistic); contributions the squared residual
              of each channel, summed over the window
    iforest   an isolation forest (Liu et al. 2008, scikit-learn's fit; scored here in numpy from the trees'
              arrays, so it is saved as safetensors, never pickled); it has no residual, so its contributions
              are each channel's squared standardized deviation from the normal mean (a hint, not a decomposition)
    recon     any reconstruction callable x -> x_hat on (N, C, w) windows (a series VAE's encode-decode, a
              diffusion model's noise-denoise round trip): the mean squared residual; contributions per channel

z is the window standardized per channel with normal operation's statistics (stored with the detector). The
threshold is chosen on normal validation windows at the target false-alarm rate (`choose_threshold`, shared
with the image detectors); test runs never enter it. A run's detection delay is the first alarm at or after the
fault onset, in samples; its detection rate the share of windows ending at or after the onset that alarm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge.apps.inspection.inspector import choose_threshold, score_stats
from genforge.data.series import KINDS, parse_series_spec
from genforge.data.series.base import constant_channels, sliding_windows
from genforge.data.series.tep import load_tep
from genforge.data.series.windows import read_csv_log, read_npz_log
from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.io import read_json
from genforge.models.files import read_weights, write_weights
from genforge.version import __version__

FORMAT = "genforge-series-detector"
FORMAT_VERSION = 1
WEIGHTS = "detector.safetensors"
CONFIG = "detector.json"
DEFAULT_FPR = 0.01  # process monitoring's usual false-alarm rate (the TEP benchmark's 1%)
SCORE_CHUNK = 4096  # windows copied, standardized and scored at a time: a long run never holds all its windows


def _finite(x: np.ndarray, where: str, first: int = 0) -> np.ndarray:
    """``x`` as float64 once every value is finite; ``first``: the index of x[0] among the caller's windows."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{where}: expected numeric windows (N, channels, time), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    bad = ~np.isfinite(x)
    if bad.any():
        n, c, t = np.argwhere(bad)[0]
        raise DataError(f"{where}: window {first + n}, channel {c}, sample {t} is {x[n, c, t]} (not a finite number)")
    return x.astype(np.float64)


# ------------------------------------------------------------------------------------------- detectors


class PCAMonitor:
    """PCA of standardized normal windows; `statistic` "t2" or "spe" picks what it scores."""

    def __init__(self, shape: tuple[int, int], statistic: str = "spe", variance: float = 0.9,
                 n_components: int = 0):
        if statistic not in ("t2", "spe"):
            raise GenforgeError(f"pca detector: statistic must be t2 or spe, got {statistic!r}")
        if not 0 < float(variance) <= 1:
            raise GenforgeError(f"pca detector: option variance must be in (0, 1], got {variance!r}")
        self.shape, self.statistic, self.variance = tuple(shape), statistic, float(variance)
        d = shape[0] * shape[1]
        self.components = np.zeros((n_components, d))  # (k, d), orthonormal rows
        self.eigenvalues = np.ones(n_components)  # (k,)

    def options(self) -> dict:
        return {"statistic": self.statistic, "variance": self.variance, "n_components": len(self.components)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"components": self.components, "eigenvalues": self.eigenvalues}

    def load_arrays(self, a: dict[str, np.ndarray]) -> None:
        self.components, self.eigenvalues = a["components"], a["eigenvalues"]

    def fit(self, z: np.ndarray, seed: int = 0) -> None:
        flat = z.reshape(len(z), -1)  # (n, C w), already centred by the standardization
        # Eigen-decomposition of the covariance (not of the centred data matrix: normal operation is centred on
        # the training mean by the standardization, so the mean is 0 here by construction).
        cov = flat.T @ flat / max(len(flat) - 1, 1)
        lam, vec = np.linalg.eigh(cov)
        lam, vec = lam[::-1].clip(min=0), vec[:, ::-1]
        share = np.cumsum(lam) / max(lam.sum(), 1e-300)
        k = int(np.searchsorted(share, self.variance - 1e-12) + 1) if self.variance < 1 else len(lam)
        k = min(k, max(1, len(flat) - 1), len(lam))
        self.components, self.eigenvalues = np.ascontiguousarray(vec[:, :k].T), np.maximum(lam[:k], 1e-12)

    def score(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, c, w = z.shape
        flat = z.reshape(n, -1)
        t = flat @ self.components.T  # (n, k) scores
        if self.statistic == "t2":
            # (n, d): z P L^-1/2 P^T, whose squared entries sum to T^2
            part = (t / np.sqrt(self.eigenvalues)) @ self.components
        else:
            part = flat - t @ self.components  # (n, d) residual off the principal subspace
        contrib = (part ** 2).reshape(n, c, w).sum(2)  # (n, C)
        return contrib.sum(1), contrib


def _avg_path(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary tree of n points (Liu et al. eq. 1)."""
    n = np.asarray(n, np.float64)
    out = np.where(n == 2, 1.0, 0.0)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class IsolationForestMonitor:
    """scikit-learn's IsolationForest, fitted there and scored here from its trees' arrays (safetensors)."""

    def __init__(self, shape: tuple[int, int], trees: int = 100, max_samples: int = 256, nodes: int = 0):
        self.shape, self.trees, self.max_samples = tuple(shape), int(trees), int(max_samples)
        self.left = np.zeros((self.trees, nodes), np.int64)  # -1 at leaves, as scikit-learn's children arrays
        self.right = np.zeros((self.trees, nodes), np.int64)
        self.feature = np.zeros((self.trees, nodes), np.int64)
        self.threshold = np.zeros((self.trees, nodes))
        self.leaf_value = np.zeros((self.trees, nodes))  # depth + c(n at the leaf) - 1
        self.norm = np.ones(1)  # trees * c(max_samples used)

    def options(self) -> dict:
        return {"trees": self.trees, "max_samples": self.max_samples, "nodes": self.left.shape[1]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"left": self.left, "right": self.right, "feature": self.feature, "threshold": self.threshold,
                "leaf_value": self.leaf_value, "norm": self.norm}

    def load_arrays(self, a: dict[str, np.ndarray]) -> None:
        for k, v in a.items():
            setattr(self, k, v)

    def fit(self, z: np.ndarray, seed: int = 0) -> None:
        from sklearn.ensemble import IsolationForest  # heavy import: only this detector needs it

        flat = z.reshape(len(z), -1)
        forest = IsolationForest(n_estimators=self.trees, max_samples=min(self.max_samples, len(flat)),
                                 random_state=seed).fit(flat)
        self.sklearn = forest  # kept for the test that the numpy scoring matches; never saved
        nodes = max(e.tree_.node_count for e in forest.estimators_)
        shape = (self.trees, nodes)
        self.left, self.right = -np.ones(shape, np.int64), -np.ones(shape, np.int64)
        self.feature, self.threshold, self.leaf_value = np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape)
        for i, e in enumerate(forest.estimators_):
            t = e.tree_
            m = t.node_count
            self.left[i, :m], self.right[i, :m] = t.children_left, t.children_right
            self.feature[i, :m], self.threshold[i, :m] = t.feature.clip(min=0), t.threshold
            self.leaf_value[i, :m] = t.compute_node_depths() + _avg_path(t.n_node_samples) - 1.0
        self.norm = np.array([self.trees * float(_avg_path(np.array([forest._max_samples]))[0])])

    def score(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(z)
        flat = z.reshape(n, -1).astype(np.float32).astype(np.float64)  # scikit-learn's trees compare float32 input
        depth = np.zeros(n)
        rows = np.arange(n)
        for i in range(self.trees):
            node = np.zeros(n, np.int64)
            while True:
                inner = self.left[i, node] >= 0
                if not inner.any():
                    break
                go_left = flat[rows, self.feature[i, node]] <= self.threshold[i, node]
                node = np.where(inner, np.where(go_left, self.left[i, node], self.right[i, node]), node)
            depth += self.leaf_value[i, node]
        score = 2.0 ** (-depth / self.norm[0])  # (n,) in (0, 1]; 0.5 and above is anomalous (Liu et al.)
        return score, (z ** 2).mean(2)  # contributions: squared standardized deviation per channel


class ReconstructionMonitor:
    """Any callable reconstruction x -> x_hat of (N, C, w) windows in the units they are given in; the residual is
    measured in standardized units (each sensor divided by its normal spread, so a pressure in kPa does not
    drown a concentration in mol %), its mean square is the score. `model` names where the callable comes from
    (a genforge series run: see model_reconstructor), so a saved detector can rebuild it; a detector built on a
    bare callable scores but cannot be saved."""

    def __init__(self, shape: tuple[int, int], model: str = "", mode: str = "auto",
                 reconstruct: Callable[[np.ndarray], np.ndarray] | None = None):
        self.shape, self.model, self.mode = tuple(shape), str(model), str(mode)
        self.reconstruct = reconstruct
        self.mean, self.std = np.zeros(shape[0]), np.ones(shape[0])  # set by fit_series / load

    def options(self) -> dict:
        return {"model": self.model, "mode": self.mode}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_arrays(self, a: dict[str, np.ndarray]) -> None:
        pass

    def _callable(self):
        if self.reconstruct is None:
            if not self.model:
                raise GenforgeError("recon detector: give a reconstruction callable, or --set model=RUN (a trained "
                                    "genforge series VAE or diffusion run)")
            self.reconstruct = model_reconstructor(self.model, self.mode, self.shape)
        return self.reconstruct

    def fit(self, z: np.ndarray, seed: int = 0) -> None:
        self._callable()  # nothing to learn: the model was trained already; fail early if it cannot load

    def score(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = z * self.std[:, None] + self.mean[:, None]  # back to the units the callable takes
        x_hat = np.asarray(self._callable()(x.astype(np.float32)), dtype=np.float64)
        if x_hat.shape != z.shape:
            raise GenforgeError(f"recon detector: the reconstruction returned shape {x_hat.shape} for windows "
                                f"{z.shape}")
        z_hat = (x_hat - self.mean[:, None]) / self.std[:, None]
        contrib = ((z - z_hat) ** 2).mean(2)  # (n, C)
        return contrib.sum(1), contrib


DIFFUSION_NOISE_STEP = 200  # of the 1000 training timesteps: enough noise to wash out a fault, little enough to
DIFFUSION_STEPS = 10        # keep the window's normal content; denoised back in this many DDIM steps


def model_reconstructor(model: str, mode: str = "auto", shape: tuple[int, int] | None = None, *, loaded=None):
    """x -> x_hat (float32 (N, C, t) in the data's units) from a trained genforge series model.

    VAE family: decode the posterior mean (vae.reconstruct). Diffusion family: noise each window to timestep
    DIFFUSION_NOISE_STEP with a fixed seed and denoise it with DDIM (mode "t=N" picks another step): what the
    model of the training data makes of the window. Autoregressive family: each step's one-step-ahead
    prediction from the steps before it (the first step: where the model's windows start). A conditional model
    reconstructs under its "normal" class (the model of normal operation; mode "class=NAME" picks another).
    GANs have no encoder and are refused.
    `loaded`: the model already read from `model` (genforge.generation.model.load), so it is not read twice.
    """
    from genforge.models import diffusion, vae  # the families' own math; only this detector needs them

    if loaded is None:
        from genforge.generation.model import load as load_model  # torch models load only for this detector

        loaded = load_model(model, device="cpu")
    m = loaded
    if m.modality.name != "series":
        raise GenforgeError(f"recon detector: {model} is a {m.modality.name} model, not a series one")
    if shape is not None and tuple(m.example_shape) != tuple(shape):
        raise GenforgeError(f"recon detector: {model} makes {m.example_shape[0]} channel(s) x {m.example_shape[1]} "
                            f"samples, the detector's windows are {shape[0]} x {shape[1]}")
    options = dict(part.split("=", 1) for part in mode.split(";") if "=" in part) if mode != "auto" else {}
    y_class = None
    if m.num_classes:
        names = m.class_names or [str(i) for i in range(m.num_classes)]
        want = options.get("class", "normal" if "normal" in names else None)
        if want is None or want not in names:
            raise GenforgeError(f"recon detector: {model} is conditional; name the class of normal operation with "
                                f"--set mode=class=NAME (classes: {', '.join(names)})")
        y_class = names.index(want)
    norm = m.output.normalization
    family = m.family
    if family not in ("vae", "diffusion", "autoregressive"):
        raise GenforgeError(f"recon detector: {model} is a {family} model; reconstruction needs a VAE (encoder), "
                            "a diffusion model or an autoregressive one")
    t_star = int(options.get("t", DIFFUSION_NOISE_STEP))

    @torch.no_grad()
    def reconstruct(x: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(norm.apply(x)).clamp(-1, 1)  # (n, c, t) in the model's [-1, 1]
        y = None if y_class is None else torch.full((len(u),), y_class, dtype=torch.long)
        if family == "vae":
            out01 = vae.reconstruct(m.nets, (u + 1) / 2, y)
        elif family == "autoregressive":
            out01 = (m.nets["ar"](u, y)[0] + 1) / 2  # the mean of each step given the window's steps before it
        else:
            denoiser, ab = m.nets["denoiser"], m.nets["schedule"].alphas_cumprod.tolist()
            gen = torch.Generator().manual_seed(0)  # the same noise for every call: a deterministic score
            eps = torch.randn(u.shape, generator=gen)
            xt = math.sqrt(ab[t_star]) * u + math.sqrt(1 - ab[t_star]) * eps  # q(x_t | x_0), DDPM eq. 4
            steps = [int(round(t_star * (1 - i / DIFFUSION_STEPS))) for i in range(DIFFUSION_STEPS)]
            for i, t in enumerate(steps):  # DDIM (Song et al. 2021, eq. 12, sigma = 0) from t_star to 0
                x0 = diffusion.x0_at(denoiser, xt, t, y, 1.0, ab).clamp(-1, 1)
                if i + 1 == len(steps):
                    xt = x0
                    break
                s_ab = ab[steps[i + 1]]
                e = (xt - math.sqrt(ab[t]) * x0) / math.sqrt(1 - ab[t])
                xt = math.sqrt(s_ab) * x0 + math.sqrt(1 - s_ab) * e
            out01 = (xt + 1) / 2
        return m.output(out01)

    return reconstruct


DETECTORS = {
    "pca-t2": lambda shape, **o: PCAMonitor(shape, **{**o, "statistic": "t2"}),
    "pca-spe": lambda shape, **o: PCAMonitor(shape, **{**o, "statistic": "spe"}),
    "iforest": IsolationForestMonitor,
    "recon": ReconstructionMonitor,
}
OPTIONS = {"pca-t2": ("variance",), "pca-spe": ("variance",), "iforest": ("trees", "max_samples"),
           "recon": ("model", "mode")}


# ------------------------------------------------------------------------------------------- the detector


@dataclass(eq=False)
class RunScore:
    """What a detector says about one run: a score and an alarm per window (window k ends at sample
    times[k]), and, when the fault onset is known, the delay and rates."""

    times: np.ndarray  # int64 (K,) the last sample of each window
    score: np.ndarray  # float64 (K,)
    alarm: np.ndarray  # bool (K,)
    contributions: np.ndarray  # float64 (C,) shares (sum 1) over the alarms after the onset (all alarms if none)
    onset: int | None
    delay: int | None  # samples from the onset to the first alarm at or after it; None: never detected
    detection_rate: float | None  # share of windows ending at or after the onset that alarm
    false_alarm_rate: float | None  # share of windows ending before the onset that alarm


class SeriesDetector:
    """A fitted series detector: method, per-channel standardization, threshold. Build with fit_series."""

    def __init__(self, method, meta: dict, mean: np.ndarray, std: np.ndarray):
        self.method, self.meta, self.mean, self.std = method, meta, mean, std

    @property
    def name(self) -> str:
        return self.meta["detector"]

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, window)"""
        return tuple(self.meta["shape"])

    @property
    def threshold(self) -> float:
        return self.meta["threshold"]

    def _standardize(self, x: np.ndarray, where: str, first: int = 0) -> np.ndarray:
        x = _finite(x, where, first)
        if tuple(x.shape[1:]) != self.shape:
            c, w = self.shape
            raise DataError(f"{where}: {x.shape[1]} channel(s) x {x.shape[2]} samples, but the detector was fit "
                            f"on {c} channel(s) x {w} samples: give series of that channel count and window length")
        return (x - self.mean[:, None]) / self.std[:, None]

    def score_windows(self, x: np.ndarray, where: str = "windows") -> tuple[np.ndarray, np.ndarray]:
        """(N, C, w) windows in the units the detector was fit in -> score (N,), contributions (N, C)."""
        parts = [self.method.score(self._standardize(x[s:s + SCORE_CHUNK], where, s))
                 for s in range(0, len(x), SCORE_CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def score_run(self, run: np.ndarray, onset: int | None = None, where: str = "run") -> RunScore:
        """Slide the window over a run (C, L) one sample at a time and score every position."""
        if not isinstance(run, np.ndarray) or run.ndim != 2:
            raise DataError(f"{where}: expected one run (channels, time), got "
                            f"{getattr(run, 'shape', type(run).__name__)}")
        c, w = self.shape
        if run.shape[0] != c:
            raise DataError(f"{where}: {run.shape[0]} channel(s), but the detector was fit on {c} channel(s)")
        if run.shape[1] < w:
            raise DataError(f"{where}: {run.shape[1]} samples, fewer than the detector's window of {w}")
        bad = ~np.isfinite(run)
        if bad.any():
            ch, t = np.argwhere(bad)[0]
            raise DataError(f"{where}: channel {ch}, sample {t} is {run[ch, t]} (not a finite number)")
        windows = sliding_windows(run, w)  # (L - w + 1, C, w), a view: a window is copied only when its chunk is scored
        score, contrib = self.score_windows(windows, where)
        times = np.arange(w - 1, run.shape[1])
        alarm = score > self.threshold
        delay = rate = far = None
        after = np.ones(len(times), bool)
        if onset is not None:
            after = times >= onset
            hits = np.flatnonzero(alarm & after)
            delay = int(times[hits[0]] - onset) if len(hits) else None
            rate = float(alarm[after].mean()) if after.any() else None
            far = float(alarm[~after].mean()) if (~after).any() else None
        pick = alarm & after if (alarm & after).any() else (alarm if alarm.any() else after)
        share = contrib[pick].mean(0)
        share = share / share.sum() if share.sum() > 0 else share
        return RunScore(times, score, alarm, share, onset, delay, rate, far)


def _check_fpr(fpr) -> None:
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 < fpr < 1:
        raise GenforgeError(f"target false-alarm rate must be in (0, 1), got {fpr!r}")


def fit_series(name: str, train: np.ndarray, val: np.ndarray, *, fpr: float = DEFAULT_FPR, seed: int = 0,
               options: dict | None = None, data: dict | None = None, channel_names: list[str] | None = None,
               reconstruct: Callable[[np.ndarray], np.ndarray] | None = None) -> SeriesDetector:
    """Fit detector `name` on normal windows `train` (N, C, w) and set its threshold on normal `val` windows so
    that at most `fpr` of them alarm. `reconstruct`: the callable of the recon detector."""
    if name not in DETECTORS:
        raise GenforgeError(f"unknown series detector {name!r}; choose one of {', '.join(DETECTORS)}")
    _check_fpr(fpr)
    train = _finite(train, "normal training windows")
    val = _finite(val, "normal validation windows")
    for what, x in (("normal training windows", train), ("normal validation windows", val)):
        if len(x) < 2:
            raise DataError(f"{what}: {len(x)} window(s); a detector needs at least 2 (and many more to be any good)")
    shape = tuple(train.shape[1:])
    if tuple(val.shape[1:]) != shape:
        raise DataError(f"normal validation windows are {val.shape[1]} x {val.shape[2]}, training windows "
                        f"{shape[0]} x {shape[1]} (channels x samples)")
    unknown = set(options or {}) - set(OPTIONS[name])
    if unknown:
        raise GenforgeError(f"{name} detector: no option {sorted(unknown)[0]!r}; it takes "
                            f"{', '.join(OPTIONS[name])}")
    extra = {"reconstruct": reconstruct} if name == "recon" and reconstruct is not None else {}
    method = DETECTORS[name](shape, **(options or {}), **extra)
    # Per-channel standardization from normal operation: one mean and spread per sensor (over every sample of
    # every window); a sensor that never moves keeps spread 1, so a move of it still shows. These are
    # fit_normalization's "zscore" statistics summed in another order (window by window, not one flattened row
    # per channel); the two differ in the last bits, and this order keeps refitted detectors bit-identical.
    mean = train.mean(axis=(0, 2))
    std = train.std(axis=(0, 2))
    std = np.where(constant_channels(mean, std), 1.0, std)
    if name == "recon":  # the callable takes windows in their own units; the residual is standardized
        method.mean, method.std = mean, std
    t0 = time.perf_counter()
    method.fit((train - mean[:, None]) / std[:, None], seed=seed)
    det = SeriesDetector(method, {}, mean, std)
    det.meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "detector": name, "shape": list(shape),
                "threshold": math.inf}
    val_scores, _ = det.score_windows(val, "normal validation windows")
    threshold = choose_threshold(val_scores, fpr)
    det.meta.update({"options": method.options(), "threshold": threshold, "target_fpr": float(fpr),
                     "val_fpr": float((val_scores > threshold).mean()), "val_scores": score_stats(val_scores),
                     "train_windows": len(train), "val_windows": len(val), "seed": int(seed),
                     "fit_seconds": round(time.perf_counter() - t0, 2), "data": data or {},
                     "channel_names": channel_names or [f"ch{i}" for i in range(shape[0])]})
    return det


# ------------------------------------------------------------------------------------------------ files


def save_series(det: SeriesDetector, directory: str | Path) -> Path:
    """detector.safetensors (standardization and learnt arrays) + detector.json (threshold, SHA-256)."""
    if det.name == "recon" and not det.method.model:
        raise GenforgeError("recon detector built on a bare callable cannot be saved: fit it with model=RUN")
    directory = Path(directory)
    arrays = {"mean": det.mean, "std": det.std, **det.method.arrays()}
    meta = {**det.meta, "options": det.method.options(), "genforge_version": __version__}
    det.meta = write_weights(directory / WEIGHTS, directory / CONFIG, arrays, meta, FORMAT, stamp=True)
    return directory


def is_series_detector(directory: str | Path) -> bool:
    """Whether `directory` holds a series detector (for the CLI's dispatch; any error is left to the loader)."""
    path = Path(directory)
    path = path.parent if path.is_file() else path
    try:
        return read_json(path / CONFIG, ModelFileError).get("format") == FORMAT
    except (ModelFileError, AttributeError):
        return False


def load_series_detector(directory: str | Path) -> SeriesDetector:
    """Load a saved series detector; JSON fields, array shapes and the SHA-256 are checked before use."""
    directory = Path(directory)
    directory = directory.parent if directory.is_file() else directory
    path = directory / CONFIG
    meta = read_json(path, ModelFileError, missing="missing (not a detector directory; make one with genforge "
                                                   "inspect fit)")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: not a genforge series detector (format {FORMAT!r} version {FORMAT_VERSION})")
    for key, typ in {"detector": str, "options": dict, "shape": list, "threshold": float,
                     "weights_sha256": str}.items():
        if not isinstance(meta.get(key), typ):
            raise ModelFileError(f"{path}: field '{key}' missing or not a {typ.__name__}")
    if meta["detector"] not in DETECTORS:
        raise ModelFileError(f"{path}: unknown series detector {meta['detector']!r}; this genforge has "
                             f"{', '.join(DETECTORS)}")
    shape = meta["shape"]
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ModelFileError(f"{path}: field 'shape' must be [channels, window], got {shape}")
    weights = directory / WEIGHTS
    tensors = read_weights(weights, path, meta)  # their shapes are checked below, against the method built
    try:
        method = DETECTORS[meta["detector"]](tuple(shape), **meta["options"])
    except (TypeError, GenforgeError) as e:
        raise ModelFileError(f"{path}: field 'options' does not describe a {meta['detector']} detector ({e})") \
            from None
    arrays = {k: v.numpy() for k, v in tensors.items()}
    expected = {"mean": (shape[0],), "std": (shape[0],), **{k: v.shape for k, v in method.arrays().items()}}
    if set(arrays) != set(expected) or any(arrays[k].shape != s for k, s in expected.items()):
        raise ModelFileError(f"{weights}: tensors do not match the {meta['detector']} detector of shape {shape}")
    mean, std = arrays.pop("mean"), arrays.pop("std")
    method.load_arrays(arrays)
    if meta["detector"] == "recon":
        method.mean, method.std = mean, std
    return SeriesDetector(method, meta, mean, std)


# ------------------------------------------------------------------------------------------- whole runs


def run_windows(runs: list[np.ndarray], window: int, lo_frac: float = 0.0, hi_frac: float = 1.0) -> np.ndarray:
    """Every window (stride 1) of samples [lo_frac, hi_frac) of each run (C, L_r): (N, C, window) float64."""
    parts = []
    for r in runs:
        lo, hi = int(r.shape[1] * lo_frac), int(r.shape[1] * hi_frac)
        if hi - lo >= window:
            parts.append(sliding_windows(r[:, lo:hi], window))
    if not parts:
        raise DataError(f"no part of the normal runs is {window} samples long; shorten the window")
    return np.concatenate(parts, dtype=np.float64, casting="unsafe")  # one copy; casts as astype would


def fit_on_runs(name: str, normal_runs: list[np.ndarray], window: int, *, val_fraction: float = 0.2,
                val_runs: list[np.ndarray] | None = None, **kwargs) -> SeriesDetector:
    """Fit on the first 1 - val_fraction of each normal run, threshold on the rest (later data calibrates the
    model of earlier data, as a monitor put into service would be). ``val_runs``: other normal runs that set
    the threshold instead (a detector that learns its training runs closely, such as a network's
    reconstruction, needs runs it never saw to set a threshold that holds on new ones); every sample of
    ``normal_runs`` then trains it."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise GenforgeError(f"window must be a positive whole number of samples, got {window!r}")
    if val_runs is not None:
        return fit_series(name, run_windows(normal_runs, window), run_windows(val_runs, window), **kwargs)
    if not 0 < val_fraction < 1:
        raise GenforgeError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    train = run_windows(normal_runs, window, 0.0, 1 - val_fraction)
    val = run_windows(normal_runs, window, 1 - val_fraction, 1.0)
    return fit_series(name, train, val, **kwargs)


def score_runs(det: SeriesDetector, x: np.ndarray, lengths: np.ndarray, onset: int | None,
               labels: list[str], where: str = "run") -> list[tuple[str, RunScore]]:
    """Score each run x[r, :, :lengths[r]] (a run that shut the plant down stops early)."""
    return [(labels[r], det.score_run(x[r, :, : int(lengths[r])], onset, f"{where} {labels[r]}"))
            for r in range(len(x))]


def fault_table(rows: list[dict]) -> dict[str, dict]:
    """Per fault (rows grouped by 'fault'): mean detection rate, mean false-alarm rate before the onset, median
    delay over the runs that were detected, and how many runs were."""
    out: dict[str, dict] = {}
    for fault in dict.fromkeys(r["fault"] for r in rows):
        group = [r for r in rows if r["fault"] == fault]
        delays = [r["delay"] for r in group if r["delay"] is not None]
        rates = [r["detection_rate"] for r in group if r["detection_rate"] is not None]
        fars = [r["false_alarm_rate"] for r in group if r["false_alarm_rate"] is not None]
        out[fault] = {"runs": len(group), "detected": len(delays),
                      "detection_rate": float(np.mean(rates)) if rates else None,
                      "false_alarm_rate": float(np.mean(fars)) if fars else None,
                      "median_delay": float(np.median(delays)) if delays else None}
    return out


def run_row(label: str, fault: str, rs: RunScore, channel_names: list[str], top: int = 5) -> dict:
    order = np.argsort(rs.contributions)[::-1][:top]
    return {"run": label, "fault": fault, "samples": int(rs.times[-1] + 1), "windows": len(rs.alarm),
            "onset": rs.onset, "delay": rs.delay,
            "detection_rate": rs.detection_rate, "false_alarm_rate": rs.false_alarm_rate,
            "alarms": int(rs.alarm.sum()), "top_channels": [[channel_names[i], float(rs.contributions[i])]
                                                           for i in order]}


# ------------------------------------------------------------------------- data specs (the CLI's path)


def is_series_spec(spec: str) -> bool:
    """Whether a data spec names a series source (ucr:, tep:, series-csv:, series-npz:)."""
    kind, sep, _ = str(spec).strip().partition(":")
    return bool(sep) and kind in KINDS


def _log_runs(spec: str, time_column: str | None, label_column: str | None):
    """(runs (1, C, L), lengths, labels, channel names) of a series-csv / series-npz log: the whole log as one run."""
    kind, path = parse_series_spec(spec)
    if kind == "series-csv":
        log = read_csv_log(path, time_column=time_column, label_column=label_column)
    else:
        log = read_npz_log(path)
    values = log.values.T[None]  # (1, C, L)
    return values, np.array([values.shape[2]]), [Path(path).name], log.channel_names


def tep_normal_runs(data, every_split: bool = False) -> list[np.ndarray]:
    """The normal-operation runs (IDV 0) of simulated TEP data, each (C, L_r): the training split's, and the test
    split's too when ``every_split``."""
    return [part.x[r, :, : int(part.length[r])] for part in ((data.train, data.test) if every_split else (data.train,))
            for r in np.flatnonzero(part.fault == 0)]


def _normal_runs(spec: str, *, time_column: str | None, label_column: str | None, cache: Path | None, log,
                 every_split: bool = False) -> tuple[list[np.ndarray], list[str], dict]:
    """(runs (C, L_r), channel names, about) of a source's normal operation. tep: the normal training runs
    (IDV 0), and its normal test runs too when ``every_split`` (a source kept apart for thresholds);
    series-csv and series-npz: the whole log (it must be normal operation)."""
    kind, rest = parse_series_spec(spec)
    if kind == "ucr":
        raise GenforgeError(f"{spec}: fault detection runs on recordings (tep:, series-csv:, series-npz:); a UCR "
                            "set is a set of labelled examples, not a run of normal operation")
    if kind == "tep":
        data = load_tep(rest, cache=cache, log=log)
        runs = tep_normal_runs(data, every_split)
        return runs, data.channel_names, {"spec": spec, "normal_runs": len(runs)}
    x, _, _, names = _log_runs(spec, time_column, label_column)
    return [x[0]], names, {"spec": spec, "normal_runs": 1, "time_column": time_column, "label_column": label_column}


def fit_spec(detector: str, spec: str, window: int, *, fpr: float = DEFAULT_FPR, seed: int = 0,
             options: dict | None = None, val_fraction: float = 0.2, val_spec: str | None = None,
             time_column: str | None = None, label_column: str | None = None, cache: Path | None = None,
             log=None) -> SeriesDetector:
    """Fit on the normal operation of a series source. tep: the normal training runs (IDV 0); series-csv and
    series-npz: the whole log (it must be normal operation). The last `val_fraction` of each run sets the
    threshold, or, with ``val_spec``, the normal operation of that other source (tep: its normal training and
    test runs; a log: the whole log), and every sample of ``spec`` trains."""
    model = None
    if detector == "recon":  # the window is the model's example length
        from genforge.generation.model import load as load_model  # torch models load only for this detector

        if not (options or {}).get("model"):
            raise GenforgeError("recon detector: name the trained series model with --set model=RUN")
        model = load_model(options["model"], device="cpu")  # read once: its length here, its reconstruction below
        length = int(model.example_shape[1])
        if window not in (1, length):
            raise GenforgeError(f"recon detector: {options['model']} reconstructs windows of {length} samples; "
                                f"--window {window} does not match (leave it out)")
        window = length
    runs, names, about = _normal_runs(spec, time_column=time_column, label_column=label_column, cache=cache,
                                      log=log)
    val_runs = None
    if val_spec is not None:
        val_runs, val_names, val_about = _normal_runs(val_spec, time_column=time_column, label_column=label_column,
                                                      cache=cache, log=log, every_split=True)
        if len(val_names) != len(names):
            raise DataError(f"{val_spec}: {len(val_names)} channels; the detector fits {len(names)} of {spec}")
        about = {**about, "val_spec": val_spec, "val_runs": val_about["normal_runs"]}
    reconstruct = None
    if model is not None:
        reconstruct = model_reconstructor(str(options["model"]), str(options.get("mode", "auto")), (len(names), window),
                                          loaded=model)
    return fit_on_runs(detector, runs, window, val_fraction=val_fraction, val_runs=val_runs, fpr=fpr, seed=seed,
                       options=options, data=about, channel_names=names, reconstruct=reconstruct)


def score_spec(det: SeriesDetector, spec: str, *, onset: int | None = None, cache: Path | None = None,
               log=None) -> tuple[list[tuple[str, str, RunScore]], dict]:
    """Score the runs of a series source: tep: every test run (fault introduced at the protocol's onset);
    series-csv / series-npz: the whole log as one run (`onset`: where a known fault starts, if any)."""
    kind, rest = parse_series_spec(spec)
    if kind == "ucr":
        raise GenforgeError(f"{spec}: fault detection scores recordings (tep:, series-csv:, series-npz:), not UCR "
                            "examples")
    if kind == "tep":
        data = load_tep(rest, cache=cache, log=log)
        t = data.test
        labels = [f"IDV{int(f):02d} seed {int(s)}" for f, s in zip(t.fault, t.seed)]
        scored = score_runs(det, t.x, t.length, data.protocol.onset if onset is None else onset, labels, spec)
        faults = [f"IDV{int(f):02d}" if f else "normal" for f in t.fault]
        return [(label, fault, rs) for (label, rs), fault in zip(scored, faults)], {"data": spec, "split": "test"}
    fit = det.meta.get("data") or {}
    x, lengths, labels, _ = _log_runs(spec, fit.get("time_column"), fit.get("label_column"))
    scored = score_runs(det, x, lengths, onset, labels, spec)
    return [(label, "log", rs) for label, rs in scored], {"data": spec, "split": "all"}
