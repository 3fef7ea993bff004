"""Writing samples: a grid PNG (with a sidecar JSON of its latents), individual PNGs, or an npz.

Every write is atomic. Every PNG carries genforge's provenance metadata; the
outputs of ``write_samples`` are also recorded in the provenance ledger
(``genforge.generation.provenance``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from genforge.config import from_dict
from genforge.crypto import EncryptingWriter
from genforge.data.examples import load_examples
from genforge.errors import GenforgeError
from genforge.generation import audio, plots, provenance, tables
from genforge.generation.text_files import text_card, write_jsonl, write_txt
from genforge.io import atomic_write, atomic_write_bytes, atomic_write_json, read_json


def make_grid(x: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 images (n, h, w) or (n, h, w, c) -> one uint8 image of them in rows of ``nrow``."""
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, c = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = x[i]
    return grid[..., 0] if c == 1 else grid


def save_png(image: np.ndarray, path: str | Path, metadata: dict | None = None, ledger: bool = False) -> Path:
    """One uint8 image to a PNG carrying ``metadata``; with ``ledger`` also a signed ledger line."""
    data = provenance.png_bytes(image, metadata)
    path = atomic_write_bytes(path, data)
    if ledger and metadata is not None:
        provenance.record(path, data, image, metadata)
    return path


def save_grid(x: np.ndarray, path: str | Path, nrow: int | None = None, metadata: dict | None = None,
              ledger: bool = False) -> Path:
    return save_png(make_grid(x, nrow), path, metadata, ledger)


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray | None = None, keyring=None) -> Path:
    """Arrays ``x`` (and ``y``) as a compressed npz; with a ``keyring`` encrypted as it is written (the plain
    archive never exists on disk, and memory holds one chunk of it)."""
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    if keyring is None:
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    def write(f):
        with EncryptingWriter(f, Path(path).name, keyring) as w:
            np.savez_compressed(w, **arrays)

    return atomic_write(path, write)


def sidecar_path(grid: str | Path) -> Path:
    grid = Path(grid)
    return grid.with_name(grid.name + ".json")


def write_samples(samples, path: str | Path, model, extra: dict | None = None, keyring=None, scale: int = 1) -> Path:
    """Write by the path's form, with the writers of the model's modality (``WRITERS``). Images: ``.png`` a
    grid (plus ``.png.json`` with the latents, for feedback rounds; ``scale`` enlarges each pixel), ``.npz``
    arrays ``x`` (uint8) and ``y`` (conditional models), a path with no suffix a directory of individual
    PNGs ``00000.png`` ... Series: ``.npz`` arrays ``x`` float32 (n, c, t) in the data's units and ``y``,
    ``.csv`` one row per sample and time step, ``.png`` small multiples with real series beside the
    generated. Every PNG carries provenance metadata and is recorded in the ledger. With a
    ``keyring`` the npz is written encrypted (:mod:`genforge.crypto`); PNGs cannot be.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    writers = WRITERS[model.modality.name]
    if suffix not in writers:
        forms = ", ".join(f"{s} " if s else "a directory name" for s in writers)
        raise GenforgeError(f"--out {path}: unknown output format {suffix}; use {forms}")
    if keyring is not None and suffix != ".npz":
        raise GenforgeError(f"--out {path}: only .npz sample sets can be written encrypted (an encrypted PNG "
                            "would be neither viewable nor verifiable)")
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise GenforgeError(f"scale must be an integer from 1 to {MAX_SCALE}, got {scale!r}")
    meta = provenance.stamp({**provenance.model_metadata(model), "seed": samples.seed, "n": len(samples.x),
                             "controls": samples.controls, **(extra or {})})
    return writers[suffix](samples, path, model, meta, extra or {}, keyring, scale)


def grid_columns(model, n: int, controls: dict) -> int:
    """A sample grid's width: one column per class when the classes were cycled (none asked for), else square."""
    by_class = model.has_classes and controls.get("classes") is None
    return model.num_classes if by_class else math.ceil(math.sqrt(n))


def _write_grid(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    nrow = grid_columns(model, len(samples.x), samples.controls)
    grid = make_grid(samples.x, nrow)
    if scale > 1:  # nearest neighbour: each pixel becomes a scale x scale block, nothing is invented
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    out = save_png(grid, path, {**meta, "kind": "grid", "nrow": nrow, "scale": scale}, ledger=True)
    atomic_write_json(sidecar_path(path), {
        "format": "genforge-grid", "format_version": 1, "grid_file": path.name, "nrow": nrow,
        **{k: meta[k] for k in ("model", "model_path", "weights_sha256", "seed", "controls")},
        **extra,
        "classes": None if samples.y is None else samples.y.tolist(),
        "latents": samples.z.tolist()})
    return out


def _write_npz(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    return save_npz(path, samples.x, samples.y, keyring)


def _write_png_dir(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(samples.x):
        cls = None if samples.y is None else int(samples.y[i])
        save_png(image, path / f"{i:05d}.png", {**meta, "kind": "single", "index": i, "class": cls,
                                                "latent": samples.z[i].tolist()}, ledger=True)
    return path


def _write_series_csv(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    """Long CSV: one row per (sample, time step), a column per channel, the class name when conditional."""
    names = model.output.channel_names
    classes = model.class_names or []

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        out = csv.writer(text)
        out.writerow(["sample", *(["class"] if samples.y is not None else []), "t", *names])
        for i, series in enumerate(samples.x):  # (c, t)
            label = [classes[int(samples.y[i])] if classes else int(samples.y[i])] if samples.y is not None else []
            for t in range(series.shape[1]):
                out.writerow([i, *label, t, *(f"{v:.7g}" for v in series[:, t])])
        text.flush()
        text.detach()

    return atomic_write(path, write)


def _write_series_plot(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    real, real_y, note = real_series(model, len(samples.x), samples.y)
    image = plots.series_panels(samples.x, samples.y, class_names=model.class_names,
                                channel_names=model.output.channel_names, real=real, real_y=real_y,
                                title=f"{model.name} seed {samples.seed}")
    return save_png(image, path, {**meta, "kind": "series-plot", **({"note": note} if note else {})}, ledger=True)


def real_series(model, n: int, y: np.ndarray | None = None):
    """Up to ``min(n, 8)`` real training series of a series model's data, in the data's units, of the classes
    in ``y`` where given, for plots beside samples: (x, y, None), or (None, None, why) when the data cannot be
    read here (another machine, a moved file)."""
    try:
        cfg = from_dict(model.meta.get("train_config") or {}, "the model's train_config")
        train = load_examples(cfg, "-1,1").raw.train  # the splits are in the data's units
    except (GenforgeError, OSError) as e:
        return None, None, f"real series not drawn: {str(e).splitlines()[0][:200]}"
    k = min(n, 8, len(train.x))
    if y is not None and train.y is not None:  # the same classes as the samples drawn, in order
        idx = [int(np.flatnonzero(train.y == c)[0]) for c in y[:k] if (train.y == c).any()]
    else:
        idx = np.random.default_rng(0).choice(len(train.x), size=k, replace=False).tolist()
    return train.x[idx], None if train.y is None else train.y[idx], None


def _image_preview(samples, model, nrow, real, title) -> np.ndarray:
    return make_grid(samples.x, nrow)


def _series_preview(samples, model, nrow, real, title) -> np.ndarray:
    rx = None if real is None else real.x[:8]
    ry = None if real is None or real.y is None else real.y[:8]
    return plots.series_panels(samples.x, samples.y, class_names=model.class_names,
                               channel_names=model.output.channel_names, real=rx, real_y=ry, title=title)


def _table_preview(samples, model, nrow, real, title) -> np.ndarray:  # a histogram per column, real beside
    return tables.preview_columns(samples.x, model, real=real, title=title)


def _text_preview(samples, model, nrow, real, title) -> np.ndarray:
    return text_card(list(samples.x), title=title)


def _audio_preview(samples, model, nrow, real, title) -> np.ndarray:  # a grid of the clips' log-mel pictures
    return make_grid(np.stack([audio.spectrogram_image(x, _rate(model)) for x in samples.x]), nrow)


# modality -> (samples, model, nrow, the real training split or None, title) -> one uint8 picture
PREVIEWS = {"image": _image_preview, "series": _series_preview, "table": _table_preview, "text": _text_preview,
            "audio": _audio_preview, "audio-wave": _audio_preview}


def preview(samples, model, nrow: int | None = None, real=None, title: str = "") -> np.ndarray:
    """One uint8 picture of samples, for PNG outputs, the server's png format and TensorBoard: images a grid
    (rows ``nrow`` wide), series small multiples, tables a histogram per column, text a card. ``real``: the
    modality's own training split (``Examples.raw.train``), drawn beside the samples where the modality does."""
    return PREVIEWS[model.modality.name](samples, model, nrow, real, title)


# ------------------------------------------------------------------------------------------------ audio


def _rate(model) -> int:
    return int(model.output.rate)  # the audio output conversion knows the model's sample rate


def _class_name(model, samples, i: int) -> str | None:
    if samples.y is None:
        return None
    k = int(samples.y[i])
    names = model.class_names
    return names[k] if names and k < len(names) else str(k)


def _write_wav_one(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    rate = _rate(model)
    gap = np.zeros(int(audio.GAP_SECONDS * rate), np.float32)
    parts = []
    for i, x in enumerate(samples.x):
        parts += [x, gap] if i < len(samples.x) - 1 else [x]
    classes = None if samples.y is None else [_class_name(model, samples, i) for i in range(len(samples.x))]
    return audio.save_wav(np.concatenate(parts), path, rate,
                          {**meta, "kind": "sequence", "gap_seconds": audio.GAP_SECONDS, "classes": classes},
                          ledger=True)


def _write_wav_dir(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(samples.x):
        cls = _class_name(model, samples, i)
        audio.save_wav(x, path / f"{i:05d}.wav", _rate(model),
                       {**meta, "kind": "single", "index": i, "class": cls, "latent": samples.z[i].tolist()},
                       title=f"sample {i}" + (f" ({cls})" if cls else ""), ledger=True)
    return path


def _write_audio_npz(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    return save_npz(path, np.asarray(samples.x, dtype=np.float32), samples.y, keyring)


def _write_spectrogram_grid(samples, path: Path, model, meta: dict, extra: dict, keyring, scale: int) -> Path:
    grid = preview(samples, model)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return save_png(grid, path, {**meta, "kind": "spectrogram-grid", "scale": scale}, ledger=True)


# spectrogram models and waveform models write the same thing: sound
_AUDIO_WRITERS = {".wav": _write_wav_one, "": _write_wav_dir, ".npz": _write_audio_npz, ".png": _write_spectrogram_grid}
MAX_SCALE = 16
# modality -> output suffix -> writer ("" is a directory); genforge.modalities declares the suffixes
WRITERS = {"image": {".png": _write_grid, ".npz": _write_npz, "": _write_png_dir},
           "series": {".npz": _write_npz, ".csv": _write_series_csv, ".png": _write_series_plot},
           "table": {".csv": tables.write_table, ".parquet": tables.write_table, ".npz": _write_npz},
           "text": {".txt": write_txt, ".jsonl": write_jsonl},
           "audio": _AUDIO_WRITERS, "audio-wave": _AUDIO_WRITERS}


def read_sidecar(grid: str | Path) -> dict:
    """The sidecar JSON of a grid written by :func:`write_samples`, checked."""
    path = sidecar_path(grid)
    side = read_json(path, GenforgeError, missing="missing: feedback needs the sidecar JSON written beside the grid",
                     invalid="not valid JSON (altered?)")
    if not isinstance(side, dict) or side.get("format") != "genforge-grid":
        raise GenforgeError(f"{path}: not a genforge grid sidecar")
    z = side.get("latents")
    if (not isinstance(z, list) or not z or not all(isinstance(r, list) and len(r) == len(z[0]) for r in z)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for r in z for v in r)):
        raise GenforgeError(f"{path}: field 'latents' is malformed (altered?)")
    classes = side.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != len(z)
                                or not all(isinstance(c, int) for c in classes)):
        raise GenforgeError(f"{path}: field 'classes' is malformed (altered?)")
    return side
