"""What ``genforge inspect score`` writes for sensor series, and the HTML report ``genforge inspect report`` draws.

A series results directory holds:

    summary.json   detector, data, threshold; per run: fault, onset, detection delay, detection rate, false-alarm
                   rate, the channels the alarms point at; per fault: the same averaged over its runs
    runs.csv       one row per run (the same numbers, for a spreadsheet)
    runs.npz       per run r: times_r, score_r, alarm_r (one entry per window position) and contrib_r (C,)

The report is one offline HTML page (matplotlib Agg, PNGs embedded as base64, as the image report): a table
per fault, then per run the score over time against the threshold with the fault onset and the alarms marked,
beside a bar chart of the per-sensor contributions (which sensor the residual points at).
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from pathlib import Path

import numpy as np

from genforge.apps.inspection.report import _img, _plot_png
from genforge.apps.inspection.series import RunScore, fault_table, run_row
from genforge.errors import GenforgeError
from genforge.io import atomic_write, atomic_write_json, atomic_write_text

SUMMARY = "summary.json"
RUNS_CSV = "runs.csv"
RUNS_NPZ = "runs.npz"
FORMAT = "genforge-series-inspection"
MAX_PLOTTED_RUNS = 48  # a report of every TEP run (22 faults x seeds) stays a page one can scroll
TOP_BARS = 10


def write_series_results(out: str | Path, det, runs: list[tuple[str, str, RunScore]], about: dict) -> dict:
    """runs: (label, fault, RunScore) per run. Writes summary.json, runs.csv and runs.npz; returns the summary."""
    out = Path(out)
    names = det.meta["channel_names"]
    rows = [run_row(label, fault, rs, names) for label, fault, rs in runs]
    arrays = {}
    for r, (_, _, rs) in enumerate(runs):
        arrays.update({f"times_{r}": rs.times, f"score_{r}": rs.score, f"alarm_{r}": rs.alarm,
                       f"contrib_{r}": rs.contributions})
    atomic_write(out / RUNS_NPZ, lambda f: np.savez(f, **arrays))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "fault", "samples", "onset", "delay", "detection_rate", "false_alarm_rate", "alarms",
                     "top_channel"])
    for row in rows:
        writer.writerow([row["run"], row["fault"], row["samples"], row["onset"], row["delay"],
                         row["detection_rate"], row["false_alarm_rate"], row["alarms"], row["top_channels"][0][0]])
    atomic_write_text(out / RUNS_CSV, buf.getvalue())
    summary = {"format": FORMAT, "format_version": 1, **about, "detector_name": det.name,
               "window": det.shape[1], "threshold": det.threshold, "target_fpr": det.meta["target_fpr"],
               "channel_names": names, "runs": rows, "faults": fault_table(rows),
               "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(out / SUMMARY, summary)  # last: a directory with a summary has its runs
    return summary


def is_series_results(results: str | Path) -> bool:
    try:
        return json.loads((Path(results) / SUMMARY).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _fmt(v, spec: str = "{:.3f}") -> str:
    return "-" if v is None else spec.format(v)


def build_series_report(results: str | Path) -> str:
    results = Path(results)
    try:
        summary = json.loads((results / SUMMARY).read_text())
        z = np.load(results / RUNS_NPZ, allow_pickle=False)
        runs = summary["runs"]
        curves = [(z[f"times_{r}"], z[f"score_{r}"], z[f"alarm_{r}"], z[f"contrib_{r}"]) for r in range(len(runs))]
    except (OSError, ValueError, KeyError) as e:
        raise GenforgeError(f"{results}: not a series inspection results directory ({e}); make one with "
                            "genforge inspect score") from None
    names, threshold = summary["channel_names"], summary["threshold"]
    title = f"{summary['detector_name']} on {summary.get('data', '?')}"
    parts = [f"<h1>genforge fault detection: {html.escape(title)}</h1>",
             f"<p class=meta>{html.escape(str(results.resolve()))} &middot; window {summary['window']} samples "
             f"&middot; threshold {threshold:.6g} (normal validation windows, target false-alarm rate "
             f"{100 * summary['target_fpr']:g}%)</p>"]
    rows = "".join(f"<tr><td>{html.escape(f)}</td><td>{t['runs']}</td><td>{t['detected']}</td>"
                   f"<td>{_fmt(t['detection_rate'])}</td><td>{_fmt(t['false_alarm_rate'])}</td>"
                   f"<td>{_fmt(t['median_delay'], '{:g}')}</td></tr>" for f, t in summary["faults"].items())
    parts.append("<h2>By fault</h2><table><tr><th>fault</th><th>runs</th><th>detected</th><th>detection rate "
                 "(after onset)</th><th>false-alarm rate (before onset)</th><th>median delay (samples)</th></tr>"
                 + rows + "</table>")
    parts.append("<h2>Runs</h2><p>Left: the score per window position (log scale), the threshold (red), the fault "
                 "onset (dashed), alarms (red ticks). Right: each sensor's share of the score over the alarms "
                 "after the onset: the sensors the residual points at.</p>")
    shown = runs[:MAX_PLOTTED_RUNS]
    for r, row in enumerate(shown):
        times, score, alarm, contrib = curves[r]

        def over_time(ax, times=times, score=score, alarm=alarm, row=row):
            ax.plot(times, np.maximum(score, 1e-12), lw=0.8, color="C0")
            ax.axhline(threshold, color="C3", lw=1.0)
            if row["onset"] is not None:
                ax.axvline(row["onset"], color="#555", lw=1.0, ls="--")
            if alarm.any():
                ax.plot(times[alarm], np.full(int(alarm.sum()), threshold), "|", color="C3", ms=6)
            ax.set_yscale("log")
            ax.set_xlabel("sample", fontsize=9)
            ax.set_title(f"{row['run']}: delay {_fmt(row['delay'], '{:d}')}, detection {_fmt(row['detection_rate'])}",
                         fontsize=10)

        order = np.argsort(contrib)[::-1][:TOP_BARS]

        def bars(ax, order=order, contrib=contrib):
            ax.barh(range(len(order))[::-1], contrib[order], color="C1")
            ax.set_yticks(range(len(order))[::-1])
            ax.set_yticklabels([names[i] for i in order], fontsize=7)
            ax.set_xlabel("share of the score", fontsize=9)
            ax.set_title("per-sensor contribution", fontsize=10)

        parts.append("<div class=plots>" + _img(_plot_png(over_time, (6.0, 3.0)), f"{row['run']} score over time")
                     + _img(_plot_png(bars, (4.6, 3.0)), f"{row['run']} per-sensor contributions") + "</div>")
    if len(runs) > len(shown):
        parts.append(f"<p>{len(runs) - len(shown)} more runs in {RUNS_CSV} (not plotted).</p>")
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:8px}"
             "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}"
             ".meta{color:#666}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=utf-8>"
            f"<title>genforge fault detection: {html.escape(title)}</title><style>{style}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_series_report(results: str | Path, out: str | Path | None = None) -> Path:
    page = build_series_report(results)
    return atomic_write_text(Path(out) if out else Path(results) / "report.html", page)
