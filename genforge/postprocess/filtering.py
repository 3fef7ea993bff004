"""Quality filtering and de-duplication of generated samples.

- ``drs_keep``: discriminator rejection sampling (Azadi et al. 2019) for GANs: the trained discriminator
  estimates how much more likely an image is under the data than under the generator, and each sample is
  accepted with a probability that grows with it.
- ``confidence_scores``: the evaluator's confidence that a sample is a clear member of a class (of the
  requested class for conditional models); works for every family.
- ``near_duplicates``: drops samples within a pixel distance of an earlier sample of the same batch.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.data import to_tensor
from genforge.errors import GenforgeError

FILTERS = ("drs", "confidence")


def _images_for(model, x: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w[, c]) -> float (n, c, h, w) in the model's training range."""
    x = x[..., None] if x.ndim == 3 else x
    return to_tensor(np.ascontiguousarray(x), model.meta.get("value_range", model.method.VALUE_RANGE))


@torch.inference_mode()
def discriminator_logits(model, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 500) -> np.ndarray:
    """The released discriminator's logit for each image (n,): log D*/(1 - D*) estimates log p_data / p_g."""
    if model.family != "gan" or "discriminator" not in model.nets:
        raise GenforgeError(f"discriminator rejection sampling needs a GAN; model {model.name} is a {model.family} "
                            "(use --filter confidence)")
    D = model.nets["discriminator"]
    device = model.device
    out = []
    for i in range(0, len(x), batch_size):
        xb = _images_for(model, x[i:i + batch_size]).to(device)
        yb = torch.from_numpy(y[i:i + batch_size]).to(device) if y is not None else None
        if getattr(D, "conditioning", None) == "aux":
            yb = None
        logits = D(xb, yb)
        out.append(logits.double().cpu())
    return torch.cat(out).numpy()


def drs_keep(logits: np.ndarray, keep: float, seed: int, eps: float = 1e-6) -> np.ndarray:
    """Boolean mask of accepted samples (Azadi et al. 2019, eq. 8 and Algorithm 1).

    F(x) = D(x) - D_max - log(1 - exp(D(x) - D_max - eps)) - gamma, accepted with probability sigmoid(F).
    gamma is set to the (1 - keep) quantile of F, so ``keep`` steers the acceptance rate (the paper uses a
    percentile of F too); the draw is seeded, so the same seed keeps the same samples.
    """
    d = logits - logits.max()
    f = d - np.log1p(-np.exp(d - eps))
    gamma = np.quantile(f, 1 - keep)
    p = 1 / (1 + np.exp(-(f - gamma)))
    return np.random.default_rng(seed).random(len(f)) < p


def confidence_scores(evaluator, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """The evaluator's probability of the requested class (conditional) or of its top class (n,)."""
    _, probs = evaluator.features_and_probs(x)
    if y is not None:
        return probs[np.arange(len(x)), y]
    return probs.max(1)


def keep_top(scores: np.ndarray, keep: float) -> np.ndarray:
    """Mask of the ``keep`` share of samples with the highest scores (ties broken by index: stable)."""
    k = max(1, int(round(keep * len(scores))))
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:k]] = True
    return mask


def filter_samples(model, samples, method: str, keep: float, evaluator=None, seed: int = 0) -> np.ndarray:
    """Mask of the samples to keep after ``method`` ("drs" or "confidence") with target share ``keep``."""
    if method not in FILTERS:
        raise GenforgeError(f"filter must be one of {', '.join(FILTERS)}, got {method!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise GenforgeError(f"keep-top must be in (0, 1], got {keep!r}")
    if method == "drs":
        return drs_keep(discriminator_logits(model, samples.x, samples.y), keep, seed)
    if evaluator is None:
        raise GenforgeError("confidence filtering needs an evaluator")
    return keep_top(confidence_scores(evaluator, samples.x, samples.y), keep)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d), (m, d) -> (n, m) squared Euclidean distances by one matrix product: |a|^2 + |b|^2 - 2 a.b."""
    d = a.square().sum(1, keepdim=True) + b.square().sum(1)[None, :] - 2 * a @ b.T
    return d.clamp_(min=0)


def near_duplicates(x: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of samples to drop: each is within RMS pixel distance ``threshold`` (0..255) of an earlier kept one."""
    flat = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    d = pairwise_sq_distances(flat, flat) / flat.shape[1]  # mean squared difference per pixel
    close = (d <= threshold**2).numpy()
    drop = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):  # greedy: the first of a group of near-copies stays
        if drop[i]:
            continue
        later = close[i, i + 1:]
        drop[i + 1:] |= later
    return drop
