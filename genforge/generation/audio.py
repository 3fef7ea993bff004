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

from genforge.data.audio.features import MelSpec, from_pictures
from genforge.data.audio.wav import to_pcm16, wav_bytes
from genforge.errors import GenforgeError
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


# ------------------------------------------------------------------------------------------ output conversion


def _transform(meta: dict, origin: str, kind: str) -> dict:
    t = meta.get("transform")
    if not isinstance(t, dict) or t.get("kind") != kind:
        raise GenforgeError(f"{origin}: an audio model needs field 'transform' of kind {kind!r}")
    for key in ("rate", "length"):
        if not isinstance(t.get(key), int) or not 0 < t[key] <= 10_000_000:
            raise GenforgeError(f"{origin}: field 'transform.{key}' missing or out of range")
    return t


class AudioMelOutput:
    """A spectrogram family's outputs in [0, 1] (b, 1, side, side) -> float32 waveforms (b, samples) in [-1, 1]:
    the log-mel level mapping undone, then Griffin-Lim (``transform.griffin_lim`` iterations, phase seeded)."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        t = _transform(meta, origin, "audio-mel")
        try:
            self.spec = MelSpec.from_dict(t.get("mel"), where=f"{origin}: transform.mel")
        except (TypeError, GenforgeError) as e:
            raise GenforgeError(f"{origin}: field 'transform.mel' is malformed ({e})") from None
        self.rate, self.length = t["rate"], t["length"]
        self.iters = int(t.get("griffin_lim", 32))
        if not 1 <= self.iters <= 1000 or self.spec.rate != self.rate:
            raise GenforgeError(f"{origin}: field 'transform' is inconsistent (griffin_lim, or mel rate vs rate)")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        u = x.float().cpu() * 2 - 1                                                    # (b, 1, side, side)
        return from_pictures(self.spec, u, self.length, n_iter=self.iters).numpy().astype(np.float32)


class AudioWaveOutput:
    """A waveform family's outputs in [0, 1] (b, 1, samples) -> float32 waveforms (b, samples) in [-1, 1]."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        t = _transform(meta, origin, "audio-wave")
        self.rate, self.length = t["rate"], t["length"]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return (x.float().cpu()[:, 0] * 2 - 1).numpy().astype(np.float32)
