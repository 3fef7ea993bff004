"""Conditions on generated rows ("sex=F", "age>60") and how they are met.

    conds = parse_conditions(["sex=F", "age>60"], schema)
    rows, how = sample_conditioned(draw, schema, 1000, conds, seed=0, cond_vector=True)

Two ways to meet a condition, and the result says which was used (``how``):

- **conditional vector**: a model with one (CTGAN) is asked directly for rows of a category (``column=label``
  on a category column); the generator was trained to honour it, so nearly every row it draws has it (the
  few that do not are discarded like rejected ones, so the condition always holds);
- **rejection**: draw rows, keep the ones that satisfy every condition, draw again until ``n`` are kept. A
  condition the model's rows rarely satisfy is refused after ``max_draws`` rows with the share that passed,
  rather than looping for ever.

A condition names a column of the schema; a category condition names a category the model saw (a label the
training rows never had is a one-line error, since no model can make it); a number condition a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from genforge.data.limits import ENV_MAX_DATA_BYTES, max_data_bytes
from genforge.data.table.schema import DISCRETE, Schema, Table, to_seconds
from genforge.errors import DataError

OPS = ("<=", ">=", "!=", "=", "<", ">")
_COND = re.compile(r"^\s*(.+?)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
# bytes one generated row costs while it is drawn, decoded and written as text: the encoded floats, the
# decoded column, the text cell (a Python str, about 60 bytes), with room for the rows rejection discards
_ROW_OVERHEAD = 4 + 8 + 64


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: object  # a label (category columns) or a float (numbers; datetimes in seconds)
    text: str

    def mask(self, table: Table) -> np.ndarray:
        v = table.values[self.column]
        if isinstance(self.value, str):
            hit = np.array([x == self.value for x in v])
            return ~hit if self.op == "!=" else hit
        with np.errstate(invalid="ignore"):
            return {"=": v == self.value, "!=": v != self.value, "<": v < self.value, "<=": v <= self.value,
                    ">": v > self.value, ">=": v >= self.value}[self.op] & ~np.isnan(v)


def parse_conditions(texts, schema: Schema, categories: dict[str, list[str]] | None = None) -> list[Condition]:
    """``["sex=F", "age>60"]`` (or one string, conditions separated by commas or "and") -> Conditions, checked
    against the schema. ``categories``: the labels the model saw per column (default: the schema's)."""
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [t for t in re.split(r",|\band\b", texts) if t.strip()]
    out = []
    for text in texts:
        m = _COND.match(text)
        if not m or not m.group(3):
            raise DataError(f"condition {text!r}: write COLUMN OP VALUE with OP one of = != < <= > >= "
                            "(e.g. sex=F, age>60)")
        name, op, raw = m.group(1), m.group(2).replace("==", "="), m.group(3).strip("'\"")
        try:
            col = schema.column(name)
        except KeyError:
            names = ", ".join(c.name for c in schema.modelled)
            raise DataError(f"condition {text!r}: no column {name!r} in the model's table (its columns: {names})") from None
        if col.kind not in (*DISCRETE, "continuous", "integer", "datetime"):
            raise DataError(f"condition {text!r}: column {name!r} is {col.kind}, which the model does not generate")
        if col.kind in DISCRETE:
            seen = (categories or {}).get(name, col.categories)
            if op not in ("=", "!="):
                raise DataError(f"condition {text!r}: {name!r} is a category column: use = or !=")
            if raw not in seen:
                raise DataError(f"condition {text!r}: {raw!r} is not a category the model saw in column {name!r} "
                                f"({', '.join(seen)})")
            out.append(Condition(name, op, raw, text))
            continue
        try:
            value = to_seconds(raw, col.format) if col.kind == "datetime" else float(raw)
        except ValueError:
            what = f"a date in the format {col.format!r}" if col.kind == "datetime" else "a number"
            raise DataError(f"condition {text!r}: column {name!r} holds numbers; {raw!r} is not {what}") from None
        if not math.isfinite(value):
            raise DataError(f"condition {text!r}: the value must be finite")
        out.append(Condition(name, op, value, text))
    return out


def check_rows_fit(n: int, dim: int, columns: int, where: str = "sample") -> None:
    """Refuse a request for more rows than the data budget (``GENFORGE_MAX_DATA_BYTES``) allows, before drawing."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"{where}: the number of rows must be a whole number of at least 1, got {n!r}")
    need = n * (dim * 4 + columns * _ROW_OVERHEAD)
    limit = max_data_bytes()
    if need > limit:
        raise DataError(f"{where}: {n} rows would take about {need / 2**30:.1f} GiB ({dim} encoded numbers and "
                        f"{columns} text cells per row), more than the {limit / 2**30:.1f} GiB data budget: ask for "
                        f"fewer rows (or write them in parts), or raise {ENV_MAX_DATA_BYTES} if the machine has "
                        "the memory")


def cond_vector_condition(conds: list[Condition], schema: Schema) -> Condition | None:
    """The condition a conditional vector can carry: the first ``column=label`` on a category column."""
    for c in conds:
        if c.op == "=" and schema.column(c.column).kind in DISCRETE:
            return c
    return None


def sample_conditioned(draw: Callable[[int, int, Condition | None], Table], schema: Schema, n: int,
                       conds: list[Condition],
                       seed: int = 0, cond_vector: bool = False, max_draws: int | None = None,
                       batch: int = 1000) -> tuple[Table, str]:
    """``n`` rows meeting every condition, and a sentence saying how.

    ``draw(k, seed, vector_condition)`` returns k decoded rows (a Table) for a seed, the model asked for
    ``vector_condition`` through its conditional vector when it is not None.
    """
    vec = cond_vector_condition(conds, schema) if (cond_vector and conds) else None
    rest = [c for c in conds if c is not vec]
    if not conds:
        return draw(n, seed, None), "no condition"
    max_draws = max_draws or max(100 * n, 100_000)
    kept, drawn, k, have = [], 0, 0, 0
    while have < n:
        if drawn >= max_draws:
            share = have / max(drawn, 1)
            raise DataError(f"conditions {', '.join(c.text for c in conds)}: only {have} of {n} rows met them after "
                            f"drawing {drawn} ({100 * share:.3f}%): the model rarely makes such rows; relax the "
                            "conditions or ask for fewer rows")
        size = min(max(batch, 2 * (n - have)), max_draws - drawn)
        t = draw(size, seed + 7919 * k, vec)
        ok = np.ones(len(t), bool)
        for c in conds:  # the conditional vector's condition too: the result never has a row that misses it
            ok &= c.mask(t)
        kept.append(t.take(np.flatnonzero(ok)))
        have += int(ok.sum())
        drawn += size
        k += 1
    values = {name: np.concatenate([t.values[name] for t in kept])[:n] for name in kept[0].values}
    how = [f"{vec.text} by the conditional vector"] if vec is not None else []
    if rest:
        how.append(f"{', '.join(c.text for c in rest)} by rejection")
    return Table(kept[0].schema, values), f"{'; '.join(how)} ({n} of {drawn} drawn rows kept)"

