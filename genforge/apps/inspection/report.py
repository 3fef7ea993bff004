"""What ``genforge inspect score`` writes and ``genforge inspect report`` reads.

A results directory holds:

    scores.csv        index, score, label (normal / anomaly), and, for labelled data, class and truth
    summary.json      detector, data, threshold, counts; AUROC, F1 and the confusion counts when truth is known
    heatmaps/NNNNN.png  an image beside its residual heat map (one colour scale for all images), NNNNN its index:
                        by default only for the TOP_HEATMAPS highest scores and the cases the report shows

The report is one self-contained HTML page (plots drawn with matplotlib's Agg backend and embedded as
base64 PNG, like ``genforge report``): ROC curve when truth is known, score histograms with the threshold,
and the worst cases.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from genforge.apps.inspection.inspector import auroc, detection_counts, roc_curve
from genforge.errors import GenforgeError
from genforge.io import atomic_write_json, atomic_write_text, fsync_dir

SCORES = "scores.csv"
SUMMARY = "summary.json"
HEATMAPS = "heatmaps"
WORST = 16
TOP_HEATMAPS = 32  # heat maps written by default: a page of the worst cases, not one PNG per image of a data set


def heatmap_image(image: np.ndarray, residual: np.ndarray, scale: float) -> Image.Image:
    """uint8 image (h, w, c) beside its residual (h, w), coloured with inferno on [0, scale]: (h, 2w) RGB."""
    from matplotlib import colormaps  # heavy import (~0.5 s): only when heat maps are drawn

    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    heat = colormaps["inferno"](np.clip(residual / scale, 0, 1))[..., :3]   # (h, w, 3) in [0, 1]
    heat = np.round(heat * 255).astype(np.uint8)
    return Image.fromarray(np.concatenate([rgb, heat], axis=1), "RGB")


def write_results(out: str | Path, detector, scored, images: np.ndarray, *, classes: np.ndarray | None = None,
                  class_names: list[str] | None = None, truth: np.ndarray | None = None,
                  heatmaps: int | bool | None = TOP_HEATMAPS, about: dict | None = None) -> dict:
    """Write scores.csv, summary.json and heat-map PNGs into ``out``.

    heatmaps: K (default :data:`TOP_HEATMAPS`) writes those of the K highest scores, and, when the truth is
    known, of the false alarms and missed anomalies the report shows; None or True: one per image; 0 or
    False: none. truth: True for images known to be anomalies (labelled data whose normal classes the
    detector records). Returns the summary.
    """
    out = Path(out)
    x = images[..., None] if images.ndim == 3 else images
    rows = ["index,score,label,class,truth"]
    for i, (s, a) in enumerate(zip(scored.score, scored.anomaly)):
        cls = "" if classes is None else (class_names[classes[i]] if class_names else str(classes[i]))
        t = "" if truth is None else ("anomaly" if truth[i] else "normal")
        rows.append(f"{i},{float(s)!r},{'anomaly' if a else 'normal'},{_csv_field(cls)},{t}")
    atomic_write_text(out / SCORES, "\n".join(rows) + "\n")
    chosen = heatmap_indices(scored.score, truth, heatmaps)
    if len(chosen):
        write_heatmaps(out / HEATMAPS, x, scored.residual, detector.meta["residual_scale"], chosen)
    summary = {"format": "genforge-inspection", "format_version": 1, **(about or {}),
               "detector_name": detector.name, "threshold": detector.threshold,
               "target_fpr": detector.meta["target_fpr"], "n": len(scored.score),
               "flagged": int(scored.anomaly.sum()), "heatmaps": int(len(chosen)),
               "class_names": class_names, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if truth is not None and 0 < truth.sum() < len(truth):
        summary["auroc"] = auroc(scored.score, truth)
        summary.update(detection_counts(scored.anomaly, truth))
    atomic_write_json(out / SUMMARY, summary)
    return summary


def heatmap_indices(score: np.ndarray, truth: np.ndarray | None, heatmaps: int | bool | None) -> np.ndarray:
    """The indices whose heat maps :func:`write_results` writes (sorted): see its ``heatmaps``."""
    n = len(score)
    if heatmaps is None or heatmaps is True:
        return np.arange(n)
    if heatmaps is False or heatmaps == 0:
        return np.arange(0)
    if isinstance(heatmaps, bool) or not isinstance(heatmaps, (int, np.integer)) or heatmaps < 0:
        raise GenforgeError(f"heatmaps: a number of images (0 or more) or 'all', got {heatmaps!r}")
    order = np.argsort(-np.asarray(score), kind="mergesort")  # as the report orders its cases
    chosen = [order[:heatmaps]]
    if truth is not None:  # the report's false alarms and missed anomalies, so that it shows them too
        chosen += [order[~truth[order]][:WORST], order[truth[order]][::-1][:WORST]]
    return np.unique(np.concatenate(chosen)).astype(np.int64)


def write_heatmaps(directory: Path, x: np.ndarray, residual: np.ndarray, scale: float,
                   indices: np.ndarray | None = None) -> None:
    """One PNG per image of ``indices`` (default all), named by its index, into a temporary directory beside
    ``directory``, then renamed into place: a crash leaves the previous heat maps (or none), never a mix.
    (One fsync'd atomic write per file would cost seconds per thousand images.)"""
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.{time.time_ns()}.tmp")
    tmp.mkdir()  # unlike mkdtemp, keeps the user's umask
    try:
        for i in (range(len(x)) if indices is None else indices):
            heatmap_image(x[i], residual[i], scale).save(tmp / f"{i:05d}.png", format="PNG")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            shutil.rmtree(old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory.parent)


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def read_results(results: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(summary, columns) of a results directory written by :func:`write_results`."""
    results = Path(results)
    if not (results / SUMMARY).is_file() or not (results / SCORES).is_file():
        raise GenforgeError(f"{results}: not an inspection results directory (no {SUMMARY} and {SCORES}; "
                            "make one with genforge inspect score)")
    try:
        summary = json.loads((results / SUMMARY).read_text())
        with open(results / SCORES, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = {"score": np.array([float(r["score"]) for r in rows]),
                "anomaly": np.array([r["label"] == "anomaly" for r in rows]),
                "class": np.array([r["class"] for r in rows]),
                "truth": np.array([r["truth"] == "anomaly" for r in rows]) if rows and rows[0]["truth"] else None}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise GenforgeError(f"{results}: {SUMMARY} or {SCORES} is malformed ({e})") from None
    return summary, cols


# ------------------------------------------------------------------------------------------------ report


def _plot_png(draw, size=(5.0, 3.6)) -> str:
    import matplotlib  # heavy import (~1 s): only when a report is drawn

    matplotlib.use("Agg")  # no display needed, ever
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str, cls: str = "") -> str:
    return f'<img{f" class={cls}" if cls else ""} alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _cases(results: Path, cols: dict, idx: np.ndarray, title: str, summary: dict) -> str:
    if len(idx) == 0:
        return ""
    cells = []
    for i in idx:
        path = results / HEATMAPS / f"{i:05d}.png"
        label = f"#{i} score {cols['score'][i]:.4g}" + (f" {cols['class'][i]}" if cols["class"][i] else "")
        pic = _img(base64.b64encode(path.read_bytes()).decode(), label, "case") if path.is_file() else ""
        cells.append(f"<figure>{pic}<figcaption>{html.escape(label)}</figcaption></figure>")
    return f"<h3>{html.escape(title)}</h3><div class=cases>{''.join(cells)}</div>"


def build_report(results: str | Path) -> str:
    """The HTML page for the results directory ``results``."""
    results = Path(results)
    summary, cols = read_results(results)
    score, anomaly, truth = cols["score"], cols["anomaly"], cols["truth"]
    threshold = summary.get("threshold")
    name = html.escape(str(summary.get("detector_name", "?")))
    parts = [f"<h1>genforge inspection: {name} on {html.escape(str(summary.get('data', '?')))}</h1>",
             f"<p class=meta>{html.escape(str(results.resolve()))} &middot; report written "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>"]
    facts = [("detector", summary.get("detector")), ("split", summary.get("split")),
             ("images", len(score)), ("flagged as anomalies", f"{int(anomaly.sum())} ({100 * anomaly.mean():.1f}%)"),
             ("threshold", (f"{threshold:.6g} (chosen on normal validation images for a "
                            f"{100 * summary.get('target_fpr', 0):g}% false-positive rate)"))]
    if "auroc" in summary:
        facts += [("image AUROC", f"{summary['auroc']:.4f}"),
                  ("F1 at the threshold", (f"{summary['f1']:.4f} (precision {summary['precision']:.3f}, recall "
                                           f"{summary['recall']:.3f}, false-positive rate {summary['fpr']:.3f})")),
                  ("confusion", f"tp {summary['tp']}, fp {summary['fp']}, fn {summary['fn']}, tn {summary['tn']}")]
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                                     for k, v in facts) + "</table>")

    plots = []
    if truth is not None and 0 < truth.sum() < len(truth):
        fpr, tpr = roc_curve(score, truth)

        def roc(ax):
            ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {summary.get('auroc', float('nan')):.3f}")
            ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
            ax.scatter([summary["fpr"]], [summary["recall"]], color="C3", zorder=3, label="at the threshold")
            ax.set_xlabel("false-positive rate", fontsize=9)
            ax.set_ylabel("true-positive rate", fontsize=9)
            ax.set_title("ROC", fontsize=10)
            ax.legend(fontsize=8)

        plots.append(_img(_plot_png(roc), "ROC curve"))

    def hist(ax):
        bins = np.histogram_bin_edges(score, bins=50)
        groups = ([("normal", ~truth), ("anomaly", truth)] if truth is not None
                  else [("all images", np.ones(len(score), dtype=bool))])
        for label, mask in groups:
            if mask.any():
                ax.hist(score[mask], bins=bins, alpha=0.6, label=f"{label} ({int(mask.sum())})")
        ax.axvline(threshold, color="C3", lw=1.2, label="threshold")
        ax.set_xlabel("anomaly score", fontsize=9)
        ax.set_title("score histogram", fontsize=10)
        ax.legend(fontsize=8)

    plots.append(_img(_plot_png(hist), "score histograms"))
    parts += ["<h2>Scores</h2>", "<div class=plots>" + "".join(plots) + "</div>"]

    if cols["class"].size and cols["class"][0] != "":
        rows = []
        for c in dict.fromkeys(cols["class"]):
            m = cols["class"] == c
            rows.append(f"<tr><td>{html.escape(c)}</td><td>{int(m.sum())}</td><td>{100 * anomaly[m].mean():.1f}%</td>"
                        f"<td>{np.median(score[m]):.4g}</td></tr>")
        parts += ["<h2>By class</h2><table><tr><th>class</th><th>images</th><th>flagged</th>"
                  "<th>median score</th></tr>" + "".join(rows) + "</table>"]

    parts.append("<h2>Worst cases</h2><p>Each image beside its residual heat map (bright: far from normal).</p>")
    order = np.argsort(-score, kind="mergesort")
    parts.append(_cases(results, cols, order[:WORST], "highest scores", summary))
    if truth is not None:
        normal_idx = order[~truth[order]]
        anomaly_idx = order[truth[order]]
        parts.append(_cases(results, cols, normal_idx[:WORST], "false alarms: normal images with the highest scores",
                            summary))
        parts.append(_cases(results, cols, anomaly_idx[::-1][:WORST],
                            "missed anomalies: anomalies with the lowest scores", summary))
    if not summary.get("heatmaps", True):
        parts.append("<p>(scored with --heatmaps 0: no images to show)</p>")
    parts += ["<h2>Summary</h2>", f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%}img.case{image-rendering:pixelated;width:168px}"
             ".cases{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;font-size:11px}"
             "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}"
             "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}.meta{color:#666}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=utf-8>"
            f"<title>genforge inspection: {name}</title><style>{style}</style></head>"
            "<body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``results`` to ``out`` (default RESULTS/report.html), atomically."""
    page = build_report(results)
    return atomic_write_text(Path(out) if out else Path(results) / "report.html", page)
