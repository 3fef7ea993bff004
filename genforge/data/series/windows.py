"""A user's own sensor logs (`series-csv:FILE`, `series-npz:FILE`) and cutting them into windows.

CSV: a header row naming the columns, then one row per time step; every column is a channel except the
optional time column (numbers, or ISO 8601 date-times) and label column (any text). An empty cell is a
missing value (filled or refused as configured); "nan" or "inf" written in a cell is an error, because a
logger that writes NaN has usually failed rather than skipped a reading.

npz: `x` float or integer (T, C), optional `t` (T,) time stamps, `y` (T,) integer labels and `channels`
(C,) names. numpy has no empty cell, so NaN marks a missing value there; infinities are an error.

Windows are cut after splitting the log by time, so no window straddles train and test.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from genforge.crypto import plain_source
from genforge.data.npz import read_npz_arrays
from genforge.data.series.base import MISSING_POLICIES, SeriesSet, check_policy, fill_missing, sliding_windows
from genforge.errors import DataError

MAX_CSV_BYTES = 2 * 2**30
# A step this much longer than the usual one means samples are missing.
GAP_FACTOR = 1.5


@dataclass(eq=False)
class Log:
    """One log, as read: rows are time steps."""

    origin: str  # the file, for messages
    values: np.ndarray  # float64 (T, C), missing values filled
    channel_names: list[str]
    time: np.ndarray | None  # float64 (T,) seconds (or the file's own unit), strictly increasing
    labels: np.ndarray | None  # int64 (T,) indices into class_names
    class_names: list[str] | None
    filled: int = 0  # missing values filled


def read_csv_log(path: str | Path, *, time_column: str | None = None, label_column: str | None = None,
                 missing: str = "refuse") -> Log:
    """Read a CSV log; every column except `time_column` and `label_column` is a channel."""
    check_policy("missing", missing, MISSING_POLICIES)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes, over the {MAX_CSV_BYTES} byte limit for a CSV log")
    source = plain_source(path)  # a file encrypted at rest reads like a plain one
    raw = source.read() if isinstance(source, io.BytesIO) else path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")
    names = [h.strip() for h in header]
    if "" in names:
        raise DataError(f"{path}: line 1: column {names.index('') + 1} has no name")
    twice = [n for n in names if names.count(n) > 1]
    if twice:
        raise DataError(f"{path}: line 1: column name {twice[0]!r} appears twice")
    for role, col in (("time_column", time_column), ("label_column", label_column)):
        if col is not None and col not in names:
            raise DataError(f"{path}: {role} {col!r} is not a column; columns: {', '.join(names)}")
    channels = [n for n in names if n not in (time_column, label_column)]
    if not channels:
        raise DataError(f"{path}: no channel columns (only the time/label columns)")
    ch_idx = [names.index(n) for n in channels]

    rows, lines = [], []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(names):
            raise DataError(f"{path}: line {reader.line_num}: {len(row)} cells, but the header names "
                            f"{len(names)} columns")
        rows.append(row)
        lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")

    values = np.empty((len(rows), len(channels)), dtype=np.float64)
    gone = np.zeros(values.shape, dtype=bool)
    for c, k in enumerate(ch_idx):
        cells = [row[k] for row in rows]
        try:
            values[:, c] = np.array(cells, dtype=np.float64)  # the fast path: a column of plain numbers
        except ValueError:  # an empty or bad cell somewhere: cell by cell, to say which
            for r, cell in enumerate(cells):
                cell = cell.strip()
                if not cell:
                    gone[r, c] = True
                    continue
                try:
                    values[r, c] = float(cell)
                except ValueError:
                    raise DataError(f"{path}: line {lines[r]}, column {channels[c]!r}: {cell!r} is not a number") \
                        from None
        bad = ~np.isfinite(values[:, c]) & ~gone[:, c]
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: line {lines[r]}, column {channels[c]!r}: {cells[r].strip()!r} is not a finite "
                            "number (NaN or infinite; leave the cell empty for a missing value)")
    where = [f"{path}: line {n}" for n in lines]
    values, filled = _missing(values, gone, missing, where, channels)

    time = None
    if time_column is not None:
        k = names.index(time_column)
        time = np.array([_time_value(row[k].strip(), where[r], time_column) for r, row in enumerate(rows)])
        _check_time(time, where, time_column)
    labels = class_names = None
    if label_column is not None:
        k = names.index(label_column)
        text_labels = [row[k].strip() for row in rows]
        if "" in text_labels:
            raise DataError(f"{where[text_labels.index('')]}: column {label_column!r}: empty label")
        labels, class_names = _encode_labels(text_labels)
    return Log(str(path), values, channels, time, labels, class_names, filled)


def read_npz_log(path: str | Path, *, missing: str = "refuse") -> Log:
    """Read `x` (T, C) and optional `t`, `y`, `channels` from an .npz log (NaN in x marks a missing value)."""
    check_policy("missing", missing, MISSING_POLICIES)
    path = Path(path)
    # each array's header is checked and charged to the data budget before it is read (genforge.data.npz)
    arrays = read_npz_arrays(path, ("x", "t", "y", "channels"), "the (time, channels) values")
    x = arrays["x"]
    if x.ndim != 2 or x.dtype.kind not in "uif" or 0 in x.shape:
        raise DataError(f"{path}: x has shape {x.shape} and dtype {x.dtype}; expected (time, channels) numbers")
    t_len, n_ch = x.shape
    where = [f"{path}: x row {r}" for r in range(t_len)]
    values = x.astype(np.float64)
    if np.isinf(values).any():
        r, c = np.argwhere(np.isinf(values))[0]
        raise DataError(f"{path}: x row {r}, channel {c}: infinite value")
    channels = [f"ch{c}" for c in range(n_ch)]
    if "channels" in arrays:
        names = arrays["channels"]
        if names.dtype.kind != "U" or names.shape != (n_ch,):
            raise DataError(f"{path}: channels must be {n_ch} strings (one per column of x), "
                            f"got {names.shape} {names.dtype}")
        channels = [str(n) for n in names]
    values, filled = _missing(values, np.isnan(values), missing, where, channels)
    time = None
    if "t" in arrays:
        t = arrays["t"]
        if t.shape != (t_len,) or t.dtype.kind not in "uif":
            raise DataError(f"{path}: t must hold {t_len} numbers (one per row of x), got {t.shape} {t.dtype}")
        time = t.astype(np.float64)
        _check_time(time, [f"{path}: t row {r}" for r in range(t_len)], "t")
    labels = class_names = None
    if "y" in arrays:
        y = arrays["y"]
        if y.shape != (t_len,) or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
            raise DataError(f"{path}: y must hold {t_len} non-negative integer labels, got {y.shape} {y.dtype}")
        labels = y.astype(np.int64)
        class_names = [str(c) for c in range(int(labels.max()) + 1)]
    return Log(str(path), values, channels, time, labels, class_names, filled)


def _missing(values, gone, missing, where, channels) -> tuple[np.ndarray, int]:
    if not gone.any():
        return values, 0
    if missing == "refuse":
        r, c = np.argwhere(gone)[0]
        raise DataError(f"{where[r]}, column {channels[c]!r}: missing value; use missing='fill' to interpolate")
    # fill_missing works on (C, T): channels first.
    return fill_missing(values.T, gone.T, where[0].rsplit(":", 1)[0]).T.copy(), int(gone.sum())


def _time_value(cell: str, where: str, column: str) -> float:
    if not cell:
        raise DataError(f"{where}: column {column!r}: missing time stamp")
    try:
        return float(cell)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(cell).timestamp()
    except ValueError:
        raise DataError(f"{where}: column {column!r}: time stamp {cell!r} is neither a number nor an "
                        "ISO 8601 date-time") from None


def _check_time(time: np.ndarray, where: list[str], column: str) -> None:
    """Strictly increasing and evenly spaced: duplicates, disorder and gaps are errors."""
    if not np.isfinite(time).all():
        r = int(np.flatnonzero(~np.isfinite(time))[0])
        raise DataError(f"{where[r]}: column {column!r}: time stamp is missing or not finite")
    step = np.diff(time)
    if len(step) == 0:
        return
    if (step == 0).any():
        r = int(np.flatnonzero(step == 0)[0])
        raise DataError(f"{where[r + 1]}: column {column!r}: duplicate time stamp {time[r + 1]:g} "
                        f"(also on {where[r].rsplit(': ', 1)[1]})")
    if (step < 0).any():
        r = int(np.flatnonzero(step < 0)[0])
        raise DataError(f"{where[r + 1]}: column {column!r}: time stamp {time[r + 1]:g} is earlier than the one "
                        f"before ({time[r]:g}); sort the log by time")
    usual = float(np.median(step))
    gaps = np.flatnonzero(step > GAP_FACTOR * usual)
    if len(gaps):
        r = int(gaps[0])
        raise DataError(f"{where[r + 1]}: column {column!r}: missing time stamps: a step of {step[r]:g} after "
                        f"{time[r]:g}, where the log steps by {usual:g} ({len(gaps)} such gap(s))")


def _encode_labels(text: list[str]) -> tuple[np.ndarray, list[str]]:
    """Text labels -> indices into the sorted distinct names (numerically when all are integers)."""
    distinct = set(text)
    numeric = all(s.lstrip("-").isdigit() for s in distinct)
    names = sorted(distinct, key=int) if numeric else sorted(distinct)
    index = {n: k for k, n in enumerate(names)}
    return np.array([index[s] for s in text], dtype=np.int64), names


def make_windows(log: Log, start: int, stop: int, length: int, stride: int, part: str) -> tuple[SeriesSet, int]:
    """Windows of `length` rows every `stride` rows within rows [start, stop) of the log.

    Returns float32 (N, C, length) windows, labeled when the log is, and how many windows were dropped
    because they straddle a label change (a window's label is the one all its rows share).
    """
    for name, v in (("window", length), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{name} must be a positive whole number, got {v!r}")
    rows = stop - start
    if rows < length:
        raise DataError(f"{log.origin}: the {part} part has {rows} rows, fewer than one window of {length}; "
                        "use a shorter window or a longer log")
    windows = sliding_windows(log.values[start:stop].T, length, stride)  # (N, C, length) view of the rows
    x = np.ascontiguousarray(windows, dtype=np.float32)
    if log.labels is None:
        return SeriesSet(x=x, y=None), 0
    lab = sliding_windows(log.labels[start:stop], length, stride)  # (N, length)
    pure = (lab == lab[:, :1]).all(axis=1)
    return SeriesSet(x=x[pure], y=lab[pure, 0].copy()), int((~pure).sum())
