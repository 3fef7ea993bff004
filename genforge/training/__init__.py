"""Training: the explicit loop, checkpoints that resume exactly, EMA, differential privacy and logging."""

from genforge.training.loop import TrainResult, check_config, train


__all__ = ["TrainResult", "check_config", "train"]
