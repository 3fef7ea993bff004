"""Deterministic, stratified train/val/test splits.

Stratified means each class is spread over the splits in proportion, so a
validation set of 500 digits holds ~50 of each rather than whatever chance
gives. Per-class shares are rounded with the largest-remainder method so the
split sizes also match the requested fractions of the whole: rounding each
class on its own would leave val empty for 100 classes of 4 images each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_indices(y: np.ndarray | None, n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Partition range(n) into len(fractions) + 1 disjoint sorted index arrays.

    Part k (k < len(fractions)) holds about fractions[k] of the items, stratified
    by `y` when given; the last part (train) holds the rest. Same seed, same parts.
    """
    rng = np.random.default_rng(seed)
    if y is None:
        groups = [rng.permutation(n)]
    else:
        # One shuffled index list per class present, in class order.
        groups = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    sizes = np.array([len(g) for g in groups])
    # Allocate cumulative shares (test, test+val, ...) so that a class rounded
    # up for one split is not also rounded up for the next.
    bounds = [np.zeros(len(groups), dtype=np.int64)]
    for cumulative in np.cumsum(fractions):
        bounds.append(_allocate(sizes, float(cumulative), bounds[-1], rng))

    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for g, idx in enumerate(groups):
        for k in range(len(fractions)):
            parts[k].append(idx[bounds[k][g] : bounds[k + 1][g]])
        parts[-1].append(idx[bounds[-1][g] :])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _allocate(sizes: np.ndarray, fraction: float, floor_take: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """How many of each group fall within the first `fraction` of it: the floor of
    each group's quota (at least `floor_take`), then one more to the groups with
    the largest remainders (random tie-break) until the total reaches
    round(sum(sizes) * fraction), never exceeding a group's size."""
    quota = sizes * fraction
    base = np.floor(quota).astype(np.int64)
    take = np.maximum(base, floor_take)
    short = int(np.floor(sizes.sum() * fraction + 0.5)) - int(take.sum())
    # lexsort sorts by the last key first: largest remainder, then random.
    order = np.lexsort((rng.random(len(sizes)), -(quota - base)))
    for g in order:
        if short <= 0:
            break
        if take[g] == base[g] and take[g] < sizes[g]:  # not already rounded up
            take[g] += 1
            short -= 1
    return take
