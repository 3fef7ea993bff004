"""Tables in the generation layer: rows out of a model, rows with conditions, rows to files, a preview picture.

    model = genforge.load("runs/actg175-ctgan")
    samples = model.sample(1000, seed=0)          # samples.x: a structured array, one field per column
    table = rows_table(model, samples.x)          # genforge.data.table.Table: typed columns
    table, how = sample_rows(model, 1000, seed=0, where=["gender=1", "age>40"])
    print(how)                                    # "gender=1 by the conditional vector; age>40 by rejection (...)"

``TableOutput`` (``table_output.py``, ``sampling.OUTPUTS["table"]``) decodes a family's encoded rows with the
transform stored in the model file, so every path (CLI, Python, server, eval) gets the same rows for a seed.
"""

from __future__ import annotations

import io

import numpy as np

from genforge.data.table.conditions import check_rows_fit, parse_conditions, sample_conditioned
from genforge.data.table.schema import DISCRETE, Table
from genforge.data.table.transforms import format_cell
from genforge.data.table.write import rows_csv, write_rows
from genforge.errors import GenforgeError
from genforge.generation.sampling import decode, latents, plan
from genforge.generation.table_output import TableOutput  # noqa: F401  (re-exported: the output of table models)


def rows_table(model, rows: np.ndarray) -> Table:
    return model.output.table(rows)


def cond_vector(model, column: str, label: str, n: int) -> np.ndarray | None:
    """The conditional vector (n, cond_dim) float32 asking a CTGAN-style generator for ``column=label``; None
    when the model has no conditional vector or it does not cover that column."""
    G = model.nets.get("generator")
    if G is None or not getattr(G, "cond_dim", 0):
        return None
    starts = [int(s) for s, _ in G.cond_spans.tolist()]
    spans = [s for s in model.output.transformer.discrete_spans()]
    for span in spans:
        if span.column == column and span.start in starts:
            offset = sum(w for s, w in G.cond_spans.tolist()[:starts.index(span.start)])
            k = model.output.transformer.params[column]["labels"].index(label)
            out = np.zeros((n, G.cond_dim), dtype=np.float32)
            out[:, offset + k] = 1.0
            return out
    return None


def sample_rows(model, n: int, seed: int = 0, where=None, batch_size: int = 2000, progress: bool = False,
                **controls) -> tuple[Table, str]:
    """``n`` rows (a Table) meeting the conditions ``where`` (["sex=F", "age>60"] or "sex=F and age>60"), and a
    sentence saying how they were met (the conditional vector where the model has one, else rejection)."""
    schema = model.output.schema
    check_rows_fit(n, model.output.transformer.dim, len(schema.columns), f"model {model.name}")
    conds = parse_conditions(where, schema)
    has_vector = bool(getattr(model.nets.get("generator"), "cond_dim", 0))

    def draw(k: int, s: int, vec) -> Table:
        if vec is None:
            p = plan(model, k, s, **controls)
            x = decode(model, p.z, None, batch_size, progress, **p.decode)
        else:
            y = cond_vector(model, vec.column, vec.value, k)
            x = decode(model, latents(k, model.z_dim, s), y, batch_size, progress, **controls)
        return model.output.table(x)

    return sample_conditioned(draw, schema, n, conds, seed=seed, cond_vector=has_vector)


def write_table(samples, path, model, meta: dict, extra: dict, keyring, scale: int):
    """The writers of ``WRITERS["table"]``: .csv (the user's spelling), .parquet (typed), .npz (per column)."""
    if keyring is not None:
        raise GenforgeError(f"--out {path}: rows are written in the clear; encrypted output is for image and "
                            "series npz sets")
    table = samples.table if hasattr(samples, "table") and isinstance(samples.table, Table) else model.output.table(samples.x)
    return write_rows(path, table)


def rows_json(table: Table) -> list[dict]:
    """Rows as JSON objects: numbers as numbers (null missing), dates and labels as text."""
    out = []
    cols = [c for c in table.schema.columns if c.kind in ("continuous", "integer", "datetime", *DISCRETE, "constant")]
    for i in range(len(table)):
        row = {}
        for c in cols:
            if c.kind == "constant":
                row[c.name] = c.value
                continue
            v = table.values[c.name][i]
            if c.kind in DISCRETE:
                row[c.name] = v
            elif c.kind == "datetime" or isinstance(v, float) and np.isnan(v):
                row[c.name] = None if np.isnan(v) else format_cell(c, v)
            elif c.kind == "integer":
                row[c.name] = int(v)
            else:
                row[c.name] = float(format_cell(c, v))
        out.append(row)
    return out


def rows_csv_text(table: Table) -> str:
    return rows_csv(table)


def preview_columns(samples_x: np.ndarray, model, real: Table | None = None, title: str = "") -> np.ndarray:
    """One uint8 picture: a small histogram per column (up to 12), generated beside real rows where given."""
    # late: matplotlib's import takes seconds, and only pictures need it
    import matplotlib
    import matplotlib.pyplot as plt
    from PIL import Image

    matplotlib.use("Agg")

    table = model.output.table(samples_x)
    cols = table.schema.modelled[:12]
    k = len(cols)
    ncol = min(4, k)
    fig, axes = plt.subplots((k + ncol - 1) // ncol, ncol, figsize=(2.6 * ncol, 1.9 * ((k + ncol - 1) // ncol)),
                             squeeze=False)
    for ax, c in zip(axes.flat, cols):
        g = table.values[c.name]
        r = None if real is None else real.values[c.name]
        if c.kind in DISCRETE:
            labels = list(c.categories)
            pos = np.arange(len(labels))
            share = lambda v: [np.mean([a == lab for a in v]) for lab in labels]  # noqa: E731
            ax.bar(pos + (0.2 if r is not None else 0), share(g), 0.4, label="generated")
            if r is not None:
                ax.bar(pos - 0.2, share(r), 0.4, label="real")
            ax.set_xticks(pos, [str(lab)[:6] for lab in labels], fontsize=6)
        else:
            gp = g[~np.isnan(g)]
            edges = np.histogram_bin_edges(gp if r is None else r[~np.isnan(r)], bins=20)
            ax.hist(np.clip(gp, edges[0], edges[-1]), edges, density=True, alpha=0.6, label="generated")
            if r is not None:
                ax.hist(r[~np.isnan(r)], edges, density=True, alpha=0.5, label="real")
            ax.tick_params(labelsize=6)
        ax.set_title(c.name[:20], fontsize=8)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
