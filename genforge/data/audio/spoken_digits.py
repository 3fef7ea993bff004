"""audio:spoken-digits: an SC09-like set of the words "zero" ... "nine", synthesized here by espeak-ng.

    genforge data make spoken-digits --voices 200 --seed 0          # 2,000 one-second clips, about 64 MB

SC09 (the ten digits of Google's Speech Commands, the WaveGAN benchmark) cannot be downloaded here, so the
digits are spoken by Debian's espeak-ng instead. A *voice* is one draw of (accent, voice variant, pitch,
speaking rate, loudness); each voice says every digit once. The voices are split 80 / 10 / 10 into train,
validation and test, so a test voice is never heard in training. With ``noise`` each clip is also put in a
small synthetic room (an exponentially decaying noise impulse response, RT60 0.1 to 0.5 s) with brown noise
at 15 to 35 dB SNR. Every draw comes from ``seed``: the same seed and voice count give the same manifest and,
with the same espeak-ng version, the same samples.

On disk: ``DIR/<digit>/<voice>.wav`` (16-bit, 16 kHz, 1 s; a plain class-per-folder layout that
``audio:DIR`` reads too) and ``DIR/manifest.json`` (every voice's parameters and split, the seed, the
espeak-ng version), written last so a half-made folder is never mistaken for a finished one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genforge.data.audio.sources import DIGIT_NAMES
from genforge.data.audio.wav import fit_length, read_audio, write_wav
from genforge.errors import DataError
from genforge.io import atomic_write_json, read_json, user_dir

FORMAT = "genforge-spoken-digits"
# espeak-ng's own English voices (its gmw/ folder); the mbrola ones need the separate mbrola program.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
# Its voice variants, less those that do not sound like a speaker (whisper has no pitch; the robots and
# "Demonic" are effects).
VARIANTS = ("adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris",
            "caleb", "david", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "announcer",
            "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda",
            "marcelo", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo",
            "paul", "pedro", "quincy", "rob", "robert", "steph", "steph2", "steph3", "Storm", "Tweaky", "zac",
            "anika", "AnxiousAndy", "f1", "f2", "f3", "f4", "f5", "grandpa", "grandma", "klatt", "klatt2", "klatt3",
            "klatt4", "klatt5", "klatt6", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "norbert", "sandro",
            "shelby", "travis", "victor")
RATE, LENGTH = 16000, 16000
SPLIT_SHARES = (("test", 0.1), ("val", 0.1))  # of the voices; the rest is train
MAX_VOICES = 5000


def default_dir() -> Path:
    """$XDG_DATA_HOME/genforge/spoken-digits (~/.local/share when unset)."""
    return user_dir("data") / "spoken-digits"


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise DataError("espeak-ng is missing: audio:spoken-digits is synthesized by it; install the Debian "
                        "package espeak-ng (apt-get install espeak-ng)")
    return found


def draw_voices(n: int, seed: int) -> list[dict]:
    """n voices (accent, variant, pitch 0-99, words per minute, peak level, start offset), split by voice."""
    if isinstance(n, bool) or not isinstance(n, int) or not 10 <= n <= MAX_VOICES:
        raise DataError(f"voices must be a whole number from 10 to {MAX_VOICES}, got {n!r}")
    rng = np.random.default_rng(seed)
    voices = []
    for i in range(n):
        voices.append({"id": f"v{i:04d}", "accent": str(rng.choice(ACCENTS)), "variant": str(rng.choice(VARIANTS)),
                       "pitch": int(rng.integers(20, 81)), "wpm": int(rng.integers(120, 201)),
                       "peak": round(float(rng.uniform(0.3, 0.9)), 3), "seed": int(rng.integers(2**31))})
    order = rng.permutation(n)
    start = 0
    for name, share in SPLIT_SHARES:
        k = max(1, round(n * share))
        for j in order[start:start + k]:
            voices[j]["split"] = name
        start += k
    for j in order[start:]:
        voices[j]["split"] = "train"
    return voices


def _room(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small synthetic room and a noise floor: the "optional room noise" of the data set."""
    rt60 = rng.uniform(0.1, 0.5)
    t = np.arange(int(RATE * rt60)) / RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)   # -60 dB at t = rt60
    ir[0] = 1.0 / 0.3                                              # the direct path dominates
    wet = np.convolve(x, ir * 0.3)[: len(x)]
    brown = np.cumsum(rng.standard_normal(len(x)))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")   # keep it from drifting (a high-pass)
    snr = rng.uniform(15, 35)
    brown *= np.sqrt(np.mean(wet ** 2) / max(np.mean(brown ** 2), 1e-12) / 10 ** (snr / 10))
    return (wet + brown).astype(np.float32)


def say(word: str, voice: dict, tmp: Path, binary: str, noise: bool) -> np.ndarray:
    """One clip: espeak-ng speaks ``word`` in ``voice``; trimmed, placed, scaled; float32 (LENGTH,)."""
    out = tmp / "say.wav"
    cmd = [binary, "-v", f"{voice['accent']}+{voice['variant']}", "-p", str(voice["pitch"]), "-s",
           str(voice["wpm"]), "-w", str(out), word]
    done = subprocess.run(cmd, capture_output=True, timeout=30)
    if done.returncode != 0:
        raise DataError(f"espeak-ng failed for {word!r} in voice {voice['id']} ({' '.join(cmd[1:])}): "
                        f"{done.stderr.decode(errors='replace').strip()[:200]}")
    x, _ = read_audio(out, RATE)  # espeak-ng writes 22,050 Hz: resampled here
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    x = x[loud[0]:loud[-1] + 1]                                      # trim leading and trailing silence
    rng = np.random.default_rng([voice["seed"], DIGIT_NAMES.index(word)])
    if len(x) < LENGTH:  # a random place in the second, as the words of SC09 are
        start = int(rng.integers(0, LENGTH - len(x) + 1))
        x = np.concatenate([np.zeros(start, np.float32), x])
    x = fit_length(x, LENGTH, "centre" if len(x) > LENGTH else "start")
    if noise:
        x = _room(x, rng)
    return (x * (voice["peak"] / max(np.abs(x).max(), 1e-6))).astype(np.float32)


def make_spoken_digits(out: str | Path | None = None, voices: int = 200, seed: int = 0, noise: bool = False,
                       progress: bool = True) -> Path:
    """Synthesize ``voices`` x 10 one-second clips into ``out`` (default :func:`default_dir`); its manifest."""
    binary = espeak_binary()
    out = Path(out) if out else default_dir()
    if (out / "manifest.json").exists():
        raise DataError(f"{out}: already holds a spoken-digits set (manifest.json); remove it or choose "
                        "another --out")
    table = draw_voices(voices, seed)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, voice in enumerate(table):
            for d, word in enumerate(DIGIT_NAMES):
                x = say(word, voice, Path(tmp), binary, noise)
                write_wav(out / word / f"{voice['id']}.wav", x, RATE,
                          {"INAM": f"{word} ({voice['id']})", "ISFT": version, "ICMT": f"genforge {FORMAT} seed {seed}"})
            if progress and (i + 1) % 20 == 0:
                print(f"genforge: spoken digits: {i + 1}/{len(table)} voices ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
    counts = {s: sum(v["split"] == s for v in table) for s in ("train", "val", "test")}
    manifest = {"format": FORMAT, "format_version": 1, "seed": seed, "voices": voices, "noise": noise,
                "rate": RATE, "length": LENGTH, "words": DIGIT_NAMES, "espeak_ng": version,
                "clips": voices * 10, "split_voices": counts, "voice_table": table}
    atomic_write_json(out / "manifest.json", manifest)  # last: its presence means the folder is complete
    if progress:
        print(f"genforge: wrote {voices * 10} clips ({counts['train']}/{counts['val']}/{counts['test']} voices "
              f"train/val/test) to {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def read_manifest(root: Path) -> dict | None:
    """The manifest of a spoken-digits folder, or None when ``root`` is not one."""
    path = root / "manifest.json"
    if not path.is_file():
        return None
    m = read_json(path, DataError)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return None
    table = m.get("voice_table")
    if (not isinstance(table, list) or not all(isinstance(v, dict) and isinstance(v.get("id"), str)
                                               and v.get("split") in ("train", "val", "test") for v in table)):
        raise DataError(f"{path}: field 'voice_table' is malformed (every voice needs an id and a split)")
    return m
