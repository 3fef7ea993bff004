"""genforge's own reader for the `.ts` files of the UCR/UEA time series archives (the sktime format).

    # comments
    @problemName BasicMotions
    @timeStamps false
    @missing false
    @univariate false
    @dimensions 6
    @equalLength true
    @seriesLength 100
    @classLabel true Standing Running Walking Badminton
    @data
    0.07,0.07,-0.90,...:1.6,1.0,...:...:Standing      one case per line: dimensions split by ':',
                                                      values by ',', the class label last; '?' is missing

Tags are case-insensitive (the archive spells them both ways). Timestamped files (``@timeStamps true``)
and regression targets (``@targetLabel true``) are refused with a clear error rather than misread.
Every error names the file and, for data, the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge.data.series.base import MISSING_POLICIES, check_policy, fill_missing
from genforge.errors import DataError

_BOOL_TAGS = {"timestamps": "timeStamps", "missing": "missing", "univariate": "univariate",
              "equallength": "equalLength"}
_INT_TAGS = {"dimensions": "dimensions", "dimension": "dimensions", "serieslength": "seriesLength"}
_TAGS = ("problemName", "timeStamps", "missing", "univariate", "dimensions", "equalLength", "seriesLength",
         "classLabel", "targetLabel", "data")
# Larger than any archive file (PLAID_TRAIN.ts is 1.5 MB); a bigger .ts is probably not one.
MAX_TS_BYTES = 2 * 2**30


@dataclass(frozen=True)
class TsHeader:
    problem_name: str | None
    missing: bool | None
    univariate: bool | None
    dimensions: int | None
    equal_length: bool | None
    series_length: int | None
    class_labels: tuple[str, ...] | None  # None when the cases carry no label (@classLabel false)


@dataclass(eq=False)
class TsData:
    """The cases of one .ts file, as read (before any length policy)."""

    path: Path
    header: TsHeader
    series: list[np.ndarray]  # one float32 (C, T_i) per case
    y: np.ndarray | None  # int64 (N,) indices into class_names
    class_names: list[str] | None
    lines: np.ndarray  # int64 (N,) the 1-based line of each case, for errors
    filled: int = 0  # '?' values filled by interpolation

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.series], dtype=np.int64)

    def where(self, i: int) -> str:
        return f"{self.path}: line {int(self.lines[i])}"


def read_ts(path: str | Path, *, missing: str = "refuse") -> TsData:
    """Read a .ts file. missing: "refuse" ('?' is an error) or "fill" (linear interpolation over time)."""
    check_policy("missing", missing, MISSING_POLICIES)
    path = Path(path)
    if not path.is_file():
        raise DataError(f".ts file {path} does not exist")
    if path.stat().st_size > MAX_TS_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes, over the {MAX_TS_BYTES} byte limit for a .ts file")
    try:
        # utf-8-sig: some archive files start with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it really a .ts file?") from None
    lines = text.splitlines()
    header, first = _read_header(path, lines)
    return _read_cases(path, lines, first, header, missing)


def _read_header(path: Path, lines: list[str]) -> tuple[TsHeader, int]:
    """The header fields and the index of the first line after @data."""
    seen: dict[str, tuple[int, list[str]]] = {}
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):  # '%': the ARFF comment, in some archive files
            continue
        where = f"{path}: line {i + 1}"
        if not line.startswith("@"):
            raise DataError(f"{where}: malformed header: expected an @tag or a # comment before @data, "
                            f"got {line[:40]!r}")
        tag, *values = line[1:].split()
        key = tag.lower()
        if key not in {t.lower() for t in _TAGS} | {"dimension"}:
            raise DataError(f"{where}: malformed header: unknown tag @{tag}; known tags: @" + ", @".join(_TAGS))
        key = "dimensions" if key == "dimension" else key
        if key in seen:
            raise DataError(f"{where}: malformed header: @{tag} given twice (first on line {seen[key][0]})")
        seen[key] = (i + 1, values)
        if key == "data":
            if values:
                raise DataError(f"{where}: malformed header: @data takes no value, got {' '.join(values)!r}")
            return _header_fields(path, seen), i + 1
    raise DataError(f"{path}: malformed header: no @data line, so the file holds no cases")


def _header_fields(path: Path, seen: dict[str, tuple[int, list[str]]]) -> TsHeader:
    def bool_tag(key: str) -> bool | None:
        if key not in seen:
            return None
        line, values = seen[key]
        if len(values) != 1 or values[0].lower() not in ("true", "false"):
            raise DataError(f"{path}: line {line}: malformed header: @{_BOOL_TAGS[key]} must be true or false, "
                            f"got {' '.join(values)!r}")
        return values[0].lower() == "true"

    def int_tag(key: str) -> int | None:
        if key not in seen:
            return None
        line, values = seen[key]
        if len(values) != 1 or not values[0].isdigit() or int(values[0]) < 1:
            raise DataError(f"{path}: line {line}: malformed header: @{_INT_TAGS[key]} must be a positive "
                            f"whole number, got {' '.join(values)!r}")
        return int(values[0])

    flags = {key: bool_tag(key) for key in _BOOL_TAGS}
    ints = {key: int_tag(key) for key in ("dimensions", "serieslength")}
    if flags["timestamps"]:
        raise DataError(f"{path}: line {seen['timestamps'][0]}: @timeStamps true files are not supported; "
                        "genforge reads evenly sampled series (values separated by commas)")
    if "targetlabel" in seen:
        line, values = seen["targetlabel"]
        if [v.lower() for v in values] != ["false"]:
            raise DataError(f"{path}: line {line}: @targetLabel {' '.join(values)}: regression targets are not "
                            "supported; genforge reads classification sets (@classLabel)")
    labels: tuple[str, ...] | None = None
    if "classlabel" in seen:
        line, values = seen["classlabel"]
        if not values or values[0].lower() not in ("true", "false"):
            raise DataError(f"{path}: line {line}: malformed header: @classLabel must start with true or false")
        if values[0].lower() == "true":
            labels = tuple(values[1:])
            if not labels:
                raise DataError(f"{path}: line {line}: malformed header: @classLabel true lists no class labels")
            if len(set(labels)) != len(labels):
                twice = sorted({v for v in labels if labels.count(v) > 1})
                raise DataError(f"{path}: line {line}: malformed header: @classLabel lists {twice[0]!r} twice")
        elif len(values) > 1:
            raise DataError(f"{path}: line {line}: malformed header: @classLabel false takes no labels")
    elif "targetlabel" not in seen:
        raise DataError(f"{path}: malformed header: no @classLabel line, so it is unknown whether each case "
                        "ends with a class label")
    if flags["univariate"] and ints["dimensions"] not in (None, 1):
        raise DataError(f"{path}: line {seen['dimensions'][0]}: malformed header: @univariate true but "
                        f"@dimensions {ints['dimensions']}")
    name = seen.get("problemname", (0, []))[1]
    if "problemname" in seen and len(name) != 1:
        raise DataError(f"{path}: line {seen['problemname'][0]}: malformed header: @problemName must be one word")
    return TsHeader(
        problem_name=name[0] if name else None,
        missing=flags["missing"],
        univariate=flags["univariate"],
        dimensions=ints["dimensions"] or (1 if flags["univariate"] else None),
        equal_length=flags["equallength"],
        series_length=ints["serieslength"],
        class_labels=labels,
    )


def _read_cases(path: Path, lines: list[str], first: int, header: TsHeader, missing: str) -> TsData:
    labels = header.class_labels
    index = {name: k for k, name in enumerate(labels)} if labels is not None else {}
    series: list[np.ndarray] = []
    y: list[int] = []
    where_line: list[int] = []
    dims = header.dimensions
    filled = 0
    for i in range(first, len(lines)):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}: line {i + 1}"
        fields = line.split(":")
        if labels is not None:
            if len(fields) < 2:
                raise DataError(f"{where}: no class label after the values (the header says @classLabel true)")
            label = fields.pop().strip()
            if label not in index:
                raise DataError(f"{where}: class label {label!r} is not declared in the header's @classLabel "
                                f"({' '.join(labels)})")
            y.append(index[label])
        if dims is None:
            dims = len(fields)  # neither @univariate true nor @dimensions: the first case decides
        if len(fields) != dims:
            said = "the header declares" if header.dimensions else "the first case has"
            raise DataError(f"{where}: {len(fields)} dimension(s), but {said} {dims}")
        values, gone = zip(*(_parse_dimension(f, where, d) for d, f in enumerate(fields)))
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise DataError(f"{where}: the dimensions of one case have different lengths "
                            f"({', '.join(str(len(v)) for v in values)})")
        x, missing_mask = np.stack(values), np.stack(gone)  # (C, T)
        if missing_mask.any():
            if header.missing is False:
                raise DataError(f"{where}: missing value '?' but the header says @missing false")
            if missing == "refuse":
                c, t = np.argwhere(missing_mask)[0]
                raise DataError(f"{where}: missing value '?' (dimension {c + 1}, sample {t + 1}); "
                                "use missing='fill' to interpolate missing values")
            filled += int(missing_mask.sum())
            x = fill_missing(x, missing_mask, where)
        t = x.shape[1]
        if header.series_length is not None and t != header.series_length:
            raise DataError(f"{where}: series of length {t}, but the header says @seriesLength {header.series_length}")
        if header.equal_length and series and t != series[0].shape[1]:
            raise DataError(f"{where}: ragged lengths: series of length {t}, but line {where_line[0]} has "
                            f"{series[0].shape[1]} and the header says @equalLength true")
        series.append(x.astype(np.float32))
        where_line.append(i + 1)
    if not series:
        raise DataError(f"{path}: no cases after @data")
    return TsData(
        path=path,
        header=header,
        series=series,
        y=np.array(y, dtype=np.int64) if labels is not None else None,
        class_names=list(labels) if labels is not None else None,
        lines=np.array(where_line, dtype=np.int64),
        filled=filled,
    )


def _parse_dimension(field: str, where: str, d: int) -> tuple[np.ndarray, np.ndarray]:
    """One dimension's comma-separated values -> (float64 values, bool missing) with '?' as missing."""
    tokens = field.split(",")
    try:
        values = np.array(tokens, dtype=np.float64)  # the fast path: every token a number
        gone = np.zeros(len(values), dtype=bool)
    except ValueError:
        values = np.empty(len(tokens))
        gone = np.zeros(len(tokens), dtype=bool)
        for k, token in enumerate(tokens):
            token = token.strip()
            if token == "?":
                gone[k] = True
                continue
            try:
                values[k] = float(token)
            except ValueError:
                raise DataError(f"{where}: dimension {d + 1}, sample {k + 1}: {token!r} is not a number") from None
    bad = ~np.isfinite(values) & ~gone
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: dimension {d + 1}, sample {k + 1}: {tokens[k].strip()!r} is not a finite "
                        "number (NaN or infinite; a missing value is written '?')")
    return values, gone
