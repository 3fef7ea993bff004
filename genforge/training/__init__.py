"""Training: the explicit loop, checkpoints that resume exactly, EMA and logging."""

from genforge.training.loop import TrainResult, train

__all__ = ["train", "TrainResult"]
