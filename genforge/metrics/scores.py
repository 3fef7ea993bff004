"""The metrics, as plain numpy functions of feature arrays (n, d) and class probabilities (n, k).

Every function here is independent of how the features were made; ``evaluate.py`` feeds them the
evaluator's penultimate-layer features. Float64 throughout: FID subtracts nearly equal traces.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from genforge.errors import GenforgeError

PR_K = 3   # improved precision and recall, k-th nearest neighbour (Kynkaanniemi et al. 2019, sec. 3)
DC_K = 5   # density and coverage (Naeem et al. 2020 recommend k=5)


def one_blas_thread():
    """Context for the metric math: these matrices are small (at most ~10,000 x 128), and OpenBLAS threads
    spinning beside torch's own worker threads made a 128 x 128 eigh 200x slower (0.2 s instead of 1 ms)."""
    return threadpool_limits(1, user_api="blas")


def need(n: int, at_least: int, what: str) -> None:
    """Refuse to compute a metric from fewer samples than it is defined for."""
    if n < at_least:
        raise GenforgeError(f"{what} needs at least {at_least} samples per set, got {n}")


# ------------------------------------------------------------------------------------------------ FID


def mean_cov(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    need(len(f), 2, "FID")
    f = np.asarray(f, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, eq. 6), by eigenvalues.

    S1 S2 = A (A S2) with A = S1^(1/2) symmetric has the eigenvalues of A S2 A, which is symmetric positive
    semi-definite; so Tr (S1 S2)^(1/2) is the sum of the square roots of eigvalsh(A S2 A). No complex
    matrix square root, no imaginary parts to discard, and singular covariances are fine.
    """
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = a @ s2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt, 0.0))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*mean_cov(real), *mean_cov(fake))


# ------------------------------------------------------------------------------------------------ KID


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018).

    Averaged over ``subsets`` random subsets of ``subset_size`` from each set; returns (mean, std).
    Unbiased, so two samples of one distribution score around 0, sometimes below.
    """
    m = min(subset_size, len(real), len(fake))
    need(m, 2, "KID")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2 * kxy.mean())
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------- nearest-neighbour manifolds


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, never negative."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def knn_radii(f: np.ndarray, k: int, chunk: int = 2000) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point of the same set, (n,)."""
    need(len(f), k + 1, f"a k={k} nearest-neighbour radius")
    out = np.empty(len(f))
    for i in range(0, len(f), chunk):
        d = _sq_dists(f[i:i + chunk], f)
        out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return out


def _ball_counts(centres: np.ndarray, radii: np.ndarray, points: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """For each point, how many balls B(centre, radius) hold it, (len(points),).

    The centres are the rows, in ``knn_radii``'s chunks, so a centre's distance to a point of its own set
    comes out bit for bit as when its radius was measured: the transposed product rounds differently (the
    BLAS of one machine did), and a neighbour lying exactly on the radius then fell outside its ball."""
    counts = np.zeros(len(points), dtype=np.int64)
    for i in range(0, len(centres), chunk):
        counts += (_sq_dists(centres[i:i + chunk], points) <= radii[i:i + chunk, None]).sum(0)
    return counts


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K,
                     real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2).

    Precision: the share of fakes inside the real manifold (the union of balls around each real point out
    to its k-th nearest real neighbour). Recall: the share of reals inside the fake manifold. One image
    repeated has a fake manifold of radius 0, so its recall is ~0: mode collapse shows here.
    ``real_radii``: ``knn_radii(real, k)`` when already known (the real set is often scored many times).
    """
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    precision = float((_ball_counts(real, real_radii, fake) > 0).mean())
    recall = float((_ball_counts(fake, knn_radii(fake, k), real) > 0).mean())
    return precision, recall


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = DC_K,
                     real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eq. 3-4), on k-NN balls around the real points only.

    Density: how many real balls hold each fake, over k (about 1 when the distributions match; unbounded,
    so it rewards fakes crowding dense real regions). Coverage: the share of real balls holding a fake.
    """
    radii = knn_radii(real, k) if real_radii is None else real_radii
    density = float(_ball_counts(real, radii, fake).sum() / (k * len(fake)))
    nearest = np.empty(len(real))
    for i in range(0, len(real), 2000):
        nearest[i:i + 2000] = _sq_dists(real[i:i + 2000], fake).min(1)
    coverage = float((nearest <= radii).mean())
    return density, coverage


# ------------------------------------------------------------------------------------ classifier scores


def inception_score(probs: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) (Salimans et al. 2016) with the evaluator as the classifier; (mean, std).

    Over ``splits`` parts of at least 100 samples, drawn at random: a set sorted by class (a data set, a
    conditional model cycling its classes) would otherwise give each part a narrow p(y) and a low score.
    """
    splits = max(1, min(splits, len(probs) // 100))
    probs = probs[np.random.default_rng(seed).permutation(len(probs))]
    scores = []
    for part in np.array_split(probs, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(py, 1e-12, None)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_entropy(probs: np.ndarray) -> float:
    """Entropy (nats) of the histogram of predicted classes: log(k) when every class is drawn equally."""
    hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)
    hist = hist[hist > 0]
    return float(max(0.0, -(hist * np.log(hist)).sum()))  # max: one class gives 0.0, not -0.0


def class_match(probs: np.ndarray, y: np.ndarray) -> float:
    """The share of samples that the evaluator classifies as the class they were asked for."""
    return float((probs.argmax(1) == y).mean())
