"""TabDDPM (Kotelnikov et al. 2023, "TabDDPM: Modelling Tabular Data with Diffusion Models").

Its own method module, not a recipe of ``diffusion.py``, because half of its mathematics is another process:
the numbers diffuse as in DDPM (Gaussian noise, the network predicts it: L_simple), but each category diffuses
by **multinomial diffusion** (Hoogeboom et al. 2021): at each step a category is kept with probability
1 - beta_t and otherwise redrawn uniformly among its K values, so

    q(x_t | x_0) = Cat(x_t; abar_t x_0 + (1 - abar_t) / K)
    q(x_{t-1} | x_t, x_0) ∝ [alpha_t x_t + (1 - alpha_t) / K] * [abar_{t-1} x_0 + (1 - abar_{t-1}) / K]

and the network predicts x_0's probabilities; the loss is KL(q(x_{t-1} | x_t, x_0) || q(x_{t-1} | x_t, x0_hat))
(at t = 0, -log of x_0's probability). TabDDPM's loss is L_simple + the multinomial loss averaged over the
category groups. Both processes share one schedule (cosine, T = 1000) and one MLP denoiser
(``tabular.TableDenoiser``), which reads the noisy numbers and the noisy one-hot groups together.

The class condition (``table_cond_target``, set by the table-tabddpm recipe; the paper's setting for
classification tables): when the table's risk target is a category, its one-hot group is not diffused. Training
reads it clean in every noisy row, so the denoiser learns p(row | class); sampling draws each row's class at the training
frequencies (``target_freq``, saved with the weights) and holds it through the chain. The other columns are
then generated for a known class, which is what a downstream classifier learns from.

A table's ``tanh`` and ``gaussian`` spans are the numbers, its ``softmax`` spans the categories (with the
quantile transform, as the paper, numbers are Gaussian already; with the mode-specific transform the mode
indicators diffuse as categories).

Sampling runs the reverse chain (ancestral: categories must be drawn at every step). Each step predicts x_0's
numbers from the noise prediction and clips them to the range the table transform can produce (+-1 for a
``tanh`` span, +-Phi^-1(1 - 1e-4) = +-3.72 for a ``gaussian`` one), then takes the posterior mean
q(x_{t-1} | x_t, x_0), DDPM's ``clip_denoised`` (Ho et al. 2020's sampler for images does the same). Without it
an early step's extreme x_0 survives to the output: on breast cancer (30 correlated numbers) over half of the
generated values sat on a column's bound, and the quality score was 0.65 where it is 0.96 with the clip. Its
randomness is a pure function of the latent (the starting noise of the numbers, and the seed of the rest
taken from its bytes), so the same latent gives the same rows.
"""

from __future__ import annotations

import functools
import hashlib
import math

import torch
from torch import nn

from genforge.config import Config
from genforge.controls import STEPS
from genforge.models.diffusion import make_schedule

VALUE_RANGE = "-1,1"  # nominal: a table's encoding is its transform's (genforge.data.table)
NETWORKS = ("denoiser", "schedule")
EMA_NETWORKS = ("denoiser",)
LATENT = "denoiser"
CONTROLS = (STEPS,)  # sampler steps over respaced timesteps (recipe field sample_steps)
T = 1000
# the largest |value| of an encoded number: tanh spans (a value inside its mode) and gaussian spans (quantile
# normalization squeezes the CDF into [1e-4, 1 - 1e-4]: genforge.data.table.transforms.QUANTILE_EPS)
X0_BOUND = {"tanh": 1.0, "gaussian": 3.7190164854557084}


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    """The starting noise of a row (d,): its number outputs start there (the category groups start uniform,
    drawn from the seed the latent gives)."""
    return int(example_shape[0])


class TableSchedule(nn.Module):
    """The betas' cumulative products abar_t (T,), a buffer saved with the model (as diffusion.NoiseSchedule)."""

    def __init__(self, example_shape=None, z_dim: int = 0, base_channels: int = 0, num_classes: int = 0,
                 kind: str = "cosine", steps: int = T, **unused):
        super().__init__()
        self.register_buffer("alphas_cumprod", make_schedule(kind, steps))


class Groups:
    """The one-hot groups of a layout as one padded tensor, so every group diffuses in the same few operations:
    ``index`` (G, Kmax) the output position of each category (padding points at position 0 and is masked),
    ``valid`` (G, Kmax) bool, ``k`` (G,) each group's number of categories; ``num`` (n_num,) the number outputs.
    ``fixed`` (start, width): a group left out (the class condition, which is given, not diffused)."""

    def __init__(self, layout, device=None, fixed: tuple[int, ...] = ()):
        num, cats, i = [], [], 0
        for kind, width in layout:
            if (i, width) == tuple(fixed):  # the class condition: given, not diffused
                pass
            elif kind == "softmax":
                cats.append((i, width))
            else:
                num.extend(range(i, i + width))
            i += width
        self.num = torch.tensor(num, dtype=torch.long, device=device)
        # each number output's bound (X0_BOUND by its span's kind), for clipping predicted x_0 when sampling
        self.bound = torch.tensor([X0_BOUND.get(kind, math.inf) for kind, width in layout if kind != "softmax"
                                   for _ in range(width)], device=device)
        kmax = max((w for _, w in cats), default=1)
        self.index = torch.zeros(len(cats), kmax, dtype=torch.long, device=device)
        self.valid = torch.zeros(len(cats), kmax, dtype=torch.bool, device=device)
        for g, (start, width) in enumerate(cats):
            self.index[g, :width] = torch.arange(start, start + width)
            self.valid[g, :width] = True
        self.k = self.valid.sum(1).float()                                         # (G,)
        self.count = len(cats)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(b, D) -> (b, G, Kmax), padding 0."""
        return x[:, self.index] * self.valid

    def scatter(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Write (b, G, Kmax) back into a copy of (b, D)."""
        out = x.clone()
        out[:, self.index[self.valid]] = groups[:, self.valid]
        return out

    def log_mix(self, p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log(a p + (1 - a) / K) per group (b, G, Kmax), a (b, 1, 1); padding -inf."""
        out = torch.log((a * p + (1 - a) / self.k[None, :, None]).clamp(min=1e-30))
        return out.masked_fill(~self.valid, float("-inf"))

    def posterior_log(self, x_t: torch.Tensor, p0: torch.Tensor, alpha_t: torch.Tensor,
                      abar_prev: torch.Tensor) -> torch.Tensor:
        """log q(x_{t-1} | x_t, x_0) (b, G, Kmax), x_0 given as probabilities p0 (one-hot for the data)."""
        logits = self.log_mix(x_t, alpha_t) + self.log_mix(p0, abar_prev)
        return logits - torch.logsumexp(logits, dim=2, keepdim=True)

    def softmax(self, out: torch.Tensor) -> torch.Tensor:
        """The network's x_0 logits (b, D) -> probabilities per group (b, G, Kmax)."""
        return torch.softmax(out[:, self.index].masked_fill(~self.valid, float("-inf")), dim=2)

    def draw(self, log_p: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        """One-hot draws (b, G, Kmax) from log-probabilities, by the Gumbel-max trick."""
        u = torch.rand(log_p.shape, generator=noise, device=log_p.device).clamp(1e-10, 1 - 1e-10)
        k = (log_p - torch.log(-torch.log(u))).argmax(2)
        return torch.nn.functional.one_hot(k, log_p.shape[2]).to(log_p.dtype) * self.valid


@functools.lru_cache(maxsize=16)
def groups_of(layout: tuple, device: torch.device, fixed: tuple = ()) -> Groups:
    """One ``Groups`` per (layout, device, fixed), built once: every training step and sampling call reuses it
    (it is never changed after it is built)."""
    return Groups(layout, device, fixed)


def _coefficients(abar: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(abar_t, alpha_t = abar_t / abar_{t-1}, abar_{t-1} with abar_{-1} = 1), each (b, 1)."""
    a_t = abar[t]
    a_prev = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(a_t))
    return a_t[:, None], (a_t / a_prev)[:, None], a_prev[:, None]


def losses(denoiser: nn.Module, abar: torch.Tensor, x0: torch.Tensor, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gaussian L_simple, multinomial loss averaged over groups), each a scalar, for clean rows x0 (b, D)."""
    b = x0.shape[0]
    grp = groups_of(tuple(denoiser.layout), x0.device, denoiser.target)  # the class (target) group stays clean
    num = grp.num
    t = torch.randint(0, len(abar), (b,), generator=noise, device=x0.device)                # (b,)
    a_t, alpha_t, a_prev = _coefficients(abar, t)
    eps = torch.randn((b, len(num)), generator=noise, device=x0.device, dtype=x0.dtype)
    x_t = x0.clone()
    if len(num):
        x_t[:, num] = a_t.sqrt() * x0[:, num] + (1 - a_t).sqrt() * eps                       # q(x_t | x_0)
    zero = torch.zeros((), device=x0.device)
    if not grp.count:
        out = denoiser(x_t, t)
        return ((out[:, num] - eps) ** 2).mean(), zero
    x0_g = grp.gather(x0)                                                                     # (b, G, K)
    xt_g = grp.draw(grp.log_mix(x0_g, a_t[:, :, None]), noise)                               # q(x_t | x_0)
    x_t = grp.scatter(x_t, xt_g)
    out = denoiser(x_t, t)                                                                    # (b, D)
    loss_num = ((out[:, num] - eps) ** 2).mean() if len(num) else zero
    log_true = grp.posterior_log(xt_g, x0_g, alpha_t[:, :, None], a_prev[:, :, None])
    log_model = grp.posterior_log(xt_g, grp.softmax(out), alpha_t[:, :, None], a_prev[:, :, None])
    finite = grp.valid[None]
    diff = torch.where(finite, log_true - log_model, torch.zeros_like(log_true))
    kl = (log_true.exp() * diff).sum(2)                                                       # (b, G)
    nll0 = -(x0_g * torch.where(finite, log_model, torch.zeros_like(log_model))).sum(2)       # t = 0: -log p(x_0|x_1)
    loss_cat = torch.where((t == 0)[:, None], nll0, kl).mean()
    return loss_num, loss_cat


def _seeded(z: torch.Tensor) -> torch.Generator:
    digest = hashlib.sha256(z.detach().cpu().contiguous().numpy().tobytes()).digest()
    return torch.Generator(device=z.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@torch.no_grad()
def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None,
             steps: int | None = None) -> torch.Tensor:
    """Latents (b, n_num) -> rows (b, D): numbers as DDPM's ancestral chain leaves them, categories one-hot.

    ``steps`` (default: all T): a chain over that many evenly spaced timesteps. Both processes are defined by
    abar alone (q(x_t | x_0) for any t), so a step from t to an earlier s uses alpha = abar_t / abar_s, as
    DDPM respacing does (Nichol and Dhariwal 2021, section 4); fewer steps sample faster and a little worse."""
    denoiser, abar = nets["denoiser"], nets["schedule"].alphas_cumprod
    grp = groups_of(tuple(denoiser.layout), z.device, denoiser.target)
    num = grp.num
    b, d = z.shape[0], sum(w for _, w in denoiser.layout)
    noise = _seeded(z)
    x = torch.zeros(b, d, device=z.device)
    if denoiser.target:  # each row's class, drawn at the training frequencies, held through the chain
        start, width = denoiser.target
        cls = torch.multinomial(denoiser.target_freq.float(), b, replacement=True, generator=noise)
        x[:, start:start + width] = torch.nn.functional.one_hot(cls, width).to(x.dtype)
    if len(num):
        x[:, num] = z[:, num]
    if grp.count:  # x_T: uniform over each group's categories
        xg = grp.draw(torch.zeros(b, grp.count, grp.valid.shape[1], device=z.device).masked_fill(~grp.valid, float("-inf")),
                      noise)
        x = grp.scatter(x, xg)
    count = len(abar)
    times = sorted({int(round(v)) for v in torch.linspace(0, count - 1, min(steps or count, count)).tolist()})
    for i in range(len(times) - 1, -1, -1):
        step = times[i]
        t = torch.full((b,), step, device=z.device, dtype=torch.long)
        a_t = abar[t][:, None]
        a_prev = abar[times[i - 1]].expand(b)[:, None] if i > 0 else torch.ones_like(a_t)
        alpha_t = a_t / a_prev
        out = denoiser(x, t)
        nxt = x.clone()
        if len(num):
            # DDPM ancestral step with sigma_t^2 = beta_t: x_0 from the noise prediction, clipped to the encoded
            # range, then the mean of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7; eq. 11 without the clip)
            beta = 1 - alpha_t
            x0 = ((x[:, num] - (1 - a_t).sqrt() * out[:, num]) / a_t.sqrt()).clamp(-grp.bound, grp.bound)
            mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x[:, num]
            if i > 0:
                mean = mean + beta.sqrt() * torch.randn(mean.shape, generator=noise, device=z.device)
            nxt[:, num] = mean
        if grp.count:
            log_p = grp.posterior_log(grp.gather(x), grp.softmax(out), alpha_t[:, :, None], a_prev[:, :, None])
            nxt = grp.scatter(nxt, grp.draw(log_p, noise))
        x = nxt
    return x


class Trainer:
    """One AdamW on the denoiser (TabDDPM: lr 2e-3 with weight decay); one step of both losses."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        self.denoiser, self.schedule = nets["denoiser"], nets["schedule"]
        self.schedule.alphas_cumprod.copy_(make_schedule(cfg.noise_schedule, len(self.schedule.alphas_cumprod)))
        self.optimizers = {"denoiser": torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.g_lr,
                                                         betas=tuple(cfg.g_betas), weight_decay=1e-4)}

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        return 1

    def bind(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The whole training split (N, D): the class condition's frequencies go into the denoiser."""
        if self.denoiser.target:
            start, width = self.denoiser.target
            self.denoiser.target_freq.copy_(x[:, start:start + width].sum(0).to(self.denoiser.target_freq.device))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        loss_num, loss_cat = losses(self.denoiser, self.schedule.alphas_cumprod, x, noise)
        loss = loss_num + loss_cat
        opt = self.optimizers["denoiser"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "loss_gauss": loss_num.detach(), "loss_multinomial": loss_cat.detach()}
