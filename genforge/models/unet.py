"""A small UNet: the denoising network of the diffusion family.

A plain ``nn.Module`` that predicts the noise in a noisy image; it knows
nothing of noise schedules or samplers (those live in ``diffusion.py``).
The design follows the DDPM UNet (Ho et al. 2020, appendix B), itself a
PixelCNN++ backbone, scaled down for a CPU:

- a sinusoidal embedding of the timestep (Vaswani et al. 2017, section 3.5)
  through a two-layer MLP, a scale and shift inside every residual block;
- residual blocks of GroupNorm, SiLU and 3x3 convolutions;
- one residual block per resolution going down (28 -> 14 -> 7 for MNIST) and
  one going up, each up block taking the matching down block's output as a
  skip connection (concatenated, as in the DDPM UNet);
- one self-attention layer at the lowest resolution only (7x7 = 49 tokens:
  cheap), where it lets distant strokes agree;
- class-conditional when ``num_classes > 0``: a class embedding added to the
  time embedding, with one extra "null" class (index ``num_classes``) that
  stands for "no label", the unconditional model of classifier-free
  guidance (Ho and Salimans 2022).

Widths: ``base_channels`` at full resolution, doubling per level up to 4x
(28: 1x, 14: 2x, 7: 4x). Most of the compute is at full resolution, most of
the parameters at the lowest. Measured with FlopCounterMode, a 28x28 forward
costs 20 MFLOP at base_channels=8 (0.1 M parameters), 80 at 16 (0.4 M) and
316 at 32 (1.6 M): the recipes use 16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import CHOICES, linear_path_ok
from genforge.errors import ConfigError
from genforge.models.networks import _conv_plan
from genforge.models.networks1d import _pad_to, length_plan

TIME_FREQUENCIES = 32  # sinusoid pairs in the timestep embedding (64 numbers)
MAX_MULT = 4           # widths double per level up to MAX_MULT * base_channels
LINEAR_BASES = 4       # the linear path's filters, mixed per noise level (and class)


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (32 in DDPM, which is too many for 16-channel layers)."""
    return nn.GroupNorm(num_groups=math.gcd(channels, 8), num_channels=channels)


def timestep_embedding(t: torch.Tensor, frequencies: int = TIME_FREQUENCIES) -> torch.Tensor:
    """Integer timesteps (b,) -> (b, 2 * frequencies): sin and cos of t at geometric frequencies 1 .. 1/10000."""
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(frequencies, device=t.device) / frequencies)
    args = t.float()[:, None] * freqs[None]  # (b, frequencies)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """x + conv(act(AdaGN(conv(act(norm(x))), emb))): the DDPM residual block (no dropout), conditioned
    by adaptive group normalization, norm(h) * (1 + scale) + shift with (scale, shift) from the time and
    class embedding (Dhariwal and Nichol 2021, section 3). DDPM's plain "h + emb" before the norm is erased
    by a GroupNorm whose groups hold one channel each, which happens in narrow networks.

    The second convolution starts at zero, so every block starts as the identity (or its 1x1 skip):
    the UNet's first predictions come through its skips and training starts smoothly.
    """

    def __init__(self, ch_in: int, ch_out: int, emb_dim: int, conv: type[nn.Module] = nn.Conv2d):
        super().__init__()
        self.norm1 = _norm(ch_in)
        self.conv1 = conv(ch_in, ch_out, kernel_size=3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * ch_out)  # the timestep (and class) as a per-channel scale and shift
        self.norm2 = _norm(ch_out)
        self.conv2 = conv(ch_out, ch_out, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(ch_in, ch_out, kernel_size=1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                                # (b, ch_out, *spatial)
        scale, shift = self.emb(F.silu(emb)).view(*h.shape[:1], -1, *(1,) * (h.ndim - 2)).chunk(2, 1)  # (b, ch_out, 1..)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the positions (h*w, or t), residual; the output projection starts at zero."""

    def __init__(self, ch: int, conv: type[nn.Module] = nn.Conv2d):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = conv(ch, 3 * ch, kernel_size=1)
        self.proj = conv(ch, ch, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (b, positions, c) each
        out = F.scaled_dot_product_attention(q, k, v)                                # (b, positions, c)
        return x + self.proj(out.transpose(1, 2).reshape(x.shape))


class UNet(nn.Module):
    """Noise prediction eps(x_t, t, y): noisy examples (b, c, h, w) or (b, c, t), timesteps (b,) int64, classes
    (b,) or None. With ``prediction="v"`` the same network predicts v = alpha_t eps - sigma_t x_0 instead, with
    ``prediction="x0"`` x_0 itself (``diffusion.py`` turns either into eps); the layers are the same.

    The example's rank picks the layers: images (c, h, w) get 2-D convolutions, series and waveforms (c, t)
    1-D ones, with the same blocks, widths and module names. ``z_dim`` is ignored (the latent of a diffusion
    model is its starting noise). Image sides are 4..7 times a power of two, as for the other convolutional
    networks; a series of any length is zero-padded on the right to the planned length
    (``networks1d.length_plan``) and the prediction cropped back. ``y=None`` on a conditional UNet means
    "no label": the null class, the unconditional prediction of classifier-free guidance.
    """

    def __init__(self, image_shape: tuple[int, ...], z_dim: int = 0, base_channels: int = 32, num_classes: int = 0,
                 prediction: str = "eps", linear_path: int = 0):
        super().__init__()
        if prediction not in CHOICES["prediction"]:  # the config's own list of parameterisations
            raise ConfigError(f"prediction must be one of {', '.join(CHOICES['prediction'])}, got {prediction!r}")
        self.prediction = prediction  # what the output means: diffusion.x0_at reads it
        # a model file's net_options are input: an absurd filter length must not become a huge allocation
        if not linear_path_ok(linear_path):
            raise ConfigError(f"linear_path is an odd filter length from 1 to 63 time steps (0: none), "
                              f"got {linear_path!r}")
        one_d = len(image_shape) == 2
        conv = nn.Conv1d if one_d else nn.Conv2d
        stages, start = length_plan(image_shape) if one_d else _conv_plan(image_shape)
        self.padded = start * 2 ** stages if one_d else None
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        widths = [base_channels * min(2 ** i, MAX_MULT) for i in range(stages + 1)]  # 28: (C, 2C, 4C)
        emb_dim = 4 * base_channels

        self.time_mlp = nn.Sequential(nn.Linear(2 * TIME_FREQUENCIES, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        # num_classes real classes plus the null class at index num_classes
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        self.conv_in = conv(image_shape[0], widths[0], kernel_size=3, padding=1)
        ch = widths[0]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, width in enumerate(widths):
            self.down.append(ResBlock(ch, width, emb_dim, conv))
            ch = width
            if i < stages:  # stride-2 3x3 convolution: 28 -> 14 -> 7
                self.downsample.append(conv(ch, ch, kernel_size=3, stride=2, padding=1))
        self.mid_attn = SelfAttention(ch, conv)
        self.mid = ResBlock(ch, ch, emb_dim, conv)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(stages + 1)):
            self.up.append(ResBlock(ch + widths[i], widths[i], emb_dim, conv))  # input: h and the skip, concatenated
            ch = widths[i]
            if i > 0:  # nearest-neighbour 2x, then a 3x3 convolution to the next level's width
                self.upsample.append(conv(ch, widths[i - 1], kernel_size=3, padding=1))
                ch = widths[i - 1]
        self.norm_out = _norm(ch)
        self.conv_out = conv(ch, image_shape[0], kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predict eps = 0 at first: the loss starts at 1
        nn.init.zeros_(self.conv_out.bias)
        self.linear = self.linear_mix = None
        if linear_path:
            # LINEAR_BASES linear filters from x_t to the output (every channel to every channel, linear_path
            # positions wide), summed with weights set by the noise level and class: sum_k w_k(t, y) (W_k * x_t).
            # The mix starts at zero, so the network starts as it would without the path.
            c = image_shape[0]
            self.linear = conv(c, LINEAR_BASES * c, kernel_size=linear_path, padding=linear_path // 2, bias=False)
            self.linear_mix = nn.Linear(emb_dim, LINEAR_BASES)
            nn.init.zeros_(self.linear_mix.weight)
            nn.init.zeros_(self.linear_mix.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t))  # (b, emb_dim)
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes)  # the null class
            emb = emb + self.class_embed(y)

        length = x.shape[-1]
        if self.padded is not None:
            x = _pad_to(x, self.padded)  # (b, c, padded t)
        h = self.conv_in(x)  # (b, C, 28, 28)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)  # (b, widths[i], side_i, side_i)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(self.mid_attn(h), emb)  # (b, widths[-1], 7, 7)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))  # (b, c, 28, 28): the predicted noise
        if self.linear is not None:
            w = self.linear_mix(emb)                                                  # (b, LINEAR_BASES)
            filtered = self.linear(x).unflatten(1, (LINEAR_BASES, out.shape[1]))      # (b, LINEAR_BASES, c, ...)
            out = out + (w.view(*w.shape, *(1,) * (filtered.ndim - 2)) * filtered).sum(1)
        return out[..., :length]
