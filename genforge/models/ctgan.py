"""CTGAN (Xu et al. 2019, "Modeling Tabular Data using Conditional GAN"): a conditional GAN for tables.

Its own method module, not a recipe of ``gan.py``, because the mathematics of a step differs:

- **the conditional vector**: G is fed, beside the noise, a one-hot choice of one category of one category
  column (cond, (b, cond_dim)); G is trained to produce rows with that category (a cross-entropy term on that
  column's output), and D judges rows together with the cond they were drawn for;
- **training by sampling**: the column is drawn uniformly, its category with probability proportional to the
  log of its frequency, and the real rows D sees are drawn *among the rows with that category* (section 4.3).
  Rare categories are shown as often as their logarithm says, so they do not vanish. This needs the whole
  training table, not the loop's batch: :meth:`Trainer.bind` receives it;
- **PacGAN** (Lin et al. 2018): D judges ``pac`` rows at once (``pac: 10`` in the recipe);
- WGAN-GP loss on the packed rows (``gan_loss: wgan-gp``), Gumbel-softmax (tau 0.2) on the one-hot outputs.

Sampling draws the cond vector from the categories' real frequencies, so the rows follow the data;
``genforge sample --where "sex=F"`` sets it to the asked category instead (conditional sampling by the
conditional vector), and every other condition is met by rejection (:mod:`genforge.generation`).

Differential privacy (``dp_epsilon``): DP-SGD on D only (``training/privacy.py``). Training by sampling picks
real rows by their categories outside the accounted Poisson batch, and the cond vector would hand G real
labels, so a private CTGAN is built without the conditional vector (``cond_vector: false``, pac 1, a loss of
``ns`` or ``hinge``): a plain table GAN whose generator learns only through the private discriminator.

The latent of a CTGAN row is [noise (z_dim) | 2 numbers choosing the cond | one number per output for the
Gumbel draw], all N(0, 1): sampling is a pure function of the latent, as for every genforge model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import Config
from genforge.models.gan import d_loss, g_loss
from genforge.models.tabular import activate, gumbel_softmax

VALUE_RANGE = "-1,1"  # nominal: a table's encoding is its transform's (genforge.data.table)
NETWORKS = ("generator", "discriminator")
EMA_NETWORKS = ("generator",)
LATENT = "generator"
CONTROLS = ()
TAU = 0.2  # Gumbel-softmax temperature of the one-hot outputs (CTGAN)


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    """[noise (z_dim) | 2 numbers for the cond | one number per output (d) for the Gumbel draws]."""
    return z_dim + 2 + int(example_shape[0])


class CondSampler:
    """The conditional vector's distributions and, once bound to the training rows, training by sampling."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = spans                                   # [(start, width)] in the encoded row
        self.offsets = [sum(w for _, w in spans[:k]) for k in range(len(spans))]  # in the cond vector
        self.dim = sum(w for _, w in spans)
        self.rows = None

    def bind(self, x: torch.Tensor) -> torch.Tensor:
        """Index the training rows (N, D) by category; returns the real frequencies (cond_dim,) G samples with."""
        self.rows, freq, logp = [], [], []
        for start, width in self.spans:
            k = x[:, start:start + width].argmax(1)                                          # (N,)
            self.rows.append([torch.nonzero(k == c).squeeze(1) for c in range(width)])
            counts = torch.bincount(k, minlength=width).float()
            freq.append(counts / counts.sum())
            lf = torch.log(counts + 1) * (counts > 0)                                         # never an unseen one
            logp.append(lf / lf.sum())
        self.logp = logp
        return torch.cat(freq) if freq else torch.zeros(0)

    def draw(self, b: int, noise: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cond (b, cond_dim), column (b,), category (b,)): the column uniformly, its category by log-frequency."""
        col = torch.randint(0, len(self.spans), (b,), generator=noise, device="cpu")
        cat = torch.empty(b, dtype=torch.long)
        for j in range(len(self.spans)):
            m = col == j
            if m.any():
                cat[m] = torch.multinomial(self.logp[j], int(m.sum()), replacement=True, generator=noise)
        return self.one_hot(col, cat, device), col, cat

    def real_rows(self, col: torch.Tensor, cat: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        """One training row index per (column, category), drawn uniformly among the rows that have it."""
        idx = torch.empty(len(col), dtype=torch.long)
        for j, pools in enumerate(self.rows):
            for c, pool in enumerate(pools):
                m = (col == j) & (cat == c)
                if m.any():
                    idx[m] = pool[torch.randint(0, len(pool), (int(m.sum()),), generator=noise)]
        return idx

    def categories_of(self, x: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """The category (b,) each row of ``x`` has in its chosen column ``col`` (b,)."""
        cat = torch.empty(len(col), dtype=torch.long)
        for j, (start, width) in enumerate(self.spans):
            m = col == j
            cat[m] = x[m.to(x.device), start:start + width].argmax(1).cpu()
        return cat

    def one_hot(self, col: torch.Tensor, cat: torch.Tensor, device) -> torch.Tensor:
        cond = torch.zeros(len(col), self.dim)
        cond[torch.arange(len(col)), torch.tensor(self.offsets, dtype=torch.long)[col] + cat] = 1.0
        return cond.to(device)


def _uniform(z: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(z).clamp(1e-6, 1 - 1e-6)


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (b, latent_dim) and an optional cond vector (b, cond_dim) -> rows (b, D): tanh numbers, one-hot
    groups as (nearly one-hot) Gumbel-softmax draws with the latent's own Gumbel numbers."""
    G = nets["generator"]
    d = sum(w for _, w in G.layout)
    u_gumbel = _uniform(z[:, G.z_dim + 2:G.z_dim + 2 + d])
    out = G(z, None if y is None else y.to(z.dtype))
    gumbel = -torch.log(-torch.log(u_gumbel))
    parts, i = [], 0
    for kind, width in G.layout:
        h = out[:, i:i + width]
        parts.append(torch.tanh(h) if kind == "tanh" else h if kind == "gaussian"
                     else torch.softmax((h + gumbel[:, i:i + width]) / TAU, dim=1))
        i += width
    return torch.cat(parts, dim=1)


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None,
                     noise: torch.Generator) -> torch.Tensor:
    """WGAN-GP on packed rows: one eps per pack, the norm over each pack's gradient (CTGAN's calc_gradient_penalty)."""
    pac = D.pac
    eps = torch.rand(real.shape[0] // pac, 1, 1, generator=noise, device=real.device)
    eps = eps.repeat(1, pac, real.shape[1]).view(-1, real.shape[1])
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, cond).sum(), x_hat, create_graph=True)
    return (grad.reshape(-1, pac * real.shape[1]).norm(dim=1) - 1).square().mean()


class Trainer:
    """D then G each step, as ``gan.py``, with the conditional vector and training by sampling."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        self.G, self.D, self.cfg = nets["generator"], nets["discriminator"], cfg
        self.kind = cfg.gan_loss
        self.sampler = CondSampler([tuple(s) for s in self.G.cond_spans.tolist()]) if self.G.cond_dim else None
        optimizers = {
            "generator": torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=tuple(cfg.g_betas),
                                          weight_decay=1e-6),
            "discriminator": torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.d_betas),
                                              weight_decay=1e-6),
        }
        self.optimizers = private.wrap(optimizers) if private is not None else optimizers
        self.data = None

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        return cfg.d_steps

    def bind(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The whole training table (N, D), for training by sampling; the real frequencies go into G."""
        self.data = x
        if self.sampler is not None:
            self.G.cond_freq.copy_(self.sampler.bind(x.cpu()).to(self.G.cond_freq.device))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _cond(self, b: int, real: torch.Tensor, noise: torch.Generator):
        """(cond for G, real rows for D, cond for those rows, chosen column, chosen category)."""
        if self.sampler is None:
            return None, real, None, None, None
        cond, col, cat = self.sampler.draw(b, noise, real.device)
        if self.data is None:  # not bound: the batch's own rows, each conditioned on its own category
            cat = self.sampler.categories_of(real, col)
            cond = self.sampler.one_hot(col, cat, real.device)
            return cond, real, cond, col, cat
        # real rows drawn for a shuffled copy of the cond (CTGAN: D must not learn cond from the pairing alone)
        perm = torch.randperm(b, generator=noise)
        rows = self.sampler.real_rows(col[perm], cat[perm], noise).to(self.data.device)
        return cond, self.data[rows], cond[perm.to(cond.device)], col, cat

    def _fake(self, b: int, cond, noise: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(b, self.G.z_dim, generator=noise, device=device)
        raw = self.G(z, cond)
        return raw, activate(self.G.layout, raw, tau=TAU, noise=noise)

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on a batch of encoded rows (d_steps * b, D)."""
        cfg, pac = self.cfg, self.D.pac
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        for chunk in real.chunk(cfg.d_steps):
            b = chunk.shape[0] - chunk.shape[0] % pac
            if b == 0:
                continue
            # (1) update D: WGAN-GP (CTGAN) or ns/hinge, on packs of pac rows with their cond vectors
            cond, x, cond_real, _, _ = self._cond(b, chunk[:b], noise)
            _, fake = self._fake(b, cond, noise, chunk.device)
            fake = fake.detach()
            opt_d.zero_grad(set_to_none=True)
            real_logits, fake_logits = self.D(x, cond_real), self.D(fake, cond)
            loss_d = d_loss(self.kind, real_logits, fake_logits)
            if self.kind == "wgan-gp":
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(self.D, x, fake, cond, noise)
            loss_d.backward()
            opt_d.step()
        # (2) update G against the updated D, plus the cross-entropy that makes it honour the cond vector
        b = real.chunk(cfg.d_steps)[-1].shape[0]
        b -= b % pac
        cond, _, _, col, cat = self._cond(b, real[:b], noise)
        raw, fake = self._fake(b, cond, noise, real.device)
        opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        loss_g = g_loss(self.kind, self.D(fake, cond))
        loss_cond = torch.zeros((), device=real.device)
        if cond is not None:
            for j, (start, width) in enumerate(self.sampler.spans):  # each row's chosen column, summed over rows
                m = (col == j).to(raw.device)
                if m.any():
                    loss_cond = loss_cond + F.cross_entropy(raw[m, start:start + width], cat[col == j].to(raw.device),
                                                            reduction="sum")
            loss_cond = loss_cond / b
        (loss_g + loss_cond).backward()
        self.D.requires_grad_(True)
        opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "loss_cond": loss_cond.detach(),
                "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
