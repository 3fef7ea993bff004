"""The audio sources: Debian's drum kits and studio prompts, and a user's folder of WAV/FLAC files.

    drums              the one-shot samples of hydrogen-drumkits, labelled from their file names
    asterisk-digits    the ten studio digits "zero" ... "nine" of asterisk-core-sounds-en-wav (the real-data
                       check of the digit evaluator; one speaker, 8 kHz, CC-BY-SA-3.0)
    asterisk-prompts   its spoken prompts (clean speech for the enhancement task), full length
    DIR                a folder of audio files: flat, or one subfolder per class

Each reader returns a :class:`Clips`: float32 clips of one length at one rate, labels, the file each came
from, and notes. A file that cannot be used is a one-line DataError naming it (``on_bad="reject"``) or is
left out and listed in the notes (``on_bad="drop"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data.audio.wav import fit_length, list_audio_files, read_audio
from genforge.errors import DataError

DRUMS_DIR = Path("/usr/share/hydrogen/data/drumkits")
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
DRUM_CLASSES = ["kick", "snare", "hihat", "tom", "cymbal", "other"]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Prompt folders that are words spoken on their own rather than sentences: not enhancement material.
_NOT_PROMPTS = ("digits", "letters", "phonetic", "silence")


@dataclass(eq=False)
class Clips:
    """Clips of one source before splitting."""

    x: np.ndarray                       # float32 (n, samples) in [-1, 1]
    y: np.ndarray | None                # int64 (n,) or None
    files: list[str]                    # where each clip came from
    class_names: list[str] | None
    groups: np.ndarray | None = None    # int64 (n,): clips of one group (a voice, a kit) stay in one split
    split: np.ndarray | None = None     # object (n,) "train"/"val"/"test" when the source fixes its split
    notes: list[str] = field(default_factory=list)


def drum_label(name: str) -> str:
    """kick / snare / hihat / tom / cymbal / other from a drum sample's file name (lower-cased stem).

    Kits name their files freely ("bd_01", "EE_Kick_Hard_2", "pearltomfloor-soft", "hh2_03", "t1_01"), so the
    rules look at whole words (split at anything that is not a letter) and at a few telling substrings; the
    first rule that matches wins, snare before cymbal so that "snarerim" is a snare.
    """
    s = name.lower()
    words = [w for w in re.split(r"[^a-z]+", s) if w]
    if "kick" in s or "bassdrum" in s or any(w in ("bd", "k", "kik") for w in words):
        return "kick"
    if "snare" in s or any(w in ("sn", "sd", "sr") for w in words):
        return "snare"
    if "hat" in s or any(w in ("hh", "ho", "chh", "ohh") or w.startswith("hh") for w in words):
        return "hihat"
    if re.search(r"(?<!s)tom", s) or any(w in ("tm", "ft", "t") for w in words):  # not "stomachache"
        return "tom"
    if any(k in s for k in ("crash", "ride", "cymbal", "china", "splash")) or any(
            w in ("rd", "cc", "rc", "cra", "cym") for w in words):
        return "cymbal"
    return "other"


def _read_many(files: list[Path], rate: int, length: int, fit: str, on_bad: str, on_rate: str, on_stereo: str,
               notes: list[str]) -> tuple[np.ndarray, list[int]]:
    """Read ``files`` into (n, length); the indices of the files kept. Conversions are counted, not listed."""
    xs, kept, converted = [], [], {}
    for i, f in enumerate(files):
        try:
            x, file_notes = read_audio(f, rate, on_rate=on_rate, on_stereo=on_stereo)
        except DataError as e:
            if on_bad == "reject":
                raise
            notes.append(f"dropped: {e}")
            continue
        for n in file_notes:
            kind = n.split(": ", 1)[1]
            converted[kind] = converted.get(kind, 0) + 1
        xs.append(fit_length(x, length, fit))
        kept.append(i)
    notes += [f"{count} file(s): {kind}" for kind, count in sorted(converted.items())]
    return (np.stack(xs) if xs else np.zeros((0, length), np.float32)), kept


def read_drums(rate: int, length: int, on_bad: str = "drop", root: Path = DRUMS_DIR) -> Clips:
    """Every sample of every kit under ``root``, mixed to mono, from its start (the attack), labelled by name."""
    if not root.is_dir():
        raise DataError(f"audio:drums: {root} is missing; install the drum kits: apt-get install hydrogen-drumkits")
    files = list_audio_files(root)
    if not files:
        raise DataError(f"audio:drums: no audio files under {root}")
    notes = [f"{len(files)} samples in {len({f.parent for f in files})} kits under {root}; labels from file names"]
    # Drum kits are stereo and come at 44.1 or 48 kHz: mixing and resampling them is what this source means.
    x, kept = _read_many(files, rate, length, "start", on_bad, "resample", "mix", notes)
    kept_files = [files[i] for i in kept]
    y = np.array([DRUM_CLASSES.index(drum_label(f.stem)) for f in kept_files], dtype=np.int64)
    kits = sorted({f.parent for f in kept_files})
    groups = np.array([kits.index(f.parent) for f in kept_files], dtype=np.int64)
    return Clips(x, y, [str(f) for f in kept_files], list(DRUM_CLASSES), groups=groups, notes=notes)


def read_asterisk_digits(rate: int, length: int, root: Path = ASTERISK_DIR) -> Clips:
    """The ten studio digits 0.wav ... 9.wav (8 kHz, one speaker), resampled to ``rate``, centred."""
    folder = root / "digits"
    files = [folder / f"{d}.wav" for d in range(10)]
    if not all(f.is_file() for f in files):
        raise DataError(f"audio:asterisk-digits: {folder} is missing its 0.wav ... 9.wav; install them: "
                        "apt-get install asterisk-core-sounds-en-wav")
    notes = [f"10 studio digits from {folder} (one speaker, CC-BY-SA-3.0)"]
    x, kept = _read_many(files, rate, length, "centre", "reject", "resample", "refuse", notes)
    return Clips(x, np.arange(10, dtype=np.int64), [str(f) for f in files], list(DIGIT_NAMES), notes=notes)


def read_asterisk_prompts(rate: int, root: Path = ASTERISK_DIR) -> tuple[list[np.ndarray], list[str]]:
    """The spoken prompts (sentences, not lone digits or letters) at ``rate``, each at its own length."""
    if not root.is_dir():
        raise DataError(f"audio:asterisk-prompts: {root} is missing; install the prompts: "
                        "apt-get install asterisk-core-sounds-en-wav")
    files = [f for f in list_audio_files(root) if f.relative_to(root).parts[0] not in _NOT_PROMPTS]
    out, names = [], []
    for f in files:
        try:
            x, _ = read_audio(f, rate, on_rate="resample", on_stereo="refuse")
        except DataError:
            continue  # a prompt that is silent or broken is simply not used as clean speech
        out.append(x)
        names.append(str(f))
    if not out:
        raise DataError(f"audio:asterisk-prompts: no readable prompt under {root}")
    return out, names


def read_audio_folder(root: Path, rate: int, length: int, on_bad: str = "drop", on_rate: str = "resample",
                      on_stereo: str = "refuse", fit: str = "centre", class_order: list[str] | None = None) -> Clips:
    """A folder of audio files: flat (unlabelled) or one subfolder per class (its name is the class).

    class_order: the class names in label order when the folder's maker fixed one (the spoken digits: "zero"
    is 0); otherwise the subfolders' sorted names."""
    if not root.is_dir():
        raise DataError(f"audio folder {root} does not exist")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    top = [p for p in entries if p.is_file() and p.suffix.lower() in (".wav", ".flac", ".ogg", ".aiff", ".aif")]
    if subdirs and top:
        raise DataError(f"{root}: holds both audio files ({top[0].name}, ...) and subfolders ({subdirs[0].name}, "
                        "...); use a flat folder (unlabelled) or one subfolder per class")
    if subdirs and class_order is not None:
        by_name = {d.name: d for d in subdirs}
        if sorted(by_name) != sorted(class_order):
            raise DataError(f"{root}: subfolders {sorted(by_name)} are not the classes {class_order} its maker "
                            "wrote")
        subdirs = [by_name[n] for n in class_order]
    if subdirs:
        files, labels = [], []
        for k, d in enumerate(subdirs):
            found = list_audio_files(d)
            files += found
            labels += [k] * len(found)
        class_names: list[str] | None = [d.name for d in subdirs]
    else:
        files, labels, class_names = top, [], None
    if not files:
        raise DataError(f"{root}: a folder of zero audio files (.wav, .flac, .ogg, .aiff)")
    notes = [f"{len(files)} audio file(s) under {root}"]
    x, kept = _read_many(files, rate, length, fit, on_bad, on_rate, on_stereo, notes)
    if not kept:
        raise DataError(f"{root}: none of its {len(files)} audio file(s) is usable ({notes[-1]})")
    y = np.array([labels[i] for i in kept], dtype=np.int64) if class_names else None
    return Clips(x, y, [str(files[i]) for i in kept], class_names, notes=notes)
