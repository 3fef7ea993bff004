"""A Gaussian copula for tables: genforge's own baseline, beside SDV's GaussianCopula.

Its own method module because it has no gradient training: it is fitted in one pass over the training rows.
Every column becomes a standard-normal score, the scores' correlation matrix is the model, and sampling draws
correlated normal scores and maps each back through its column's marginal (Sklar's theorem; as SDV's
GaussianCopula and Patki et al. 2016):

- a number span of the quantile transform (``gaussian``) already is Phi^-1 of the value's empirical CDF, so its
  score is the encoded value itself, and the transform's inverse is the marginal's;
- a one-hot group (a category, or a number's missing/present pair) gets the score Phi^-1(u), u drawn uniformly
  inside its category's interval [F(k-1), F(k)) of the cumulative frequencies; back, Phi(score) falls in
  one interval, which is the category.

Correlation is Pearson's on the scores, shrunk by 1e-6 towards the identity so that its Cholesky factor exists.
The copula needs the quantile transform (``table_transform: quantile``); with mode-specific normalization a
number is two spans whose scores would not be normal.

The ``copula`` network holds buffers only (correlation's Cholesky factor, the groups' cumulative frequencies):
its weights are safetensors like any other model's, and sampling is a pure function of the latent (one
standard-normal number per copula variable).
"""

from __future__ import annotations

import torch
from torch import nn

from genforge.config import Config

VALUE_RANGE = "-1,1"  # nominal: a table's encoding is its transform's (genforge.data.table)
NETWORKS = ("copula",)
EMA_NETWORKS = ()
LATENT = "copula"
CONTROLS = ()


def variables(layout) -> list[tuple[str, int, int]]:
    """[(kind, start, width)]: one copula variable per number output and per one-hot group."""
    out, i = [], 0
    for kind, width in layout:
        if kind == "softmax":
            out.append(("softmax", i, width))
        else:
            out.extend((kind, i + j, 1) for j in range(width))
        i += width
    return out


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    """One standard-normal number per output (d,); the first V (one per copula variable) are used."""
    return int(example_shape[0])


class GaussianCopula(nn.Module):
    """The fitted copula: ``chol`` (V, V), the Cholesky factor of the scores' correlation; ``cdf`` (D,), each
    one-hot group's cumulative frequencies at its own positions; ``fitted`` (1,) whether :meth:`fit` ran."""

    def __init__(self, example_shape=None, z_dim: int = 0, base_channels: int = 0, num_classes: int = 0,
                 layout=(), **unused):
        super().__init__()
        self.layout = [tuple(s) for s in layout]
        self.vars = variables(self.layout)
        v, d = len(self.vars), sum(w for _, w in self.layout)
        self.register_buffer("chol", torch.eye(v))
        self.register_buffer("cdf", torch.zeros(d))
        self.register_buffer("fitted", torch.zeros(1))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, noise: torch.Generator) -> None:
        """Fit on every training row (N, D) at once."""
        scores = torch.empty(x.shape[0], len(self.vars), dtype=torch.float64)
        for j, (kind, start, width) in enumerate(self.vars):
            g = x[:, start:start + width].double().cpu()
            if kind != "softmax":
                if kind == "tanh":
                    raise ValueError("the Gaussian copula needs the quantile transform (table_transform: quantile)")
                scores[:, j] = g[:, 0]
                continue
            k = g.argmax(1)
            freq = torch.bincount(k, minlength=width).double() / len(k)
            cdf = torch.cumsum(freq, 0)
            self.cdf[start:start + width] = cdf.float()
            lo = cdf[k] - freq[k]
            u = lo + torch.rand(len(k), generator=noise, dtype=torch.float64) * freq[k]
            scores[:, j] = torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6))
        scores = (scores - scores.mean(0)) / scores.std(0).clamp(min=1e-12)
        corr = scores.T @ scores / max(1, len(scores) - 1)
        corr = (1 - 1e-6) * corr + 1e-6 * torch.eye(len(corr), dtype=torch.float64)
        self.chol.copy_(torch.linalg.cholesky(corr).float())
        self.fitted.fill_(1.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Standard-normal latents (b, V) -> encoded rows (b, D)."""
        s = z[:, :len(self.vars)] @ self.chol.T                                 # (b, V): correlated scores
        out = torch.zeros(z.shape[0], sum(w for _, w in self.layout), device=z.device)
        for j, (kind, start, width) in enumerate(self.vars):
            if kind != "softmax":
                out[:, start] = s[:, j]
                continue
            u = torch.special.ndtr(s[:, j]).contiguous()
            k = torch.searchsorted(self.cdf[start:start + width].contiguous(), u[:, None]).squeeze(1).clamp(max=width - 1)
            out[torch.arange(len(k)), start + k] = 1.0
        return out


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return nets["copula"](z)


class Trainer:
    """Fits the copula on the whole training table at the first step (:meth:`bind` hands it the table; without
    it, the first batch). Later steps change nothing: a copula recipe runs ``max_steps: 1``."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        self.copula = nets["copula"]
        self.optimizers = {}
        self.data = None

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        return 1

    def bind(self, x: torch.Tensor) -> None:
        self.data = x

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        if not bool(self.copula.fitted):
            self.copula.fit(self.data if self.data is not None else x, noise)
        return {"fitted": self.copula.fitted[0].clone()}
