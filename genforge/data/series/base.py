"""What every series reader hands over: float32 (N, channels, time) examples, labels, and the shared policies.

    x = apply_length_policy(series, "resample", length=256, ...)   # ragged cases -> one (N, C, 256) array
    norm = fit_normalization(train.x, "zscore", mask=train.mask)    # per channel, stored with a model later
    x01 = norm.apply(x); x == norm.invert(x01)
    w = sliding_windows(run, 100, stride=20)                        # (C, L) run -> (N, C, 100) view, no copy

The policies are named by the caller (a config field), never guessed: a ragged archive under the default
"equal" policy is an error that names the line, not a silent crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genforge.errors import DataError

LENGTH_POLICIES = ("equal", "pad", "resample", "crop")
MISSING_POLICIES = ("refuse", "fill")
NORMALIZATIONS = ("zscore", "minmax", "asinh", "none")


# eq=False: comparing arrays field by field is ambiguous; identity is what == means here.
@dataclass(eq=False)
class SeriesSet:
    """Examples of one split."""

    x: np.ndarray  # float32 (N, C, T)
    y: np.ndarray | None  # int64 (N,) class indices, or None when unlabeled
    mask: np.ndarray | None = None  # bool (N, T): True where observed; only the "pad" policy sets it
    lengths: np.ndarray | None = None  # int64 (N,) lengths before the length policy; None when all are T

    def __len__(self) -> int:
        return len(self.x)


def check_policy(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def fill_missing(values: np.ndarray, missing: np.ndarray, where: str) -> np.ndarray:
    """Linear interpolation over time of the samples marked `missing`, per channel; (C, T) float64.

    Ends take the nearest observed sample. A channel with no observed sample at all cannot be filled.
    """
    out = values.astype(np.float64, copy=True)
    t = np.arange(values.shape[1])
    for c in range(values.shape[0]):
        gone = missing[c]
        if not gone.any():
            continue
        if gone.all():
            raise DataError(f"{where}: channel {c + 1} has no observed sample, so its missing values cannot be filled")
        out[c, gone] = np.interp(t[gone], t[~gone], out[c, ~gone])
    return out


def target_length(policy: str, lengths: np.ndarray, length: int | None) -> int:
    """The common length the policy produces: `length` if given, else the longest ("pad", "resample",
    "equal") or the shortest ("crop") case."""
    check_policy("length_policy", policy, LENGTH_POLICIES)
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise DataError(f"length must be a positive whole number, got {length!r}")
        return int(length)
    return int(lengths.min() if policy == "crop" else lengths.max())


def apply_length_policy(series: list[np.ndarray], policy: str, target: int, where: list[str]) -> SeriesSet:
    """Ragged (C, T_i) cases -> one float32 (N, C, target) array under `policy`.

    equal: every case must already be `target` long. pad: zeros appended, mask marks real samples; a case
    longer than `target` is an error. resample: linear interpolation onto `target` evenly spaced points
    spanning the case. crop: the first `target` samples; a shorter case is an error.
    `where[i]` names case i in errors ("GunPoint_TRAIN.ts: line 12").
    """
    check_policy("length_policy", policy, LENGTH_POLICIES)
    lengths = np.array([s.shape[1] for s in series], dtype=np.int64)
    n, c = len(series), (series[0].shape[0] if series else 0)
    x = np.zeros((n, c, target), dtype=np.float32)
    mask = np.zeros((n, target), dtype=bool) if policy == "pad" else None
    for i, s in enumerate(series):
        t = s.shape[1]
        if policy == "equal":
            if t != target:
                raise DataError(
                    f"{where[i]}: series of length {t}, but length_policy equal needs every series {target} "
                    "long; choose length_policy pad, resample or crop for ragged data"
                )
            x[i] = s
        elif policy == "pad":
            if t > target:
                raise DataError(f"{where[i]}: series of length {t} does not fit the pad length {target}; "
                                "raise length or use resample/crop")
            x[i, :, :t] = s
            mask[i, :t] = True
        elif policy == "crop":
            if t < target:
                raise DataError(f"{where[i]}: series of length {t} is shorter than the crop length {target}")
            x[i] = s[:, :target]
        else:  # resample
            # Sample positions 0..t-1 of the case mapped onto target evenly spaced points (end points kept).
            pos = np.linspace(0.0, t - 1, target)
            for ch in range(c):
                x[i, ch] = np.interp(pos, np.arange(t), s[ch])
    ragged = lengths.min() != lengths.max() if n else False
    return SeriesSet(x=x, y=None, mask=mask, lengths=lengths if ragged or policy != "equal" else None)


def sliding_windows(run: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Windows of `window` samples every `stride` samples along the last (time) axis of `run` (..., L).

    Returns a read-only view (N, ..., window), N = (L - window) // stride + 1, window k being
    run[..., k * stride : k * stride + window]; nothing is copied until the caller copies it, so a long run can be
    scored a chunk of windows at a time. A run shorter than one window gives N = 0.
    """
    if run.shape[-1] < window:
        return np.zeros((0, *run.shape[:-1], window), run.dtype)
    view = np.lib.stride_tricks.sliding_window_view(run, window, axis=-1)[..., ::stride, :]  # (..., N, window)
    return np.moveaxis(view, -2, 0)


def constant_channels(shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """bool (C,): channels whose spread `scale` is nil next to their level `shift` (a valve held shut).

    The threshold is relative: a channel at 300 kPa varying by 1e-12 is constant too. Such a channel is
    standardized with scale 1, so a later move of it still shows.
    """
    return scale <= 1e-12 * np.maximum(1.0, np.abs(shift))


@dataclass(eq=False)
class Normalization:
    """Per-channel map, stored with a model to undo it on samples: normalized = (x - shift) / scale, or for
    "asinh" asinh((x - shift) / scale) / limit (linear within a scale of the centre, logarithmic beyond)."""

    method: str  # "zscore", "minmax" (to [-1, 1]), "asinh" (to [-1, 1]) or "none"
    shift: np.ndarray  # float64 (C,)
    scale: np.ndarray  # float64 (C,), > 0
    constant: tuple[int, ...] = ()  # channels with no spread in the fitting data (scale left at 1)
    limit: np.ndarray | None = None  # "asinh" only: float64 (C,) > 0, asinh of the largest |x - shift| / scale

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, C, T) in the data's units -> float32 normalized."""
        z = (x - self.shift[:, None]) / self.scale[:, None]
        if self.method == "asinh":
            z = np.arcsinh(z) / self.limit[:, None]
        return z.astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """(N, C, T) normalized -> float32 in the data's units."""
        if self.method == "asinh":  # sinh grows fast: a sample beyond the fitted range is held at its edge
            x = np.sinh(np.clip(x, -1.0, 1.0) * self.limit[:, None])
        return (x * self.scale[:, None] + self.shift[:, None]).astype(np.float32)

    def to_json(self) -> dict:
        d = {"method": self.method, "shift": self.shift.tolist(), "scale": self.scale.tolist(),
             "constant": list(self.constant)}
        if self.method == "asinh":
            d["limit"] = self.limit.tolist()
        return d

    @classmethod
    def from_json(cls, d: dict, origin: str) -> Normalization:
        """The inverse of to_json, checked: a model file's normalization is input like any other."""
        try:
            method, shift, scale = d["method"], np.asarray(d["shift"], np.float64), np.asarray(d["scale"], np.float64)
            constant = tuple(int(c) for c in d.get("constant", ()))
            limit = np.asarray(d["limit"], np.float64) if method == "asinh" else None
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{origin}: normalization is malformed ({e})") from None
        check_policy(f"{origin}: normalization method", method, NORMALIZATIONS)
        if shift.ndim != 1 or shift.shape != scale.shape or not np.isfinite(shift).all() or not (scale > 0).all():
            raise DataError(f"{origin}: normalization needs equal-length finite shift and positive scale lists")
        if not all(0 <= c < len(shift) for c in constant):
            raise DataError(f"{origin}: normalization lists a constant channel outside 0..{len(shift) - 1}")
        if limit is not None and (limit.shape != shift.shape or not (np.isfinite(limit) & (limit > 0)).all()):
            raise DataError(f"{origin}: an asinh normalization needs a positive finite 'limit' per channel")
        return cls(method, shift, scale, constant, limit)


def fit_normalization(x: np.ndarray, method: str, mask: np.ndarray | None = None) -> Normalization:
    """Per-channel statistics of float (N, C, T) `x` (only samples where `mask` (N, T) is True).

    zscore: mean and standard deviation; minmax: the midpoint and half-range, so the data spans [-1, 1].
    asinh: the median and a robust spread (1.4826 x the median absolute deviation, else the standard
    deviation), then asinh, scaled so the data spans [-1, 1]. Where rare excursions (a plant's faults) are tens
    of spreads away, minmax squeezes the common case into a sliver of [-1, 1]; asinh keeps it wide and
    compresses only the excursions.
    A channel without spread (a valve held shut) keeps scale 1 and is listed in `constant`.
    """
    check_policy("normalize", method, NORMALIZATIONS)
    c = x.shape[1]
    if method == "none":
        return Normalization("none", np.zeros(c), np.ones(c))
    # (C, samples): every observed sample of every example, channel by channel.
    flat = np.moveaxis(x, 1, 0).reshape(c, -1).astype(np.float64)
    if mask is not None:
        flat = flat[:, np.broadcast_to(mask, (x.shape[0], x.shape[2])).reshape(-1)]
    if flat.shape[1] == 0:
        raise DataError("cannot fit a normalization on no samples")
    if method == "zscore":
        shift, scale = flat.mean(axis=1), flat.std(axis=1)
    elif method == "minmax":
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        shift, scale = (hi + lo) / 2, (hi - lo) / 2
    else:
        shift = np.median(flat, axis=1)
        mad = 1.4826 * np.median(np.abs(flat - shift[:, None]), axis=1)
        scale = np.where(constant_channels(shift, mad), flat.std(axis=1), mad)  # mostly one value: its std
    flat_channels = constant_channels(shift, scale)
    scale = np.where(flat_channels, 1.0, scale)
    constant = tuple(int(i) for i in np.flatnonzero(flat_channels))
    if method != "asinh":
        return Normalization(method, shift, scale, constant)
    limit = np.arcsinh(np.abs(flat - shift[:, None]).max(axis=1) / scale)
    return Normalization(method, shift, scale, constant, np.where(limit > 0, limit, 1.0))
