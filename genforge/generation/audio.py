"""Audio outputs: WAV files with provenance in a LIST/INFO chunk, and spectrogram pictures.

The writers (``genforge.generation.writers.WRITERS["audio"]``) use these:

    --out say.wav     every sample in one WAV, a quarter second of silence between them
    --out digits/     a directory of WAVs 00000.wav, 00001.wav, ...
    --out x.npz       x float32 (N, samples) at the model's rate, y (conditional models), rate
    --out grid.png    a grid of the samples' log-mel spectrograms (low frequencies at the bottom)

Every WAV carries genforge's provenance JSON in its INFO ``ICMT`` field (INAM names the sample and its class,
ISFT genforge's version, ICRD the time) and is recorded in the provenance ledger with the SHA-256 of the file
and of its 16-bit samples, as PNGs are (:mod:`genforge.generation.provenance`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genforge.data.audio.features import MelSpec
from genforge.data.audio.wav import to_pcm16, wav_bytes
from genforge.generation import provenance
from genforge.io import atomic_write_bytes

GAP_SECONDS = 0.25


def wav_info(metadata: dict, title: str) -> dict[str, str]:
    return {"INAM": title, "ISFT": f"genforge {metadata.get('genforge_version', '')}".strip(),
            "ICRD": str(metadata.get("created", "")),
            "ICMT": json.dumps(metadata, sort_keys=True, default=provenance._jsonable)}


def save_wav(x: np.ndarray, path: str | Path, rate: int, metadata: dict | None = None, title: str = "",
             ledger: bool = False) -> Path:
    """One float waveform (samples,) to a 16-bit WAV with ``metadata`` in its INFO chunk; with ``ledger`` also a
    signed ledger line (the file's SHA-256 and that of its 16-bit samples)."""
    data = wav_bytes(x, rate, wav_info(metadata, title or Path(path).stem) if metadata is not None else None)
    path = atomic_write_bytes(path, data)
    if ledger and metadata is not None:
        provenance.record(path, data, to_pcm16(x), metadata)
    return path


def spectrogram_image(x: np.ndarray, rate: int) -> np.ndarray:
    """float waveform (samples,) -> uint8 (n_mels, frames) log-mel picture, low frequencies at the bottom."""
    spec = MelSpec(rate=rate, n_fft=512 if rate >= 16000 else 256, hop=128 if rate >= 16000 else 64)
    m = spec.log_mel(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[0]   # (n_mels, frames)
    m = (m - m.max()).clamp_min(-12.0) / 12.0 + 1.0                                  # 0 .. 1, top 52 dB
    return (m.flip(0).numpy() * 255).round().astype(np.uint8)
