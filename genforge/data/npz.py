"""Reader for `.npz` archives holding an image array `x` and optional labels `y`.

An .npz is a zip of .npy files. Each .npy starts with a small header giving
dtype and shape, so we read those headers straight from the zip first: an
object array (which only pickle can load, and pickle runs code) or a shape
claiming terabytes is refused before numpy allocates or unpickles anything.
"""

from __future__ import annotations

import lzma
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from genforge.crypto import plain_source
from genforge.data.clean import Pool
from genforge.data.idx import GZIP_MAX_RATIO
from genforge.errors import DataError

# Largest array we agree to load from an archive (float32 Fashion-MNIST is 220 MB).
MAX_NPZ_BYTES = 4 * 2**30
# What zipfile raises on a damaged or hostile archive: BadZipFile, its decompressors' errors (zlib.error,
# LZMAError; bz2 raises OSError), NotImplementedError for an unknown compression method, RuntimeError for an
# encrypted member, EOFError and ValueError (numpy's .npy header parser too).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError, OSError, EOFError,
              ValueError)


def read_npz(path: Path) -> Pool:
    """Read `x` (uint8, integer or float images) and optional integer `y` from `path`."""
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")

    source = plain_source(path)  # the file, or its decrypted bytes in memory (genforge security encrypt)
    if not zipfile.is_zipfile(source):
        raise DataError(f"{path}: not an .npz archive (not a zip file); save arrays with numpy.savez")
    try:
        with zipfile.ZipFile(source) as zf:
            members = {name[: -len(".npy")]: name for name in zf.namelist() if name.endswith(".npy")}
            if "x" not in members:
                have = ", ".join(sorted(members)) or "none"
                raise DataError(f"{path}: no array named 'x' (the images); arrays present: {have}")
            x_shape, x_dtype = _peek(zf, members["x"], path)
            y_shape = _peek(zf, members["y"], path)[0] if "y" in members else None
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: corrupt .npz archive ({e})") from e

    if x_dtype.kind not in "uif" or len(x_shape) not in (3, 4) or (len(x_shape) == 4 and x_shape[3] not in (1, 3)):
        raise DataError(
            f"{path}: x has shape {x_shape} and dtype {x_dtype}; expected (N, H, W) or (N, H, W, C) "
            "with C 1 or 3, of uint8, integer or float values"
        )
    if 0 in x_shape[:3]:
        raise DataError(f"{path}: x has shape {x_shape}: no images, or images without pixels")
    if y_shape is not None and (len(y_shape) != 1 or y_shape[0] != x_shape[0]):
        raise DataError(
            f"{path}: y has shape {y_shape} but x holds {x_shape[0]} images; "
            f"expected y of shape ({x_shape[0]},)"
        )

    try:
        # allow_pickle=False is the guarantee; the header checks above just
        # make the refusal early and the message precise.
        if not isinstance(source, Path):
            source.seek(0)  # np.load reads from where zipfile left it
        with np.load(source, allow_pickle=False) as data:
            x = data["x"]
            y = data["y"] if y_shape is not None else None
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: corrupt .npz archive ({e})") from e

    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) -> (N, H, W, 1)
    x, non_finite = _to_uint8(x, path)
    if y is not None:
        if y.dtype.kind not in "ui":
            raise DataError(f"{path}: y has dtype {y.dtype}; class labels must be integers")
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: y holds negative label {int(y.min())}; labels must be 0, 1, 2, ...")
        y = y.astype(np.int64)
    return Pool(x=x, y=y, origin=str(path), non_finite=non_finite)


def _peek(zf: zipfile.ZipFile, member: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's .npy header, refusing unsafe or oversized arrays."""
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > info.compress_size * GZIP_MAX_RATIO:
        raise DataError(
            f"{path}: {member} claims {info.file_size} bytes from {info.compress_size} compressed; "
            "refusing a zip bomb"
        )
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: {member} uses .npy format version {version}; re-save it with numpy.savez")
        header_len = f.tell()
    if dtype.hasobject:
        raise DataError(
            f"{path}: {member} is an object array, which only pickle can load; "
            "genforge never unpickles data"
        )
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes > MAX_NPZ_BYTES:
        raise DataError(f"{path}: {member} has shape {shape} ({n_bytes} bytes), over the {MAX_NPZ_BYTES} byte limit")
    if header_len + n_bytes != info.file_size:
        raise DataError(
            f"{path}: {member} header says shape {shape} of {dtype} ({n_bytes} bytes) but "
            f"the member holds {info.file_size - header_len} data bytes; file is corrupt"
        )
    return shape, dtype


def _to_uint8(x: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, H, W, C) from integer or float pixels, plus bool (N,) non-finite rows for floats.

    Floats in [0, 1] are scaled by 255, floats already in [0, 255] are kept;
    anything else is ambiguous, so it is refused rather than guessed at.
    """
    if x.dtype == np.uint8:
        return x, None
    n = len(x)
    flat = x.reshape(n, -1)  # (N, H*W*C)
    non_finite = None
    if x.dtype.kind == "f":
        non_finite = ~np.isfinite(flat).all(axis=1)
        flat = flat[~non_finite]  # the range is judged on usable rows only; NaN rows get dropped anyway
    lo, hi = (flat.min(), flat.max()) if flat.size else (0, 0)
    if x.dtype.kind == "f" and lo >= 0 and hi <= 1:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    else:
        expected = "[0, 1] or [0, 255]" if x.dtype.kind == "f" else "[0, 255]"
        raise DataError(f"{path}: x values range from {lo} to {hi}; expected {expected}")
    if x.dtype.kind != "f":
        return x.astype(np.uint8), None
    out = np.zeros(x.shape, dtype=np.uint8)  # non-finite rows stay 0; cleaning drops them
    out[~non_finite] = np.rint(flat * scale).reshape(-1, *x.shape[1:])
    return out, non_finite
