"""Reader for a folder of image files: flat (unlabeled) or one subfolder per class.

Image files come from anywhere, so each one is treated as hostile: Pillow's
`Image.open` only parses the header, which lets us refuse a file claiming
100000x100000 pixels before `load()` would allocate 30 GB for it. Files that
cannot be used are returned as rejected items for the cleaning report, never
silently skipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genforge.data.clean import MAX_EXAMPLES, Pool
from genforge.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse anything larger before decoding it
MAX_ASPECT = 2.0  # squashing a wider image into a square distorts it past use
MIN_SIDE = 4

_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")


class _Bad(Exception):
    """One file that cannot be used; `reason` is a key of clean.REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_folder(root: Path, image_size: int, channels: int) -> tuple[Pool, list[str] | None, list[str]]:
    """Read every image under `root`, resized to image_size x image_size.

    Returns the pool, the class names (sorted subfolder names; None for a flat
    folder) and notes for the report. `channels` 0 picks 1 or 3 by majority.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    # A symbolic link is followed only when its target lies inside the folder: a link to /etc/hostname or
    # to another user's directory would otherwise be read (and its path echoed in the report) as training
    # data. The ones skipped are listed in the report. `root` itself may be a link; its target is the folder.
    inside = root.resolve()
    outside: list[str] = []
    entries = sorted(p for p in root.iterdir() if not p.name.startswith(".") and _followable(p, inside, outside))
    subdirs = [p for p in entries if p.is_dir()]
    top_files = [p for p in entries if p.is_file()]
    top_images = [p for p in top_files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if subdirs and top_images:
        raise DataError(
            f"{root}: holds both image files ({top_images[0].name}, ...) and subfolders ({subdirs[0].name}, ...); "
            "use either a flat folder of images (unlabeled) or one subfolder per class"
        )

    class_names = [d.name for d in subdirs] if subdirs else None
    files: list[Path] = []
    labels: list[int] = []
    skipped = len(top_files) - len(top_images)
    for label, d in enumerate(subdirs):
        found = _files_under(d, inside, outside)
        images = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped += len(found) - len(images)
        files += images
        labels += [label] * len(images)
    if not subdirs:
        files = top_images
    links_note = _links_note(root, outside)
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
                        + (f"; {links_note}" if links_note else ""))

    arrays: list[np.ndarray] = []  # uint8 (S, S) or (S, S, 3)
    kept: list[int] = []  # index into `files` of each decoded array
    rejected: list[tuple[str, str, str]] = []
    for i, path in enumerate(files):
        try:
            arrays.append(_decode(path, image_size, channels))
            kept.append(i)
        except _Bad as bad:
            rejected.append((bad.reason, str(path), bad.detail))

    notes = [f"each image resized to {image_size}x{image_size} (Lanczos)"]
    if skipped:
        notes.append(f"ignored {skipped} non-image files under {root}")
    if links_note:
        notes.append(links_note)
    if channels == 0:
        n_colour = sum(a.ndim == 3 for a in arrays)
        # Majority wins (ties go to colour): a colour model can still draw grey.
        channels = 3 if arrays and 2 * n_colour >= len(arrays) else 1
        notes.append(f"channels=0 chose {channels} ({n_colour} colour, {len(arrays) - n_colour} grayscale images)")
        wrong = [j for j, a in enumerate(arrays) if (a.ndim == 3) != (channels == 3)]
        for j in wrong:
            kind = "colour" if arrays[j].ndim == 3 else "grayscale"
            detail = f"{kind} image, but the majority chose channels={channels}"
            rejected.append(("wrong_channels", str(files[kept[j]]), detail))
        wrong_set = set(wrong)
        arrays = [a for j, a in enumerate(arrays) if j not in wrong_set]
        kept = [k for j, k in enumerate(kept) if j not in wrong_set]

    if arrays:
        x = np.stack(arrays).reshape(len(arrays), image_size, image_size, channels)  # (N, S, S, C)
    else:
        x = np.zeros((0, image_size, image_size, channels), dtype=np.uint8)
    y = np.array([labels[k] for k in kept], dtype=np.int64) if class_names is not None else None
    pool = Pool(x=x, y=y, origin=str(root), names=[str(files[k]) for k in kept], rejected=rejected)
    return pool, class_names, notes


def _decode(path: Path, image_size: int, channels: int) -> np.ndarray:
    """uint8 (S, S) for grayscale or (S, S, 3) for colour; raises _Bad for unusable files."""
    try:
        with warnings.catch_warnings():
            # Other Pillow warnings (palette transparency, EXIF quirks) are
            # noise here; a decompression bomb warning becomes an error.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # Only the header has been parsed so far: check size before decoding.
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise _Bad("unreadable", f"image too large: {w}x{h} pixels, limit {MAX_IMAGE_PIXELS}")
                if min(w, h) < MIN_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
                    need = f"need sides >= {MIN_SIDE} and aspect within {MAX_ASPECT:g}:1"
                    raise _Bad("wrong_shape", f"{w}x{h} pixels; {need}")
                colour = _has_colour(img)
                if channels and channels != (3 if colour else 1):
                    raise _Bad("wrong_channels", f"{'colour' if colour else 'grayscale'} image but channels={channels}")
                img.load()
                img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
                img = img.convert("RGB") if colour else _to_gray(img)
                img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
                return np.asarray(img, dtype=np.uint8)
    except _Bad:
        raise
    except Image.DecompressionBombError as e:
        raise _Bad("unreadable", f"image too large: {e}") from e
    except Image.DecompressionBombWarning as e:
        raise _Bad("unreadable", f"image too large: {e}") from e
    except Exception as e:  # noqa: BLE001
        # Pillow's decoders raise many types on hostile bytes (OSError,
        # SyntaxError, ValueError, struct.error, ...); each is a bad file.
        raise _Bad("unreadable", f"{type(e).__name__}: {e}") from e


def _followable(path: Path, inside: Path, outside: list[str]) -> bool:
    """False, with `path` added to `outside`, for a symbolic link whose target is not under `inside`
    (a link in a loop has no target at all, and counts as leaving)."""
    if not path.is_symlink():
        return True
    try:
        if path.resolve().is_relative_to(inside):
            return True
    except (RuntimeError, OSError):  # RuntimeError: "Symlink loop" (Python 3.11 pathlib)
        pass
    outside.append(str(path))
    return False


def _files_under(top: Path, inside: Path, outside: list[str]) -> list[Path]:
    """Every file under `top`, sorted, skipping dot-names (.ipynb_checkpoints, .DS_Store are not data) and
    links that leave `inside`. A link to a directory inside is followed once: a link to its own parent
    would otherwise loop forever."""
    found: list[Path] = []
    seen = {top.resolve()}
    stack = [top]
    while stack:
        for p in stack.pop().iterdir():
            if p.name.startswith(".") or not _followable(p, inside, outside):
                continue
            if p.is_dir():
                if p.resolve() not in seen:
                    seen.add(p.resolve())
                    stack.append(p)
            elif p.is_file():
                found.append(p)
    return sorted(found)


def _links_note(root: Path, outside: list[str]) -> str:
    if not outside:
        return ""
    shown = ", ".join(sorted(outside)[:MAX_EXAMPLES]) + (", ..." if len(outside) > MAX_EXAMPLES else "")
    return f"skipped {len(outside)} symbolic links that lead outside {root} or loop (not followed): {shown}"


def _has_colour(img: Image.Image) -> bool:
    if img.mode in _GRAY_MODES or img.mode.startswith("I;"):
        return False
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)  # (colours, 3)
        return bool((rgb != rgb[:, :1]).any())
    return True


def _to_gray(img: Image.Image) -> Image.Image:
    """8-bit "L"; 16-bit and float modes are rescaled since Pillow's convert clips them to 255."""
    if img.mode.startswith("I"):
        a = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a >> 8  # 16-bit -> 8-bit
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    return img.convert("L")
