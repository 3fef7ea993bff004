"""Sensor time series: read a source, bring it to one shape, normalize per channel, split.

    splits = load_series("ucr:GunPoint")                                  # shipped train/test, val from train
    splits = load_series("ucr:PLAID", length_policy="resample", length=512)
    splits = load_series("series-csv:plant.csv", window=128, stride=32, time_column="t")
    splits = load_series("tep:faults=1-21;seeds=0-2", window=100, stride=20)
    splits.train.x            # float32 (N, C, T), normalized; splits.normalization.invert(x) gives units
    print(check_series("tep:"))                                            # what `genforge data check` prints

Spec forms (prefixes chosen not to clash with the image sources `npz:` and `folder:`, so the prefix alone
says which modality a spec belongs to):

    ucr:NAME              a UCR/UEA set carried by the sktime wheel (ucr.py, parsed by ts.py)
    tep:[OPTIONS]         the Tennessee Eastman process simulated by tep-studio (tep.py)
    series-csv:FILE       a CSV log, one column per channel (windows.py)
    series-npz:FILE       an .npz log with x (time, channels) (windows.py)

The spec names the data; how it is shaped (length policy, window, missing values, normalization) is
named by the caller, never guessed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.series.base import (
    LENGTH_POLICIES,
    MISSING_POLICIES,
    NORMALIZATIONS,
    Normalization,
    SeriesSet,
    check_policy,
    fit_normalization,
    sliding_windows,
)
from genforge.data.series.tep import load_tep
from genforge.data.series.ucr import load_ucr
from genforge.data.series.windows import make_windows, read_csv_log, read_npz_log
from genforge.data.split import split_indices
from genforge.errors import DataError

__all__ = [
    "KINDS",
    "LENGTH_POLICIES",
    "MISSING_POLICIES",
    "NORMALIZATIONS",
    "Normalization",
    "SeriesSet",
    "SeriesSplits",
    "check_series",
    "load_series",
    "parse_series_spec",
]

KINDS = ("ucr", "tep", "series-csv", "series-npz")
SPEC_FORMS = "ucr:NAME, tep:[OPTIONS], series-csv:FILE, series-npz:FILE"


@dataclass(eq=False)
class SeriesSplits:
    """A series source split three ways, normalized with statistics of the train split."""

    name: str  # the spec as given
    train: SeriesSet
    val: SeriesSet
    test: SeriesSet
    class_names: list[str] | None
    channel_names: list[str]
    normalization: Normalization  # fitted on train; invert() restores the data's units
    notes: list[str] = field(default_factory=list)

    @property
    def example_shape(self) -> tuple[int, int]:
        """(channels, time)"""
        return self.train.x.shape[1], self.train.x.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names is not None else 0

    def describe(self) -> str:
        c, t = self.example_shape
        lines = [f"{self.name}: {c} channel(s) x {t} samples per example"]
        for part in ("train", "val", "test"):
            s = getattr(self, part)
            counts = ""
            if s.y is not None and self.class_names:
                k = np.bincount(s.y, minlength=len(self.class_names))
                counts = " (" + ", ".join(f"{n} {m}" for n, m in zip(self.class_names, k)) + ")"
            lines.append(f"  {part}: {len(s)} examples{counts}")
        norm = self.normalization
        lines.append(f"  normalization: {norm.method} per channel, fitted on train"
                     + (f"; constant channels kept unscaled: {', '.join(self.channel_names[i] for i in norm.constant)}"
                        if norm.constant else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def parse_series_spec(spec: str) -> tuple[str, str]:
    """"ucr:GunPoint" -> ("ucr", "GunPoint"); file paths have ~ expanded."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"series source spec {spec!r} is empty; valid forms: {SPEC_FORMS}")
    kind, sep, rest = spec.strip().partition(":")  # the first colon only: paths may hold colons
    if kind not in KINDS or not sep:
        raise DataError(f"unknown series source spec {spec!r}; valid forms: {SPEC_FORMS}")
    if kind != "tep" and not rest:
        raise DataError(f"series source spec {spec!r} names nothing after '{kind}:'")
    return kind, os.path.expanduser(rest) if kind.startswith("series-") else rest


def load_series(
    spec: str,
    *,
    length_policy: str = "equal",
    length: int | None = None,
    missing: str = "refuse",
    window: int | None = None,
    stride: int | None = None,
    time_column: str | None = None,
    label_column: str | None = None,
    normalize: str = "zscore",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache: Path | None = None,
) -> SeriesSplits:
    """Load `spec`, shape it, split it and normalize it with statistics of the train split.

    ucr: the archive's test split is the test set; val is a stratified val_fraction of train (seeded).
      length_policy ("equal", "pad", "resample", "crop") and length bring ragged sets to one length.
    tep: windows of `window` samples every `stride` from the training runs (the last val_fraction of each run
      is val) and from the test runs (a window before the fault onset is labeled normal; one that straddles
      the onset is left out). Normalization is fitted on normal operation only, as process monitoring does.
    series-csv / series-npz: the log is split by time (train, then val, then test, so no window straddles two
      parts) and each part cut into windows of `window` rows every `stride` (default: window, no overlap).
    missing: "refuse" or "fill" (linear interpolation) for missing values. normalize: "zscore", "minmax"
      (to [-1, 1]) or "none".
    """
    check_policy("length_policy", length_policy, LENGTH_POLICIES)
    check_policy("missing", missing, MISSING_POLICIES)
    check_policy("normalize", normalize, NORMALIZATIONS)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    kind, rest = parse_series_spec(spec)
    if kind != "ucr" and window is None:
        raise DataError(f"{spec}: {kind} sources are long recordings; name a window length (window=N)")
    if kind == "ucr":
        return _load_ucr(spec, rest, length_policy, length, missing, normalize, val_fraction, seed)
    if kind == "tep":
        return _load_tep(spec, rest, window, stride or window, normalize, val_fraction, cache)
    return _load_log(spec, kind, rest, window, stride or window, time_column, label_column, missing, normalize,
                     val_fraction, test_fraction)


def check_series(spec: str, **kwargs) -> str:
    """The printable description of what load_series(spec, **kwargs) reads (for `genforge data check`);
    `tep:` adds what was simulated."""
    kind, rest = parse_series_spec(spec)
    if kind == "tep" and kwargs.get("window") is None:
        return load_tep(rest, cache=kwargs.get("cache")).describe()
    return load_series(spec, **kwargs).describe()


def _normalized(name, train, val, test, class_names, channels, normalize, notes, fit_on=None) -> SeriesSplits:
    fit = fit_on if fit_on is not None else train
    norm = fit_normalization(fit.x, normalize, mask=fit.mask)
    for s in (train, val, test):
        s.x = norm.apply(s.x)
        if s.mask is not None:
            s.x[np.broadcast_to(~s.mask[:, None, :], s.x.shape)] = 0.0  # padding stays exactly zero
    return SeriesSplits(name, train, val, test, class_names, channels, norm, notes)


def _take(s: SeriesSet, idx: np.ndarray) -> SeriesSet:
    return SeriesSet(x=s.x[idx], y=None if s.y is None else s.y[idx], mask=None if s.mask is None else s.mask[idx],
                     lengths=None if s.lengths is None else s.lengths[idx])


def _load_ucr(spec, name, length_policy, length, missing, normalize, val_fraction, seed) -> SeriesSplits:
    data = load_ucr(name, length_policy=length_policy, length=length, missing=missing)
    val_idx, train_idx = split_indices(data.train.y, len(data.train), (val_fraction,), seed)
    channels = [f"dim{c}" for c in range(data.train.x.shape[1])]
    notes = [f"test is the split shipped with the archive ({data.files[1].name}); val is {val_fraction:g} of train",
             *data.notes]
    return _normalized(spec, _take(data.train, train_idx), _take(data.train, val_idx), data.test,
                       data.class_names, channels, normalize, notes)


def _load_tep(spec, options, window, stride, normalize, val_fraction, cache) -> SeriesSplits:
    data = load_tep(options, cache=cache)
    faults = list(data.protocol.faults)
    label = {0: 0, **{f: k + 1 for k, f in enumerate(faults)}}

    def windows(runs, lo_frac, hi_frac, onset):
        c = runs.x.shape[1]
        xs, ys = [np.zeros((0, c, window), np.float32)], [np.zeros(0, np.int64)]
        for r in range(len(runs.fault)):
            n = int(runs.length[r])
            lo, hi = int(n * lo_frac), int(n * hi_frac)
            w = sliding_windows(runs.x[r, :, lo:hi], window, stride)  # (k, C, window)
            start = lo + stride * np.arange(len(w))
            faulty = (start + window > onset) & (runs.fault[r] != 0)
            keep = ~(faulty & (start < onset))  # one that straddles the fault onset is neither normal nor faulty
            xs.append(w[keep])
            ys.append(np.where(faulty[keep], label[int(runs.fault[r])], 0))
        return SeriesSet(x=np.concatenate(xs).astype(np.float32, copy=False), y=np.concatenate(ys).astype(np.int64))

    shortest = int(data.train.length.min())
    if shortest * (1 - val_fraction) < window:
        raise DataError(f"{spec}: window {window} does not fit a training run of {shortest} samples "
                        f"(less {val_fraction:g} for val)")
    train = windows(data.train, 0.0, 1 - val_fraction, 0)
    val = windows(data.train, 1 - val_fraction, 1.0, 0)
    test = windows(data.test, 0.0, 1.0, data.protocol.onset)
    normal = data.train.fault == 0
    fit = SeriesSet(x=data.train.x[normal][:, :, : int(data.train.length[normal].min())], y=None)
    notes = [data.describe().splitlines()[-1].strip(),
             "normalization fitted on the normal-operation training runs"]
    if data.meta.get("shutdowns"):
        notes.append(f"{len(data.meta['shutdowns'])} run(s) shut the plant down early; their windows stop there")
    return _normalized(spec, train, val, test, data.class_names, data.channel_names, normalize, notes, fit_on=fit)


def _load_log(spec, kind, path, window, stride, time_column, label_column, missing, normalize, val_fraction,
              test_fraction) -> SeriesSplits:
    if kind == "series-csv":
        log = read_csv_log(path, time_column=time_column, label_column=label_column, missing=missing)
    else:
        if time_column is not None or label_column is not None:
            raise DataError(f"{spec}: an .npz log names its time and labels by array (t, y), not by column")
        log = read_npz_log(path, missing=missing)
    rows = len(log.values)
    if rows < window:
        raise DataError(f"{log.origin}: {rows} rows, fewer than one window of {window}")
    # Chronological parts: train first, then val, then test (later data tests a model of earlier data).
    n_test, n_val = int(round(rows * test_fraction)), int(round(rows * val_fraction))
    bounds = {"train": (0, rows - n_val - n_test), "val": (rows - n_val - n_test, rows - n_test),
              "test": (rows - n_test, rows)}
    parts, dropped = {}, 0
    for part, (lo, hi) in bounds.items():
        if hi == lo and part != "train":
            parts[part] = SeriesSet(x=np.zeros((0, log.values.shape[1], window), np.float32),
                                    y=None if log.labels is None else np.zeros(0, np.int64))
            continue
        parts[part], k = make_windows(log, lo, hi, window, stride, part)
        dropped += k
    notes = [f"{rows} rows split by time: train rows 0-{bounds['train'][1] - 1}"
             + "".join(f", {p} rows {lo}-{hi - 1}" for p, (lo, hi) in bounds.items() if p != "train" and hi > lo)]
    if log.filled:
        notes.append(f"{log.filled} missing values filled by linear interpolation")
    if dropped:
        notes.append(f"{dropped} window(s) straddling a label change left out")
    lo, hi = bounds["train"]
    fit = SeriesSet(x=log.values[lo:hi].T[None].astype(np.float64), y=None)  # raw rows: no window overlap bias
    return _normalized(spec, parts["train"], parts["val"], parts["test"], log.class_names, log.channel_names,
                       normalize, notes, fit_on=fit)
