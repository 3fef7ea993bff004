"""A table model's output conversion (``sampling.OUTPUTS["table"]``): encoded rows -> decoded rows.

The transform stored in the model file (``config.json`` field ``transform``) decodes a family's encoded rows,
so every path (CLI, Python, server, eval) gets the same rows for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.data.table.schema import DISCRETE, Table
from genforge.data.table.transforms import TableTransformer
from genforge.data.table.write import structured
from genforge.errors import GenforgeError


class TableOutput:
    """A family's encoded rows (b, d) -> a structured array (b,) of the decoded rows: number columns float64
    (NaN missing; datetimes in seconds), category columns text ("" missing)."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        transform = meta.get("transform")
        if not isinstance(transform, dict) or transform.get("kind") != "table":
            raise GenforgeError(f"{origin}: a table model needs field 'transform' of kind 'table'")
        try:
            self.transformer = TableTransformer.from_json(transform)
        except (KeyError, TypeError, ValueError) as e:
            raise GenforgeError(f"{origin}: field 'transform' is malformed ({type(e).__name__}: {e})") from None
        if [self.transformer.dim] != list(meta.get("example_shape", [])):
            raise GenforgeError(f"{origin}: field 'transform' encodes {self.transformer.dim} numbers per row, "
                                f"example_shape says {meta.get('example_shape')}")
        self.schema = self.transformer.schema
        self.columns = self.schema.modelled
        self.dtype = np.dtype([(c.name, "U64" if c.kind in DISCRETE else "f8") for c in self.columns])
        self.channel_names = [c.name for c in self.columns]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return structured(self.transformer.decode(x.float().cpu().numpy()))

    def table(self, rows: np.ndarray) -> Table:
        """Structured rows -> a Table of the model's schema."""
        values = {}
        for c in self.columns:
            v = rows[c.name]
            values[c.name] = (np.array([None if a == "" else str(a) for a in v], dtype=object) if c.kind in DISCRETE
                              else np.asarray(v, dtype=np.float64))
        return Table(self.schema, values)
