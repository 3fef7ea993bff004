"""Tables: read a CSV, Parquet file or bundled table, infer or apply its schema, split it, encode it.

    splits = load_table("csv:patients.csv")                       # schema inferred (notes in splits.notes)
    write_schema(splits.schema, "schema.yaml")                     # edit it, then:
    splits = load_table("csv:patients.csv", schema="schema.yaml")
    splits = load_table("table:actg175")                           # bundled: breast_cancer, diabetes, actg175, gbsg2
    tf = TableTransformer.fit(splits.train, method="vgm")          # mode-specific normalization (CTGAN)
    x = tf.encode(splits.train)                                    # float32 (N, D): what a network sees
    rows = tf.decode(x)                                            # the user's units, labels and constraints
    print(check_table("table:actg175"))                            # what `genforge data check` prints

Spec forms: ``csv:FILE``, ``parquet:FILE`` (needs pyarrow) and ``table:NAME``. A prefix belongs to one
modality, so the spec alone says the data is a table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.split import split_indices
from genforge.data.table.bundled import NAMES as BUNDLED, TASKS, load_bundled
from genforge.data.table.read import RawTable, read_csv, read_parquet
from genforge.data.table.schema import (DISCRETE, KINDS, MODELLED, Column, Schema, Table, apply_schema, infer_schema,
                                        read_schema, schema_yaml, set_target, write_schema)
from genforge.data.table.transforms import METHODS, TableTransformer
from genforge.errors import DataError

__all__ = ["BUNDLED", "KINDS", "METHODS", "Column", "RawTable", "Schema", "Table", "TableSplits", "TableTransformer",
           "check_table", "load_table", "parse_table_spec", "read_raw", "read_schema", "schema_yaml", "write_schema"]

KIND_PREFIXES = ("csv", "parquet", "table")
SPEC_FORMS = "csv:FILE, parquet:FILE, table:NAME (" + ", ".join(BUNDLED) + ")"


@dataclass(eq=False)
class TableSplits:
    """A table split three ways (test: the holdout the generator never sees), with its schema and notes."""

    name: str
    train: Table
    val: Table
    test: Table
    schema: Schema
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        s = self.schema
        n = len(self.train) + len(self.val) + len(self.test)
        lines = [f"{self.name}: {n} rows, {len(s.modelled)} modelled column(s) of {len(s.columns)}"]
        for c in s.columns:
            what = c.kind
            if c.kind in DISCRETE:
                what += f" ({len(c.categories)}: {', '.join(c.categories[:6])}{' ...' if len(c.categories) > 6 else ''})"
            elif c.kind in ("continuous", "integer"):
                what += f" [{c.min:g}, {c.max:g}]"
            elif c.kind == "datetime":
                what += f" {c.format}"
            lines.append(f"  {c.name}: {what}" + (f", {100 * c.missing:.1f}% missing" if c.missing else ""))
        lines.append(f"  split: train {len(self.train)}, val {len(self.val)}, test (holdout) {len(self.test)} rows")
        if s.target:
            lines.append(f"  risk task: {s.task} of {s.target!r}"
                         + (f"; left out of it: {', '.join(s.exclude_from_task)}" if s.exclude_from_task else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def parse_table_spec(spec: str) -> tuple[str, str]:
    """"csv:data.csv" -> ("csv", "data.csv"); file paths have ~ expanded."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"table source spec {spec!r} is empty; valid forms: {SPEC_FORMS}")
    kind, sep, rest = spec.strip().partition(":")
    if kind not in KIND_PREFIXES or not sep or not rest:
        raise DataError(f"unknown table source spec {spec!r}; valid forms: {SPEC_FORMS}")
    return kind, os.path.expanduser(rest) if kind != "table" else rest


def read_raw(spec: str) -> RawTable:
    kind, rest = parse_table_spec(spec)
    if kind == "csv":
        return read_csv(rest)
    if kind == "parquet":
        return read_parquet(rest)
    return load_bundled(rest)


def load_table(spec: str, *, schema: str | Path | Schema | None = None, target: str | None = None,
               val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> TableSplits:
    """Read ``spec``, infer its schema (or apply the given one), check every cell, split it (stratified by the
    target when it is a category). A bundled table names its own target and leak columns."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    kind, rest = parse_table_spec(spec)
    raw = read_raw(spec)
    notes: list[str] = []
    if isinstance(schema, Schema):
        sch = schema
    elif schema is not None:
        sch = read_schema(schema, raw)
    else:
        sch, notes = infer_schema(raw)
    if kind == "table" and target is None and sch.target is None:
        target, exclude, note = TASKS[rest]
        set_target(sch, target, raw.origin)
        sch.exclude_from_task = list(exclude)
        notes.append(note)
    elif target is not None:
        set_target(sch, target, raw.origin)
    table = apply_schema(raw, sch)
    notes += raw.notes
    n = len(table)
    y = None
    if sch.target and sch.task == "classification":
        labels = table.values[sch.target]
        cats = {c: i for i, c in enumerate(sch.column(sch.target).categories)}
        y = np.array([cats.get(v, -1) for v in labels])
    test_idx, val_idx, train_idx = split_indices(y, n, (test_fraction, val_fraction), seed)
    if len(train_idx) < 2:
        raise DataError(f"{raw.origin}: {n} rows leave {len(train_idx)} for training after the val and test splits")
    return TableSplits(spec, table.take(train_idx), table.take(val_idx), table.take(test_idx), sch, notes)


def check_table(spec: str, schema: str | Path | None = None) -> str:
    """The printable description of what load_table(spec) reads (for ``genforge data check``)."""
    return load_table(spec, schema=schema).describe()
