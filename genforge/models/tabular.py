"""Networks for tables: plain ``nn.Module``s over an encoded row (float (D,)), apart from the methods.

A table's encoding (:mod:`genforge.data.table.transforms`) is a list of spans, ``layout = [(kind, width), ...]``
with kind ``tanh`` (a number inside its mode, CTGAN), ``gaussian`` (a quantile-normalized number) or ``softmax``
(a one-hot group). Every network that outputs rows ends in :func:`activate`, which gives each span its
activation; the methods (``vae.py`` for TVAE, ``ctgan.py``, ``tabddpm.py``, ``copula.py``) say how they learn.

- :class:`TableEncoder` / :class:`TableDecoder`: TVAE (Xu et al. 2019): MLPs of 128-128, the decoder with a
  learned standard deviation per number and the mixed-type likelihood that the VAE method calls.
- :class:`TableGenerator` / :class:`TableDiscriminator`: CTGAN (Xu et al. 2019): a residual generator fed the
  noise and the conditional vector; a discriminator over ``pac`` rows at a time (PacGAN, Lin et al. 2018).
- :class:`TableDenoiser`: TabDDPM (Kotelnikov et al. 2023): an MLP fed the noisy row and a sinusoidal time
  embedding, predicting the noise of the numbers and the logits of each category's x_0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.data.table.transforms import TableTransformer
from genforge.errors import ConfigError

Layout = list[tuple[str, int]]


def gumbel_softmax(logits: torch.Tensor, tau: float, noise: torch.Generator | None) -> torch.Tensor:
    """Gumbel-softmax (Jang et al. 2017) with the caller's random stream: a differentiable, nearly one-hot draw."""
    u = torch.rand(logits.shape, generator=noise, device=logits.device, dtype=logits.dtype).clamp(1e-10, 1.0)
    g = -torch.log((-torch.log(u)).clamp(min=1e-10))  # Gumbel(0, 1) noise
    return torch.softmax((logits + g) / tau, dim=1)


def activate(layout: Layout, out: torch.Tensor, tau: float = 0.0, noise: torch.Generator | None = None) -> torch.Tensor:
    """Raw outputs (b, D) -> rows (b, D): tanh numbers in (-1, 1), gaussian numbers as they are, one-hot groups as
    softmax probabilities (or Gumbel-softmax draws when ``tau`` > 0, as CTGAN's generator trains)."""
    parts, i = [], 0
    for kind, width in layout:
        h = out[:, i:i + width]
        if kind == "tanh":
            parts.append(torch.tanh(h))
        elif kind == "gaussian":
            parts.append(h)
        else:
            parts.append(gumbel_softmax(h, tau, noise) if tau > 0 else torch.softmax(h, dim=1))
        i += width
    return torch.cat(parts, dim=1)


def _mlp(sizes: list[int], act=nn.ReLU) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------- TVAE

class TableEncoder(nn.Module):
    """Rows (b, D) -> (mu, logvar), each (b, z_dim). The class argument of the image encoders is unused."""

    def __init__(self, example_shape=None, z_dim: int = 128, base_channels: int = 128, num_classes: int = 0,
                 layout: Layout = (), **unused):
        super().__init__()
        width = base_channels
        dim = sum(w for _, w in layout)
        self.body = _mlp([dim, width, width])
        self.mu, self.logvar = nn.Linear(width, z_dim), nn.Linear(width, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class TableDecoder(nn.Module):
    """Latents (b, z_dim) -> raw outputs (b, D), with TVAE's mixed-type likelihood (:meth:`nll`) and mean
    (:meth:`mean`): the VAE method calls these instead of its pixel likelihood when the decoder has them."""

    def __init__(self, example_shape=None, z_dim: int = 128, base_channels: int = 128, num_classes: int = 0,
                 layout: Layout = (), **unused):
        super().__init__()
        width = base_channels
        self.layout = [tuple(s) for s in layout]
        dim = sum(w for _, w in layout)
        self.body = nn.Sequential(_mlp([z_dim, width, width]), nn.Linear(width, dim))
        # one learned standard deviation per output, used by the number spans (TVAE: sigma per column, init 0.1).
        # An embedding of one row rather than a bare parameter: Opacus computes per-example gradients of layers,
        # so a DP-trained TVAE learns sigma under DP-SGD as well
        self.log_sigma = nn.Embedding(1, dim)
        nn.init.constant_(self.log_sigma.weight, math.log(0.1))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(z)

    def nll(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per row (b,): Gaussian for numbers, N(x; tanh(out) or out, sigma^2) up to a constant,
        categorical (cross-entropy) for each one-hot group (TVAE, Xu et al. 2019, section 4.3)."""
        total, i = torch.zeros(x.shape[0], device=x.device, dtype=out.dtype), 0
        log_sigmas = self.log_sigma(torch.zeros(x.shape[0], dtype=torch.long, device=x.device))  # (b, D), one row
        for kind, width in self.layout:
            h, t = out[:, i:i + width], x[:, i:i + width]
            if kind == "softmax":
                total = total + F.cross_entropy(h, t.argmax(1), reduction="none")
            else:
                mean = torch.tanh(h) if kind == "tanh" else h
                log_sigma = log_sigmas[:, i:i + width].clamp(math.log(1e-3), math.log(1.0))
                total = total + ((t - mean) ** 2 / (2 * torch.exp(2 * log_sigma)) + log_sigma).sum(1)
            i += width
        return total

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return activate(self.layout, out)


# ----------------------------------------------------------------------------------- CTGAN

class _Residual(nn.Module):
    """CTGAN's generator block: Linear -> BatchNorm -> ReLU, concatenated with its input (b, i + o)."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.fc, self.bn = nn.Linear(i, o), nn.BatchNorm1d(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.bn(self.fc(x))), x], dim=1)


class TableGenerator(nn.Module):
    """(noise (b, z_dim), conditional vector (b, cond_dim)) -> raw outputs (b, D); :func:`activate` finishes them.

    ``cond_spans``: [(start, width)] of the one-hot groups the conditional vector covers (the category columns;
    empty: no conditional vector). ``cond_freq`` (a buffer saved with the weights) holds their categories'
    frequencies in the training rows, from which sampling draws the cond vector.
    """

    def __init__(self, example_shape=None, z_dim: int = 128, base_channels: int = 256, num_classes: int = 0,
                 layout: Layout = (), cond_spans: list[tuple[int, int]] = (), noise_dim: int | None = None, **unused):
        super().__init__()
        width, z_dim = base_channels, noise_dim or z_dim  # z_dim: the whole latent; noise_dim: its noise part
        cond_dim = sum(w for _, w in cond_spans)
        self.layout, self.z_dim, self.cond_dim = [tuple(s) for s in layout], z_dim, cond_dim
        self.register_buffer("cond_spans", torch.tensor([list(s) for s in cond_spans], dtype=torch.long).reshape(-1, 2))
        self.register_buffer("cond_freq", torch.full((cond_dim,), 1.0))
        dim, i = sum(w for _, w in layout), z_dim + cond_dim
        self.blocks = nn.Sequential(_Residual(i, width), _Residual(i + width, width))
        self.out = nn.Linear(i + 2 * width, dim)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (b, >= z_dim; a whole latent is cut to its noise) and cond (b, cond_dim); a missing cond is drawn
        from the training frequencies with the latent's two cond numbers (:meth:`draw_cond`)."""
        if self.cond_dim and cond is None:
            cond = self.draw_cond(z)
        z = z[:, :self.z_dim]
        h = z if self.cond_dim == 0 else torch.cat([z, cond], dim=1)
        return self.out(self.blocks(h))

    def draw_cond(self, latent: torch.Tensor) -> torch.Tensor:
        """A cond vector (b, cond_dim) per latent (b, z_dim + 2 + ...): a category column chosen uniformly and
        its category by its frequency in the training rows, both read from the latent's numbers z_dim, z_dim + 1
        (as uniforms, Phi(z)): sampling stays a pure function of the latent."""
        u = torch.special.ndtr(latent[:, self.z_dim:self.z_dim + 2]).clamp(1e-6, 1 - 1e-6)
        spans = self.cond_spans.tolist()
        col = (u[:, 0] * len(spans)).long().clamp(max=len(spans) - 1)
        cond = torch.zeros(len(latent), self.cond_dim, device=latent.device)
        offset = 0
        for j, (_, width) in enumerate(spans):
            m = col == j
            cdf = torch.cumsum(self.cond_freq[offset:offset + width], 0)
            cat = torch.searchsorted(cdf, (u[m, 1] * cdf[-1]).contiguous()).clamp(max=width - 1)
            cond[m.nonzero().squeeze(1), offset + cat] = 1.0
            offset += width
        return cond


class TableDiscriminator(nn.Module):
    """Rows with their conditional vector, ``pac`` at a time: (b, D + cond_dim) -> (b / pac,) logits.

    PacGAN: the discriminator judges ``pac`` rows at once, so a generator that repeats one row is caught.
    """

    def __init__(self, example_shape=None, z_dim: int = 0, base_channels: int = 256, num_classes: int = 0,
                 layout: Layout = (), cond_spans: list[tuple[int, int]] = (), pac: int = 1, **unused):
        super().__init__()
        width, cond_dim = base_channels, sum(w for _, w in cond_spans)
        self.pac, self.cond_dim = pac, cond_dim
        dim = (sum(w for _, w in layout) + cond_dim) * pac
        self.body = nn.Sequential(nn.Linear(dim, width), nn.LeakyReLU(0.2), nn.Dropout(0.5),
                                  nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Dropout(0.5), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:  # rows judged without a cond (e.g. a filter scoring rows) get the empty one
            cond = cond if cond is not None else x.new_zeros(x.shape[0], self.cond_dim)
            x = torch.cat([x, cond], dim=1)
        return self.body(x.reshape(-1, x.shape[1] * self.pac)).squeeze(1)


# ----------------------------------------------------------------------------------- TabDDPM

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (b,) -> (b, dim) (Vaswani et al. 2017, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TableDenoiser(nn.Module):
    """(noisy rows (b, D), timesteps (b,)) -> (b, D): the noise of number outputs, x_0 logits of one-hot groups."""

    def __init__(self, example_shape=None, z_dim: int = 0, base_channels: int = 256, num_classes: int = 0,
                 layout: Layout = (), depth: int = 3, time_dim: int = 128, target_span: tuple[int, int] = (),
                 **unused):
        super().__init__()
        width = base_channels
        self.layout, self.time_dim = [tuple(s) for s in layout], time_dim
        # the risk target's one-hot group (start, width), the class the rows are generated for (TabDDPM's
        # conditioning on y): it is read clean, never noised; ``target_freq`` (a buffer saved with the weights)
        # holds its categories' training frequencies, from which sampling draws each row's class
        self.target = tuple(target_span)
        if self.target:
            starts, i = {}, 0
            for kind, w in self.layout:
                starts[i] = (kind, w)
                i += w
            if len(self.target) != 2 or starts.get(self.target[0]) != ("softmax", self.target[1]):
                raise ValueError(f"target_span {list(self.target)} is not the (start, width) of a category group "
                                 "of the layout")
            self.register_buffer("target_freq", torch.ones(self.target[1]))
        dim = sum(w for _, w in layout)
        self.t_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.proj = nn.Linear(dim, width)
        self.body = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.SiLU())])
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(t) > 1 and bool((t == t[0]).all()):  # sampling: one timestep for every row, embedded once
            temb = self.t_mlp(timestep_embedding(t[:1], self.time_dim)).expand(len(t), -1)
        else:
            temb = self.t_mlp(timestep_embedding(t, self.time_dim))
        h = self.proj(x) + temb                                                      # (b, width)
        return self.out(self.body(h))


# ----------------------------------------------------------------------------------- building a table model

def network_options(cfg, transform: dict | None) -> dict:
    """The options every table network takes beside its shape, from the training config (a Config or its dict:
    PacGAN's pac, the conditional vector, the generator's noise size) and the data's ``transform`` (the column
    layout, the category groups): ``ModelSpec.options``, saved with the model as ``net_options``."""
    if not isinstance(transform, dict) or transform.get("kind") != "table":
        raise ConfigError("a table model needs its data's transform (field 'transform' of kind 'table')")
    tf = TableTransformer.from_json(transform)
    config = cfg if isinstance(cfg, dict) else cfg.to_dict()
    spans = [[s.start, s.width] for s in tf.discrete_spans()] if config.get("table_cond_vector", True) else []
    target = [[s.start, s.width] for s in tf.discrete_spans() if s.column == tf.schema.target]
    return {"layout": [list(x) for x in tf.activation_layout()], "cond_spans": spans,
            "pac": int(config.get("table_pac", 1)), "noise_dim": int(config.get("z_dim", 128)),
            "target_span": target[0] if target and config.get("table_cond_target", False) else []}
