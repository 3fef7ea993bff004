"""Reader for `.npz` archives holding an image array `x` and optional labels `y`.

An .npz is a zip of .npy files. Each .npy starts with a small header giving
dtype and shape, so we read those headers straight from the zip first: an
object array (which only pickle can load, and pickle runs code) or a shape
claiming more than the archive's real size could expand to, or more than the
data budget (limits.py), is refused before anything is allocated. The zip's
own size fields are claims too and are never trusted: the bound is the size of
the archive on disk. Each array is then decompressed chunk by chunk into its
preallocated buffer, and must be exactly as long as its header says.
"""

from __future__ import annotations

import contextlib
import io
import lzma
import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from genforge.crypto import plain_source
from genforge.data.clean import Pool
from genforge.data.limits import CHUNK, GZIP_MAX_RATIO, Budget, allocate, read_exactly
from genforge.errors import DataError

# What numpy.savez (stored) and numpy.savez_compressed (deflated) write. bzip2 and LZMA can expand
# millions of times over, so no bound from the archive's size would hold for them.
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# What zipfile raises on a damaged or hostile archive: BadZipFile, its decompressors' errors (zlib.error,
# LZMAError; bz2 raises OSError), NotImplementedError for an unknown compression method, RuntimeError for an
# encrypted member, EOFError and ValueError (numpy's .npy header parser too).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError, OSError, EOFError,
              ValueError)


@contextlib.contextmanager
def npz_members(path: Path, what: str) -> Iterator[tuple[zipfile.ZipFile, dict[str, str]]]:
    """The open archive of the .npz at ``path`` (decrypted in memory when it is encrypted) and its arrays, name
    -> member. A missing file, a file that is not a zip, an archive without ``x`` (``what`` says what x holds)
    and a corrupt archive, found here or while the caller reads members, are one-line DataErrors."""
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
                raise DataError(f"{path}: no array named 'x' ({what}); arrays present: {have}")
            yield zf, members
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: corrupt .npz archive ({e})") from e


def read_npz_arrays(path: Path, names: tuple[str, ...], what: str, budget: Budget | None = None) -> dict:
    """The arrays ``names`` that the .npz at ``path`` holds (``x`` must be one), each header checked and
    charged to ``budget`` before its array is read chunk by chunk."""
    budget = Budget() if budget is None else budget
    with npz_members(path, what) as (zf, members):
        peeked = {k: _peek(zf, members[k], path, budget) for k in names if k in members}
        return {k: _read_member(zf, members[k], path, *shape_dtype) for k, shape_dtype in peeked.items()}


def read_npz(path: Path, budget: Budget | None = None) -> Pool:
    """Read `x` (uint8, integer or float images) and optional integer `y` from `path`.

    `budget` bounds the bytes of x and y together (a fresh one, of limits.max_data_bytes(), by default).
    """
    budget = Budget() if budget is None else budget
    with npz_members(path, "the images") as (zf, members):
        x_shape, x_dtype = _peek(zf, members["x"], path, budget)
        y_shape, y_dtype = _peek(zf, members["y"], path, budget) if "y" in members else (None, None)
        _check_shapes(path, x_shape, x_dtype, y_shape)
        x = _read_member(zf, members["x"], path, x_shape, x_dtype)
        y = _read_member(zf, members["y"], path, y_shape, y_dtype) if y_shape is not None else None

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


def _check_shapes(path: Path, x_shape: tuple[int, ...], x_dtype: np.dtype, y_shape: tuple[int, ...] | None) -> None:
    """Refuse x and y of the wrong rank, dtype or length from their headers, before either is read."""
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


def _peek(
    zf: zipfile.ZipFile, member: str, path: Path, budget: Budget
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's .npy header, refusing unsafe, impossible or oversized arrays.

    Nothing the size of the array is allocated here; the array's bytes are charged to `budget`.
    """
    info = zf.getinfo(member)
    if info.compress_type not in _METHODS:
        raise DataError(
            f"{path}: {member} is compressed with zip method {info.compress_type}; genforge reads members "
            "stored or deflated (numpy.savez, numpy.savez_compressed)"
        )
    # The archive's real size, not the entry's claimed sizes, bounds what the member can hold.
    archive = _archive_size(zf)
    ratio = GZIP_MAX_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1
    if info.file_size > archive * ratio:
        raise DataError(
            f"{path}: {member} claims {info.file_size} bytes but a {archive} byte archive cannot hold that much; "
            "file is corrupt or a zip bomb"
        )
    _, shape, dtype, _, header_len = _header(zf, member, path)
    if dtype.hasobject:
        raise DataError(
            f"{path}: {member} is an object array, which only pickle can load; "
            "genforge never unpickles data"
        )
    n_bytes = math.prod(shape) * dtype.itemsize
    if header_len + n_bytes != info.file_size:
        raise DataError(
            f"{path}: {member} header says shape {shape} of {dtype} ({n_bytes} bytes) but "
            f"the member holds {info.file_size - header_len} data bytes; file is corrupt"
        )
    budget.claim(n_bytes, str(path), f"{member} of shape {shape} and dtype {dtype}")
    return shape, dtype


def _header(zf: zipfile.ZipFile, member: str, path: Path) -> tuple:
    """(version, shape, dtype, fortran_order, header length) of a member's .npy header."""
    with zf.open(member) as f:
        return _parse_header(f, member, path)


def _parse_header(f, member: str, path: Path) -> tuple:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise DataError(f"{path}: {member} uses .npy format version {version}; re-save it with numpy.savez")
    return version, shape, dtype, fortran, f.tell()


def _read_member(zf: zipfile.ZipFile, member: str, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The array of a member whose `shape` and `dtype` _peek accepted: allocated once, filled chunk by chunk.

    numpy.load is not used: it would trust the header again; here the stream must hold exactly the bytes
    of the header's shape and dtype, and reading to its end makes zipfile check the member's CRC-32.
    """
    with zf.open(member) as f:
        _, now_shape, now_dtype, fortran, _ = _parse_header(f, member, path)
        if (now_shape, now_dtype) != (shape, dtype):  # only if the file changed since _peek read it
            raise DataError(f"{path}: {member} changed while it was being read")
        out = allocate(math.prod(shape), dtype, str(path))
        read_exactly(f, out, f"{path}: {member}", f"shape {shape} of {dtype}")
    # A Fortran-ordered array is stored column-major: its transpose in C order (numpy.lib.format does the same).
    return out.reshape(shape[::-1]).transpose() if fortran else out.reshape(shape)


def _archive_size(zf: zipfile.ZipFile) -> int:
    fp = zf.fp
    here = fp.tell()
    end = fp.seek(0, io.SEEK_END)
    fp.seek(here)
    return end


def _to_uint8(x: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, H, W, C) from integer or float pixels, plus bool (N,) non-finite rows for floats.

    Floats in [0, 1] are scaled by 255, floats already in [0, 255] are kept;
    anything else is ambiguous, so it is refused rather than guessed at.
    Rows are converted a chunk at a time, so the only large allocation is
    the uint8 result (a quarter of a float32 x).
    """
    if x.dtype == np.uint8:
        return x, None
    n = len(x)
    flat = x.reshape(n, -1)  # (N, H*W*C), a view
    rows = max(1, CHUNK // max(1, flat.shape[1] * x.dtype.itemsize))
    is_float = x.dtype.kind == "f"
    non_finite = np.zeros(n, dtype=bool) if is_float else None
    lo = hi = None
    for start in range(0, n, rows):  # pass 1: NaN/inf rows and the range of the usable ones
        part = flat[start:start + rows]
        if is_float:
            bad = ~np.isfinite(part).all(axis=1)
            non_finite[start:start + rows] = bad
            part = part[~bad]  # the range is judged on usable rows only; NaN rows get dropped anyway
        if part.size:
            lo = part.min() if lo is None else min(lo, part.min())
            hi = part.max() if hi is None else max(hi, part.max())
    lo, hi = (0, 0) if lo is None else (lo, hi)
    if is_float and lo >= 0 and hi <= 1:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    else:
        expected = "[0, 1] or [0, 255]" if is_float else "[0, 255]"
        raise DataError(f"{path}: x values range from {lo} to {hi}; expected {expected}")
    out = np.zeros(x.shape, dtype=np.uint8)  # non-finite rows stay 0; cleaning drops them
    out_flat = out.reshape(n, -1)  # a view of out
    for start in range(0, n, rows):  # pass 2: convert
        part, dst = flat[start:start + rows], out_flat[start:start + rows]
        if is_float:
            good = ~non_finite[start:start + rows]
            dst[good] = np.rint(part[good] * scale)
        else:
            dst[:] = part
    return out, non_finite
