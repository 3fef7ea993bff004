"""The sampling function: (model, n, seed, controls) -> uint8 images.

``sample`` draws latents from the seed and applies the noise control;
``decode`` turns any latents (from a seed, an interpolation, a feedback round)
into images. The CLI, the Python API, the evaluator and the HTTP service all
come through here, so the same seed and controls give the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from genforge.errors import GenforgeError
from genforge.config import SAMPLERS

MAX_SAMPLES = 1_000_000
MAX_SIZE = 2048
MAX_TEMPERATURE = 10.0
MAX_DIFFUSION_STEPS = 1000
MAX_GUIDANCE = 20.0
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS}


@dataclass
class Samples:
    x: np.ndarray            # uint8, (n, h, w) grayscale or (n, h, w, c) colour
    y: np.ndarray | None     # int64 (n,) class of each sample for conditional models, else None
    z: np.ndarray            # float32 (n, z_dim): the latents, so any sample can be regenerated
    seed: int
    controls: dict = field(default_factory=dict)  # the controls that made them, as given to sample()


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Standard normal latents (n, z_dim), drawn on the CPU so every device gets the same numbers."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def truncation_threshold(truncation: float) -> float:
    """The |z| bound that keeps the central ``truncation`` share of a standard normal coordinate.

    truncation=1 keeps everything (no bound); 0.5 bounds |z| by 0.674; 0.95 by 1.96.
    """
    return math.inf if truncation >= 1 else math.sqrt(2) * float(torch.erfinv(torch.tensor(truncation)))


def truncated_latents(n: int, z_dim: int, seed: int, truncation: float) -> torch.Tensor:
    """Latents with the truncation trick by resampling (Brock et al. 2019, BigGAN section 3.1).

    Every coordinate with |z| above the threshold is drawn again from the same stream until none is left,
    so the result is a standard normal conditioned on the bound (not clipped, which piles mass at the edge).
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=gen)
    bound = truncation_threshold(truncation)
    outside = z.abs() > bound
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=gen)
        outside = z.abs() > bound
    return z


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) floats in [0, 1] -> (b, h, w, c) uint8, rounding to nearest."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def prior_classes(prior, n: int, seed: int) -> np.ndarray:
    """``n`` classes (int64) drawn independently with probabilities ``prior``, reproducibly from ``seed``."""
    p = np.asarray(prior, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def class_indices(model, classes, n: int, seed: int = 0) -> np.ndarray | None:
    """The class of each of ``n`` samples: None for unconditional models; for conditional ones ``classes`` is
    one class or a list cycled over the samples (indices, or names from the model's class_names); by
    default every class in turn, or for a cluster-guided model clusters drawn by size (from ``seed``)."""
    k = model.num_classes
    if k == 0:
        if classes is not None:
            raise GenforgeError(f"model {model.name} is unconditional: it cannot generate a requested class")
        return None
    if classes is None and model.cluster_prior is not None:
        return prior_classes(model.cluster_prior, n, seed)
    if classes is None:
        wanted = list(range(k))
    else:
        wanted = [classes] if isinstance(classes, (int, str, np.integer)) else list(classes)
        if not wanted:
            raise GenforgeError("classes: give at least one class")
    names = model.class_names or []
    resolved = []
    for c in wanted:
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            if c not in names:
                raise GenforgeError(f"class {c!r} is not one of this model's classes: {', '.join(names)}")
            c = names.index(c)
        if isinstance(c, bool) or not isinstance(c, (int, str, np.integer)) or not 0 <= int(c) < k:
            raise GenforgeError(f"class {c!r} is out of range: this model has classes 0 to {k - 1}")
        resolved.append(int(c))
    return np.resize(np.array(resolved, dtype=np.int64), n)  # cycled to length n


def check_controls(model, truncation: float | None, temperature: float | None, size: int | None,
                   resample: str, steps: int | None = None, guidance: float | None = None,
                   sampler: str | None = None) -> None:
    """Refuse a control the model cannot honour, or a value out of range, with a message naming it."""
    if steps is not None or guidance is not None or sampler is not None:
        if model.family != "diffusion":
            raise GenforgeError(f"steps, guidance and sampler are diffusion controls; model {model.name} is a "
                                f"{model.family}")
        if sampler is not None and sampler not in SAMPLERS:
            raise GenforgeError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or not 1 <= steps <= MAX_DIFFUSION_STEPS):
            raise GenforgeError(f"steps must be an integer from 1 to {MAX_DIFFUSION_STEPS}, got {steps!r}")
        if guidance is not None:
            if model.num_classes == 0:
                raise GenforgeError(f"guidance needs a class-conditional model; {model.name} is unconditional")
            if (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                    or not 0 <= guidance <= MAX_GUIDANCE):
                raise GenforgeError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got {guidance!r}")
    if truncation is not None:
        if model.family != "gan":
            raise GenforgeError(f"truncation is a GAN control; model {model.name} is a {model.family} "
                                "(use temperature for VAEs)")
        if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
            raise GenforgeError(f"truncation must be in (0, 1], got {truncation!r}")
    if temperature is not None:
        if model.family != "vae":
            raise GenforgeError(f"temperature is a VAE control; model {model.name} is a {model.family} "
                                "(use truncation for GANs)")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not 0 < temperature <= MAX_TEMPERATURE):
            raise GenforgeError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE):
        raise GenforgeError(f"size must be an integer from 1 to {MAX_SIZE}, got {size!r}")
    if resample not in RESAMPLE:
        raise GenforgeError(f"resample must be one of {', '.join(RESAMPLE)}, got {resample!r}")


def resize(x: np.ndarray, size: int, resample: str = "lanczos") -> np.ndarray:
    """uint8 images (n, h, w[, c]) -> (n, size, size[, c]) with Pillow's nearest, bilinear or Lanczos filter."""
    if x.shape[1:3] == (size, size):
        return x
    out = [np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE[resample])) for img in x]
    return np.stack(out)


def decode(model, z: torch.Tensor, y: np.ndarray | None = None, batch_size: int = 500, **family_controls) -> np.ndarray:
    """Latents (n, z_dim) and classes (n,) or None -> uint8 images (n, h, w) or (n, h, w, c).

    ``family_controls`` (diffusion: steps, guidance, sampler) go to the family's ``generate``; None values are
    dropped, and the model's recipe fills in the ones not given (``model.sampling_defaults``).
    """
    family_controls = {**model.sampling_defaults, **{k: v for k, v in family_controls.items() if v is not None}}
    device = model.device
    y_t = torch.from_numpy(y) if y is not None else None
    chunks = []
    with torch.inference_mode():
        for start in range(0, z.shape[0], batch_size):
            part_y = y_t[start:start + batch_size].to(device) if y_t is not None else None
            images = model.method.generate(model.nets, z[start:start + batch_size].to(device), part_y,
                                           **family_controls)
            chunks.append(to_uint8(images).cpu())
    x = torch.cat(chunks).numpy()  # (n, h, w, c)
    return x[..., 0] if x.shape[-1] == 1 else x


def sample(model, n: int, seed: int = 0, classes=None, truncation: float | None = None,
           temperature: float | None = None, size: int | None = None, resample: str = "lanczos",
           steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
           batch_size: int = 500) -> Samples:
    """Generate ``n`` images from a loaded model (see :func:`genforge.load`), reproducibly from ``seed``.

    classes: conditional models only; one class (index or name) or a list cycled over the samples.
    truncation: GANs only, in (0, 1]: keep the central share of each latent coordinate (resampling trick).
    temperature: VAEs only, in (0, 10]: scales the prior's standard deviation (below 1: cleaner, less varied).
    size, resample: resize the output to size x size with "nearest", "bilinear" or "lanczos".
    steps, guidance, sampler: diffusion only: sampler steps, classifier-free guidance scale (conditional
    models), and the sampler, "ddim" (default) or "dpm++2m" (better at 10 to 20 steps).
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise GenforgeError(f"seed must be a non-negative integer, got {seed!r}")
    check_controls(model, truncation, temperature, size, resample, steps, guidance, sampler)
    y = class_indices(model, classes, n, seed)
    if truncation is not None and truncation < 1:
        z = truncated_latents(n, model.z_dim, seed, truncation)
    else:
        z = latents(n, model.z_dim, seed)
    if temperature is not None:
        z = z * temperature
    x = decode(model, z, y, batch_size, steps=steps, guidance=guidance, sampler=sampler)
    if size is not None:
        x = resize(x, size, resample)
    controls = {k: v for k, v in (("classes", classes), ("truncation", truncation), ("temperature", temperature),
                                  ("size", size), ("steps", steps), ("guidance", guidance), ("sampler", sampler))
                if v is not None}
    if size is not None:
        controls["resample"] = resample
    return Samples(x=x, y=y, z=z.numpy(), seed=seed, controls=controls)
