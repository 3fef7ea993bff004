"""Reader for IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic (0x00 0x00 dtype-code ndims), `ndims` big-endian
uint32 sizes, then the raw values. The header alone decides how much memory we
would allocate, so every claim it makes is checked against the file's real size
and the data budget (limits.py) before a single image buffer exists: a 100-byte
file saying "4 billion images" must fail instantly, not exhaust RAM. The payload
is then decompressed chunk by chunk straight into that buffer.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from genforge.data.clean import Pool
from genforge.data.limits import GZIP_MAX_RATIO, Budget, allocate, read_exactly
from genforge.errors import DataError


_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, kind: str, budget: Budget | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzipped) of `kind` "images" or "labels".

    Returns uint8 (N, H, W, C) images or uint8 (N,) labels. `budget` is shared by the files of one source
    (a fresh one, of limits.max_data_bytes(), by default).
    """
    budget = Budget() if budget is None else budget
    gzipped = False
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        file_size = path.stat().st_size
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            dims = _read_header(f, path, kind)
            n_bytes = math.prod(dims)
            _check_claim(path, kind, dims, n_bytes, file_size, gzipped)
            budget.claim(n_bytes, str(path), f"its header's {_describe(kind, dims, with_bytes=False)}")
            data = allocate(n_bytes, np.uint8, str(path))
            read_exactly(f, data, str(path), _describe(kind, dims))
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError.
        what = "corrupt or truncated gzip" if gzipped else "cannot read file"
        raise DataError(f"{path}: {what} ({e})") from e
    if kind == "labels":
        return data
    images = data.reshape(dims)
    return images[..., None] if images.ndim == 3 else images  # (N, H, W, C)


def _read_header(f: BinaryIO, path: Path, kind: str) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (magic bytes {magic.hex() or 'missing'}, expected 0000 08 0n)")
    type_code, ndims = magic[2], magic[3]
    if type_code != 0x08:
        name = _TYPE_NAMES.get(type_code, f"unknown type 0x{type_code:02x}")
        raise DataError(f"{path}: IDX values are {name}; only unsigned byte (0x08) images/labels are supported")
    want = (3, 4) if kind == "images" else (1,)
    if ndims not in want:
        raise DataError(f"{path}: IDX {kind} file has {ndims} dimensions, expected {' or '.join(map(str, want))}")
    raw = f.read(4 * ndims)
    if len(raw) < 4 * ndims:
        raise DataError(f"{path}: IDX header is cut short ({len(raw)} of {4 * ndims} size bytes)")
    dims = struct.unpack(f">{ndims}I", raw)
    if kind == "images" and (min(dims[1:3]) == 0 or (ndims == 4 and dims[3] not in (1, 3))):
        raise DataError(f"{path}: IDX images have shape {dims}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    return dims


def _check_claim(path: Path, kind: str, dims: tuple[int, ...], n_bytes: int, file_size: int, gzipped: bool) -> None:
    """Refuse a header whose size claim is impossible, before allocating for it."""
    claim = _describe(kind, dims)
    if gzipped:
        if n_bytes > file_size * GZIP_MAX_RATIO:
            raise DataError(
                f"{path}: header says {claim} but a {file_size} byte gzip cannot expand to that much; "
                "file is corrupt or hostile"
            )
    else:
        expected = 4 + 4 * len(dims) + n_bytes
        if file_size != expected:
            raise DataError(
                f"{path}: header says {claim} ({expected} bytes "
                f"with header) but the file holds {file_size} bytes"
            )


def _describe(kind: str, dims: tuple[int, ...], with_bytes: bool = True) -> str:
    what = f"{dims[0]} labels" if kind == "labels" else f"{dims[0]} images of {'x'.join(map(str, dims[1:]))}"
    return f"{what} ({math.prod(dims)} bytes)" if with_bytes else what


def find_idx_file(root: Path, prefix: str, kind: str) -> Path | None:
    """The file for `prefix` ("train"/"t10k") and `kind`, in any naming MNIST mirrors use."""
    n = 3 if kind == "images" else 1
    # The raw file wins over its .gz twin: same content, no decompression.
    for stem in (f"{prefix}-{kind}-idx{n}-ubyte", f"{prefix}-{kind}.idx{n}-ubyte"):
        for suffix in ("", ".gz"):
            p = root / (stem + suffix)
            if p.is_file():
                return p
    return None


def read_idx_dir(root: Path) -> tuple[Pool, Pool | None]:
    """Read train (and, if present, t10k = test) images and optional labels from `root`."""
    if not root.is_dir():
        raise DataError(f"IDX directory {root} does not exist")
    pools: list[Pool | None] = []
    budget = Budget()  # one for all four files: train and t10k, images and labels
    for prefix in ("train", "t10k"):
        img_path = find_idx_file(root, prefix, "images")
        lab_path = find_idx_file(root, prefix, "labels")
        if img_path is None:
            if prefix == "train":
                present = sorted(p.name for p in root.iterdir())[:10]
                raise DataError(
                    f"{root}: no train-images-idx3-ubyte[.gz] (or train-images.idx3-ubyte) found; "
                    f"the directory holds: {', '.join(present) or 'nothing'}"
                )
            if lab_path is not None:
                raise DataError(f"{root}: found {lab_path.name} but no matching t10k images file")
            pools.append(None)
            continue
        x = read_idx(img_path, "images", budget)
        y = None
        if lab_path is not None:
            labels = read_idx(lab_path, "labels", budget)
            if len(labels) != len(x):
                raise DataError(
                    f"{lab_path} has {len(labels)} labels but {img_path} has {len(x)} images; "
                    "they must match one to one"
                )
            y = labels.astype(np.int64)
        pools.append(Pool(x=x, y=y, origin=str(img_path)))
    train, test = pools
    assert train is not None
    if test is not None and (train.y is None) != (test.y is None):
        raise DataError(f"{root}: labels exist for only one of train and t10k; supply both labels files or neither")
    return train, test
