"""The autoregressive method for series: each step drawn from a Gaussian given the steps before it.

    x_0 = m_0(y) + L_0(y) z_0
    x_t = m(x_<t, y) + exp(s(x_<t, y)) * (L(y) z_t)        t = 1 .. T-1,  z_t ~ N(0, I_c)

``SeriesAR`` computes the mean m and the per-channel log-scale s of every step from the steps before it: a
vector autoregression of order ``LINEAR_ORDER`` per class, plus a stack of dilated causal convolutions whose
output starts at zero and is read in units of the VAR's residual spread. L(y) is a full lower-triangular
factor per class, so a step's noise is correlated across channels as a plant's sensors are; L_0(y) gives the
spread of where a window starts.

The linear path is fitted, not learnt: before the first step ``Trainer.bind`` sets it to the least-squares VAR
of each class on the training windows (``var.py``'s fit) and starts L, L_0 at its residuals' and the first
steps' factors; the VAR then stays fixed and the network learns what it misses. That is what makes training
stable. On tep some sensors' VAR residuals are 3e-5 of the data's range: with the VAR as trainable weights, or
the network's output in the data's units, one Adam step moved those sensors' means by hundreds of their
spreads (the loss went from 17 to 48,770 in 100 steps). L is factored as diag(exp(d)) (I + strictly lower) for
the same reason. The order is 1 so that only the first step lacks its lags; at order 2 the second step's
missing lag pushed its samples out of the data's range.

Training maximizes the exact likelihood (teacher forcing: every step of a window in one pass). Sampling is a
pure function of the latent z (b, c * t), the innovations in order, as a flow's: the same z gives the same
series, and ``temperature`` (a noise control) scales it. Each step is clamped to [-CLIP, CLIP] in the model's
units (the data span [-1, 1]), so a fit that is unstable somewhere cannot run off to infinity. Small sets
overfit: on tep's 509 windows a post-hoc classifier told samples from real ones better after 3,000 steps than
after 1,000, so the recipes stop at ``max_steps``, not at the time budget.

Anchors: DeepAR (Salinas et al. 2020) for the Gaussian autoregressive likelihood, WaveNet (van den Oord et al.
2016) for the dilated causal convolutions; the VAR baseline (``var.py``) is this model without the network.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import Config
from genforge.controls import TEMPERATURE
from genforge.errors import GenforgeError
from genforge.models.var import VARBaseline

VALUE_RANGE = "-1,1"
NETWORKS = ("ar",)
EMA_NETWORKS = ("ar",)
LATENT = "ar"
CONTROLS = (TEMPERATURE,)
SAMPLE_BATCH = 256

LINEAR_ORDER = 1        # lags of the linear path: a VAR(1), so only the first step lacks its lags
DILATIONS = (1, 2, 4, 8)  # the causal stack: kernel 3 throughout, so a step sees 2 + 2 * sum = 32 steps back
CLIP = 3.0              # sampled steps are clamped to this (the data span [-1, 1])
MAX_LOG_SCALE = 3.0     # the network's log-scale is bounded by tanh to +- this


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    """One standard-normal innovation per channel and step: c * t (``z_dim`` does not apply)."""
    return math.prod(example_shape)


class _CausalConv(nn.Conv1d):
    """A 1-D convolution whose output at t sees inputs at t and before only (left zero padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class SeriesAR(nn.Module):
    """Windows (b, c, t) and classes (b,) or None -> the mean and log-scale (b, c, t) each of every step given
    the steps before it; ``chol(y)`` and ``chol0(y)`` the noise factors (b, c, c)."""

    def __init__(self, example_shape: tuple[int, int], z_dim: int = 0, base_channels: int = 64,
                 num_classes: int = 0, **unused):
        super().__init__()
        c, self.length = example_shape
        self.channels, self.num_classes = c, num_classes
        k = max(1, num_classes)
        width = base_channels
        # the linear path: a VAR per class, set once from the training windows (``fit_linear``) and kept. Its
        # inputs: the window shifted one step right, and a channel of ones that says "inside the window" (zero in
        # the padding), so the first steps know that their history is missing rather than zero
        self.register_buffer("var_weight", torch.zeros(k, c, LINEAR_ORDER * (c + 1)))  # lags, then indicators
        self.register_buffer("var_bias", torch.zeros(k, c))   # the first step's mean (all its lags are padding)
        self.register_buffer("res_scale", torch.ones(k, c))   # the VAR's residual spread: the network's unit
        self.register_buffer("fitted", torch.zeros(1))        # 1 once fit_linear has run
        # the network: what is not linear, in units of the VAR's residual spread (its output starts at zero)
        self.inp = _CausalConv(c + 1, width, 3)
        self.class_emb = nn.Embedding(k, width)
        self.blocks = nn.ModuleList(_CausalConv(width, 2 * width, 3, dilation=d) for d in DILATIONS)
        self.mixes = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in DILATIONS)
        self.out = nn.Conv1d(width, 2 * c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # the noise factors L = diag(exp(log_diag)) (I + strictly lower part): each row relative to its own scale,
        # so one optimizer step moves a quiet sensor's noise as much, relatively, as a loud one's
        self.chol_log_diag = nn.Parameter(torch.zeros(k, c))
        self.chol_lower = nn.Parameter(torch.zeros(k, c, c))
        self.chol0_log_diag = nn.Parameter(torch.zeros(k, c))
        self.chol0_lower = nn.Parameter(torch.zeros(k, c, c))
        self.receptive_field = max(LINEAR_ORDER, 2 + 2 * sum(DILATIONS))  # steps back that reach a step's output

    @torch.no_grad()
    def fit_linear(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Set the linear path to the least-squares VAR of each class (``var.py``) on the training windows
        (n, c, t), and start the noise factors at its residuals' and at the windows' first steps'."""
        xs = x.detach().cpu().double().numpy()
        ys = y.detach().cpu().numpy() if y is not None and self.num_classes else np.zeros(len(xs), np.int64)
        var = VARBaseline(order=LINEAR_ORDER).fit(xs, ys)
        c, p = self.channels, LINEAR_ORDER
        for k, m in var.classes.items():
            first = xs[ys == k][:, :, 0]                                       # (m, c) where the windows start
            start = first.mean(0)
            cov0 = np.cov(first, rowvar=False).reshape(c, c) if len(first) > 1 else np.zeros((c, c))
            cov0 += (1e-3 * np.trace(cov0) / c + 1e-9) * np.eye(c)
            for j in range(p):  # lag j + 1: its c data columns, then its indicator column
                self.var_weight[k, :, j * (c + 1):j * (c + 1) + c] = _t(m.coef[1 + j * c:1 + (j + 1) * c].T)
            self.var_weight[k, :, c] = _t(m.coef[0] - start)  # inside the window: the VAR's own intercept
            self.var_bias[k] = _t(start)
            self.res_scale[k] = _t(np.diag(m.chol))
            self.chol_log_diag[k], self.chol_lower[k] = _split(m.chol)
            self.chol0_log_diag[k], self.chol0_lower[k] = _split(np.linalg.cholesky(cov0))
        self.fitted.fill_(1)

    def _k(self, y: torch.Tensor | None, b: int, device) -> torch.Tensor:
        return torch.zeros(b, dtype=torch.long, device=device) if y is None or not self.num_classes else y

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t = x.shape
        ones = torch.ones(b, 1, t, dtype=x.dtype, device=x.device)
        h_in = F.pad(torch.cat([x, ones], 1), (1, 0))[..., :t]         # (b, c + 1, t): step t sees x_<t
        k = self._k(y, b, x.device)
        lags = torch.cat([F.pad(h_in, (j, 0))[..., :t] for j in range(LINEAR_ORDER)], 1)  # (b, p (c + 1), t)
        mean = torch.einsum("bij,bjt->bit", self.var_weight[k], lags) + self.var_bias[k][..., None]  # (b, c, t)
        h = self.inp(h_in) + self.class_emb(k)[..., None]              # (b, width, t)
        for conv, mix in zip(self.blocks, self.mixes):
            a, g = conv(F.gelu(h)).chunk(2, 1)
            h = h + mix(torch.tanh(a) * torch.sigmoid(g))              # WaveNet's gated unit, residual
        d_mean, log_scale = self.out(F.gelu(h)).chunk(2, 1)
        mean = mean + self.res_scale[k][..., None] * d_mean
        return mean, MAX_LOG_SCALE * torch.tanh(log_scale / MAX_LOG_SCALE)

    def chol(self, y: torch.Tensor | None, b: int) -> torch.Tensor:
        """The step noise's factor L(y) (b, c, c), lower triangular with a positive diagonal."""
        return _tril(self.chol_log_diag, self.chol_lower)[self._k(y, b, self.chol_lower.device)]

    def chol0(self, y: torch.Tensor | None, b: int) -> torch.Tensor:
        """The first step's factor L_0(y) (b, c, c)."""
        return _tril(self.chol0_log_diag, self.chol0_lower)[self._k(y, b, self.chol_lower.device)]


def _core(net: nn.Module) -> SeriesAR:
    """The network itself, also when torchrun has wrapped it (DDP), whose wrapper has only ``forward``."""
    return getattr(net, "module", net)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))


def _tril(log_diag: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """diag(exp(log_diag)) (I + strictly lower part of ``lower``): (k, c, c)."""
    unit = torch.tril(lower, -1) + torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    return log_diag.exp()[..., None] * unit


def _split(chol: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A lower-triangular factor with a positive diagonal -> (log_diag, lower) that ``_tril`` maps back."""
    d = np.diag(chol)
    return _t(np.log(d)), _t(np.tril(chol / d[:, None], -1))


def nll(net: SeriesAR, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Windows (b, c, t) -> the negative log-likelihood of each step in nats (b, t), summed over channels."""
    b, c, t = x.shape
    mean, log_scale = net(x, y)
    net = _core(net)  # the noise factors are the network's own, outside its forward
    log_scale = torch.cat([torch.zeros_like(log_scale[..., :1]), log_scale[..., 1:]], -1)  # the first step: none
    r = (x - mean) * torch.exp(-log_scale)                             # (b, c, t): L_0 z_0, then L z_t
    l0, l1 = net.chol0(y, b), net.chol(y, b)                           # (b, c, c)
    z0 = torch.linalg.solve_triangular(l0, r[..., :1], upper=False)    # (b, c, 1)
    z1 = torch.linalg.solve_triangular(l1, r[..., 1:], upper=False)    # (b, c, t - 1)
    z = torch.cat([z0, z1], -1)
    log_det = torch.cat([torch.diagonal(l0, dim1=-2, dim2=-1).log().sum(-1, keepdim=True),
                         torch.diagonal(l1, dim1=-2, dim2=-1).log().sum(-1, keepdim=True).expand(b, t - 1)], -1)
    return 0.5 * z.square().sum(1) + log_scale.sum(1) + log_det + 0.5 * c * math.log(2 * math.pi)


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (b, c * t) and classes (b,) or None -> series (b, c, t) in [0, 1] (the model's [-1, 1] shifted,
    as every family's): the steps in order, each its mean and scale given the steps drawn before it, plus its
    innovation z_t through L(y)."""
    net = nets["ar"]
    b = z.shape[0]
    c, t = net.channels, net.length
    z = z.view(b, c, t)
    l0, l1 = net.chol0(y, b), net.chol(y, b)
    x = torch.zeros(b, c, t, dtype=z.dtype, device=z.device)
    field = net.receptive_field
    for i in range(t):
        lo = max(0, i - field - 1)  # the shift by one step: step i reads x[i - field - 1 .. i - 1]
        mean, log_scale = net(x[..., lo:i + 1], y)                     # the last position: step i given the past
        if i == 0:
            step = mean[..., -1] + (l0 @ z[..., 0:1])[..., 0]
        else:
            step = mean[..., -1] + log_scale[..., -1].exp() * (l1 @ z[..., i:i + 1])[..., 0]
        x[..., i] = step.clamp(-CLIP, CLIP)
    return (x + 1) / 2  # every family's generate answers in [0, 1] (the modality's output maps it to units)


class Trainer:
    """One Adam on the network; one step maximizes the windows' likelihood, gradients clipped at norm 1."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        if private is not None:
            raise GenforgeError("differential privacy is not implemented for the autoregressive family")
        self.net = nets["ar"]
        self.optimizers = {"ar": torch.optim.Adam(self.net.parameters(), lr=cfg.g_lr, betas=tuple(cfg.g_betas))}

    def bind(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The whole training split, before the first step: the linear path is set to its per-class VAR. (A
        resumed run's checkpoint then replaces the weights.)"""
        _core(self.net).fit_linear(x, y)

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        return 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on windows (b, c, t) in [-1, 1]: the mean NLL per step and channel (nats)."""
        opt = self.optimizers["ar"]
        loss = nll(self.net, x, y).mean() / x.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        opt.step()
        return {"loss": loss.detach()}
