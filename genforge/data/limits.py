"""How much memory one data source may take, and reading compressed payloads within it.

A header (IDX sizes, an .npy shape, a zip entry's sizes) is a claim made by the file, and a compressed file
can claim far more than it holds. So every reader here (1) checks a header's claim against what the bytes
on disk could possibly expand to, (2) charges it to a :class:`Budget` shared by every array of one source
(train and test images and labels, an npz's x and y), and only then (3) allocates the array and streams
the payload into it in :data:`CHUNK`-sized pieces, checking that exactly the claimed bytes arrive. Nothing
is decompressed into an intermediate buffer the size of the payload, so loading peaks near the array's
own size (measured in tests/test_data_limits.py).
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from genforge.errors import DataError

# Default budget: the decoded arrays of one source may hold at most this many bytes. Fashion-MNIST as
# float32 in an npz is 220 MB (uint8 IDX: 55 MB); cleaning, resizing and splitting then make copies of
# the uint8 images, so the whole load peaks at a small multiple of this.
MAX_DATA_BYTES = 2**30
ENV_MAX_DATA_BYTES = "GENFORGE_MAX_DATA_BYTES"
# Deflate cannot compress better than about 1032:1, so a gzip or deflated zip member that would have to
# beat 1100:1 to hold what its header claims is lying or truncated.
GZIP_MAX_RATIO = 1100
CHUNK = 1 << 20  # bytes decompressed per read: bounds the decompressor's own buffers


def max_data_bytes() -> int:
    """The budget in bytes: $GENFORGE_MAX_DATA_BYTES when set (a whole number of bytes), else MAX_DATA_BYTES."""
    raw = os.environ.get(ENV_MAX_DATA_BYTES)
    if raw is None or not raw.strip():
        return MAX_DATA_BYTES
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(
            f"{ENV_MAX_DATA_BYTES}={raw!r} must be a positive whole number of bytes (default {MAX_DATA_BYTES})"
        )
    return value


class Budget:
    """The bytes the arrays of one source have claimed so far, against :func:`max_data_bytes`."""

    def __init__(self, limit: int | None = None):
        self.limit = max_data_bytes() if limit is None else limit
        self.used = 0

    def claim(self, n_bytes: int, where: str, what: str) -> None:
        """Charge `n_bytes` for `what` in `where`, or raise DataError, before anything is allocated for it."""
        if self.used + n_bytes > self.limit:
            earlier = f" on top of the {self.used} bytes already read from this source" if self.used else ""
            raise DataError(
                f"{where}: {what}: {n_bytes} bytes{earlier} would exceed the {self.limit} byte data budget; "
                f"set {ENV_MAX_DATA_BYTES} to a larger number of bytes if the machine has the memory"
            )
        self.used += n_bytes


def allocate(shape: tuple[int, ...] | int, dtype, where: str) -> np.ndarray:
    """np.empty that fails with a DataError naming the file instead of a MemoryError traceback."""
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise DataError(
            f"{where}: not enough memory for {n_bytes} bytes of data; free memory or lower "
            f"{ENV_MAX_DATA_BYTES} so such files are refused up front"
        ) from None


def read_exactly(f: BinaryIO, out: np.ndarray, where: str, claim: str) -> None:
    """Fill the contiguous array `out` from `f` chunk by chunk, then insist that `f` is at its end.

    `claim` describes what the header promised, for the messages: a stream shorter or longer than the
    array is a corrupt or hostile file, never a silently truncated or padded one.
    """
    view = memoryview(out.reshape(-1).view(np.uint8))
    got, n_bytes = 0, len(view)
    while got < n_bytes:
        step = f.readinto(view[got:got + CHUNK])
        if not step:
            raise DataError(f"{where}: data ends after {got} of the {n_bytes} bytes its header promises ({claim})")
        got += step
    if f.read(1):
        raise DataError(f"{where}: holds more data than its header's {claim}; file is corrupt")
