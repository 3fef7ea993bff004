"""The networks: plain ``nn.Module``s with no knowledge of how they are trained.

The GAN and VAE methods (``gan.py``, ``vae.py``) compose these. Every network
takes the same constructor arguments, ``(image_shape, z_dim, base_channels,
num_classes)``, and every forward takes an optional class batch ``y``, so a
recipe swaps the MLP of the reference design for a convolutional network
without touching the loss code. ``num_classes > 0`` makes the convolutional
networks class-conditional; the reference design's MLPs are unconditional.

Shapes: images are (b, c, h, w); latents are (b, z_dim); classes are (b,) int64.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genforge.errors import ConfigError

Shape = tuple[int, int, int]  # (c, h, w)


def _leaky() -> nn.Module:
    return nn.LeakyReLU(negative_slope=0.2)


def _unconditional(net: nn.Module, num_classes: int) -> None:
    if num_classes:
        raise ConfigError(f"{type(net).__name__} is unconditional: it cannot take num_classes={num_classes}")


def _with_classes(v: torch.Tensor, y: torch.Tensor | None, embed: nn.Embedding | None) -> torch.Tensor:
    """Append the class embedding to a (b, d) input: the conditioning of a conditional G or VAE decoder."""
    if embed is None:
        return v
    if y is None:
        raise ValueError("this network is class-conditional: pass the classes y")
    return torch.cat([v, embed(y)], dim=1)  # (b, d + embed_dim)


# --------------------------------------------------------------------------- MLP (reference design)

class MLPGenerator(nn.Module):
    """The reference design's generator: z -> 128-256-512-1024 -> c*h*w, tanh output in [-1, 1]."""

    def __init__(self, image_shape: Shape, z_dim: int = 100, base_channels: int = 0, num_classes: int = 0):
        super().__init__()
        _unconditional(self, num_classes)
        self.image_shape = image_shape
        widths = [128, 256, 512, 1024]
        layers: list[nn.Module] = [nn.Linear(z_dim, widths[0]), _leaky()]
        for w_in, w_out in zip(widths, widths[1:]):
            # momentum=0.2 is PyTorch's spelling of the Keras tutorial's BatchNormalization(momentum=0.8)
            layers += [nn.Linear(w_in, w_out), nn.BatchNorm1d(w_out, momentum=0.2), _leaky()]
        layers += [nn.Linear(widths[-1], math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)  # (b, c, h, w)


class MLPDiscriminator(nn.Module):
    """The reference design's discriminator: c*h*w -> 1024-512-256 -> 1 logit."""

    def __init__(self, image_shape: Shape, z_dim: int = 0, base_channels: int = 0, num_classes: int = 0):
        super().__init__()
        _unconditional(self, num_classes)
        widths = [math.prod(image_shape), 1024, 512, 256]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), _leaky()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)  # (b,) logits


class MLPEncoder(nn.Module):
    """The reference design's VAE encoder: c*h*w -> 512-256 -> (mu, logvar), each (b, z_dim)."""

    def __init__(self, image_shape: Shape, z_dim: int = 20, base_channels: int = 0, num_classes: int = 0):
        super().__init__()
        _unconditional(self, num_classes)
        self.net = nn.Sequential(
            nn.Linear(math.prod(image_shape), 512), nn.ReLU(),
            nn.Linear(512, 256), nn.ReLU(),
            nn.Linear(256, 2 * z_dim),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """The reference design's VAE decoder: z -> 256-512-1024 -> c*h*w logits (sigmoid gives pixel means)."""

    def __init__(self, image_shape: Shape, z_dim: int = 20, base_channels: int = 0, num_classes: int = 0):
        super().__init__()
        _unconditional(self, num_classes)
        self.image_shape = image_shape
        self.net = nn.Sequential(
            nn.Linear(z_dim, 256), nn.ReLU(),
            nn.Linear(256, 512), nn.ReLU(),
            nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, math.prod(image_shape)),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)  # (b, c, h, w) logits


# --------------------------------------------------------------------------- convolutional

def _conv_plan(image_shape: Shape) -> tuple[int, int]:
    """(number of 2x stages, starting side) so that start * 2**stages == image side, start in 4..7.

    28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4). DCGAN's 4x4 stride-2 convolutions need this.
    """
    c, h, w = image_shape
    if h != w:
        raise ConfigError(f"convolutional networks need square images, got {h}x{w}")
    stages, side = 0, h
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        stages += 1
    if stages < 1 or side > 7:
        raise ConfigError(f"image_size {h} does not suit the convolutional networks: "
                          "use a size like 28, 32, 56 or 64 (4..7 times a power of two)")
    return stages, side


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (de Vries et al. 2017; Miyato and Koyama 2018).

    The class then modulates every layer of G instead of entering once beside z. With z and the class
    concatenated at the input, a projection discriminator lets G learn one image per class and ignore z
    (measured: recall 0.000 on mnist5k); with the class in the norms, z is the generator's only input.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(h) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]  # (b, ch, s, s)


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al. 2016): project z to (bc * 2**stages, s, s), then stride-2 transposed convs.

    Class-conditional (num_classes > 0): every BatchNorm becomes a ConditionalBatchNorm2d.
    """

    def __init__(self, image_shape: Shape, z_dim: int = 100, base_channels: int = 64, num_classes: int = 0):
        super().__init__()
        stages, side = _conv_plan(image_shape)
        ch = base_channels * 2 ** stages  # widest at the lowest resolution
        self.start = (ch, side, side)
        self.conditional = bool(num_classes)

        def norm(channels: int) -> nn.Module:
            return ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)

        self.project = nn.Linear(z_dim, ch * side * side, bias=False)
        self.norms = nn.ModuleList([norm(ch)])
        self.ups = nn.ModuleList()
        for _ in range(stages - 1):
            self.ups.append(nn.ConvTranspose2d(ch, ch // 2, kernel_size=4, stride=2, padding=1, bias=False))
            self.norms.append(norm(ch // 2))
            ch //= 2
        self.out = nn.ConvTranspose2d(ch, image_shape[0], kernel_size=4, stride=2, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and y is None:
            raise ValueError("this generator is class-conditional: pass the classes y")
        args = (y,) if self.conditional else ()
        h = self.project(z).view(z.shape[0], *self.start)  # (b, ch, s, s)
        h = torch.relu(self.norms[0](h, *args))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = torch.relu(norm(up(h), *args))           # (b, ch / 2, 2s, 2s)
        return torch.tanh(self.out(h))                   # (b, c, h, w) in [-1, 1]


def minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append the minibatch standard deviation as one feature map (Karras et al. 2018, section 3).

    (b, c, s, s) -> (b, c + 1, s, s). Samples are split into groups of ``group``; the mean over features of
    each group's per-feature std tells D how varied the batch is, so a collapsed G is easy to spot.
    """
    b, c, hh, ww = h.shape
    g = min(group, b)
    while b % g:
        g -= 1
    stats = h.view(g, b // g, c, hh, ww).var(0, unbiased=False).add(1e-8).sqrt().mean([1, 2, 3])  # (b / g,)
    stats = stats.repeat(g)[:, None, None, None].expand(b, 1, hh, ww)  # sample k*(b/g)+r gets group r's value
    return torch.cat([h, stats], dim=1)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: stride-2 convs with LeakyReLU (no normalization on the first), then one logit.

    Options, each a recipe setting:
    - norm: "batch" (DCGAN), "group" or "none". WGAN-GP's penalty and DP-SGD's clipping need per-sample
      gradients, which BatchNorm couples across the batch; GroupNorm (Wu and He 2018) normalizes each sample
      on its own, in groups of channels.
    - spectral_norm: every layer's weight divided by its largest singular value (Miyato et al. 2018).
    - mbstd: a minibatch-standard-deviation feature map before the head (Karras et al. 2018).
    - conditioning, when num_classes > 0: "projection" (Miyato and Koyama 2018, eq. 3),
      logit = head(h) + <embed(y), sum-pooled h>; or "aux" (ACGAN, Odena et al. 2017): a second head classifies the image.
    """

    def __init__(self, image_shape: Shape, z_dim: int = 0, base_channels: int = 64, num_classes: int = 0,
                 norm: str = "batch", spectral_norm: bool = False, mbstd: bool = False,
                 conditioning: str = "projection"):
        super().__init__()
        stages, side = _conv_plan(image_shape)
        layers: list[nn.Module] = [nn.Conv2d(image_shape[0], base_channels, kernel_size=4, stride=2, padding=1),
                                   _leaky()]
        ch = base_channels
        for _ in range(stages - 1):
            layers.append(nn.Conv2d(ch, ch * 2, kernel_size=4, stride=2, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(ch * 2))
            elif norm == "group":  # up to 32 groups (their default), as many as divide the channels
                layers.append(nn.GroupNorm(num_groups=math.gcd(32, ch * 2), num_channels=ch * 2))
            layers.append(_leaky())
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.mbstd = mbstd
        feat = (ch + mbstd) * side * side
        self.head = nn.Linear(feat, 1)
        self.conditioning = conditioning if num_classes else None
        # projection on the globally sum-pooled features (their phi(x)), one ch-wide embedding per class
        self.embed = nn.Embedding(num_classes, ch + mbstd) if self.conditioning == "projection" else None
        self.classifier = nn.Linear(feat, num_classes) if self.conditioning == "aux" else None
        if spectral_norm:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                with_classes: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(b, c, h, w) -> (b,) logits; with_classes=True (ACGAN) also the (b, num_classes) class logits."""
        h = self.features(x)  # (b, ch, side, side)
        if self.mbstd:
            h = minibatch_std(h)
        pooled = h.sum([2, 3])  # (b, ch)
        h = h.flatten(1)  # (b, feat)
        logits = self.head(h).squeeze(1)  # (b,)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass the classes y")
            logits = logits + (self.embed(y) * pooled).sum(1)  # the projection term
        if with_classes:
            return logits, self.classifier(h)
        return logits


class ConvEncoder(nn.Module):
    """Convolutional VAE encoder: stride-2 convs, then a linear layer to (mu, logvar).

    Conditional (num_classes > 0): the class enters as one-hot planes beside the image channels.
    """

    def __init__(self, image_shape: Shape, z_dim: int = 20, base_channels: int = 32, num_classes: int = 0):
        super().__init__()
        stages, side = _conv_plan(image_shape)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        ch_in, ch = image_shape[0] + num_classes, base_channels
        for _ in range(stages):
            layers += [nn.Conv2d(ch_in, ch, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            ch_in, ch = ch, ch * 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch_in * side * side, 2 * z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_classes:
            if y is None:
                raise ValueError("this encoder is class-conditional: pass the classes y")
            planes = nn.functional.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]  # (b, k, 1, 1)
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)  # (b, c + k, h, w)
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Convolutional VAE decoder: linear to (ch, s, s), stride-2 transposed convs, pixel logits."""

    def __init__(self, image_shape: Shape, z_dim: int = 20, base_channels: int = 32, num_classes: int = 0):
        super().__init__()
        stages, side = _conv_plan(image_shape)
        ch = base_channels * 2 ** (stages - 1)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        self.project = nn.Sequential(nn.Linear(z_dim * (2 if num_classes else 1), ch * side * side), nn.Unflatten(1, (ch, side, side)),
                                     nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            ch //= 2
        layers.append(nn.ConvTranspose2d(ch, image_shape[0], kernel_size=4, stride=2, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.blocks(self.project(_with_classes(z, y, self.embed)))  # (b, c, h, w) logits
