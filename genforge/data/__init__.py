"""Data preprocessing: read a source, clean it, split it, turn it into tensors.

    splits = load_splits("mnist5k", image_size=28)
    x = to_tensor(splits.train.x, "-1,1")              # (N, 1, 28, 28) float32
    x = augment(x, generator, flip=True, shift=2)      # same seed, same batch

The pipeline in `load_splits` is: parse the spec -> read (sources.py, with
hostile-input checks in idx.py / npz.py / folder.py) -> clean each shipped
split with a report (clean.py) -> resize -> stratified split (split.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genforge.data.clean import CleanReport, clean_pool
from genforge.data.limits import ENV_MAX_DATA_BYTES, max_data_bytes
from genforge.data.sources import Spec, parse_spec, read_source, resize_images
from genforge.data.split import split_indices
from genforge.data.transforms import augment, to_tensor
from genforge.errors import DataError

__all__ = [
    "CleanReport",
    "DataSplits",
    "ImageSet",
    "Spec",
    "augment",
    "check_report",
    "load_splits",
    "parse_spec",
    "to_tensor",
]

MAX_IMAGE_SIZE = 4096


# eq=False: comparing arrays field by field is ambiguous; identity is what == means here.
@dataclass(eq=False)
class ImageSet:
    """Images of one split and their labels."""

    x: np.ndarray  # uint8 (N, H, W, C), C in {1, 3}
    y: np.ndarray | None  # int64 (N,) class indices, or None when unlabeled

    def __len__(self) -> int:
        return len(self.x)


@dataclass(eq=False)
class DataSplits:
    """A cleaned source split three ways, with the report of what cleaning did."""

    name: str  # the spec string as given, e.g. "mnist5k"
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str] | None  # None when unlabeled
    image_shape: tuple[int, int, int]  # (C, H, W)
    report: CleanReport

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names is not None else 0


def load_splits(
    spec: str,
    *,
    image_size: int = 28,
    channels: int = 0,
    on_bad: str = "drop",
    dedup: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Load the source `spec`, clean it and split it into train/val/test.

    image_size: every image becomes image_size x image_size (Lanczos).
    channels: 1 or 3 to require that count; 0 to keep the source's own
      (folders: the majority of the images).
    on_bad: "drop" skips unusable images and lists them in the report;
      "reject" raises DataError at the first one.
    dedup: drop exact duplicate images within each shipped split.
    val_fraction, test_fraction: shares of the whole for val and test. When
      the source ships a test split (fashion-mnist, idx with t10k files) that
      split is the test set, test_fraction is unused and val_fraction is a
      share of the shipped train split.
    seed: same seed, same splits.
    """
    _check_options(image_size, channels, on_bad, dedup, val_fraction, test_fraction, seed)
    try:
        return _load(spec, image_size, channels, on_bad, dedup, val_fraction, test_fraction, seed)
    except MemoryError:
        # The readers charge every array to a budget before allocating it (limits.py), but cleaning,
        # resizing and splitting make copies, and the machine may have less free memory than the budget.
        raise DataError(
            f"{spec}: ran out of memory while loading it; free memory, use a smaller source, or lower "
            f"{ENV_MAX_DATA_BYTES} (now {max_data_bytes()} bytes) so sources this large are refused up front"
        ) from None


def _load(spec, image_size, channels, on_bad, dedup, val_fraction, test_fraction, seed) -> DataSplits:
    source = read_source(parse_spec(spec), image_size=image_size, channels=channels)
    report = CleanReport(source=spec, class_names=source.class_names, notes=list(source.notes))

    # Clean before resizing, so dropped images are never resized.
    keep = clean_pool(source.train, report, on_bad=on_bad, dedup=dedup)
    keep_test = clean_pool(source.test, report, on_bad=on_bad, dedup=dedup) if source.test is not None else None
    if len(keep) == 0:
        raise DataError(f"{spec}: no usable images remain after cleaning\n{report.format()}")
    pool = _take(source.train.x, source.train.y, keep, image_size)
    if source.test is not None:
        test = _take(source.test.x, source.test.y, keep_test, image_size)
        val, train = _split(pool, (val_fraction,), seed)
        report.notes.append(
            f"test is the split shipped with the source ({source.test.origin}); "
            f"val is {val_fraction:g} of train"
        )
    else:
        test, val, train = _split(pool, (test_fraction, val_fraction), seed)
    if len(train) == 0:
        raise DataError(
            f"{spec}: the train split is empty (only {len(pool)} usable images); "
            "lower val_fraction/test_fraction"
        )

    native = source.train.x.shape[1:3]
    if tuple(native) != (image_size, image_size):
        report.notes.append(f"resized from {native[0]}x{native[1]} to {image_size}x{image_size} (Lanczos)")
    splits = {"train": train, "val": val, "test": test}
    report.split_sizes = {k: len(s) for k, s in splits.items()}
    if source.class_names is not None:
        k = len(source.class_names)
        report.class_counts = {name: np.bincount(s.y, minlength=k).tolist() for name, s in splits.items()}
    c = train.x.shape[3]
    return DataSplits(spec, train, val, test, source.class_names, (c, image_size, image_size), report)


def check_report(spec: str, **kwargs) -> str:
    """Load `spec` with load_splits(**kwargs) and return the printable cleaning report.

    Raises DataError, like load_splits, when the source is unusable.
    """
    return load_splits(spec, **kwargs).report.format()


def _take(x: np.ndarray, y: np.ndarray | None, keep: np.ndarray, image_size: int) -> ImageSet:
    # Indexing with every row would copy 47 MB for nothing on the common path.
    if len(keep) != len(x):
        x, y = x[keep], (y[keep] if y is not None else None)
    return ImageSet(resize_images(x, image_size), y)


def _split(pool: ImageSet, fractions: tuple[float, ...], seed: int) -> list[ImageSet]:
    parts = split_indices(pool.y, len(pool.x), fractions, seed)
    return [ImageSet(pool.x[idx], pool.y[idx] if pool.y is not None else None) for idx in parts]


def _check_options(image_size, channels, on_bad, dedup, val_fraction, test_fraction, seed) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 4 <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"image_size must be a whole number from 4 to {MAX_IMAGE_SIZE}, got {image_size!r}")
    if channels not in (0, 1, 3) or isinstance(channels, bool):
        raise DataError(f"channels must be 0 (auto), 1 or 3, got {channels!r}")
    if on_bad not in ("drop", "reject"):
        raise DataError(f"on_bad must be 'drop' or 'reject', got {on_bad!r}")
    if not isinstance(dedup, bool):
        raise DataError(f"dedup must be true or false, got {dedup!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            "val_fraction + test_fraction must be below 1 to leave a train split, "
            f"got {val_fraction} + {test_fraction}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}")
