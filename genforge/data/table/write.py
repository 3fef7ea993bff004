"""Writing rows: CSV (the user's own spelling of every cell), Parquet (typed columns, needs pyarrow) and npz.

Every writer is atomic (a temporary file, then rename): a failed or interrupted write leaves the file that was
there before. The npz form holds ``x``, one structured array of the modelled columns (:func:`structured`: numbers float64
with NaN for missing, datetimes in seconds, labels as fixed-width text with "" for missing); no pickled
objects, so it loads with ``np.load(path)`` and ``allow_pickle`` left off.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from genforge.data.table.schema import DISCRETE, Table
from genforge.data.table.transforms import format_cell, to_text_columns
from genforge.errors import DataError
from genforge.io import atomic_write, atomic_write_bytes

SUFFIXES = (".csv", ".parquet", ".npz")


def structured(table: Table) -> np.ndarray:
    """The modelled columns as one structured array (n,): numbers float64 (NaN missing; datetimes in seconds since
    1970 UTC), labels fixed-width text ("" missing). What ``model.sample(...).x`` holds for a table model."""
    cols = table.schema.modelled
    out = np.empty(len(table), dtype=[(c.name, "U64" if c.kind in DISCRETE else "f8") for c in cols])
    for c in cols:
        v = table.values[c.name]
        out[c.name] = ["" if a is None else a for a in v] if c.kind in DISCRETE else v
    return out


def rows_csv(table: Table) -> str:
    cols = to_text_columns(table)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(cols))
    w.writerows(zip(*cols.values()))
    return buf.getvalue()


def write_rows(path: str | Path, table: Table) -> Path:
    """Write ``table`` to ``path``, its suffix choosing the format (.csv, .parquet, .npz)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return atomic_write_bytes(path, rows_csv(table).encode())
    if suffix == ".parquet":
        return _write_parquet(path, table)
    if suffix == ".npz":
        x = structured(table)
        return atomic_write(path, lambda f: np.savez_compressed(f, x=x))
    raise DataError(f"{path}: rows are written as {', '.join(SUFFIXES)}; got {suffix or 'no suffix'!r}")


def _write_parquet(path: Path, table: Table) -> Path:
    try:  # late: pyarrow is the optional extra 'tables'
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: writing Parquet needs pyarrow: pip install pyarrow (or write .csv)") from None
    fields = {}
    for col in table.schema.columns:
        if col.kind == "constant":
            fields[col.name] = pa.array([col.value] * len(table), pa.string())
        elif col.kind in DISCRETE or col.kind == "datetime":
            fields[col.name] = pa.array([format_cell(col, v) or None for v in table.values[col.name]], pa.string())
        elif col.kind == "integer":
            v = table.values[col.name]
            fields[col.name] = pa.array([None if np.isnan(x) else int(x) for x in v], pa.int64())
        elif col.kind == "continuous":
            v = table.values[col.name]
            fields[col.name] = pa.array([None if np.isnan(x) else float(x) for x in v], pa.float64())
    buf = io.BytesIO()
    pq.write_table(pa.table(fields), buf)
    return atomic_write_bytes(path, buf.getvalue())
