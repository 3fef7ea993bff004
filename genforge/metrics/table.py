"""Scores of a synthetic table against the real one: quality, detection, machine-learning efficacy, privacy.

    scores = evaluate_table(synthetic, train, holdout)     # Tables with one schema (genforge.data.table)
    scores["quality"], scores["detection_auroc"], scores["tstr"], scores["dcr_synthetic_median"]
    write_table_report("report.html", synthetic, train, scores)

Quality follows SDMetrics' quality report (the peer every synthetic-data paper reports), so its figures can
be checked against SDMetrics' own on the same CSVs (benchmarks/tabular.py does, to 0.01):

- column shapes: 1 - KS statistic for number columns, 1 - total variation distance of the category
  frequencies for category columns (missing cells left out of both, as SDMetrics' KSComplement and
  TVComplement do);
- column-pair trends: for two number columns 1 - |r_real - r_synthetic| / 2 with Pearson's r (rows where both
  are present; a pair where either side is constant has no score); for any other pair 1 - TVD of the two-way
  contingency tables (missing a value of its own), a number column cut into 10 equal-width bins. As in
  SDMetrics' quality report (``ColumnPairTrends._discretize_column``), each table's column is cut by the bins of
  its own range, and a value at the top edge falls in a bin of its own. As SDMetrics' QualityReport (0.2x and
  later) does, only pairs with a trend to keep count: real |r| above 0.5 for two numbers, real Cramer's V
  above 0.3 for the rest (``pair_trends``); ``pair_trends_all`` is the mean over every pair (the older
  report's figure);
- quality: the mean of the two.

Beyond the quality report (as synthcity and the TabDDPM paper score tables):

- detection: a logistic regression told to separate real from synthetic rows, its 3-fold cross-validated
  AUROC (0.5: indistinguishable; 1: every row told apart);
- machine-learning efficacy: the schema's risk task (target) trained on the synthetic rows and tested on the
  real holdout that the generator never saw (TSTR), beside the same model trained on the real training rows
  (TRTR): AUROC for a category target, R^2 for a number;
- privacy: the distance of each synthetic row to its closest training row (DCR) and the ratio of its nearest
  to its second-nearest training distance (NNDR), beside the same figures of the real holdout rows, which
  never were training rows; ``memorization`` flags exact copies and near copies (closer than the 1% quantile
  of the holdout's DCR).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math

import numpy as np
import torch

from genforge.data.table import load_table
from genforge.data.table.schema import DISCRETE, Schema, Table
from genforge.errors import GenforgeError
from genforge.generation.model import load as load_model
from genforge.io import atomic_write_text
from genforge.postprocess.filtering import pairwise_sq_distances
from genforge.postprocess.memorization import nearest

BINS = 10  # equal-width bins of a number column in a mixed pair (SDMetrics' discretize_column)
# a pair counts towards pair_trends when the real table has a trend there (SDMetrics' QualityReport defaults)
REAL_CORRELATION_THRESHOLD = 0.5
REAL_ASSOCIATION_THRESHOLD = 0.3


# ----------------------------------------------------------------------------------- column shapes

def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _freqs(values: np.ndarray, keep_missing: bool = True) -> dict:
    labels = [("\0missing" if v is None else v) for v in values if keep_missing or v is not None]
    if not labels:
        return {}
    keys, counts = np.unique(np.array(labels, dtype=object), return_counts=True)
    return dict(zip(keys, counts / counts.sum()))


def tv_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance of two label arrays' frequencies (missing left out): 1/2 sum |p_a - p_b|."""
    fa, fb = _freqs(a, keep_missing=False), _freqs(b, keep_missing=False)
    return 0.5 * sum(abs(fa.get(k, 0.0) - fb.get(k, 0.0)) for k in set(fa) | set(fb))


def column_shape(col, real: np.ndarray, synth: np.ndarray) -> float:
    if col.kind in DISCRETE:
        return 1.0 - tv_distance(real, synth)
    r, s = real[~np.isnan(real)], synth[~np.isnan(synth)]
    if not len(r) or not len(s):
        return 0.0 if len(r) != len(s) else 1.0
    return 1.0 - ks_statistic(r, s)


# ----------------------------------------------------------------------------------- column-pair trends

def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _discretize(col, real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels for a mixed pair: categories as they are; numbers as their bin among BINS equal-width bins of their
    own table's range (SDMetrics' quality report), missing as None."""
    if col.kind in DISCRETE:
        return real, synth

    def cut(v):
        present = v[~np.isnan(v)]
        edges = np.histogram_bin_edges(present if len(present) else np.zeros(1), bins=BINS)
        k = np.digitize(v, edges).astype(object)
        k[np.isnan(v)] = None
        return k

    return cut(real), cut(synth)


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramer's V of two label arrays (missing a label of its own), chi-squared without continuity correction."""
    ka = ["\0missing" if x is None else str(x) for x in a]
    kb = ["\0missing" if x is None else str(x) for x in b]
    ra, ia = np.unique(np.array(ka, dtype=object), return_inverse=True)
    rb, ib = np.unique(np.array(kb, dtype=object), return_inverse=True)
    if len(ra) < 2 or len(rb) < 2:
        return float("nan")
    observed = np.zeros((len(ra), len(rb)))
    np.add.at(observed, (ia, ib), 1)
    n = observed.sum()
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(observed.shape) - 1))))


def _contingency(a: np.ndarray, b: np.ndarray) -> dict:
    keys = ["\0missing" if x is None else str(x) for x in a]
    keys2 = ["\0missing" if x is None else str(x) for x in b]
    pairs, counts = np.unique(np.array([f"{k}\x1f{m}" for k, m in zip(keys, keys2)], dtype=object), return_counts=True)
    return dict(zip(pairs, counts / counts.sum()))


def pair_trend(c1, c2, real: Table, synth: Table, thresholds: bool = False) -> tuple[float, str]:
    """(score, metric name) for one pair of columns; with ``thresholds`` NaN where the real pair has no trend
    (|r| <= 0.5, Cramer's V <= 0.3)."""
    r1, r2, s1, s2 = (real.values[c1.name], real.values[c2.name], synth.values[c1.name], synth.values[c2.name])
    if c1.kind not in DISCRETE and c2.kind not in DISCRETE:
        rr = _pearson(r1, r2)
        if math.isnan(rr) or (thresholds and abs(rr) <= REAL_CORRELATION_THRESHOLD):
            return float("nan"), "correlation"
        rs = _pearson(s1, s2)
        if math.isnan(rs):  # a constant side has no correlation (SDMetrics: no score)
            return float("nan"), "correlation"
        return 1.0 - abs(rr - rs) / 2, "correlation"
    a1, b1 = _discretize(c1, r1, s1)
    a2, b2 = _discretize(c2, r2, s2)
    if thresholds:
        v = cramers_v(a1, a2)
        if math.isnan(v) or v <= REAL_ASSOCIATION_THRESHOLD:
            return float("nan"), "contingency"
    fr, fs = _contingency(a1, a2), _contingency(b1, b2)
    return 1.0 - 0.5 * sum(abs(fr.get(k, 0.0) - fs.get(k, 0.0)) for k in set(fr) | set(fs)), "contingency"


def quality(real: Table, synth: Table) -> dict:
    """Column shapes, column-pair trends and their mean, with the per-column and per-pair figures."""
    cols = real.schema.modelled
    shapes = {c.name: column_shape(c, real.values[c.name], synth.values[c.name]) for c in cols}
    pairs, counted = {}, {}
    for c1, c2 in itertools.combinations(cols, 2):
        score, metric = pair_trend(c1, c2, real, synth)
        if not math.isnan(score):
            pairs[(c1.name, c2.name)] = score
            if not math.isnan(pair_trend(c1, c2, real, synth, thresholds=True)[0]):
                counted[(c1.name, c2.name)] = score
    shape = float(np.mean(list(shapes.values())))
    trend = float(np.mean(list(counted.values()))) if counted else float("nan")
    return {"column_shapes": shape, "pair_trends": trend,
            "pair_trends_all": float(np.mean(list(pairs.values()))) if pairs else float("nan"),
            "pairs_counted": len(counted), "quality": shape if math.isnan(trend) else (shape + trend) / 2,
            "per_column": shapes, "per_pair": {f"{a} | {b}": s for (a, b), s in pairs.items()}}


# ----------------------------------------------------------------------------------- features for the classifiers

class Features:
    """Rows as numbers for the classifiers and distances: numbers standardized (missing: 0 plus an indicator),
    datetimes as seconds, categories one-hot; fitted on the real training rows."""

    def __init__(self, schema: Schema, fit_on: Table, columns: list[str] | None = None, scale: str = "standard"):
        self.cols = [c for c in schema.modelled if columns is None or c.name in columns]
        self.stats = {}
        for c in self.cols:
            v = fit_on.values[c.name]
            if c.kind in DISCRETE:
                self.stats[c.name] = list(c.categories) + [None]
            else:
                p = v[~np.isnan(v)]
                indicator = bool(np.isnan(v).any() or c.missing)  # decided once, so every table gets the same width
                if scale == "standard":
                    self.stats[c.name] = (float(p.mean()), float(p.std()) or 1.0, indicator)
                else:  # min-max to [0, 1]: every number column weighs at most 1 in a distance, as a category does
                    self.stats[c.name] = (float(p.min()), float(p.max() - p.min()) or 1.0, indicator)

    def __call__(self, table: Table) -> np.ndarray:
        parts = []
        for c in self.cols:
            v = table.values[c.name]
            if c.kind in DISCRETE:
                cats = self.stats[c.name]
                index = {k: i for i, k in enumerate(cats)}
                onehot = np.zeros((len(v), len(cats)))
                onehot[np.arange(len(v)), [index.get(x, len(cats) - 1) for x in v]] = 1.0
                parts.append(onehot)
            else:
                lo, scale, indicator = self.stats[c.name]
                miss = np.isnan(v)
                parts.append(np.where(miss, 0.0, (v - lo) / scale)[:, None])
                if indicator:
                    parts.append(miss[:, None].astype(float))
        return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------------- detection

def detection_auroc(real: Table, synth: Table, seed: int = 0, folds: int = 3) -> float:
    """Cross-validated AUROC of a logistic regression telling real rows (label 0) from synthetic ones (1)."""
    # late: scikit-learn's import takes seconds; only the classifier scores need it
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    feats = Features(real.schema, real)
    x = np.concatenate([feats(real), feats(synth)])
    y = np.concatenate([np.zeros(len(real)), np.ones(len(synth))])
    aucs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = LogisticRegression(max_iter=2000).fit(x[tr], y[tr])
        aucs.append(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))
    return float(np.mean(aucs))


# ----------------------------------------------------------------------------------- machine-learning efficacy

def task_score(train: Table, test: Table, schema: Schema, fit_features_on: Table) -> float:
    """The risk task's score on ``test`` of a linear model fitted on ``train``: AUROC (one-vs-rest macro for
    several classes) for a category target, R^2 for a number target. 0.5 / 0 when ``train`` has one class."""
    # late: scikit-learn's import takes seconds; only the classifier scores need it
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import r2_score, roc_auc_score

    target = schema.target
    columns = [c.name for c in schema.modelled if c.name != target and c.name not in schema.exclude_from_task]
    feats = Features(schema, fit_features_on, columns)
    xtr, xte = feats(train), feats(test)
    if schema.task == "classification":
        labels = list(schema.column(target).categories) + [None]
        index = {k: i for i, k in enumerate(labels)}
        ytr = np.array([index[v] for v in train.values[target]])
        yte = np.array([index[v] for v in test.values[target]])
        classes = np.unique(ytr)
        if len(classes) < 2:
            return 0.5
        clf = LogisticRegression(max_iter=5000).fit(xtr, ytr)
        proba = clf.predict_proba(xte)
        present = np.unique(yte)
        if len(present) == 2 and len(classes) == 2:
            return float(roc_auc_score(yte == classes[1], proba[:, 1]))
        full = np.zeros((len(xte), len(labels)))
        full[:, classes] = proba
        full = full[:, present] / np.clip(full[:, present].sum(1, keepdims=True), 1e-12, None)
        return float(roc_auc_score(yte, full, multi_class="ovr", labels=present))
    ytr, yte = train.values[target], test.values[target]
    ok_tr, ok_te = ~np.isnan(ytr), ~np.isnan(yte)
    reg = Ridge(alpha=1e-3).fit(xtr[ok_tr], ytr[ok_tr])
    return float(r2_score(yte[ok_te], reg.predict(xte[ok_te])))


# ----------------------------------------------------------------------------------- privacy

def distances(queries: Table, refs: Table, feats: Features) -> tuple[np.ndarray, np.ndarray]:
    """(nearest, second-nearest) Euclidean distance of each query row to the reference rows, on min-max
    scaled numbers and one-hot categories."""
    q, r = feats(queries), feats(refs)
    d1, i1 = nearest(q, r)
    # second nearest: the nearest among the references without each query's first
    qt, rt = torch.from_numpy(q.astype(np.float32)), torch.from_numpy(r.astype(np.float32))
    d2 = []
    for i in range(0, len(qt), 2048):
        d = pairwise_sq_distances(qt[i:i + 2048], rt)
        d[torch.arange(len(d)), torch.from_numpy(i1[i:i + 2048])] = float("inf")
        d2.append(d.min(1).values.clamp(min=0).sqrt())
    return d1, torch.cat(d2).numpy()


def _row_keys(t: Table) -> set:
    cols = t.schema.modelled
    return {tuple("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                  for v in (t.values[c.name][i] for c in cols)) for i in range(len(t))}


def privacy(synth: Table, train: Table, holdout: Table, quantile: float = 0.01) -> dict:
    """DCR and NNDR of synthetic rows and of the real holdout against the training rows; the memorization check."""
    feats = Features(train.schema, train, scale="minmax")
    d_syn, d2_syn = distances(synth, train, feats)
    d_hold, d2_hold = distances(holdout, train, feats)
    threshold = float(np.quantile(d_hold, quantile))
    train_keys = _row_keys(train)
    cols = synth.schema.modelled
    exact = sum(tuple("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                      for v in (synth.values[c.name][i] for c in cols)) in train_keys for i in range(len(synth)))
    return {"dcr_synthetic_median": float(np.median(d_syn)), "dcr_holdout_median": float(np.median(d_hold)),
            "nndr_synthetic_median": float(np.median(d_syn / np.maximum(d2_syn, 1e-12))),
            "nndr_holdout_median": float(np.median(d_hold / np.maximum(d2_hold, 1e-12))),
            "memorization": {"exact_copies": int(exact), "near_copy_threshold": threshold, "quantile": quantile,
                             "near_copies": int((d_syn < threshold).sum()),
                             "near_copy_share": float((d_syn < threshold).mean())}}


# ----------------------------------------------------------------------------------- everything

def evaluate_table(synth: Table, train: Table, holdout: Table, seed: int = 0) -> dict:
    """Every score of this module for one synthetic table (see the module docstring)."""
    q = quality(train, synth)
    out = {"rows": len(synth), "quality": q["quality"], "column_shapes": q["column_shapes"],
           "pair_trends": q["pair_trends"], "pair_trends_all": q["pair_trends_all"], "pairs_counted": q["pairs_counted"],
           "detection_auroc": detection_auroc(train, synth, seed)}
    schema = train.schema
    if schema.target:
        out["task"] = schema.task
        out["task_metric"] = "AUROC" if schema.task == "classification" else "R2"
        out["trtr"] = task_score(train, holdout, schema, train)
        out["tstr"] = task_score(synth, holdout, schema, train)
    out.update(privacy(synth, train, holdout))
    out["per_column"], out["per_pair"] = q["per_column"], q["per_pair"]
    return out


def format_scores(s: dict) -> str:
    lines = [f"quality {s['quality']:.3f} (column shapes {s['column_shapes']:.3f}, pair trends {s['pair_trends']:.3f} "
             f"over the {s['pairs_counted']} pairs with a real trend; {s['pair_trends_all']:.3f} over every pair) "
             f"on {s['rows']} synthetic rows",
             f"detection AUROC {s['detection_auroc']:.3f} (0.5: a classifier cannot tell them from real rows)"]
    if "tstr" in s:
        lines.append(f"risk task ({s['task']}, {s['task_metric']} on the real holdout): trained on synthetic "
                     f"{s['tstr']:.3f}, trained on real {s['trtr']:.3f}")
    m = s["memorization"]
    if s.get("privacy_training"):
        p = s["privacy_training"]
        lines.append(f"trained with {p.get('mechanism', 'DP')}: epsilon {p.get('epsilon')} at delta {p.get('delta')} "
                     f"(target {p.get('target_epsilon')})")
    lines += [f"privacy: median DCR synthetic {s['dcr_synthetic_median']:.3f} vs holdout {s['dcr_holdout_median']:.3f} "
              f"(to the training rows); median NNDR {s['nndr_synthetic_median']:.3f} vs {s['nndr_holdout_median']:.3f}",
              f"memorization: {m['exact_copies']} exact copies of training rows; {100 * m['near_copy_share']:.2f}% near "
              f"copies (closer than the {100 * m['quantile']:g}% quantile of the holdout's DCR, "
              f"{m['near_copy_threshold']:.3f})"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- the HTML report

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def column_figures(real: Table, synth: Table, max_columns: int = 40) -> list[tuple[str, str]]:
    """[(column, base64 PNG)]: each column's distribution, real beside synthetic."""
    # late: matplotlib's import takes seconds, and only the report's pictures need it
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")

    out = []
    for c in real.schema.modelled[:max_columns]:
        fig, ax = plt.subplots(figsize=(3.6, 2.4))
        r, s = real.values[c.name], synth.values[c.name]
        if c.kind in DISCRETE:
            labels = list(c.categories) + ([None] if any(v is None for v in r) or any(v is None for v in s) else [])
            fr, fs = _freqs(r), _freqs(s)
            keys = ["\0missing" if k is None else k for k in labels]
            x = np.arange(len(keys))
            ax.bar(x - 0.2, [fr.get(k, 0) for k in keys], 0.4, label="real")
            ax.bar(x + 0.2, [fs.get(k, 0) for k in keys], 0.4, label="synthetic")
            ax.set_xticks(x, ["missing" if k is None else str(k)[:10] for k in labels], rotation=45, fontsize=7)
        else:
            rp, sp = r[~np.isnan(r)], s[~np.isnan(s)]
            edges = np.histogram_bin_edges(rp, bins=30)
            ax.hist(rp, edges, density=True, alpha=0.5, label="real")
            ax.hist(np.clip(sp, edges[0], edges[-1]), edges, density=True, alpha=0.5, label="synthetic")
        ax.set_title(c.name, fontsize=9)
        ax.legend(fontsize=6)
        out.append((c.name, _png(fig)))
        plt.close(fig)
    return out


def pair_heatmaps(real: Table, synth: Table, max_columns: int = 30) -> str:
    """One base64 PNG: the pair-trend score of every column pair, and the real and synthetic correlations of
    the number columns."""
    # late: matplotlib's import takes seconds, and only the report's pictures need it
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")

    cols = real.schema.modelled[:max_columns]
    k = len(cols)
    score = np.full((k, k), np.nan)
    for i, j in itertools.combinations(range(k), 2):
        score[i, j] = score[j, i] = pair_trend(cols[i], cols[j], real, synth)[0]
    nums = [c for c in cols if c.kind not in DISCRETE]
    corr = {}
    for name, t in (("real", real), ("synthetic", synth)):
        m = np.eye(len(nums))
        for i, j in itertools.combinations(range(len(nums)), 2):
            m[i, j] = m[j, i] = _pearson(t.values[nums[i].name], t.values[nums[j].name])
        corr[name] = m
    panels = 3 if len(nums) >= 2 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.6))
    axes = np.atleast_1d(axes)
    im = axes[0].imshow(score, vmin=0, vmax=1, cmap="viridis")
    axes[0].set_title("pair-trend score (1: same trend)", fontsize=9)
    axes[0].set_xticks(range(k), [c.name[:12] for c in cols], rotation=90, fontsize=6)
    axes[0].set_yticks(range(k), [c.name[:12] for c in cols], fontsize=6)
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    for ax, name in zip(axes[1:], ("real", "synthetic")):
        im = ax.imshow(corr[name], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{name}: Pearson correlation", fontsize=9)
        ax.set_xticks(range(len(nums)), [c.name[:12] for c in nums], rotation=90, fontsize=6)
        ax.set_yticks(range(len(nums)), [c.name[:12] for c in nums], fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
    data = _png(fig)
    plt.close(fig)
    return data


def report_html(real: Table, synth: Table, scores: dict, title: str) -> str:
    """One self-contained HTML page: the scores, each column real beside synthetic, the pair-trend heatmaps."""
    figs = column_figures(real, synth)
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{v:.3f}</td></tr>" for c, v in scores["per_column"].items())
    cells = "".join(f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(name)}"></figure>'
                    for name, png in figs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:4px}"
            "td{padding:0 1em}pre{background:#f4f4f4;padding:1em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><pre>{html.escape(format_scores(scores))}</pre>"
            "<h2>Column-pair trends</h2>"
            f"<img src='data:image/png;base64,{pair_heatmaps(real, synth)}' alt='pair trends'>"
            f"<h2>Columns: real beside synthetic</h2>{cells}"
            f"<h2>Column shapes</h2><table><tr><th>column</th><th>score</th></tr>{rows}</table></body></html>")


def write_table_report(path, real: Table, synth: Table, scores: dict, title: str = "synthetic table report"):
    return atomic_write_text(path, report_html(real, synth, scores, title))


# ----------------------------------------------------------------------------------- genforge eval on a table model

def evaluate_table_model(source: str, n: int | None = None, seed: int = 0, device: str = "auto",
                         data: str | None = None) -> tuple[dict, Table, Table]:
    """Draw ``n`` rows (default: as many as the training split) from a table model and score them against the
    training split and the holdout (test split) of its data, split as in training. Returns (scores, synthetic,
    training rows)."""
    model = load_model(source, device=device)
    cfg = model.meta.get("train_config") or {}
    splits = load_table(data or model.meta["data"], schema=model.output.schema if not data else None,
                        val_fraction=cfg.get("val_fraction", 0.1), test_fraction=cfg.get("test_fraction", 0.2),
                        seed=cfg.get("split_seed", 0))
    if len(splits.test) < 2:
        raise GenforgeError(f"{source}: its data has no holdout (test_fraction 0): TSTR and DCR need one")
    rows = model.sample(n or len(splits.train), seed=seed)
    synth = model.output.table(rows.x)
    scores = evaluate_table(synth, splits.train, splits.test, seed)
    scores["model"], scores["data"], scores["seed"] = str(model.path), splits.name, seed
    if model.meta.get("privacy"):
        scores["privacy_training"] = model.meta["privacy"]
    return scores, synth, splits.train
