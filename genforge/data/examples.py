"""Examples for training, whatever the modality: the one entry the training loop calls.

    ex = load_examples(cfg, value_range="-1,1")   # the modality is the data spec's (genforge.modalities.of_spec)
    ex.train_x      # float32 tensor (N, *ex.example_shape) in the method's value range
    ex.transform    # JSON: how a sample in [0, 1] maps back to the data's units (saved with the model)

Each modality registers one loader in ``LOADERS``; a loader reads its source with its own data layer
(``load_splits`` for images, ``load_series`` for sensor series), cleans and splits it, and returns the train
split as one tensor. The loop, checkpoints and sampling never ask which modality it was: they read
``example_shape``, the classes and the ``transform`` (which ``genforge.generation.sampling.OUTPUTS`` undoes).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from genforge.data import load_splits
from genforge.data.audio import load_audio
from genforge.data.audio.features import picture_spec, to_pictures
from genforge.data.series import load_series
from genforge.data.series.base import fit_normalization
from genforge.data.table import TableTransformer, load_table
from genforge.data.table.transforms import PRIVATE_BINS, marginal_noise_multiplier
from genforge.data.text.examples import text_examples
from genforge.data.transforms import VALUE_RANGES, to_tensor
from genforge.errors import ConfigError, DataError
from genforge.modalities import of_spec


@dataclass(eq=False)
class Examples:
    """The training split as one tensor, and what the loop and the model file need to know about the data."""

    spec: str
    modality: str                    # a key of genforge.modalities.MODALITIES
    train_x: torch.Tensor            # float32 (N, *example_shape) in the method's value range (text: int64 ids)
    train_y: np.ndarray | None       # int64 (N,) class indices, or None when unlabeled
    example_shape: tuple[int, ...]   # images (c, h, w); series (c, t)
    class_names: list[str] | None
    transform: dict                  # JSON-able: the map from the model's [0, 1] outputs back to the data's units
    raw: object                      # the modality's own splits (DataSplits, SeriesSplits): validation reads it
    notes: list[str] = field(default_factory=list)


def _images(cfg, value_range: str) -> Examples:
    splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels, on_bad=cfg.on_bad,
                         dedup=cfg.dedup, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.split_seed)
    x = to_tensor(splits.train.x, value_range)  # (N, c, h, w)
    return Examples(cfg.data, "image", x, splits.train.y, splits.image_shape, splits.class_names,
                    {"kind": "uint8"}, splits)


def _series(cfg, value_range: str) -> Examples:
    if cfg.augment_flip or cfg.augment_shift or cfg.augment_rotate:
        raise ConfigError(f"{cfg.data}: augment_flip, augment_shift and augment_rotate are image augmentations; "
                          "set them to false / 0 for series")
    splits = load_series(cfg.data, length_policy=cfg.series_length_policy, length=cfg.series_length or None,
                         missing=cfg.series_missing, window=cfg.series_window or None,
                         stride=cfg.series_stride or None, time_column=cfg.series_time_column or None,
                         label_column=cfg.series_label_column or None, normalize="none",
                         val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    train = splits.train
    if len(train) == 0:
        raise DataError(f"{cfg.data}: the train split holds no complete example")
    # Generators end in tanh or a sigmoid: the data must fill a bounded range, so each channel is mapped to
    # [-1, 1] over the training windows of every class (a fault's excursions included; process monitoring's
    # normal-only statistics would put them out of the generator's reach): linearly by its minimum and maximum
    # ("minmax"), or by "asinh", which keeps the common case wide where excursions are rare and far.
    norm = fit_normalization(train.x, cfg.series_scaling, mask=train.mask)
    x = norm.apply(train.x)                                      # (N, c, t) in [-1, 1]
    if train.mask is not None:
        x[np.broadcast_to(~train.mask[:, None, :], x.shape)] = 0.0  # padding stays exactly zero
    t = torch.from_numpy(x)
    if value_range == "0,1":
        t = (t + 1) / 2
    transform = {"kind": "series", "normalization": norm.to_json(), "channel_names": list(splits.channel_names)}
    notes = [*splits.notes, f"normalization for training: {cfg.series_scaling} per channel to [-1, 1] over the "
                            "training split"]
    return Examples(cfg.data, "series", t, train.y, splits.example_shape, splits.class_names, transform, splits,
                    notes)


def _table(cfg, value_range: str, fitted: dict | None = None) -> Examples:
    """Rows encoded by a transform fitted on the training split (genforge.data.table): a table's encoding is
    its own (numbers in their modes or as normal scores, one-hot categories), whatever ``value_range``.
    ``fitted``: the transform a resumed private run drew already (a second draw would spend more privacy and
    encode the rows differently from the checkpoint's)."""
    if cfg.augment_flip or cfg.augment_shift or cfg.augment_rotate:
        raise ConfigError(f"{cfg.data}: augment_flip, augment_shift and augment_rotate are image augmentations; "
                          "set them to false / 0 for tables")
    splits = load_table(cfg.data, schema=cfg.table_schema or None, target=cfg.table_target or None,
                        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    if fitted is not None:
        tf, transform = TableTransformer.from_json(fitted), fitted
    else:
        private = None
        if cfg.dp_epsilon > 0:  # differential privacy: the quantiles from noisy histograms, noise from the OS
            private = (marginal_noise_multiplier(cfg.dp_epsilon, cfg.dp_delta),
                       np.random.default_rng(secrets.randbits(64)))
        tf = TableTransformer.fit(splits.train, cfg.table_transform, max_modes=cfg.table_max_modes, seed=cfg.seed,
                                  private=private)
        transform = {"kind": "table", **tf.to_json()}
        if private is not None:  # the accountant counts this mechanism (genforge/training/privacy.py)
            transform["private"] = {"mechanism": "Gaussian noise on each number column's histogram over its schema "
                                                 f"range ({PRIVATE_BINS} bins), L2 sensitivity sqrt(number columns)",
                                    "noise_multiplier": private[0]}
    x = torch.from_numpy(tf.encode(splits.train))                 # (N, d)
    notes = [*splits.notes, f"transform: {cfg.table_transform} for numbers, one-hot categories: {tf.dim} numbers "
                            f"per row from {len(splits.schema.modelled)} columns"]
    return Examples(cfg.data, "table", x, None, (tf.dim,), None, transform, splits, notes)


def _text(cfg, value_range: str) -> Examples:
    """Token ids (int64), not scaled: ``value_range`` does not apply to them (genforge/data/text/examples.py)."""
    x, transform, splits, notes = text_examples(cfg)
    return Examples(cfg.data, "text", x, None, tuple(x.shape[1:]), None, transform, splits, notes)


def _audio_splits(cfg, spec: str):
    if cfg.augment_flip or cfg.augment_shift or cfg.augment_rotate:
        raise ConfigError(f"{cfg.data}: augment_flip, augment_shift and augment_rotate are image augmentations; "
                          "set them to false / 0 for audio")
    splits = load_audio(spec, rate=cfg.audio_rate, length=cfg.audio_length, on_bad=cfg.on_bad,
                        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
    return splits


def _audio(cfg, value_range: str) -> Examples:
    """audio:SPEC -> log-mel pictures (N, 1, mels, mels) for the 2-D families; the mel parameters (with the log
    level mapped to +1, fitted on the train split) are the transform that turns samples back into sound."""
    splits = _audio_splits(cfg, cfg.data)
    probe = picture_spec(cfg.audio_rate, cfg.audio_length, cfg.audio_mels)
    loudest = float(probe.log_mel(splits.train.x[:512]).max())
    spec = picture_spec(cfg.audio_rate, cfg.audio_length, cfg.audio_mels, log_hi=math.ceil(loudest * 2) / 2)
    x = to_pictures(spec, splits.train.x)                                      # (N, 1, mels, mels) in [-1, 1]
    if value_range == "0,1":
        x = (x + 1) / 2
    transform = {"kind": "audio-mel", "mel": spec.to_dict(), "side": cfg.audio_mels, "rate": cfg.audio_rate,
                 "length": cfg.audio_length, "griffin_lim": cfg.audio_griffin_lim}
    notes = [*splits.notes, f"log-mel pictures {cfg.audio_mels}x{cfg.audio_mels} (n_fft {spec.n_fft}, hop "
                            f"{spec.hop}); log power {spec.log_lo:.1f} .. {spec.log_hi:.1f} mapped to [-1, 1]"]
    return Examples(cfg.data, "audio", x, splits.train.y, tuple(x.shape[1:]), splits.class_names, transform, splits,
                    notes)


def _audio_wave(cfg, value_range: str) -> Examples:
    """audio-wave:SPEC -> raw waveforms (N, 1, samples) in [-1, 1] for the 1-D networks."""
    splits = _audio_splits(cfg, cfg.data)
    x = torch.from_numpy(splits.train.x[:, None, :])                           # (N, 1, samples) in [-1, 1]
    if value_range == "0,1":
        x = (x + 1) / 2
    transform = {"kind": "audio-wave", "rate": cfg.audio_rate, "length": cfg.audio_length}
    return Examples(cfg.data, "audio-wave", x, splits.train.y, tuple(x.shape[1:]), splits.class_names, transform,
                    splits, list(splits.notes))


# modality -> loader(cfg, value_range) -> Examples
LOADERS: dict[str, Callable] = {"image": _images, "series": _series, "table": _table, "text": _text, "audio": _audio,
                                "audio-wave": _audio_wave}


def load_examples(cfg, value_range: str, fitted: dict | None = None) -> Examples:
    """Read, clean, split and normalize ``cfg.data`` with its modality's loader; the train split to the
    method's ``value_range`` ("-1,1" or "0,1"). ``fitted``: a resumed private table run's own transform (the
    loaders that draw noise take it instead of drawing again)."""
    if value_range not in VALUE_RANGES:
        raise DataError(f"value_range {value_range!r} is not one of {', '.join(VALUE_RANGES)}")
    modality = of_spec(cfg.data)
    return LOADERS[modality.name](cfg, value_range, **({"fitted": fitted} if fitted is not None else {}))
