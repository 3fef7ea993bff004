"""Progress bars, the time left under --max-seconds, TensorBoard tag groups, XDG paths, the run report,
heat maps for the top K only, and --device passed through (CPU results unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genforge.io import user_dir
from genforge.training.log import RunLogger, remaining_seconds, tensorboard_tag


# ---------------------------------------------------------------------------------------------- time left

def test_remaining_is_the_budget_left_when_the_steps_would_take_longer():
    # 10 of 10,000 steps in 3 s: the steps alone would take ~50 min, but a 30 s budget leaves 27 s
    assert remaining_seconds(10, 0, 10_000, 3.0, max_seconds=30) == pytest.approx(27.0)
    # without a budget it is the step estimate
    assert remaining_seconds(10, 0, 10_000, 3.0) == pytest.approx(9990 * 0.3)
    # the steps finish first: the step estimate wins
    assert remaining_seconds(90, 0, 100, 9.0, max_seconds=3600) == pytest.approx(1.0)
    # a resumed run counts its rate from the step it resumed at
    assert remaining_seconds(510, 500, 1000, 2.0) == pytest.approx(490 * 0.2)
    assert remaining_seconds(0, 0, 100, 0.0) is None
    assert remaining_seconds(0, 0, 100, 0.0, max_seconds=30) == 30


def test_training_bar_shows_the_budget_left_not_the_steps(tmp_path):
    now = [1000.0]
    logger = RunLogger(tmp_path, 10_000, 0, tensorboard=False, quiet=False, max_seconds=30, clock=lambda: now[0],
                       progress=True)
    try:
        now[0] += 3.0
        logger.log(10, {"loss": 1.0})
        assert logger.remaining() == pytest.approx(27.0)
        assert "<00:27" in str(logger.bar)  # what the user reads; tqdm's own count to 10,000 steps says ~50 min
        now[0] += 40.0
        assert logger.remaining() == 0
    finally:
        logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_training_bar_quiet_without_a_terminal(tmp_path):
    logger = RunLogger(tmp_path, 10, 0, tensorboard=False, quiet=False)  # pytest's stderr is not a terminal
    assert logger.bar.disable
    logger.close()


# ---------------------------------------------------------------------------------------------- TensorBoard

def test_tensorboard_tags_grouped_and_jsonl_keys_flat(tmp_path):
    assert tensorboard_tag("val_fid") == "val/fid"
    assert tensorboard_tag("loss_d") == "train/loss_d"
    assert tensorboard_tag("images_per_sec") == "train/images_per_sec"
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path, 10, 0, tensorboard=True, quiet=True)
    logger.log(5, {"loss_g": 0.5, "images_per_sec": 100.0, "val_fid": 12.0})
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss_g", "train/images_per_sec", "val/fid"}
    assert set(json.loads((tmp_path / "metrics.jsonl").read_text())) == {"step", "loss_g", "images_per_sec",
                                                                          "val_fid"}
