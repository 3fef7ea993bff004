"""Training: the explicit loop, checkpoints that resume exactly, EMA, differential privacy and logging."""

from genforge import models
from genforge.training import privacy
from genforge.training.loop import TrainResult, train


def check_config(cfg, source: str = "config"):
    """The checks of a training config beyond its own fields: a known recipe (:func:`genforge.models.check_config`)
    and settings differential privacy can honour (:func:`genforge.training.privacy.check_config`). ``train``
    runs them first; ``genforge train --print-config`` runs them without training. Returns ``cfg``."""
    models.check_config(cfg, source)
    privacy.check_config(cfg, source)
    return cfg


__all__ = ["TrainResult", "check_config", "train"]
