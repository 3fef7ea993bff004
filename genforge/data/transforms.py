"""Tensor conversion and batched, reproducible augmentation.

`augment` works on a whole batch at once (no per-image Python loop), and draws
every random number from the caller's CPU `torch.Generator`, so the same seed
gives the same flips, shifts and angles whichever device the batch is on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from genforge.errors import DataError

VALUE_RANGES = ("-1,1", "0,1")


def to_tensor(x: np.ndarray, value_range: str) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) scaled to `value_range` "-1,1" or "0,1".

    "-1,1" suits tanh generators (DCGAN) and diffusion; "0,1" suits VAEs with a
    Bernoulli or sigmoid decoder.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(
            "to_tensor expects a uint8 (N, H, W, C) array, "
            f"got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
        )
    key = value_range.replace(" ", "") if isinstance(value_range, str) else value_range
    if key not in VALUE_RANGES:
        raise DataError(f"value_range {value_range!r} is not one of {', '.join(VALUE_RANGES)}")
    # One float copy in NCHW layout, then scaled in place.
    t = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)  # (N, C, H, W)
    return t.div_(127.5).sub_(1.0) if key == "-1,1" else t.div_(255.0)


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flip: bool = False,
    shift: int = 0,
    rotate: float = 0.0,
    fill: float | None = None,
) -> torch.Tensor:
    """Randomly flip, shift and rotate each image of a (N, C, H, W) float batch.

    flip: mirror left-right with probability 0.5. shift: move by whole pixels,
    uniform in [-shift, shift] on each axis. rotate: turn by a uniform angle in
    [-rotate, rotate] degrees (bilinear, affine_grid + grid_sample). Uncovered
    pixels get `fill`, by default the batch minimum (the background of
    MNIST-like data in either value range). With all options off, `x` itself is
    returned. Random numbers come from `generator` (CPU) in a fixed order.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"augment expects a float (N, C, H, W) tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if generator.device.type != "cpu":
        raise ValueError(
            "augment draws on a CPU generator so results match across devices; "
            f"got one on {generator.device}"
        )
    if shift < 0 or rotate < 0 or int(shift) != shift:
        raise ValueError(f"augment needs a whole shift >= 0 and rotate >= 0, got shift={shift}, rotate={rotate}")
    if not flip and shift == 0 and rotate == 0:
        return x
    shift = int(shift)
    n, _, h, w = x.shape
    if fill is None:
        fill = float(x.min()) if x.numel() else 0.0

    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)  # (N,)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    if shift:
        offsets = torch.randint(-shift, shift + 1, (n, 2), generator=generator).to(x.device)  # (N, 2) as (dy, dx)
        x = _shift(x, offsets, shift, fill)
    if rotate:
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate)  # (N,) radians
        x = _rotate(x, angles.to(x.device), fill)
    return x


def _shift(x: torch.Tensor, offsets: torch.Tensor, s: int, fill: float) -> torch.Tensor:
    """Exact integer translation: pad by s with `fill`, then gather each image's window."""
    n, c, h, w = x.shape
    padded = F.pad(x, (s, s, s, s), value=fill)  # (N, C, H+2s, W+2s)
    # Output pixel i shows input pixel i - d, which sits at i - d + s in the padding.
    rows = torch.arange(h, device=x.device)[None, :] + s - offsets[:, :1]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + s - offsets[:, 1:]  # (N, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * s))  # (N, C, H, W+2s)
    return padded.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # (N, C, H, W)


def _rotate(x: torch.Tensor, angles: torch.Tensor, fill: float) -> torch.Tensor:
    """Rotate each image about its centre by angles[i] radians."""
    n, _, h, w = x.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid works in [-1, 1] coordinates on both axes; the h/w factors
    # keep a rotation a rotation (not a shear) when the image is not square.
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)  # (N, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    # grid_sample pads with zeros, so rotate (x - fill) and add fill back:
    # the uncovered corners then come out as `fill`.
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill
