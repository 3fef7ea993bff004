"""Writing samples: a grid PNG or an npz of uint8 arrays, always atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from genforge.errors import GenforgeError
from genforge.io import atomic_write, atomic_write_bytes


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


def save_grid(x: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    grid = make_grid(x, nrow)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_samples(samples, path: str | Path) -> Path:
    """Write by suffix: ``.png`` a grid, ``.npz`` arrays ``x`` (uint8) and ``y`` (conditional models)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return save_grid(samples.x, path)
    if suffix == ".npz":
        return save_npz(path, samples.x, samples.y)
    raise GenforgeError(f"--out {path}: unknown output format {suffix or '(none)'}; use .png or .npz")
