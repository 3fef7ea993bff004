"""eval_share: validation sized from its measured cost so that it never takes more than that share of the run.

The arithmetic is tested with given timings (no assertion depends on how loaded the machine is); the loop is
tested with a fake clock in genforge.metrics.validation, so what the budget sees is fixed by the test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from genforge.config import from_dict
from genforge.errors import ConfigError
from genforge.metrics import validation
from genforge.metrics.validation import ValidationBudget, ValidationPlan
from genforge.training import train


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_allowance_keeps_validation_within_its_share():
    b = ValidationBudget(0.1, eval_n=2000, steps=50)
    # v <= 0.1 (t + v)  <=>  v <= t / 9
    assert b.allowance(90.0) == pytest.approx(10.0)
    b.measure(100, 50, sample_seconds=4.0, score_seconds=1.0)  # 5 s spent
    assert b.allowance(90.0) == pytest.approx(5.0)
    assert ValidationBudget(1.0, 10, None).allowance(0.0) == math.inf


def test_fit_prefers_full_validation_then_fewer_steps_then_fewer_images():
    b = ValidationBudget(0.1, eval_n=1000, steps=50)
    b.measure(10, 50, sample_seconds=0.5, score_seconds=0.01)  # a = 1 ms per image-step, b = 1 ms per image
    assert b.cost(1000, 50) == pytest.approx(51.0)
    assert b.fit(60.0) == ValidationPlan(1000, 50, pytest.approx(51.0))   # everything fits
    assert b.fit(21.0) == ValidationPlan(1000, 20, pytest.approx(21.0))   # 1000 x (20 ms + 1 ms)
    plan = b.fit(5.5)                                                     # min_steps 10: 11 ms per image
    assert plan.steps == 10 and plan.n == 500 and plan.seconds <= 5.5
    assert b.fit(1.0) is None                                             # under MIN_N images at 10 steps
    gan = ValidationBudget(0.1, eval_n=1000, steps=None)
    gan.measure(100, None, sample_seconds=0.1, score_seconds=0.1)        # 2 ms per image
    assert gan.fit(1.0) == ValidationPlan(500, None, pytest.approx(1.0))


def test_a_distilled_models_few_steps_are_not_raised_to_the_floor():
    b = ValidationBudget(0.1, eval_n=1000, steps=4)
    b.measure(10, 4, sample_seconds=0.04, score_seconds=0.01)
    plan = b.fit(2.0)  # 1000 images at 4 steps = 5 s: fewer images, still 4 steps
    assert plan.steps == 4 and plan.n == 400


def test_plan_is_fixed_once_chosen_and_later_validations_are_skipped_when_over_share():
    b = ValidationBudget(0.5, eval_n=1000, steps=20)
    b.measure(10, 20, sample_seconds=0.2, score_seconds=0.0)  # 1 ms per image-step
    first = b.choose(train_seconds=10.0)  # allows 10 - 0.2 s: not 1000 x 20 ms, nor 1000 x 10 ms; 980 x 10 ms
    assert first.n == 980 and first.steps == 10
    b.measure(first.n, first.steps, sample_seconds=first.seconds, score_seconds=0.0)
    assert b.choose(train_seconds=10.0) is None               # nothing left of the share yet
    assert b.choose(train_seconds=30.0) == first               # later: the same plan, not a bigger one
    assert b.reserve(max_seconds=60.0) == pytest.approx(first.seconds)


def test_the_reserve_is_kept_only_for_a_last_validation_the_share_will_allow():
    """A plan sized without the run's end can cost more than the share allows at its end; then the last
    validation is skipped, so no time is kept for it (measured: a 600 s run exited at 570 s that way)."""
    b = ValidationBudget(0.1, eval_n=2000, steps=20)
    b.measure(32, 20, sample_seconds=0.64, score_seconds=0.0)     # 1 ms per image-step: 40 s for 2000 x 20
    first = b.choose(train_seconds=360.0)                         # allows 360 / 9 - 0.64 = 39.4 s: 19 steps
    assert (first.n, first.steps) == (2000, 19)
    b.measure(first.n, first.steps, sample_seconds=first.seconds, score_seconds=0.0)
    spent = b.spent                                               # 38.64 s
    # at 600 s the run would train 600 - 38.64 - 38 = 523.4 s, allowing 523.4 / 9 - 38.64 = 19.5 s < 38 s
    assert b.choose(train_seconds=600.0 - spent - first.seconds, last=True) is None
    assert b.reserve(max_seconds=600.0) == 0.0
    # a longer run leaves the share room for it: 1800 s -> 1723.4 / 9 - 38.64 = 152.8 s >= 38 s
    assert b.reserve(max_seconds=1800.0) == pytest.approx(first.seconds)
    assert b.choose(train_seconds=1800.0 - spent - first.seconds, last=True) == first


def test_a_max_seconds_run_sizes_its_validations_so_that_the_last_one_fits():
    b = ValidationBudget(0.1, eval_n=2000, steps=20)
    b.measure(32, 20, sample_seconds=0.64, score_seconds=0.0)
    # the share allows 39.4 s now, but then the last one would not fit: (600 / 9 - 0.64 x 10 / 9) / (2 x 10 / 9)
    assert b.end_cap(600.0) == pytest.approx(29.68, abs=0.01)
    first = b.choose(train_seconds=360.0, max_seconds=600.0)
    assert (first.n, first.steps) == (2000, 14) and first.seconds == pytest.approx(28.0)
    b.measure(first.n, first.steps, sample_seconds=first.seconds, score_seconds=0.0)
    assert b.reserve(max_seconds=600.0) == pytest.approx(28.0)    # kept: 543.4 / 9 - 28.64 = 31.7 s >= 28 s
    assert b.choose(train_seconds=450.0, max_seconds=600.0) is None  # one more in between would crowd it out
    last = b.choose(train_seconds=600.0 - b.spent - 28.0, max_seconds=600.0, last=True)
    assert last == first
    assert ValidationBudget(0.1, eval_n=10, steps=None).end_cap(0.0) == float("inf")  # no max_seconds: no cap


def test_eval_share_is_checked_on_load():
    with pytest.raises(ConfigError, match="'eval_share' must be in \\[0, 1\\]"):
        from_dict({"eval_share": 1.5}, "recipe.yaml")
    with pytest.raises(ConfigError, match="eval_share"):
        from_dict({"eval_share": -0.1}, "recipe.yaml")


class FakeClock:
    """Every reading advances by ``tick`` seconds: each sampling or scoring call takes one tick."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _tiny(**over):
    return from_dict({"data": "mnist5k", "model": "ddpm", "base_channels": 4, "batch_size": 16, "max_steps": 6,
                      "log_every": 3, "sample_every": 0, "checkpoint_every": 100, "tensorboard": False,
                      "num_threads": 1, "eval_every": 3, "eval_n": 256, "sample_steps": 20, **over}, "test")


def test_training_logs_the_chosen_validation_and_scores_with_it(tmp_path, monkeypatch, capsys):
    """A generous share: the probe is timed, eval_n at the recipe's steps is chosen, logged, and every validation
    of the run uses it (val_n, val_steps in metrics.jsonl)."""
    monkeypatch.setattr(validation, "clock", FakeClock(1e-6))  # validation looks nearly free
    run = tmp_path / "r"
    train(_tiny(eval_share=1.0), run)
    lines = [m for m in _metrics(run) if "val_fid" in m]
    assert [m["step"] for m in lines] == [3, 6]
    assert all(m["val_n"] == 256 and m["val_steps"] == 20 for m in lines)
    err = capsys.readouterr().err
    assert "validation budget: eval_share 1 of the run's time" in err and "chose 256 images at 20 sampler steps" in err


def test_training_skips_validation_that_would_exceed_its_share(tmp_path, monkeypatch, capsys):
    """Each sampling or scoring call 'takes' 1,000 s on the fake clock while six tiny training steps take far
    less: no validation fits within 10% of the run, each is skipped with a note, and the run still finishes
    with a checkpoint."""
    monkeypatch.setattr(validation, "clock", FakeClock(1000.0))
    run = tmp_path / "r"
    result = train(_tiny(eval_share=0.1), run)
    assert result.step == 6
    assert not any("val_fid" in m for m in _metrics(run))
    err = capsys.readouterr().err
    assert err.count("validation skipped: it would take about") == 2 and "eval_share 0.1 allows" in err
    assert not (run / "checkpoints" / "best.json").exists()


def test_eval_share_zero_keeps_the_unbudgeted_validation(tmp_path):
    run = tmp_path / "r"
    train(_tiny(eval_share=0.0, eval_n=64), run, quiet=True)
    lines = [m for m in _metrics(run) if "val_fid" in m]
    assert [m["step"] for m in lines] == [3, 6] and not any("val_n" in m for m in lines)


def test_max_seconds_leaves_room_for_the_last_validation(tmp_path, monkeypatch):
    """Once validation is sized, over_time counts its predicted cost: a run whose reserve already exceeds
    max_seconds stops at the next step instead of training on."""
    monkeypatch.setattr(validation.ValidationBudget, "reserve",
                        lambda self, max_seconds: 0.0 if self.plan is None else 1e9)
    monkeypatch.setattr(validation, "clock", FakeClock(1e-6))
    run = tmp_path / "r"
    result = train(_tiny(eval_share=1.0, max_steps=10**6, max_seconds=3600.0, eval_every=2), run, quiet=True)
    assert result.step == 2  # validated at step 2 (plan fixed), then the reserve ends the run
    assert np.isfinite([m["val_fid"] for m in _metrics(run) if "val_fid" in m]).all()
