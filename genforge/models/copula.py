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

Under differential privacy (``fit_private``, driven by genforge.training.privacy.PrivateFit) the two statistics
get Gaussian noise (``MECHANISMS``: the one-hot groups' counts, L2 sensitivity sqrt(groups); the scores' sum
of outer products, each row's score vector clipped to norm ``COPULA_CLIP`` x sqrt(variables), so sensitivity
that norm squared), the scores are taken as standard normal (no data mean or spread), the correlation is read
off the noisy sum's diagonal, and its eigenvalues are floored at 1e-3 so that it stays a correlation. The
numbers' marginals are the quantile transform's, drawn from noisy histograms by the data loader.
The copula needs the quantile transform (``table_transform: quantile``); with mode-specific normalization a
number is two spans whose scores would not be normal.

The ``copula`` network holds buffers only (correlation's Cholesky factor, the groups' cumulative frequencies):
its weights are safetensors like any other model's, and sampling is a pure function of the latent (one
standard-normal number per copula variable).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from genforge.config import Config

VALUE_RANGE = "-1,1"  # nominal: a table's encoding is its transform's (genforge.data.table)
NETWORKS = ("copula",)
EMA_NETWORKS = ()
LATENT = "copula"
CONTROLS = ()
MECHANISMS = 2        # differential privacy: the Gaussian mechanisms of fit_private
COPULA_CLIP = 1.5     # ... each row's score vector clipped to this x sqrt(variables) (its expected norm: 1 x)


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

    def scores(self, x: torch.Tensor, freqs: dict, noise: torch.Generator) -> torch.Tensor:
        """Each row's copula variables as normal scores (N, V) float64: a number as encoded; a one-hot group's
        category k as Phi^-1(u), u uniform in [F(k-1), F(k)) of the group's frequencies ``freqs[start]``, whose
        cumulative sums are stored as the model's ``cdf``."""
        scores = torch.empty(x.shape[0], len(self.vars), dtype=torch.float64)
        for j, (kind, start, width) in enumerate(self.vars):
            g = x[:, start:start + width].double().cpu()
            if kind != "softmax":
                if kind == "tanh":
                    raise ValueError("the Gaussian copula needs the quantile transform (table_transform: quantile)")
                scores[:, j] = g[:, 0]
                continue
            k = g.argmax(1)
            freq = freqs[start]
            cdf = torch.cumsum(freq, 0)
            self.cdf[start:start + width] = cdf.float()
            lo = cdf[k] - freq[k]
            u = lo + torch.rand(len(k), generator=noise, dtype=torch.float64) * freq[k]
            scores[:, j] = torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6))
        return scores

    @torch.no_grad()
    def fit(self, x: torch.Tensor, noise: torch.Generator) -> None:
        """Fit on every training row (N, D) at once."""
        freqs = {start: torch.bincount(x[:, start:start + width].cpu().argmax(1), minlength=width).double() / len(x)
                 for kind, start, width in self.vars if kind == "softmax"}
        scores = self.scores(x, freqs, noise)
        scores = (scores - scores.mean(0)) / scores.std(0).clamp(min=1e-12)
        corr = scores.T @ scores / max(1, len(scores) - 1)
        corr = (1 - 1e-6) * corr + 1e-6 * torch.eye(len(corr), dtype=torch.float64)
        self.chol.copy_(torch.linalg.cholesky(corr).float())
        self.fitted.fill_(1.0)

    @torch.no_grad()
    def fit_private(self, x: torch.Tensor, sigma: float, rng) -> int:
        """Fit on every training row (N, D) with Gaussian noise of ``sigma`` x sensitivity on each statistic
        (the module docstring), from ``rng`` (numpy, kept secret by the caller). Returns the mechanisms run."""
        x = x.double().cpu()
        groups = [(start, width) for kind, start, width in self.vars if kind == "softmax"]
        ran = 0
        freqs = {}
        if groups:  # one mechanism: every group's counts at once (a row adds one to one slot of each group)
            scale = sigma * math.sqrt(len(groups))
            for start, width in groups:
                counts = x[:, start:start + width].sum(0).numpy() + rng.normal(0.0, scale, width)
                counts = np.clip(counts, 0.0, None) + 1e-3 * max(1.0, scale)
                freqs[start] = torch.from_numpy(counts / counts.sum())
            ran += 1
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        scores = self.scores(x, freqs, gen)
        # the second mechanism: the sum of outer products of the clipped score vectors, noise on one triangle
        bound = COPULA_CLIP * math.sqrt(len(self.vars))
        norms = scores.norm(dim=1, keepdim=True).clamp(min=1e-12)
        clipped = scores * torch.clamp(bound / norms, max=1.0)
        noise = torch.from_numpy(np.triu(rng.normal(0.0, sigma * bound ** 2, (len(self.vars),) * 2)))
        total = clipped.T @ clipped + noise + torch.triu(noise, 1).T
        ran += 1
        diag = torch.diagonal(total).clamp(min=1e-6).sqrt()
        corr = total / diag[:, None] / diag[None, :]
        w, v = torch.linalg.eigh(corr)
        corr = v @ torch.diag(w.clamp(min=1e-3)) @ v.T                           # the nearest correlation-like
        d = torch.diagonal(corr).sqrt()
        self.chol.copy_(torch.linalg.cholesky(corr / d[:, None] / d[None, :]).float())
        self.fitted.fill_(1.0)
        return ran

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
        self.private = private  # genforge.training.privacy.PrivateFit under differential privacy

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        return 1

    def bind(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.data = x

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        if not bool(self.copula.fitted):
            rows = self.data if self.data is not None else x
            if self.private is not None:
                self.private.record(self.copula.fit_private(rows, self.private.noise_multiplier, self.private.rng))
            else:
                self.copula.fit(rows, noise)
        return {"fitted": self.copula.fitted[0].clone()}
