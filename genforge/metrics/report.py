"""``genforge report RUN_DIR``: one self-contained HTML page per run, readable offline.

Plots are drawn with matplotlib's Agg backend and embedded as base64 PNG, as is the newest sample grid,
so the page is a single file with no scripts and no network access.
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
from genforge.io import atomic_write_text
from genforge.metrics.evaluate import format_table, load_result

NOT_PLOTTED = {"step", "epoch", "time", "images_per_sec"}


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


def _figure_png(panels: dict[str, tuple[list[float], list[float]]], title: str, columns: int = 3) -> str:
    """One small plot per key, as a base64 PNG."""
    import matplotlib  # heavy import (~1 s): only when a report is drawn

    matplotlib.use("Agg")  # no display needed, ever
    import matplotlib.pyplot as plt

    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, min(columns, len(panels)), figsize=(4.2 * min(columns, len(panels)), 2.8 * rows),
                             squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, panels.items()):
        ax.plot(steps, values, lw=1.2, marker="o" if len(steps) < 30 else None, ms=3)
        if key.endswith("fid") and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")  # FID falls by orders of magnitude early in training
        ax.set_title(key, fontsize=10)
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


def latest_grid(run: Path) -> Path | None:
    """The sample grid of the highest step in RUN/samples/step_*.png."""
    grids = []
    for p in (run / "samples").glob("step_*.png"):
        m = re.fullmatch(r"step_(\d+)\.png", p.name)
        if m:
            grids.append((int(m.group(1)), p))
    return max(grids)[1] if grids else None


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
    for pointer in ("best.json", "last.json"):
        path = run / "checkpoints" / pointer
        if path.is_file():
            parts.append(f"<p>checkpoint {pointer[:-5]}: <code>{html.escape(path.read_text().strip())}</code></p>")

    if losses:
        parts += ["<h2>Training losses</h2>", _img(_figure_png(losses, "training losses"), "loss curves")]
    if val:
        parts += ["<h2>Validation metrics</h2>", _img(_figure_png(val, "validation metrics"), "validation curves")]
    if "images_per_sec" in data:
        parts += ["<h2>Throughput</h2>",
                  _img(_figure_png({"images_per_sec": data["images_per_sec"]}, "training images / s"), "images/s")]

    grid = latest_grid(run)
    if grid is not None:
        parts += [f"<h2>Latest samples ({html.escape(grid.name)})</h2>",
                  _img(base64.b64encode(grid.read_bytes()).decode(), grid.name).replace("<img ", '<img class=grid ')]

    evals = _eval_tables(run)
    if evals:
        parts.append("<h2>Evaluations</h2>")
        parts += [f"<h3>{html.escape(name)}</h3><pre>{html.escape(table)}</pre>" for name, table in evals]

    if (run / "config.yaml").is_file():
        parts += ["<h2>Config</h2>", f"<pre>{html.escape((run / 'config.yaml').read_text(errors='replace'))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%}img.grid{image-rendering:pixelated;width:448px}"
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
