"""Steering: latent interpolation, class sweeps and feedback rounds ("more like these").

All of them only choose latents (and classes); ``sampling.decode`` makes the
pixels, so the same latents give the same images as ``sample``.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genforge.errors import GenforgeError
from genforge.generation.sampling import Samples, class_indices, decode, latents
from genforge.generation.writers import read_sidecar, sidecar_path
from genforge.io import atomic_write_bytes

MAX_STEPS = 1000


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents a and b (d,) at fractions t (s,) -> (s, d).

    Gaussian latents in high dimension live near a sphere of radius sqrt(d); the straight line between two
    of them passes through its inside, where the generator saw no training latents (White 2016).
    """
    na, nb = a.norm(), b.norm()
    cos = torch.clamp(torch.dot(a / na, b / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    t = t[:, None]
    if omega < 1e-6:  # (nearly) the same direction: the line is the arc
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise GenforgeError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise GenforgeError(f"{what}: give at least one integer")
    return values


def walk_controls(model) -> dict:
    """Decode controls for a walk through latent space. A stochastic sampler's fresh noise is seeded by each
    latent's bytes, not a smooth function of it, so neighbouring frames would jump: a model that samples with
    dpm++2m-sde walks with its deterministic form, dpm++2m, from the same latents."""
    return {"sampler": "dpm++2m"} if model.sampling_defaults.get("sampler") == "dpm++2m-sde" else {}


def interpolate(model, seeds: list[int], steps: int, classes=None) -> Samples:
    """Frames walking by slerp through the latents of ``seeds`` in order, ``steps`` frames per leg (a diffusion
    model's stochastic sampler replaced by its deterministic form: :func:`walk_controls`)."""
    if len(seeds) < 2:
        raise GenforgeError("interpolation needs at least two seeds, e.g. --seeds 1,2,3")
    if any(s < 0 for s in seeds):
        raise GenforgeError(f"seeds must be non-negative, got {seeds}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        raise GenforgeError(f"steps must be an integer from 2 to {MAX_STEPS}, got {steps!r}")
    ends = [latents(1, model.z_dim, s)[0] for s in seeds]
    t = torch.linspace(0, 1, steps + 1)[:-1]  # each leg stops short of its end, which starts the next leg
    z = torch.cat([slerp(a, b, t) for a, b in zip(ends, ends[1:])] + [ends[-1][None]])
    y = class_indices(model, classes if classes is not None else (0 if model.num_classes else None), len(z))
    walk = walk_controls(model)
    return Samples(x=decode(model, z, y, **walk), y=y, z=z.numpy(), seed=seeds[0],
                   controls={"seeds": seeds, "steps": steps, **({"classes": classes} if classes is not None else {}),
                             **walk})


def class_sweep(model, seeds: list[int]) -> Samples:
    """Each seed's latent drawn as every class in turn: rows are seeds, columns classes (conditional models)."""
    if model.num_classes == 0:
        raise GenforgeError(f"model {model.name} is unconditional: a class sweep needs a conditional model")
    k = model.num_classes
    z = torch.cat([latents(1, model.z_dim, s).expand(k, -1) for s in seeds])  # (len(seeds) * k, z_dim)
    y = np.tile(np.arange(k, dtype=np.int64), len(seeds))
    return Samples(x=decode(model, z, y), y=y, z=z.numpy(), seed=seeds[0], controls={"seeds": seeds,
                                                                                     "class_sweep": True})


def save_gif(frames: np.ndarray, path: str | Path, ms_per_frame: int = 80, scale: int = 1) -> Path:
    """uint8 frames (n, h, w[, c]) to a looping GIF, atomically."""
    if Path(path).suffix.lower() != ".gif":
        raise GenforgeError(f"--out {path}: an interpolation is written as a .gif (or use --grid for a .png)")
    images = [Image.fromarray(f) for f in frames]
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return atomic_write_bytes(path, buf.getvalue())


def feedback_latents(z_liked: torch.Tensor, classes: np.ndarray | None, n: int, radius: float,
                     seed: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """The latents (n, z_dim) and classes (n,) or None of a feedback round, from the liked latents
    (k, z_dim) and their classes (k,) or None: liked ones in turn, each new latent
    sqrt(1 - r^2) * z_liked + r * eps with eps ~ N(0, I) drawn from ``seed``.

    The mix keeps the prior's variance (a sum of independent normals with variances (1 - r^2) and r^2), so
    the generator stays on the latents it was trained on. ``feedback`` (saved grids) and the HTTP service's
    /v1/feedback (latents a response returned) both come here, so a round gives the same pixels in both.
    """
    pick = torch.arange(n) % len(z_liked)                                    # (n,) liked ones in turn
    eps = latents(n, z_liked.shape[1], seed)                                 # (n, z_dim)
    z = math.sqrt(1 - radius**2) * z_liked.to(torch.float32)[pick] + radius * eps
    y = None if classes is None else np.asarray(classes, dtype=np.int64)[pick.numpy()]
    return z, y


def feedback(model, grid: str | Path, like: list[int], n: int, radius: float, seed: int) -> tuple[Samples, dict]:
    """New samples near the liked ones of a saved grid: latent neighbourhood sampling.

    Each new latent is sqrt(1 - r^2) * z_liked + r * eps with eps ~ N(0, I) drawn from ``seed``: r=0 repeats
    the liked sample, r=1 ignores it; the mix keeps the prior's variance, so the generator stays on the
    latents it was trained on. Liked samples are used in turn. Returns the samples and the record of this
    round (parent grid, its sidecar's hash, the choices), which the new sidecar keeps for exact replay.
    """
    side = read_sidecar(grid)
    if side.get("weights_sha256") != model.meta.get("weights_sha256"):
        raise GenforgeError(f"{grid} was made by another model (weights {str(side.get('weights_sha256'))[:12]}...), "
                            f"not {model.path}")
    z_grid = torch.tensor(side["latents"], dtype=torch.float32)
    if z_grid.shape[1] != model.z_dim:
        raise GenforgeError(f"{sidecar_path(grid)}: latents have {z_grid.shape[1]} dimensions, the model {model.z_dim}")
    bad = [i for i in like if not 0 <= i < len(z_grid)]
    if bad:
        raise GenforgeError(f"--like {bad[0]}: the grid {grid} has samples 0 to {len(z_grid) - 1}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius <= 1:
        raise GenforgeError(f"radius must be in [0, 1], got {radius!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10_000:
        raise GenforgeError(f"n must be an integer from 1 to 10000 for a feedback round, got {n!r}")
    liked_y = None
    if side.get("classes") is not None:
        liked_y = np.asarray(side["classes"], dtype=np.int64)[like]
    elif model.num_classes:
        raise GenforgeError(f"{sidecar_path(grid)}: no classes recorded for a conditional model (altered?)")
    z, y = feedback_latents(z_grid[like], liked_y, n, radius, seed)
    parent = {"grid": str(grid), "sidecar_sha256": hashlib.sha256(sidecar_path(grid).read_bytes()).hexdigest(),
              "like": like, "radius": radius, "seed": seed, "n": n}
    samples = Samples(x=decode(model, z, y), y=y, z=z.numpy(), seed=seed,
                      controls={"like": like, "radius": radius})
    return samples, {"feedback": parent, "feedback_history": side.get("feedback_history", []) + [parent]}
