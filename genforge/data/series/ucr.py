"""`ucr:NAME`: the UCR/UEA archive sets that the sktime wheel carries, read with genforge's own .ts parser.

sktime installs sktime/datasets/data/NAME/NAME_TRAIN.ts and NAME_TEST.ts for a handful of sets (GunPoint,
ArrowHead, ACSF1, PLAID, BasicMotions, JapaneseVowels, ItalyPowerDemand, OSULeaf, ...). sktime is only the
carrier: it is located with importlib.util.find_spec, which does not import it (sktime's import pulls in
pandas and scikit-learn and takes seconds), and never used to parse.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genforge.data.series.base import SeriesSet, apply_length_policy, target_length
from genforge.data.series.ts import TsData, read_ts
from genforge.errors import DataError

EXTRA = "pip install 'genforge[series]'"


@dataclass(eq=False)
class UCRData:
    """A UCR/UEA set's shipped train and test splits, brought to one length by the chosen policy."""

    name: str
    train: SeriesSet
    test: SeriesSet
    class_names: list[str]
    files: tuple[Path, Path]  # (TRAIN, TEST)
    notes: list[str]


def archive_dir() -> Path:
    """sktime's datasets/data directory; a DataError naming the extra when sktime is not installed."""
    found = importlib.util.find_spec("sktime")
    if found is None or not found.submodule_search_locations:
        raise DataError(f"ucr: data sets need the sktime package, which carries the archive files: {EXTRA}")
    root = Path(next(iter(found.submodule_search_locations))) / "datasets" / "data"
    if not root.is_dir():
        raise DataError(f"ucr: {root} is missing from the installed sktime; reinstall it: {EXTRA}")
    return root


def available() -> list[str]:
    """Names of the sets that ship both NAME_TRAIN.ts and NAME_TEST.ts (some are regression sets)."""
    root = archive_dir()
    return sorted(d.name for d in root.iterdir()
                  if (d / f"{d.name}_TRAIN.ts").is_file() and (d / f"{d.name}_TEST.ts").is_file())


def files(name: str) -> tuple[Path, Path]:
    """The TRAIN and TEST .ts files of set `name` (exact, case-sensitive as in the archive)."""
    names = available()
    if name not in names:
        near = [n for n in names if n.lower() == name.lower()]
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise DataError(f"ucr:{name} is not among the archive sets installed with sktime{hint}; "
                        f"available: {', '.join(names)}")
    root = archive_dir() / name
    return root / f"{name}_TRAIN.ts", root / f"{name}_TEST.ts"


def load_ucr(name: str, *, length_policy: str = "equal", length: int | None = None,
             missing: str = "refuse") -> UCRData:
    """Read set `name`'s shipped splits as float32 (N, C, T) arrays with int64 labels.

    length_policy: "equal" (ragged lengths are an error), "pad" (zeros and a mask), "resample" (linear) or
    "crop" (the first samples); `length` is the target, by default the longest case of both splits (the
    shortest for crop), so train and test share one shape. missing: "refuse" or "fill" for '?' values.
    """
    train_file, test_file = files(name)
    train, test = read_ts(train_file, missing=missing), read_ts(test_file, missing=missing)
    for data in (train, test):
        if data.class_names is None:
            raise DataError(f"{data.path}: the cases carry no class labels (@classLabel false); "
                            "ucr: sources are classification sets")
        if data.series[0].shape[0] != train.series[0].shape[0]:
            raise DataError(f"{data.path}: {data.series[0].shape[0]} dimensions but {train_file} has "
                            f"{train.series[0].shape[0]}")
    if test.class_names != train.class_names:
        raise DataError(f"{test_file}: @classLabel ({' '.join(test.class_names)}) differs from "
                        f"{train_file} ({' '.join(train.class_names)})")
    lengths = np.concatenate([train.lengths, test.lengths])
    target = target_length(length_policy, lengths, length)
    notes = []
    if lengths.min() != lengths.max():
        notes.append(f"lengths {lengths.min()} to {lengths.max()}; {length_policy} to {target}")
    for data in (train, test):
        if data.filled:
            notes.append(f"{data.path.name}: {data.filled} missing values filled by linear interpolation")
    return UCRData(name, _to_set(train, length_policy, target), _to_set(test, length_policy, target),
                   list(train.class_names), (train_file, test_file), notes)


def _to_set(data: TsData, policy: str, target: int) -> SeriesSet:
    out = apply_length_policy(data.series, policy, target, [data.where(i) for i in range(len(data.series))])
    out.y = data.y
    return out
