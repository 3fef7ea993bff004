"""Reading a table: CSV (the standard library's reader, with the checks a hospital export needs) and Parquet.

Every cell arrives as text (``str``) or ``None`` (missing), whatever the file's own types: the schema
(:mod:`genforge.data.table.schema`) decides what a column is, and keeping the text lets a written sample use
the user's own spelling of numbers, dates and labels. The checks that refuse a file are one line naming the
file, the line and the value: a ragged row, a byte that is not UTF-8, a header with an empty or repeated
name, fewer than two data rows. The data budget (:mod:`genforge.data.limits`) is charged before a file is
read, so a table too large for memory is refused up front.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.limits import Budget
from genforge.errors import DataError

# Cells read as missing unless the schema says otherwise (``missing_values``). Case-sensitive, as typed.
MISSING_TOKENS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?")
# A cell of text costs about this many bytes in memory beyond its length (a Python str and its pointer).
_CELL_OVERHEAD = 64


@dataclass(eq=False)
class RawTable:
    """A table as read: column names in file order and one object array of ``str | None`` per column."""

    origin: str                      # the file or bundled name, for messages
    columns: list[str]
    cells: dict[str, np.ndarray]     # name -> (n_rows,) object array of str or None (missing)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.cells.values()))) if self.cells else 0

    def take(self, idx: np.ndarray) -> "RawTable":
        return RawTable(self.origin, list(self.columns), {c: v[idx] for c, v in self.cells.items()}, list(self.notes))


def check_rows(origin: str, n_rows: int) -> None:
    """A generative model of a table needs rows to learn from: refuse 0 or 1."""
    if n_rows == 0:
        raise DataError(f"{origin}: the table has a header but 0 data rows")
    if n_rows == 1:
        raise DataError(f"{origin}: the table has 1 data row; a model of a table needs at least 2 (and a useful "
                        "one hundreds)")


def check_header(origin: str, header: list[str]) -> list[str]:
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise DataError(f"{origin}: column name {name!r} appears twice in the header (columns {names.index(name) + 1} "
                            f"and {i + 1})")
    return names


def read_csv(path: str | Path, missing_values: tuple[str, ...] = MISSING_TOKENS, delimiter: str | None = None,
             budget: Budget | None = None) -> RawTable:
    """Read a CSV file with a header row. The delimiter is sniffed among , ; tab | unless given.

    An empty first header cell (R's row-name column) is named ``row`` so that the schema can name it.
    """
    path = Path(path)
    origin = str(path)
    try:
        size = path.stat().st_size
        raw = path.read_bytes() if size else b""
    except FileNotFoundError:
        raise DataError(f"{origin}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{origin}: is a directory, not a CSV file") from None
    except OSError as e:
        raise DataError(f"{origin}: cannot be read ({e.strerror})") from None
    (budget or Budget()).claim(size * 2, origin, "the CSV text and its cells")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # the UTF-8 byte order mark Excel writes
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{origin} line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; save the file as UTF-8 "
                        "(in a spreadsheet: CSV UTF-8)") from None
    if not text.strip():
        raise DataError(f"{origin}: the file is empty (no header row)")
    if delimiter is None:
        first = text.split("\n", 1)[0]
        counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
        delimiter = max(counts, key=counts.get) if max(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        names = check_header(origin, [h or ("row" if i == 0 else "") for i, h in enumerate(header)])
        if "" in names:
            raise DataError(f"{origin} line 1: column {names.index('') + 1} of the header has no name")
        width, rows = len(names), []
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != width:
                raise DataError(f"{origin} line {reader.line_num}: {len(row)} fields where the header has {width} "
                                f"(a ragged row: a missing or extra delimiter {delimiter!r}, or an unquoted one "
                                "inside a value)")
            rows.append(row)
    except csv.Error as e:
        raise DataError(f"{origin} line {reader.line_num}: not valid CSV ({e})") from None
    check_rows(origin, len(rows))
    missing = set(missing_values)
    cells = {}
    for j, name in enumerate(names):
        col = np.empty(len(rows), dtype=object)
        col[:] = [None if r[j].strip() in missing else r[j].strip() for r in rows]
        cells[name] = col
    return RawTable(origin, names, cells)


def read_parquet(path: str | Path, missing_values: tuple[str, ...] = MISSING_TOKENS,
                 budget: Budget | None = None) -> RawTable:
    """Read a Parquet file (needs pyarrow). Typed values become text the way a CSV export would write them."""
    path = Path(path)
    origin = str(path)
    try:
        import pyarrow.parquet as pq  # late: pyarrow is the optional extra 'tables'
    except ImportError:
        raise DataError(f"{origin}: reading Parquet needs pyarrow: pip install pyarrow (or convert it to CSV)") from None
    if not path.is_file():
        raise DataError(f"{origin}: no such file")
    (budget or Budget()).claim(path.stat().st_size * 8, origin, "the Parquet table")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid, OSError...: all mean "not a Parquet file"
        raise DataError(f"{origin}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    names = check_header(origin, [str(n) for n in table.column_names])
    check_rows(origin, table.num_rows)
    missing = set(missing_values)
    cells = {}
    for name, column in zip(names, table.columns):
        col = np.empty(table.num_rows, dtype=object)
        col[:] = [None if v is None else _text(v) for v in column.to_pylist()]
        col[:] = [None if v is None or v in missing else v for v in col]
        cells[name] = col
    return RawTable(origin, names, cells)


def _text(value) -> str:
    """A typed value as a CSV export writes it: repr-exact floats, ISO dates, True/False."""
    if isinstance(value, float):
        return "NaN" if value != value else repr(value)
    if hasattr(value, "isoformat"):
        return value.isoformat(sep=" ") if hasattr(value, "hour") else value.isoformat()
    return str(value)


def from_arrays(origin: str, columns: dict[str, np.ndarray]) -> RawTable:
    """A RawTable from numeric or text arrays (the bundled scikit-learn tables)."""
    cells = {}
    for name, values in columns.items():
        col = np.empty(len(values), dtype=object)
        col[:] = [None if (isinstance(v, float) and v != v) else (repr(float(v)) if isinstance(v, (float, np.floating))
                                                                  else str(v)) for v in values]
        cells[name] = col
    check_rows(origin, len(next(iter(cells.values()))))
    return RawTable(origin, list(columns), cells)
