"""Networks for one-dimensional examples: (channels, time) sensor windows and waveforms.

The same roles, constructor arguments and forwards as the image networks in ``networks.py``
(``(example_shape, z_dim, base_channels, num_classes)``; an optional class batch ``y``), so the GAN and VAE
methods compose them unchanged: a network for 1-D data is a network, not a new method. The diffusion
family's denoiser is ``unet.UNet``, which builds 1-D or 2-D layers from the example's rank.

Lengths: a series of length t is handled at a padded length ``start * 2**stages >= t`` (``length_plan``):
generators and decoders produce the padded length and crop its first t samples; discriminators and encoders
pad their input on the right with zeros. So any length works, with no resampling of the user's data.

Shapes: examples are (b, c, t); latents are (b, z_dim); classes are (b,) int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.errors import ConfigError

Shape1d = tuple[int, int]  # (c, t)
MIN_LENGTH = 8
MAX_WIDTH_MULT = 8  # widths double per stage up to 8 x base_channels


def length_plan(shape: Shape1d) -> tuple[int, int]:
    """(stages, start): the fewest stride-2 stages that bring length t to a start of 4..8 samples;
    the networks work at the padded length start * 2**stages (>= t). 100 -> (4, 7): 112; 150 -> (5, 5): 160."""
    if len(shape) != 2:
        raise ConfigError(f"1-D networks need examples of shape (channels, time), got {tuple(shape)}")
    c, t = shape
    if t < MIN_LENGTH:
        raise ConfigError(f"series of {t} samples are too short for the 1-D networks (at least {MIN_LENGTH})")
    stages = 1
    while math.ceil(t / 2 ** stages) > 8:
        stages += 1
    return stages, math.ceil(t / 2 ** stages)


def _widths(base: int, stages: int) -> list[int]:
    """Channel widths from the full length (index 0) to the shortest (index ``stages``)."""
    return [base * min(2 ** i, MAX_WIDTH_MULT) for i in range(stages + 1)]


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":  # per-sample normalization: what WGAN-GP's penalty and DP-SGD's clipping need
        return nn.GroupNorm(num_groups=math.gcd(32, channels), num_channels=channels)
    return nn.Identity()


class _Upsampler(nn.Module):
    """z (and a class embedding) -> (b, c, t): a linear projection to (width, start), then stride-2 transposed
    convolutions doubling the length, cropped to t. The shared body of the GAN generator and the VAE decoder."""

    def __init__(self, shape: Shape1d, z_dim: int, base_channels: int, num_classes: int):
        super().__init__()
        stages, start = length_plan(shape)
        widths = _widths(base_channels, stages)
        self.length = shape[1]
        self.start = (widths[stages], start)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.project = nn.Linear(z_dim * (2 if num_classes else 1), widths[stages] * start)
        self.norm0 = nn.BatchNorm1d(widths[stages])
        self.ups = nn.ModuleList()
        for i in reversed(range(1, stages)):  # widths[i+1] -> widths[i], length doubled
            self.ups.append(nn.Sequential(
                nn.ConvTranspose1d(widths[i + 1], widths[i], kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm1d(widths[i]), nn.ReLU()))
        # the last doubling, then a length-preserving convolution to the data's channels
        self.last = nn.Sequential(nn.ConvTranspose1d(widths[1], widths[0], kernel_size=4, stride=2, padding=1),
                                  nn.ReLU())
        self.out = nn.Conv1d(widths[0], shape[0], kernel_size=5, padding=2)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("this network is class-conditional: pass the classes y")
            z = torch.cat([z, self.embed(y)], dim=1)              # (b, 2 z_dim)
        h = self.project(z).view(z.shape[0], *self.start)        # (b, width, start)
        h = torch.relu(self.norm0(h))
        for up in self.ups:
            h = up(h)                                            # (b, width / 2, 2 length)
        return self.out(self.last(h))[..., :self.length]          # (b, c, t)


class _Downsampler(nn.Module):
    """(b, c, t) -> (b, width, start): zero-padded to the planned length, then stride-2 convolutions."""

    def __init__(self, shape: Shape1d, base_channels: int, in_extra: int = 0, norm: str = "none"):
        super().__init__()
        stages, start = length_plan(shape)
        widths = _widths(base_channels, stages)
        self.length = start * 2 ** stages
        layers: list[nn.Module] = [nn.Conv1d(shape[0] + in_extra, widths[1], kernel_size=4, stride=2, padding=1),
                                   nn.LeakyReLU(negative_slope=0.2)]
        for i in range(1, stages):
            layers += [nn.Conv1d(widths[i], widths[i + 1], kernel_size=4, stride=2, padding=1, bias=norm == "none"),
                       _norm(norm, widths[i + 1]), nn.LeakyReLU(negative_slope=0.2)]
        self.features = nn.Sequential(*layers)
        self.out_shape = (widths[stages], start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(_pad_to(x, self.length))


class Conv1dGenerator(nn.Module):
    """GAN generator for (c, t) examples, DCGAN-style with 1-D transposed convolutions; tanh output in [-1, 1].
    Class-conditional (num_classes > 0): a class embedding concatenated to z."""

    def __init__(self, example_shape: Shape1d, z_dim: int = 64, base_channels: int = 32, num_classes: int = 0):
        super().__init__()
        self.body = _Upsampler(example_shape, z_dim, base_channels, num_classes)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.body(z, y))  # (b, c, t) in [-1, 1]


class Conv1dDiscriminator(nn.Module):
    """GAN discriminator for (c, t) examples: stride-2 1-D convolutions, then one logit.

    The image discriminator's options: norm ("batch", "group", "none"), spectral_norm, mbstd; conditioning by
    projection (Miyato and Koyama 2018) when num_classes > 0. ACGAN's auxiliary classifier is an image recipe only.
    """

    def __init__(self, example_shape: Shape1d, z_dim: int = 0, base_channels: int = 32, num_classes: int = 0,
                 norm: str = "batch", spectral_norm: bool = False, mbstd: bool = False,
                 conditioning: str = "projection"):
        super().__init__()
        if num_classes and conditioning != "projection":
            raise ConfigError(f"the 1-D discriminator conditions by projection only, not {conditioning!r}")
        self.down = _Downsampler(example_shape, base_channels, norm=norm)
        ch, start = self.down.out_shape
        self.mbstd = mbstd
        self.head = nn.Linear((ch + mbstd) * start, 1)
        self.embed = nn.Embedding(num_classes, ch + mbstd) if num_classes else None
        if spectral_norm:
            for module in self.modules():
                if isinstance(module, (nn.Conv1d, nn.Linear, nn.Embedding)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.down(x)                                          # (b, ch, start)
        if self.mbstd:
            b, ch, s = h.shape
            g = min(4, b)
            while b % g:
                g -= 1
            stats = h.view(g, b // g, ch, s).var(0, unbiased=False).add(1e-8).sqrt().mean([1, 2])  # (b / g,)
            h = torch.cat([h, stats.repeat(g)[:, None, None].expand(b, 1, s)], dim=1)
        logits = self.head(h.flatten(1)).squeeze(1)               # (b,)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass the classes y")
            logits = logits + (self.embed(y) * h.sum(2)).sum(1)   # the projection term
        return logits


class Conv1dEncoder(nn.Module):
    """VAE encoder for (c, t) examples: stride-2 1-D convolutions, then a linear layer to (mu, logvar).
    Conditional: the class enters as one-hot channels beside the data's."""

    def __init__(self, example_shape: Shape1d, z_dim: int = 32, base_channels: int = 32, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.down = _Downsampler(example_shape, base_channels, in_extra=num_classes)
        ch, start = self.down.out_shape
        self.head = nn.Linear(ch * start, 2 * z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_classes:
            if y is None:
                raise ValueError("this encoder is class-conditional: pass the classes y")
            planes = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None]   # (b, k, 1)
            x = torch.cat([x, planes.expand(-1, -1, x.shape[2])], dim=1)      # (b, c + k, t)
        mu, logvar = self.head(self.down(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class Conv1dDecoder(nn.Module):
    """VAE decoder for (c, t) examples: the generator's body, ending in logits (the VAE's likelihood)."""

    def __init__(self, example_shape: Shape1d, z_dim: int = 32, base_channels: int = 32, num_classes: int = 0):
        super().__init__()
        self.body = _Upsampler(example_shape, z_dim, base_channels, num_classes)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(z, y)  # (b, c, t) logits
