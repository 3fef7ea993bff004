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


def class_indices(model, classes, n: int) -> np.ndarray | None:
    """The class of each of ``n`` samples: None for unconditional models; for conditional ones ``classes`` is
    one class or a list cycled over the samples (indices, or names from the model's class_names); by
    default every class in turn."""
    k = model.num_classes
    if k == 0:
        if classes is not None:
            raise GenforgeError(f"model {model.name} is unconditional: it cannot generate a requested class")
        return None
    if classes is None:
        wanted = list(range(k))
    else:
        wanted = [classes] if isinstance(classes, (int, str, np.integer)) else list(classes)
        if not wanted:
            raise GenforgeError("classes: give at least one class")
    names = model.class_names or []
    resolved = []
    for c in wanted:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise GenforgeError(f"class {c!r} is not one of this model's classes: {', '.join(names)}")
            c = names.index(c)
        if isinstance(c, bool) or not isinstance(c, (int, str, np.integer)) or not 0 <= int(c) < k:
            raise GenforgeError(f"class {c!r} is out of range: this model has classes 0 to {k - 1}")
        resolved.append(int(c))
    return np.resize(np.array(resolved, dtype=np.int64), n)  # cycled to length n


def sample(model, n: int, seed: int = 0, classes=None, batch_size: int = 500) -> Samples:
    """Generate ``n`` images from a loaded model (see :func:`genforge.load`), reproducibly from ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise GenforgeError(f"seed must be a non-negative integer, got {seed!r}")
    y = class_indices(model, classes, n)
    z = latents(n, model.z_dim, seed)
    device = model.device
    y_t = torch.from_numpy(y) if y is not None else None
    chunks = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            part_y = y_t[start:start + batch_size].to(device) if y_t is not None else None
            images = model.method.generate(model.nets, z[start:start + batch_size].to(device), part_y)
            chunks.append(to_uint8(images).cpu())
    x = torch.cat(chunks).numpy()  # (n, h, w, c)
    if x.shape[-1] == 1:
        x = x[..., 0]
    return Samples(x=x, y=y, z=z.numpy(), seed=seed)
