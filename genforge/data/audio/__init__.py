"""Audio: read a source, bring every clip to one rate and length, split it.

    splits = load_audio("audio:spoken-digits")           # made first by: genforge data make spoken-digits
    splits = load_audio("audio:drums", length=16000)     # Debian's hydrogen-drumkits, labelled from file names
    splits = load_audio("audio:~/recordings")            # a folder of WAV/FLAC: flat or one subfolder per class
    splits.train.x                                       # float32 (N, samples) in [-1, 1] at splits.rate
    print(check_audio("audio:drums"))                    # what `genforge data check` prints

Spec forms: ``audio:spoken-digits``, ``audio:drums``, ``audio:asterisk-digits`` (the ten real studio digits,
all in the test split: the real-data check), and ``audio:DIR`` for anything else (write ``audio:./drums`` for
a folder that happens to be called drums). The representations (log-mel, Griffin-Lim) are in
:mod:`genforge.data.audio.features`, the file formats in :mod:`genforge.data.audio.wav`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.audio.features import MelSpec
from genforge.data.audio.sources import (DIGIT_NAMES, DRUM_CLASSES, Clips, read_asterisk_digits, read_audio_folder,
                                         read_drums)
from genforge.data.audio.spoken_digits import default_dir, make_spoken_digits, read_manifest
from genforge.data.audio.wav import read_audio, read_info, write_wav
from genforge.data.split import split_indices
from genforge.errors import DataError

__all__ = ["AudioSet", "AudioSplits", "DIGIT_NAMES", "DRUM_CLASSES", "KINDS", "MelSpec", "NAMED", "check_audio",
           "load_audio", "make_spoken_digits", "parse_audio_spec", "read_audio", "read_info", "write_wav"]

KINDS = ("audio", "audio-wave")  # the spec prefixes: spectrogram models and waveform models read the same clips
NAMED = ("spoken-digits", "drums", "asterisk-digits")
SPEC_FORMS = "audio:spoken-digits, audio:drums, audio:asterisk-digits, audio:DIR (or audio-wave:... alike)"


@dataclass(eq=False)
class AudioSet:
    x: np.ndarray              # float32 (n, samples) in [-1, 1]
    y: np.ndarray | None       # int64 (n,) or None
    files: list[str]

    def __len__(self) -> int:
        return len(self.x)


@dataclass(eq=False)
class AudioSplits:
    name: str
    train: AudioSet
    val: AudioSet
    test: AudioSet
    class_names: list[str] | None
    rate: int
    length: int
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def describe(self) -> str:
        lines = [f"{self.name}: mono clips of {self.length} samples at {self.rate} Hz "
                 f"({self.length / self.rate:.2f} s)"]
        for part in ("train", "val", "test"):
            s = getattr(self, part)
            counts = ""
            if s.y is not None and self.class_names and len(s):
                k = np.bincount(s.y, minlength=len(self.class_names))
                counts = " (" + ", ".join(f"{n} {m}" for n, m in zip(self.class_names, k)) + ")"
            lines.append(f"  {part}: {len(s)} clips{counts}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def parse_audio_spec(spec: str) -> tuple[str, Path | None]:
    """"audio:drums" -> ("drums", None); "audio:~/x" -> ("dir", Path("/home/.../x")); audio-wave: alike."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"audio source spec {spec!r} is empty; valid forms: {SPEC_FORMS}")
    kind, sep, rest = spec.strip().partition(":")
    if kind not in KINDS or not sep or not rest:
        raise DataError(f"unknown audio source spec {spec!r}; valid forms: {SPEC_FORMS}")
    if rest in NAMED:
        return rest, None
    return "dir", Path(os.path.expanduser(rest))


def load_audio(spec: str, *, rate: int = 16000, length: int = 16000, on_bad: str = "drop",
               on_rate: str = "resample", on_stereo: str = "refuse", val_fraction: float = 0.1,
               test_fraction: float = 0.1, seed: int = 0, voices_dir: Path | None = None) -> AudioSplits:
    """Load ``spec`` as mono clips of ``length`` samples at ``rate`` Hz, split train / val / test.

    spoken-digits (and any folder with its manifest): split by voice as the manifest says. drums and other
    labelled folders: a stratified split with ``seed``. asterisk-digits: all ten in test.
    on_bad: "drop" (listed in the notes) or "reject" a file that cannot be used; on_rate, on_stereo: see
    :func:`genforge.data.audio.wav.read_audio`. voices_dir: where audio:spoken-digits lives (default
    ``$XDG_DATA_HOME/genforge/spoken-digits``).
    """
    if on_bad not in ("drop", "reject"):
        raise DataError(f"on_bad must be 'drop' or 'reject', got {on_bad!r}")
    if not (isinstance(rate, int) and 1000 <= rate <= 192_000):
        raise DataError(f"rate must be a whole number of Hz from 1000 to 192000, got {rate!r}")
    if not (isinstance(length, int) and 256 <= length <= rate * 30):
        raise DataError(f"length must be a whole number of samples from 256 to 30 s worth, got {length!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value!r}")
    kind, path = parse_audio_spec(spec)
    if kind == "drums":
        clips = read_drums(rate, length, on_bad)
    elif kind == "asterisk-digits":
        clips = read_asterisk_digits(rate, length)
        empty = AudioSet(clips.x[:0], clips.y[:0], [])
        return AudioSplits(spec, empty, empty, AudioSet(clips.x, clips.y, clips.files), clips.class_names, rate,
                           length, clips.notes + ["all ten clips are the test split: a real-data check only"])
    else:
        root = (voices_dir or default_dir()) if kind == "spoken-digits" else path
        assert root is not None
        manifest = read_manifest(root) if root.is_dir() else None
        if kind == "spoken-digits" and manifest is None:
            raise DataError(f"audio:spoken-digits: {root} holds no spoken-digits set yet; make it once with: "
                            "genforge data make spoken-digits")
        order = manifest.get("words") if manifest is not None else None
        clips = read_audio_folder(root, rate, length, on_bad, on_rate, on_stereo, class_order=order)
        if manifest is not None:
            split_of = {v["id"]: v["split"] for v in manifest["voice_table"]}
            clips.split = np.array([split_of.get(Path(f).stem, "train") for f in clips.files], dtype=object)
            clips.notes.append(f"split by voice as {root / 'manifest.json'} says (seed {manifest.get('seed')}): "
                               "test voices are never heard in training")
    return _split(spec, clips, rate, length, val_fraction, test_fraction, seed)


def _split(spec: str, clips: Clips, rate: int, length: int, val_fraction: float, test_fraction: float,
           seed: int) -> AudioSplits:
    if clips.split is not None:
        parts = [np.flatnonzero(clips.split == s) for s in ("test", "val", "train")]
    else:
        parts = split_indices(clips.y, len(clips.x), (test_fraction, val_fraction), seed)
    test, val, train = (AudioSet(clips.x[i], None if clips.y is None else clips.y[i], [clips.files[j] for j in i])
                        for i in parts)
    if len(train) == 0:
        raise DataError(f"{spec}: the train split is empty ({len(clips.x)} usable clips)")
    return AudioSplits(spec, train, val, test, clips.class_names, rate, length, clips.notes)


def check_audio(spec: str, **kwargs) -> str:
    """The printable description of what load_audio(spec, **kwargs) reads (for `genforge data check`)."""
    return load_audio(spec, **kwargs).describe()
