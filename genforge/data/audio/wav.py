"""Reading and writing audio files: every file is hostile until its header is proven honest.

    x, notes = read_audio(path, rate=16000)          # float32 (samples,) in [-1, 1], mono, at 16 kHz
    write_wav(path, x, 16000, info={"ICMT": "..."})  # 16-bit PCM, with a LIST/INFO chunk, atomically

Reading goes through ``soundfile`` (libsndfile: WAV of every sample format, FLAC, OGG), but a ``.wav`` file's
RIFF chunks are walked first by :func:`check_riff`, because libsndfile reads a file whose header lies about
its length without complaint (it returns what is there). So a truncated file, a header that claims more
than the file holds, an empty file and a non-audio file with a ``.wav`` name are each a one-line
:class:`~genforge.errors.DataError` naming the file, before a sample is decoded.

What is accepted and converted (and said in a note): 8/16/24/32-bit integer and 32/64-bit float samples (all
become float32 in [-1, 1]); a sample rate other than the one asked for (resampled by a polyphase filter,
``scipy.signal.resample_poly``) unless ``on_rate="refuse"``; several channels averaged to one only when
``on_stereo="mix"``. What is refused: float samples outside [-1, 1] or not finite, a clip of pure silence,
several channels where mono is asked for and mixing was not.

Writing is our own 40 lines (soundfile cannot write a LIST/INFO chunk): 16-bit PCM mono, the INFO fields
(INAM name, ICMT comment, ISFT software, ICRD date) after the ``data`` chunk, written atomically.
"""

from __future__ import annotations

import io
import os
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np

from genforge.errors import DataError
from genforge.io import atomic_write_bytes

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
MAX_FILE_BYTES = 512 * 2**20   # one clip; a longer recording is not an example
MAX_SECONDS = 600.0
SILENCE_PEAK = 1e-4            # below -80 dBFS everywhere: nothing to learn from, likely a broken export
INFO_FIELDS = ("INAM", "ICMT", "ISFT", "ICRD", "IART", "IGNR")


def _soundfile():
    try:
        # soundfile is the audio extra (pip install 'genforge[audio]'); the image modality never needs it.
        import soundfile
    except (ImportError, OSError) as e:  # OSError: the module is there but libsndfile is not
        raise DataError(f"reading audio needs the soundfile package and libsndfile: pip install 'genforge[audio]' "
                        f"({e})") from None
    return soundfile


# ------------------------------------------------------------------------------------------------ checking


def check_riff(path: Path, data: bytes | None = None) -> dict:
    """Walk the RIFF chunks of a ``.wav`` file and return its ``fmt`` fields; DataError on any lie.

    Checks: the RIFF/WAVE magic, a RIFF size that matches the file, every chunk inside the file, a ``fmt``
    chunk before ``data``, and a ``data`` chunk whose size is a whole number of frames.
    """
    data = path.read_bytes() if data is None else data
    if len(data) == 0:
        raise DataError(f"{path}: empty file (0 bytes), not a WAV")
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise DataError(f"{path}: not a WAV file (no RIFF/WAVE header; starts with {data[:4]!r})")
    if data[:4] == b"RF64":
        raise DataError(f"{path}: RF64 (WAV over 4 GB) is not read; a clip of that size is not one example")
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size + 8 > len(data):
        raise DataError(f"{path}: truncated: the RIFF header claims {riff_size + 8} bytes, the file has {len(data)}")
    fmt: dict | None = None
    pos, end = 12, riff_size + 8
    while pos + 8 <= end:
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if body + size > end:
            what = "truncated: " if cid == b"data" else "header lies: "
            raise DataError(f"{path}: {what}chunk {cid.decode('latin-1')!r} claims {size} bytes at offset {body}, "
                            f"past the end of the file ({end} bytes)")
        if cid == b"fmt ":
            if size < 16:
                raise DataError(f"{path}: 'fmt ' chunk of {size} bytes, too short (16 at least)")
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            fmt = {"tag": tag, "channels": channels, "rate": rate, "block_align": align, "bits": bits}
            if channels == 0 or rate == 0 or align == 0 or bits == 0:
                raise DataError(f"{path}: header lies: {channels} channels, {rate} Hz, {bits} bits, "
                                f"block align {align}")
        elif cid == b"data":
            if fmt is None:
                raise DataError(f"{path}: 'data' chunk before the 'fmt ' chunk: not a well-formed WAV")
            if size == 0:
                raise DataError(f"{path}: empty: the data chunk holds no samples")
            if size % fmt["block_align"]:
                raise DataError(f"{path}: header lies: data chunk of {size} bytes is not a whole number of "
                                f"{fmt['block_align']}-byte frames")
            fmt["frames"] = size // fmt["block_align"]
            fmt["data_offset"] = body
        pos = body + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or "frames" not in fmt:
        raise DataError(f"{path}: no {'fmt ' if fmt is None else 'data'} chunk: not a complete WAV")
    return fmt


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 (..., samples) from rate_in to rate_out by a polyphase low-pass filter (scipy.signal)."""
    # scipy is the audio extra's; the rest of genforge never needs it.
    from scipy.signal import resample_poly

    if rate_in == rate_out:
        return x.astype(np.float32, copy=False)
    ratio = Fraction(int(rate_out), int(rate_in))
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def read_audio(path: str | Path, rate: int, on_rate: str = "resample", on_stereo: str = "refuse",
               max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, list[str]]:
    """One audio file as float32 (samples,) in [-1, 1] at ``rate`` Hz, mono, and notes on what was converted.

    on_rate: "resample" (with a note) or "refuse" a file at another rate. on_stereo: "refuse" a file with
    several channels, or "mix" them to one (with a note). Every refusal is a DataError naming the file.
    """
    if on_rate not in ("resample", "refuse"):
        raise DataError(f"on_rate must be 'resample' or 'refuse', got {on_rate!r}")
    if on_stereo not in ("refuse", "mix"):
        raise DataError(f"on_stereo must be 'refuse' or 'mix', got {on_stereo!r}")
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: no such audio file") from None
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} allowed for one clip")
    raw = path.read_bytes()
    if path.suffix.lower() == ".wav":
        check_riff(path, raw)
    elif not raw:
        raise DataError(f"{path}: empty file (0 bytes)")
    sf = _soundfile()
    try:
        info = sf.info(io.BytesIO(raw))
        if info.frames <= 0:
            raise DataError(f"{path}: holds no samples")
        if info.frames / max(info.samplerate, 1) > max_seconds:
            raise DataError(f"{path}: {info.frames / info.samplerate:.0f} s long, more than the {max_seconds:g} s "
                            "allowed for one clip")
        x, file_rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # (samples, channels)
    except sf.LibsndfileError as e:
        raise DataError(f"{path}: not a readable audio file ({e.error_string if hasattr(e, 'error_string') else e})") \
            from None
    except RuntimeError as e:  # older soundfile raises RuntimeError
        raise DataError(f"{path}: not a readable audio file ({e})") from None
    notes: list[str] = []
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"{path}: {bad} sample(s) are NaN or infinite")
    if info.subtype.startswith(("FLOAT", "DOUBLE")) and np.abs(x).max() > 1.0:
        raise DataError(f"{path}: floating-point samples reach {np.abs(x).max():.3g}, outside [-1, 1] (clipped "
                        "audio; normalize it before use)")
    if x.shape[1] > 1:
        if on_stereo == "refuse":
            raise DataError(f"{path}: {x.shape[1]} channels where mono is configured (set on_stereo=mix to "
                            "average them)")
        x = x.mean(axis=1, keepdims=True)
        notes.append(f"{path.name}: {info.channels} channels averaged to mono")
    x = x[:, 0]
    if np.abs(x).max() < SILENCE_PEAK:
        raise DataError(f"{path}: pure silence (peak {np.abs(x).max():.1e}, below -80 dBFS)")
    if file_rate != rate:
        if on_rate == "refuse":
            raise DataError(f"{path}: sample rate {file_rate} Hz, the config expects {rate} Hz (set "
                            "on_rate=resample to convert)")
        x = resample(x, file_rate, rate)
        notes.append(f"{path.name}: resampled from {file_rate} Hz to {rate} Hz")
    return np.ascontiguousarray(x, dtype=np.float32), notes


def fit_length(x: np.ndarray, length: int, mode: str = "start") -> np.ndarray:
    """Clip or zero-pad (samples,) to ``length``. mode "start" keeps the beginning (drum hits: the attack);
    "centre" keeps the loudest ``length`` window's centre of energy (speech with leading silence)."""
    if len(x) >= length:
        if mode == "centre" and len(x) > length:
            energy = np.convolve(x.astype(np.float64) ** 2, np.ones(length), mode="valid")  # (len - length + 1,)
            start = int(np.argmax(energy))
            return x[start:start + length]
        return x[:length]
    out = np.zeros(length, dtype=np.float32)
    if mode == "centre":
        start = (length - len(x)) // 2
        out[start:start + len(x)] = x
    else:
        out[:len(x)] = x
    return out


# ------------------------------------------------------------------------------------------------ writing


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float (samples,) in [-1, 1] -> int16 by x * 32768, rounded, clipped to the int16 range (a generator may
    overshoot); the scale libsndfile reads back with, so a round trip is exact to half a step."""
    return np.clip(np.round(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0) * 32768), -32768, 32767).astype("<i2")


def wav_bytes(x: np.ndarray, rate: int, info: dict[str, str] | None = None) -> bytes:
    """16-bit PCM mono WAV of float (samples,) in [-1, 1], with a LIST/INFO chunk of ``info`` when given.

    INFO fields are four-letter ids (INAM, ICMT, ...) holding NUL-terminated text, padded to even sizes
    (the RIFF spec, "Multimedia Programming Interface and Data Specifications 1.0", 1991, INFO list).
    """
    x = np.asarray(x)
    if x.ndim != 1 or len(x) == 0:
        raise DataError(f"a WAV holds one channel of samples (n,), got shape {x.shape}")
    if not isinstance(rate, int) or not 1000 <= rate <= 384_000:
        raise DataError(f"sample rate must be a whole number of Hz from 1000 to 384000, got {rate!r}")
    pcm = to_pcm16(x).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt,
              b"data" + struct.pack("<I", len(pcm)) + pcm + (b"\0" if len(pcm) & 1 else b"")]
    if info:
        body = b"INFO"
        for key, text in info.items():
            if len(key) != 4 or not key.isascii():
                raise DataError(f"INFO field id must be four ASCII letters, got {key!r}")
            value = str(text).encode("utf-8") + b"\0"
            body += key.encode() + struct.pack("<I", len(value)) + value + (b"\0" if len(value) & 1 else b"")
        chunks.append(b"LIST" + struct.pack("<I", len(body)) + body)
    payload = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def write_wav(path: str | Path, x: np.ndarray, rate: int, info: dict[str, str] | None = None) -> Path:
    """Write :func:`wav_bytes` atomically (a crash leaves the previous file)."""
    return atomic_write_bytes(path, wav_bytes(x, rate, info))


def read_info(path: str | Path) -> dict[str, str]:
    """The LIST/INFO fields of a WAV file ({} when it has none); DataError when it is not a sound WAV."""
    path = Path(path)
    data = path.read_bytes()
    check_riff(path, data)
    out: dict[str, str] = {}
    pos, end = 12, min(len(data), struct.unpack_from("<I", data, 4)[0] + 8)
    while pos + 8 <= end:
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if cid == b"LIST" and data[pos + 8:pos + 12] == b"INFO":
            p, stop = pos + 12, pos + 8 + size
            while p + 8 <= stop:
                key, n = data[p:p + 4].decode("latin-1"), struct.unpack_from("<I", data, p + 4)[0]
                out[key] = data[p + 8:p + 8 + n].rstrip(b"\0").decode("utf-8", errors="replace")
                p += 8 + n + (n & 1)
        pos += 8 + size + (size & 1)
    return out


def list_audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursively, sorted, hidden names skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and Path(f).suffix.lower() in AUDIO_EXTENSIONS]
    return out

