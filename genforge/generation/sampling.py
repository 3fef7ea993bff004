"""The sampling function: (model, n, seed, controls) -> uint8 images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genforge.errors import GenforgeError

MAX_SAMPLES = 1_000_000


@dataclass
class Samples:
    x: np.ndarray            # uint8, (n, h, w) grayscale or (n, h, w, c) colour
    y: np.ndarray | None     # int64 (n,) class of each sample for conditional models, else None
    z: np.ndarray            # float32 (n, z_dim): the latents, so any sample can be regenerated
    seed: int


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Standard normal latents (n, z_dim), drawn on the CPU so every device gets the same numbers."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) floats in [0, 1] -> (b, h, w, c) uint8, rounding to nearest."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def sample(model, n: int, seed: int = 0, labels=None, batch_size: int = 500) -> Samples:
    """Generate ``n`` images from a loaded model (see :func:`genforge.load`), reproducibly from ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise GenforgeError(f"seed must be a non-negative integer, got {seed!r}")
    if labels is not None and model.num_classes == 0:
        raise GenforgeError(f"model {model.name} is unconditional: it cannot generate a requested class")
    z = latents(n, model.z_dim, seed)
    device = model.device
    chunks = []
    with torch.inference_mode():
        for part in z.split(batch_size):
            chunks.append(to_uint8(model.method.generate(model.nets, part.to(device))).cpu())
    x = torch.cat(chunks).numpy()  # (n, h, w, c)
    if x.shape[-1] == 1:
        x = x[..., 0]
    return Samples(x=x, y=None, z=z.numpy(), seed=seed)
