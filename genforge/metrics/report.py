"""``genforge report RUN_DIR``: one self-contained HTML page per run, readable offline.

Plots are drawn with matplotlib's Agg backend and embedded as base64 PNG, as are the last few sample
grids, so the page is a single file with no scripts and no network access. Validation scores are drawn as
curves over every step they were measured at, grouped by what they measure (FID; KID with its spread;
precision, recall, density and coverage; IS and class entropy).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.io import atomic_write_text, read_json
from genforge.metrics.evaluate import format_table, load_result

NOT_PLOTTED = {"step", "epoch", "time", "images_per_sec"}
LAST_GRIDS = 4
# validation panels: title -> the val_* keys drawn together (keys not listed get a panel each)
VAL_PANELS = {"FID (validation split)": ("val_fid",), "KID (band: spread over subsets)": ("val_kid",),
              "precision, recall, density, coverage": ("val_precision", "val_recall", "val_density",
                                                       "val_coverage"),
              "classifier IS": ("val_is",), "class entropy": ("val_class_entropy",)}
BANDS = {"val_kid": "val_kid_std"}  # drawn as a band around the curve, not a panel of its own


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The records of ``metrics.jsonl`` and how many lines were unreadable (a crash can cut the last one)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
        else:
            bad += 1
    return records, bad


def series(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """key -> (steps, values) for every numeric key, in the order keys first appear."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        for key, value in r.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                steps, values = out.setdefault(key, ([], []))
                steps.append(r["step"])
                values.append(value)
    return out


def validation_panels(data: dict[str, tuple[list[float], list[float]]]) -> dict[str, dict[str, tuple]]:
    """Panel title -> {val key: (steps, values)}, every step each was measured at, grouped as in VAL_PANELS."""
    val = {k: v for k, v in data.items() if k.startswith("val_") and k not in BANDS.values()}
    panels: dict[str, dict[str, tuple]] = {}
    for title, keys in VAL_PANELS.items():
        group = {k: val.pop(k) for k in keys if k in val}
        if group:
            panels[title] = group
    for key, points in val.items():  # a score added later gets its own panel rather than none
        panels[key] = {key: points}
    return panels


def _panel_figure_png(panels: dict[str, dict[str, tuple]], title: str, bands: dict | None = None,
                      columns: int = 3) -> str:
    """One plot per panel, several curves each (with a legend when more than one), as a base64 PNG."""
    import matplotlib  # heavy import (~1 s): only when a report is drawn

    matplotlib.use("Agg")  # no display needed, ever
    import matplotlib.pyplot as plt

    bands = bands or {}
    rows = math.ceil(len(panels) / columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels.items()):
        for key, (steps, values) in curves.items():
            ax.plot(steps, values, lw=1.2, marker="o" if len(steps) < 30 else None, ms=3,
                    label=key[len("val_"):] if key.startswith("val_") else key)
            spread = bands.get(key)
            if spread is not None and list(spread[0]) == list(steps):
                lo = [v - d for v, d in zip(values, spread[1])]
                hi = [v + d for v, d in zip(values, spread[1])]
                ax.fill_between(steps, lo, hi, alpha=0.2)
            if key.endswith("fid") and min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")  # FID falls by orders of magnitude early in training
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)  # "1540" on the axis, not "+1.54e3" above it
        if len(curves) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure_png(panels: dict[str, tuple[list[float], list[float]]], title: str, columns: int = 3) -> str:
    """One small plot per key, one curve each, as a base64 PNG."""
    return _panel_figure_png({key: {key: curve} for key, curve in panels.items()}, title, columns=columns)


def last_grids(run: Path, count: int = LAST_GRIDS) -> list[tuple[int, Path]]:
    """(step, path) of the ``count`` sample grids of the highest steps in RUN/samples/step_*.png, newest first."""
    grids = []
    for p in (run / "samples").glob("step_*.png"):
        m = re.fullmatch(r"step_(\d+)\.png", p.name)
        if m:
            grids.append((int(m.group(1)), p))
    return sorted(grids, reverse=True)[:count]


def latest_grid(run: Path) -> Path | None:
    """The sample grid of the highest step in RUN/samples/step_*.png."""
    grids = last_grids(run, 1)
    return grids[0][1] if grids else None


def _checkpoint_line(run: Path, pointer: str) -> str | None:
    """"best: step_00000500 (step 500, validation FID 12.3)" from checkpoints/best.json or last.json."""
    path = run / "checkpoints" / pointer
    if not path.is_file():
        return None
    try:
        info = read_json(path, GenforgeError)
    except GenforgeError:
        return f"{pointer[:-5]}: {path} is unreadable"
    if not isinstance(info, dict):
        return f"{pointer[:-5]}: {path} is unreadable"
    facts = [f"step {info['step']}"] if "step" in info else []
    if isinstance(info.get("val_fid"), (int, float)):
        facts.append(f"validation FID {info['val_fid']:.4g}")
    return f"{pointer[:-5]}: {info.get('dir', '?')}" + (f" ({', '.join(facts)})" if facts else "")


def _val_table(val: dict[str, tuple[list[float], list[float]]]) -> str:
    """Each validation score at its first, best-FID and last measurement, as an HTML table."""
    steps = sorted({s for points in val.values() for s in points[0]})
    fid = val.get("val_fid")
    picks = [("first", steps[0]), ("last", steps[-1])]
    if fid:
        best = fid[0][min(range(len(fid[1])), key=fid[1].__getitem__)]
        picks.insert(1, ("best FID", best))
    head = "".join(f"<th>{html.escape(label)} (step {step})</th>" for label, step in picks)
    rows = []
    for key, (ks, vs) in val.items():
        at = dict(zip(ks, vs))
        cells = "".join(f"<td>{at[step]:.4g}</td>" if step in at else "<td>-</td>" for _, step in picks)
        rows.append(f"<tr><th>{html.escape(key[len('val_'):])}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def build_report(run: str | Path) -> str:
    """The HTML page for run directory ``run``."""
    run = Path(run)
    if not run.is_dir():
        raise GenforgeError(f"run directory not found: {run}")
    if not (run / "metrics.jsonl").is_file() and not (run / "config.yaml").is_file():
        raise GenforgeError(f"{run}: not a run directory (no metrics.jsonl, no config.yaml)")
    records, bad = read_metrics(run / "metrics.jsonl")
    data = series(records)
    losses = {k: v for k, v in data.items() if k not in NOT_PLOTTED and not k.startswith("val_")}
    val = {k: v for k, v in data.items() if k.startswith("val_")}

    parts = [f"<h1>genforge run: {html.escape(run.resolve().name)}</h1>",
             f"<p class=meta>{html.escape(str(run.resolve()))} &middot; report written "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>"]
    if records:
        last = records[-1]
        summary = [f"step {last['step']}"]
        if "time" in last:
            summary.append(f"{last['time']:.0f} s of training")
        if "epoch" in last:
            summary.append(f"epoch {last['epoch']}")
        parts.append(f"<p>{html.escape(', '.join(summary))}; {len(records)} log records"
                     + (f"; {bad} unreadable line(s) skipped" if bad else "") + "</p>")
    else:
        parts.append("<p>No metrics logged yet (metrics.jsonl is missing or empty).</p>")
    lines = [line for line in (_checkpoint_line(run, p) for p in ("best.json", "last.json")) if line]
    if lines:
        parts.append("<p>checkpoints: " + "; ".join(html.escape(line) for line in lines) + "</p>")

    if losses:
        parts += ["<h2>Training losses</h2>", _img(_figure_png(losses, "training losses"), "loss curves")]
    if val:
        measured = sorted({s for points in val.values() for s in points[0]})
        parts += ["<h2>Validation scores</h2>",
                  f"<p>Measured at {len(measured)} step(s) on the validation split"
                  + (f", every {measured[1] - measured[0]} steps" if len(measured) > 2 else "") + ".</p>",
                  _val_table(val)]
        if len(measured) > 1:  # one measurement is a row of the table, not a plot of single points
            parts.append(_img(_panel_figure_png(validation_panels(data), "validation scores over training",
                                                {k: data[v] for k, v in BANDS.items() if v in data}),
                              "validation curves"))
    if "images_per_sec" in data:
        parts += ["<h2>Throughput</h2>",
                  _img(_figure_png({"images_per_sec": data["images_per_sec"]}, "training images / s"), "images/s")]

    grids = last_grids(run)
    if grids:
        parts.append(f"<h2>Samples (the last {len(grids)} grid{'s' if len(grids) > 1 else ''}, newest first)</h2>")
        pictures = [(step, _img(base64.b64encode(path.read_bytes()).decode(), path.name)) for step, path in grids]
        figures = [f"<figure>{pic.replace('<img ', '<img class=grid ')}<figcaption>step {step}</figcaption></figure>"
                   for step, pic in pictures]
        parts.append("<div class=grids>" + "".join(figures) + "</div>")

    evals = _eval_tables(run)
    if evals:
        parts.append("<h2>Evaluations</h2>")
        parts += [f"<h3>{html.escape(name)}</h3><pre>{html.escape(table)}</pre>" for name, table in evals]

    if (run / "config.yaml").is_file():
        parts += ["<h2>Config</h2>", f"<pre>{html.escape((run / 'config.yaml').read_text(errors='replace'))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%}img.grid{image-rendering:pixelated;width:300px}"
             ".grids{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;font-size:12px}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:2px 10px;text-align:left;"
             "border-bottom:1px solid #eee}"
             "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}.meta{color:#666}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=utf-8>"
            f"<title>genforge report: {html.escape(run.resolve().name)}</title><style>{style}</style></head>"
            f"<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _eval_tables(run: Path) -> list[tuple[str, str]]:
    """Printable tables of any ``genforge eval --json`` results saved in the run directory."""
    out = []
    for path in sorted(run.glob("*.json")):
        try:
            out.append((path.name, format_table(load_result(path))))
        except (GenforgeError, KeyError, TypeError):
            continue  # some other JSON file
    return out


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run`` to ``out`` (default RUN/report.html), atomically."""
    page = build_report(run)
    return atomic_write_text(Path(out) if out else Path(run) / "report.html", page)
