"""Modalities: what kind of data a model makes, declared as data.

A modality names its data sources (the spec prefixes that ``genforge.data`` reads), the shape and dtype of
one example, its value range, the output controls that apply to finished samples, the writers that
``genforge sample --out`` chooses among by suffix, its evaluator, and its default recipes. Each layer keeps
its implementations in its own dispatch (the data layer's ``parse_spec`` / ``read_source``, the writers'
dict ``genforge.generation.writers.WRITERS`` keyed by the modality's name), and ``tests/test_layers.py``
checks that every declared piece is implemented. The loop, checkpoints, generation plan, server and security never branch on the name.

A model file records its modality (``config.json`` field ``modality``; files written before it existed are
images).
"""

from __future__ import annotations

from genforge.errors import DataError
from genforge.modalities.audio import AUDIO, AUDIO_WAVE
from genforge.modalities.image import IMAGE
from genforge.modalities.modality import Modality
from genforge.modalities.series import SERIES
from genforge.modalities.table import TABLE
from genforge.modalities.text import TEXT

MODALITIES: dict[str, Modality] = {"image": IMAGE, "series": SERIES, "table": TABLE, "text": TEXT, "audio": AUDIO,
                                   "audio-wave": AUDIO_WAVE}
__all__ = ["AUDIO", "AUDIO_WAVE", "DEFAULT", "IMAGE", "MODALITIES", "SERIES", "TABLE", "TEXT", "Modality", "of_meta",
           "of_spec"]
DEFAULT = "image"  # model files written before modalities were recorded


def of_meta(meta: dict) -> Modality:
    """The modality a model file's ``config.json`` records (image for older files)."""
    return MODALITIES[meta.get("modality", DEFAULT)]


def of_spec(spec: str) -> Modality:
    """The modality a data spec belongs to, by its prefix ("ucr:GunPoint" -> series, "mnist5k" -> image). A
    prefix belongs to one modality (tests/test_layers.py checks that no two declare the same one)."""
    kind = spec.strip().partition(":")[0] if isinstance(spec, str) else ""
    for modality in MODALITIES.values():
        if kind in modality.sources:
            return modality
    forms = "; ".join(f"{m.name}: {', '.join(m.sources)}" for m in MODALITIES.values())
    raise DataError(f"unknown data source spec {spec!r}; its prefix names no modality ({forms})")
