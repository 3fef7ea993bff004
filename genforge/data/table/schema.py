"""A table's schema: what each column is, inferred from the data, written to a YAML the user edits and passes back.

    schema, notes = infer_schema(raw)          # raw: a RawTable from read.py
    write_schema(schema, "schema.yaml")        # one line per column, with what was inferred
    schema = read_schema("schema.yaml", raw)   # checked against the data: a column the file lacks is an error
    table = apply_schema(raw, schema)          # typed columns: floats (NaN missing) or labels (None missing)

Kinds (``KINDS``): ``continuous`` (a number with ``decimals`` digits after the point, within [min, max]),
``integer`` (a whole number within [min, max]), ``categorical`` (one of ``categories``), ``boolean`` (two
labels, e.g. yes/no), ``datetime`` (one ``format``; modelled as seconds), ``id`` (one value per row: dropped,
never generated), ``constant`` (one value: not modelled, written into every generated row) and ``drop``
(left out, e.g. all missing). The range, whole numbers and the fixed set of categories are constraints: a
generated row always satisfies them (:mod:`genforge.data.table.transforms` enforces them on the way out).

As SDV's metadata does, the schema is data the user can read, edit and pass back, not inference hidden
inside a model; the model file stores the schema it was trained with.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from genforge.data.table.read import MISSING_TOKENS, RawTable
from genforge.errors import DataError
from genforge.io import atomic_write_text

KINDS = ("continuous", "integer", "categorical", "boolean", "datetime", "id", "constant", "drop")
MODELLED = ("continuous", "integer", "categorical", "boolean", "datetime")
NUMERIC = ("continuous", "integer", "datetime")  # modelled as numbers
DISCRETE = ("categorical", "boolean")             # modelled as labels
# A numeric column with at most this many distinct values, each seen on average 3 times or more, is a category
# (a 0/1 flag, a 1-to-4 grade): a mixture of Gaussians over four spikes is the wrong model for it.
CATEGORY_MAX_DISTINCT = 10
# A column whose cells are numbers except for a few strings (a typo, "unknown"): below this share of
# non-numbers the strings are read as missing values, with a note naming them; above it, it is categorical.
NUMERIC_MIN_SHARE = 0.9
BOOLEAN_PAIRS = ({"true", "false"}, {"yes", "no"}, {"y", "n"}, {"t", "f"})
DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%d/%m/%Y", "%m/%d/%Y",
                "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y")
_DATE_LIKE = re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2})?)?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_FIELDS = {"continuous": {"min", "max", "decimals"}, "integer": {"min", "max"},
           "categorical": {"categories"}, "boolean": {"categories"}, "datetime": {"format", "min", "max"},
           "id": set(), "constant": {"value"}, "drop": set()}
_TOP = {"source", "target", "task", "exclude_from_task", "missing_values", "columns"}
TASKS = ("classification", "regression")


@dataclass
class Column:
    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    decimals: int | None = None            # continuous: digits after the point as written (None: as read, repr)
    categories: list[str] | None = None    # categorical/boolean: the fixed set, in order
    format: str | None = None              # datetime: strftime format
    value: str | None = None               # constant: the value written into every row
    missing: float = 0.0                   # share of missing cells in the data (regenerated at this rate)

    def to_dict(self) -> dict:
        d = {"kind": self.kind}
        for key in sorted(_FIELDS[self.kind]):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass
class Schema:
    columns: list[Column]
    source: str = ""
    target: str | None = None              # the column the risk task predicts (ML efficacy)
    task: str | None = None                # classification or regression (inferred from the target's kind)
    exclude_from_task: list[str] = field(default_factory=list)  # columns that leak the target (follow-up values)
    missing_values: list[str] = field(default_factory=lambda: list(MISSING_TOKENS))

    @property
    def modelled(self) -> list[Column]:
        return [c for c in self.columns if c.kind in MODELLED]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict:
        return {"source": self.source, "target": self.target, "task": self.task,
                "exclude_from_task": list(self.exclude_from_task), "missing_values": list(self.missing_values),
                "columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_json(cls, d: dict) -> "Schema":
        return cls(columns=[Column(**c) for c in d["columns"]], source=d.get("source", ""), target=d.get("target"),
                   task=d.get("task"), exclude_from_task=list(d.get("exclude_from_task", [])),
                   missing_values=list(d.get("missing_values", MISSING_TOKENS)))


@dataclass(eq=False)
class Table:
    """Typed columns of the modelled kinds: float64 (NaN missing; datetimes in seconds) or object labels (None
    missing). ``schema`` says what each is."""

    schema: Schema
    values: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def take(self, idx: np.ndarray) -> "Table":
        return Table(self.schema, {k: v[idx] for k, v in self.values.items()})


# ----------------------------------------------------------------------------------- parsing cells

def _number(text: str) -> float | None:
    return float(text) if _NUMBER.match(text) else None


def _decimals(texts) -> int | None:
    """Digits after the point as written (max over cells); None when a cell uses exponent notation."""
    most = 0
    for t in texts:
        if "e" in t or "E" in t:
            return None
        if "." in t:
            most = max(most, len(t) - t.index(".") - 1)
    return most


def _date_formats(texts: list[str]) -> list[str]:
    """The formats of DATE_FORMATS that parse every cell (empty when none does)."""
    ok = []
    for fmt in DATE_FORMATS:
        try:
            for t in texts:
                datetime.strptime(t, fmt)
        except ValueError:
            continue
        ok.append(fmt)
    return ok


def _first_format(text: str) -> str | None:
    for fmt in DATE_FORMATS:
        try:
            datetime.strptime(text, fmt)
            return fmt
        except ValueError:
            pass
    return None


def to_seconds(text: str, fmt: str) -> float:
    return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()


def from_seconds(seconds: float, fmt: str) -> str:
    return datetime.fromtimestamp(round(seconds), tz=timezone.utc).strftime(fmt)


# ----------------------------------------------------------------------------------- inference

def infer_column(name: str, cells: np.ndarray, origin: str, notes: list[str]) -> Column:
    """What one column is, from its cells (str or None). Adds a note for every choice a user should know."""
    n = len(cells)
    present = [c for c in cells if c is not None]
    missing = 1 - len(present) / n
    if not present:
        notes.append(f"column {name!r}: all {n} values missing: dropped")
        return Column(name, "drop")
    distinct = sorted(set(present))
    if len(distinct) == 1 and not missing:
        notes.append(f"column {name!r}: constant ({distinct[0]!r} in every row): not modelled, written into every "
                     "generated row")
        return Column(name, "constant", value=distinct[0])
    numbers = [_number(t) for t in present]
    share = sum(v is not None for v in numbers) / len(present)
    if share >= NUMERIC_MIN_SHARE:
        if share < 1:
            odd = sorted({t for t, v in zip(present, numbers) if v is None})
            count = sum(v is None for v in numbers)
            shown = ", ".join(repr(t) for t in odd[:3]) + (" ..." if len(odd) > 3 else "")
            notes.append(f"column {name!r}: numeric except {count} cell(s) that are not numbers ({shown}): read as "
                         "missing (list them in missing_values, or make the column categorical, in the schema)")
            present = [t for t, v in zip(present, numbers) if v is not None]
            numbers = [v for v in numbers if v is not None]
            missing = 1 - len(present) / n
        values = np.array(numbers, dtype=np.float64)
        texts_distinct = len(set(present))
        whole = all("." not in t and "e" not in t.lower() for t in present)
        if whole and texts_distinct == len(present) == n and (_id_name(name) or bool(np.all(np.diff(values) > 0))):
            notes.append(f"column {name!r}: a different whole number in every row, "
                         f"{'named like an identifier' if _id_name(name) else 'in increasing order'}: an ID, dropped")
            return Column(name, "id")
        if texts_distinct <= CATEGORY_MAX_DISTINCT and len(present) >= 3 * texts_distinct:
            cats = sorted(set(present), key=lambda t: (float(t), t))
            return Column(name, "categorical", categories=cats, missing=round(missing, 6))
        lo, hi = float(values.min()), float(values.max())
        if whole:
            return Column(name, "integer", min=lo, max=hi, missing=round(missing, 6))
        return Column(name, "continuous", min=lo, max=hi, decimals=_decimals(present), missing=round(missing, 6))
    if all(_DATE_LIKE.match(t) for t in present):
        formats = _date_formats(distinct)
        if not formats:
            by_format = {}
            for t in distinct:
                by_format.setdefault(_first_format(t), t)
            shown = ", ".join(f"{t!r}" for f, t in by_format.items() if f)
            raise DataError(f"{origin}: column {name!r} holds dates in more than one format ({shown}); write them in "
                            "one format, or give the column kind: categorical in the schema")
        secs = [to_seconds(t, formats[0]) for t in present]
        if len(formats) > 1:
            notes.append(f"column {name!r}: dates read as {formats[0]!r}; {', '.join(map(repr, formats[1:]))} also fits "
                         "every value: set format in the schema if that is the right one")
        return Column(name, "datetime", format=formats[0], min=min(secs), max=max(secs), missing=round(missing, 6))
    lower = {t.lower() for t in distinct}
    if len(distinct) == 2 and any(lower == pair for pair in BOOLEAN_PAIRS):
        return Column(name, "boolean", categories=distinct, missing=round(missing, 6))
    if len(distinct) == len(present) == n:
        notes.append(f"column {name!r}: a different value in every row (an ID): dropped")
        return Column(name, "id")
    if len(distinct) > max(50, n // 2):
        notes.append(f"column {name!r}: {len(distinct)} categories for {n} rows: most are too rare to learn; "
                     "consider dropping it (kind: drop) or grouping them")
    return Column(name, "categorical", categories=distinct, missing=round(missing, 6))


def _id_name(name: str) -> bool:
    return bool(re.search(r"(^|[_\s])(id|pid|key|index|row)$|^(row|index)$|num$|^pid|_id$", name.lower()))


def infer_schema(raw: RawTable, target: str | None = None) -> tuple[Schema, list[str]]:
    """Infer every column's kind; returns the schema and the notes of the choices made."""
    notes: list[str] = []
    columns = [infer_column(name, raw.cells[name], raw.origin, notes) for name in raw.columns]
    schema = Schema(columns=columns, source=raw.origin)
    if not schema.modelled:
        raise DataError(f"{raw.origin}: no column left to model after inference ({'; '.join(notes)})")
    set_target(schema, target, raw.origin)
    return schema, notes


def set_target(schema: Schema, target: str | None, origin: str) -> None:
    if target is None:
        schema.target = schema.task = None
        return
    try:
        col = schema.column(target)
    except KeyError:
        raise DataError(f"{origin}: target column {target!r} is not in the table") from None
    if col.kind not in MODELLED:
        raise DataError(f"{origin}: target column {target!r} is of kind {col.kind}, which is not modelled")
    schema.target = target
    schema.task = "classification" if col.kind in DISCRETE else "regression"


# ----------------------------------------------------------------------------------- the YAML file

def schema_yaml(schema: Schema) -> str:
    lines = [f"# genforge table schema of {schema.source}: inferred; edit it and pass it back with --schema FILE",
             "# kinds: continuous (min, max, decimals), integer (min, max), categorical / boolean (categories),",
             "#        datetime (format, min and max in seconds), id (dropped), constant (value), drop",
             "# min, max and categories are constraints every generated row keeps; missing is the share regenerated",
             yaml.safe_dump({"source": schema.source, "target": schema.target, "task": schema.task,
                             "exclude_from_task": schema.exclude_from_task, "missing_values": schema.missing_values},
                            sort_keys=False, default_flow_style=None, width=110).rstrip(),
             "columns:"]
    for c in schema.columns:
        body = yaml.safe_dump(c.to_dict(), sort_keys=False, default_flow_style=True, width=10**6).strip()
        note = f"  # {100 * c.missing:.1f}% missing" if c.missing else ""
        lines.append(f"  {yaml.safe_dump(c.name, default_style=None).splitlines()[0]}: {body}{note}")
    return "\n".join(lines) + "\n"


def write_schema(schema: Schema, path: str | Path) -> Path:
    """Write the schema as YAML (atomically): one line per column, with its missing share as a comment."""
    return atomic_write_text(path, schema_yaml(schema))


def read_schema(path: str | Path, raw: RawTable) -> Schema:
    """Read a schema YAML and check it against ``raw``: known kinds and fields, every named column present.
    Columns of the data that the file does not name are inferred (with a note in ``raw.notes``)."""
    origin = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{origin}: no such schema file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{origin}: not a readable YAML schema ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict):
        raise DataError(f"{origin}: a schema is a mapping with 'columns:' mapping each column name to its kind")
    unknown = set(doc) - _TOP
    if unknown:
        raise DataError(f"{origin}: unknown key {sorted(unknown)[0]!r}; a schema has {', '.join(sorted(_TOP))}")
    missing_values = doc.get("missing_values") or list(MISSING_TOKENS)
    if not isinstance(missing_values, list) or not all(isinstance(v, str) for v in missing_values):
        raise DataError(f"{origin}: missing_values must be a list of strings")
    columns = []
    for name, spec in doc["columns"].items():
        name = str(name)
        if name not in raw.cells:
            raise DataError(f"{origin}: column {name!r} is not in {raw.origin} (its columns: {', '.join(raw.columns)})")
        if isinstance(spec, str):
            spec = {"kind": spec}
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise DataError(f"{origin}: column {name!r}: kind must be one of {', '.join(KINDS)}, got "
                            f"{spec.get('kind') if isinstance(spec, dict) else spec!r}")
        kind = spec["kind"]
        extra = set(spec) - _FIELDS[kind] - {"kind"}
        if extra:
            raise DataError(f"{origin}: column {name!r} ({kind}) has no field {sorted(extra)[0]!r}; its fields: "
                            f"{', '.join(sorted(_FIELDS[kind])) or 'none'}")
        col = Column(name, kind)
        for key in ("min", "max"):
            if key in spec:
                if isinstance(spec[key], bool) or not isinstance(spec[key], (int, float)) or not math.isfinite(spec[key]):
                    raise DataError(f"{origin}: column {name!r}: {key} must be a number, got {spec[key]!r}")
                setattr(col, key, float(spec[key]))
        if col.min is not None and col.max is not None and col.min > col.max:
            raise DataError(f"{origin}: column {name!r}: min {col.min:g} is above max {col.max:g}")
        if "decimals" in spec:
            if spec["decimals"] is not None and (not isinstance(spec["decimals"], int) or not 0 <= spec["decimals"] <= 15):
                raise DataError(f"{origin}: column {name!r}: decimals must be a whole number 0 to 15, got "
                                f"{spec['decimals']!r}")
            col.decimals = spec["decimals"]
        if kind in DISCRETE and "categories" in spec:
            cats = spec["categories"]
            if not isinstance(cats, list) or not cats:
                raise DataError(f"{origin}: column {name!r}: categories must be a non-empty list")
            col.categories = [_label(v) for v in cats]
        if kind == "datetime":
            col.format = str(spec.get("format") or "")
            if not col.format:
                raise DataError(f"{origin}: column {name!r}: a datetime column needs format (e.g. '%Y-%m-%d')")
        if kind == "constant":
            col.value = None if spec.get("value") is None else _label(spec["value"])
        columns.append(col)
    notes = []
    for name in raw.columns:
        if name not in doc["columns"]:
            col = infer_column(name, raw.cells[name], raw.origin, notes)
            notes.append(f"column {name!r} is not in the schema {origin}: inferred as {col.kind}")
            columns.append(col)
    order = {n: i for i, n in enumerate(raw.columns)}
    columns.sort(key=lambda c: order[c.name])
    raw.notes.extend(notes)
    schema = Schema(columns=columns, source=str(doc.get("source") or raw.origin), missing_values=missing_values)
    exclude = doc.get("exclude_from_task") or []
    if not isinstance(exclude, list) or any(str(e) not in raw.cells for e in exclude):
        raise DataError(f"{origin}: exclude_from_task must list columns of {raw.origin}, got {exclude!r}")
    schema.exclude_from_task = [str(e) for e in exclude]
    set_target(schema, doc.get("target"), origin)
    if doc.get("task") not in (None, *TASKS):
        raise DataError(f"{origin}: task must be one of {', '.join(TASKS)}, got {doc.get('task')!r}")
    if doc.get("task"):
        schema.task = doc["task"]
    return schema


def _label(v) -> str:
    """A category from YAML as text; YAML reads yes/no and 1.0 as typed values, the CSV as text."""
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


# ----------------------------------------------------------------------------------- applying a schema

def apply_schema(raw: RawTable, schema: Schema) -> Table:
    """Typed columns for the modelled kinds; every cell checked against its column's kind and constraints.
    Fills in what the schema leaves open (min, max, categories, decimals) from the data."""
    origin, values = raw.origin, {}
    extra_missing = set(schema.missing_values) - set(MISSING_TOKENS)
    for col in schema.columns:
        if col.kind not in MODELLED:
            continue
        cells = np.array([None if c is None or c in extra_missing else c for c in raw.cells[col.name]], dtype=object)
        n = len(cells)
        if col.kind in NUMERIC:
            out = np.full(n, np.nan)
            bad = []
            for i, t in enumerate(cells):
                if t is None:
                    continue
                if col.kind == "datetime":
                    try:
                        out[i] = to_seconds(t, col.format)
                    except ValueError:
                        raise DataError(f"{origin}: column {col.name!r} row {i + 1}: {t!r} does not match the date "
                                        f"format {col.format!r}") from None
                    continue
                v = _number(t)
                if v is None:
                    bad.append(t)
                    continue
                if col.kind == "integer" and v != int(v):
                    raise DataError(f"{origin}: column {col.name!r} row {i + 1}: {t!r} is not a whole number (the "
                                    "schema says integer; make it continuous)")
                out[i] = v
            if bad:
                shown = ", ".join(repr(t) for t in sorted(set(bad))[:3])
                raw.notes.append(f"column {col.name!r}: {len(bad)} cell(s) that are not numbers ({shown}): read as "
                                 "missing")
            present = out[~np.isnan(out)]
            if not len(present):
                raise DataError(f"{origin}: column {col.name!r} ({col.kind}) has no value that is a "
                                f"{'date' if col.kind == 'datetime' else 'number'}")
            lo, hi = float(present.min()), float(present.max())
            for bound, value, ok in (("min", col.min, col.min is None or lo >= col.min),
                                     ("max", col.max, col.max is None or hi <= col.max)):
                if not ok:
                    row = int(np.flatnonzero(out < col.min if bound == "min" else out > col.max)[0])
                    raise DataError(f"{origin}: column {col.name!r} row {row + 1}: {cells[row]!r} is outside the "
                                    f"schema's {bound} {value:g}")
            col.min = lo if col.min is None else col.min
            col.max = hi if col.max is None else col.max
            if col.kind == "continuous" and col.decimals is None:
                col.decimals = _decimals([t for t in cells if t is not None and _number(t) is not None])
            values[col.name] = out
        else:
            seen = sorted({t for t in cells if t is not None})
            if col.categories is None:
                col.categories = seen
            else:
                outside = [t for t in seen if t not in col.categories]
                if outside:
                    row = int(np.flatnonzero(cells == outside[0])[0])
                    raise DataError(f"{origin}: column {col.name!r} row {row + 1}: {outside[0]!r} is not one of the "
                                    f"schema's categories ({', '.join(col.categories)})")
            if not seen:
                raise DataError(f"{origin}: column {col.name!r} has no value that is not missing")
            values[col.name] = cells
        col.missing = round(float(np.mean([c is None for c in cells]) if col.kind in DISCRETE
                                  else np.isnan(values[col.name]).mean()), 6)
    if not values:
        raise DataError(f"{origin}: the schema leaves no column to model")
    return Table(schema, values)
