"""Table metrics on known cases: identical tables score 1, shuffled columns lose their pair trends, copies are
caught, and the statistics agree with scipy."""

from __future__ import annotations

import numpy as np
import pytest

from genforge.data.table.schema import Column, Schema, Table
from genforge.metrics import table as tm


def correlated(n: int = 400, seed: int = 0) -> Table:
    """Numbers that move together, a category that follows them, a target that follows both."""
    rng = np.random.default_rng(seed)
    a = rng.normal(50, 10, n)
    b = a * 2 + rng.normal(0, 4, n)
    grp = np.where(a > 50, "high", "low").astype(object)
    y = np.where(b + rng.normal(0, 8, n) > 100, "yes", "no").astype(object)
    cols = [Column("a", "continuous", min=float(a.min()), max=float(a.max()), decimals=3),
            Column("b", "continuous", min=float(b.min()), max=float(b.max()), decimals=3),
            Column("grp", "categorical", categories=["high", "low"]),
            Column("y", "categorical", categories=["no", "yes"])]
    schema = Schema(cols, target="y", task="classification")
    return Table(schema, {"a": a, "b": b, "grp": grp, "y": y})


def shuffled(t: Table, seed: int = 1) -> Table:
    rng = np.random.default_rng(seed)
    return Table(t.schema, {k: v[rng.permutation(len(v))] for k, v in t.values.items()})


def test_identical_tables_score_one():
    t = correlated()
    q = tm.quality(t, t)
    assert q["column_shapes"] == 1.0 and q["pair_trends"] == 1.0 and q["quality"] == 1.0


def test_shuffled_columns_keep_their_shapes_but_lose_their_pair_trends():
    t = correlated()
    q = tm.quality(t, shuffled(t))
    assert q["column_shapes"] == 1.0               # each column's values are the same multiset
    assert q["pair_trends"] < 0.75                  # every dependence between columns is gone
    assert q["per_pair"]["a | b"] < 0.6             # r about 0.98 against about 0: 1 - 0.98 / 2


def test_ks_and_tv_agree_with_scipy_and_by_hand():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1.2, 200)
    assert tm.ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    tv = tm.tv_distance(np.array(["a", "a", "b", "b"], dtype=object), np.array(["a", "a", "a", "b", None], dtype=object))
    assert tv == pytest.approx(0.25)  # missing left out: 0.5/0.5 against 0.75/0.25


def test_negated_column_scores_one_minus_its_correlation():
    t = correlated()
    flipped = Table(t.schema, {**t.values, "b": -t.values["b"]})
    r = np.corrcoef(t.values["a"], t.values["b"])[0, 1]
    score, metric = tm.pair_trend(t.schema.column("a"), t.schema.column("b"), t, flipped)
    assert metric == "correlation" and score == pytest.approx(1 - r)


def test_detection_tells_shifted_rows_apart_and_not_copies():
    t = correlated()
    assert tm.detection_auroc(t, correlated(seed=5)) < 0.62
    shifted = Table(t.schema, {**t.values, "a": t.values["a"] + 25})
    assert tm.detection_auroc(t, shifted) > 0.95


def test_tstr_equals_trtr_when_the_synthetic_rows_are_the_real_ones():
    train, holdout = correlated(seed=0), correlated(seed=9)
    trtr = tm.task_score(train, holdout, train.schema, train)
    assert trtr > 0.8
    assert tm.task_score(train, holdout, train.schema, train) == trtr
    flipped = Table(train.schema, {**train.values, "y": np.where(train.values["y"] == "yes", "no", "yes").astype(object)})
    assert tm.task_score(flipped, holdout, train.schema, train) == pytest.approx(1 - trtr, abs=1e-9)  # learns it backwards


def test_privacy_catches_copies_and_passes_fresh_rows():
    train, holdout = correlated(seed=0), correlated(seed=9)
    copied = tm.privacy(train, train, holdout)
    assert copied["dcr_synthetic_median"] == 0.0
    assert copied["memorization"]["exact_copies"] == len(train)
    assert copied["memorization"]["near_copy_share"] == 1.0
    fresh = tm.privacy(correlated(seed=4), train, holdout)
    assert fresh["memorization"]["exact_copies"] == 0
    assert fresh["memorization"]["near_copy_share"] < 0.05
    assert fresh["dcr_synthetic_median"] == pytest.approx(fresh["dcr_holdout_median"], rel=0.35)


def test_report_shows_every_column_and_the_heatmaps(tmp_path):
    t = correlated()
    scores = tm.evaluate_table(correlated(seed=3), t, correlated(seed=9))
    path = tm.write_table_report(tmp_path / "r.html", t, correlated(seed=3), scores)
    page = path.read_text()
    assert page.count("<figure>") == 4 and "pair-trend" in page.lower() or "pair trends" in page
    assert "data:image/png;base64," in page and "detection AUROC" in page
