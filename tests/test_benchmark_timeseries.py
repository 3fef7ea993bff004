"""benchmarks/timeseries.py: how its generation table reads TSTR, and that a stopped training is not scored."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import timeseries as bench  # noqa: E402
from genforge.training.loop import TrainResult  # noqa: E402


def row(tstr: float, std: float | None = None) -> dict:
    r = {"discriminative": 0.1, "discriminative_std": 0.01, "discriminative_chance": 0.03, "predictive": 0.5,
         "fd": 2.0, "precision": 0.9, "recall": 0.8, "tstr": tstr}
    return r if std is None else {**r, "tstr_std": std, "tstr_each": [tstr - std, tstr, tstr + std]}


def test_generation_table_gives_tstr_with_its_spread_and_as_a_share_of_trtr():
    table = bench.generation_table("toy", {"rows": {"real vs real": row(0.8, 0.02), "VAR(2) per class": row(0.6, 0.05),
                                                    "broken": {"error": "failed: ValueError: x"}}})
    header, _, real, var, broken = table.splitlines()
    assert header.endswith("| TSTR (mean +- std) | TSTR / TRTR |")
    assert real.endswith("| 0.800 +- 0.020 | 1.00 |") and var.endswith("| 0.600 +- 0.050 | 0.75 |")
    assert broken.count("|") == header.count("|")  # an error row keeps the table's columns
    single = bench.generation_table("toy", {"rows": {"real vs real": row(0.8), "VAR(2) per class": row(0.6)}})
    assert single.splitlines()[0].endswith("| TSTR | TSTR / TRTR |") and single.splitlines()[3].endswith(
        "| 0.600 | 0.75 |")


def test_a_recipe_whose_training_a_signal_stopped_ends_the_benchmark_instead_of_being_scored(monkeypatch, tmp_path):
    import genforge
    import genforge.training as training

    monkeypatch.setattr(training, "check_config", lambda cfg, name: cfg)
    monkeypatch.setattr(training, "train", lambda cfg, run, quiet: TrainResult(run, 12, None, interrupted=True))
    monkeypatch.setattr(genforge, "load", lambda *a, **k: pytest.fail("a stopped training's model was scored"))
    args = SimpleNamespace(budget=600.0, threads=1, quick=False, set=None, tep="tep:faults=1;seeds=0")
    with pytest.raises(KeyboardInterrupt, match="ucr-acsf1-cddpm: training stopped by a signal after .* of 600"):
        bench.recipe_row("ucr-acsf1-cddpm", "ACSF1", None, None, None, None, None, None, {}, args)
