"""Differential privacy for the networks that see real data: DP-SGD (Abadi et al. 2016) with Opacus.

What is private, and why that is enough:

- VAE family (``vae-mlp``, ``vae-conv``, ``cvae-conv``): encoder and decoder are one model trained on real
  images, so both are trained with DP-SGD, with one clipping norm over all their weights.
- GAN family (``gan-mlp``, ``dcgan``) and CTGAN (``ctgan``, without its conditional vector): only the
  discriminator touches real images (rows). It is trained with
  DP-SGD; the generator learns from the discriminator's outputs on fakes alone, so it is a function of
  private outputs: DP by post-processing (Dwork and Roth 2014, prop. 2.1), the argument of DP-GAN (Xie et
  al. 2018) and GS-WGAN. The EMA copies and sample grids are post-processing too.

One DP-SGD step (``opacus.optimizers.DPOptimizer``): per-sample gradients g_i from Opacus' hooks, each
clipped to norm C (``dp_max_grad_norm``), summed, plus N(0, sigma^2 C^2) noise, divided by the expected
batch size. The batch is a Poisson sample (each training image in with probability q = batch_size / N,
drawn here as a fixed function of a secret and the step, so a resume needs no loader state); that is the
sampling the RDP accountant assumes (Mironov et al. 2019). sigma is solved from the target (epsilon,
delta) and the planned steps with ``opacus.accountants.utils.get_noise_multiplier``; training stops before
a step that would spend more than ``dp_epsilon``.

Refused combinations (``check_config``), each a known pitfall from Opacus' tracker: BatchNorm (mixes the
samples of a batch, so there is no per-sample gradient); the gradient penalty of WGAN-GP and R1 (a second,
double-backward pass that the per-sample hooks do not follow); minibatch std, spectral norm's power
iteration and ADA's data-driven probability (each couples samples or learns from real data outside the
accounted step); conditional GANs (G is fed the real batch's labels, bypassing D).

Tables: every statistic a table model keeps is accounted. The numbers' quantile transform is drawn from
noisy histograms over the schema's public ranges (one Gaussian mechanism, genforge/data/table/transforms.py,
with a ``MARGINAL_SHARE`` of the budget); the run's accountant starts from it (``prior``) and sizes the rest's
noise to what is left. The Gaussian copula (``copula``) learns no weights: :class:`PrivateFit` adds Gaussian
noise to its two statistics (the categories' counts, the normal scores' correlation with each row's score
vector clipped to norm ``COPULA_CLIP`` x sqrt(variables)), three Gaussian mechanisms in all (Li et al. 2014
"DPCopula" do the same with Kendall's tau). The schema itself (kinds, ranges, categories, missing shares) is
treated as public: write it yourself when it is not.

Imports of Opacus are deferred: genforge runs without the ``privacy`` extra until DP is asked for.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genforge.config import Config
from genforge.errors import ConfigError, GenforgeError
from genforge.modalities import of_spec
from genforge.models import MODELS, family_of, networks

# family -> (the networks that see real data, the trainer optimizer that updates them)
PRIVATE = {"vae": (("encoder", "decoder"), "vae"), "gan": (("discriminator",), "discriminator"),
           "ctgan": (("discriminator",), "discriminator")}
PRIVATE_FIT = ("copula",)   # families fitted in one pass with Gaussian noise on their statistics (PrivateFit)
PRIOR_MECHANISM = "Gaussian noise on the numbers' histograms (the quantile transform)"
# Opacus warns when the best RDP order is its largest: the epsilon reported is then a slightly loose (safe)
# upper bound. Kept at Opacus' default orders, so figures match its accountant; the warning is not repeated.
_LARGEST_ALPHA = "Optimal order is the largest alpha"
INSTALL = "differential privacy needs Opacus: pip install 'genforge[privacy]' (or pip install 'opacus>=1.5')"


def enabled(cfg) -> bool:
    return cfg.dp_epsilon > 0


def check_config(cfg, source: str = "config") -> None:
    """Refuse DP settings that are out of range or that DP-SGD cannot honour. Called by
    :func:`genforge.training.check_config`; needs no Opacus. The checks that need the data (delta < 1/N)
    happen in :class:`PrivateTraining`."""
    if not 0.0 < cfg.dp_delta < 1.0:
        raise ConfigError(f"{source}: 'dp_delta' must be in (0, 1) and below 1 / (training images), "
                          f"got {cfg.dp_delta!r}")
    if not enabled(cfg):
        if cfg.dp_delta != Config.dp_delta or cfg.dp_max_grad_norm != Config.dp_max_grad_norm:
            raise ConfigError(f"{source}: 'dp_delta' or 'dp_max_grad_norm' is set but 'dp_epsilon' is 0, which "
                              "means no differential privacy: set dp_epsilon to the privacy budget")
        return
    if not math.isfinite(cfg.dp_epsilon):
        raise ConfigError(f"{source}: 'dp_epsilon' must be a finite number (0 turns differential privacy off), "
                          f"got {cfg.dp_epsilon!r}")
    family, spec = family_of(cfg.model), MODELS[cfg.model]

    def refuse(why: str) -> None:
        raise ConfigError(f"{source}: dp_epsilon is set (differential privacy) but {why}")

    if family not in PRIVATE and family not in PRIVATE_FIT:
        refuse(f"model {cfg.model!r} is a {family} model; differential privacy is implemented for the VAE family, "
               "GAN discriminators and the Gaussian copula")
    if family == "gan":
        if spec.conditional:
            refuse(f"model {cfg.model!r} is a conditional GAN, whose generator is given the real batch's classes: "
                   "the labels would reach G outside the private discriminator. Use cvae-conv for private "
                   "class-conditional generation")
        if cfg.gan_loss == "wgan-gp":
            refuse("gan_loss wgan-gp adds a gradient penalty, a second (double-backward) pass per step whose "
                   "per-sample gradients Opacus cannot compute: use gan_loss ns or hinge")
        if cfg.r1_weight > 0:
            refuse("r1_weight > 0 adds the R1 gradient penalty, a second (double-backward) pass per step whose "
                   "per-sample gradients Opacus cannot compute: set r1_weight: 0")
        if cfg.d_steps != 1:
            refuse(f"d_steps is {cfg.d_steps}: DP-SGD here draws one Poisson batch per step: set d_steps: 1")
        if cfg.mbstd:
            refuse("mbstd feeds each sample the statistics of the whole batch, so no gradient is per-sample: "
                   "set mbstd: false")
        if cfg.spectral_norm:
            refuse("spectral_norm's power iteration is not supported by Opacus' per-sample gradients: "
                   "set spectral_norm: false")
        if cfg.ada_target > 0:
            refuse("ada_target > 0 tunes the augmentation from D's outputs on real images outside the accounted "
                   "step: set ada_target: 0 (DiffAugment is fine)")
        if cfg.d_norm == "batch" and spec.networks["discriminator"] is networks.DCGANDiscriminator:
            refuse("the discriminator uses BatchNorm (d_norm: batch), which mixes the samples of a batch, so "
                   "Opacus has no per-sample gradient: set d_norm: group (GroupNorm) or none")
    if family == "ctgan":  # a table GAN: only its discriminator reads rows, as for the image GANs
        if cfg.table_cond_vector:
            refuse("the conditional vector picks real rows by their categories outside the accounted Poisson batch "
                   "and hands G their labels: set table_cond_vector: false")
        if cfg.table_pac != 1:
            refuse(f"table_pac is {cfg.table_pac}: DP-SGD clips one row's gradient, not a pack's: set table_pac: 1")
        if cfg.gan_loss == "wgan-gp":
            refuse("gan_loss wgan-gp adds a gradient penalty, a second (double-backward) pass per step whose "
                   "per-sample gradients Opacus cannot compute: use gan_loss ns or hinge")
        if cfg.d_steps != 1:
            refuse(f"d_steps is {cfg.d_steps}: DP-SGD here draws one Poisson batch per step: set d_steps: 1")
    if cfg.nan_policy == "rollback":
        refuse("nan_policy rollback would re-run steps whose privacy is already spent: use nan_policy: stop")
    if cfg.eval_every:
        refuse("eval_every scores checkpoints on the validation split and keeps the best one, a choice made on "
               "private data outside the accountant: set eval_every: 0 and evaluate afterwards on data you "
               "may use")
    if cfg.compile:
        refuse("compile is not supported with Opacus' per-sample gradient hooks: set compile: false")
    if cfg.precision == "bf16":  # "auto" trains a private model in fp32
        refuse("per-sample clipping in bf16 is untested here: set precision: fp32 or auto")
    if of_spec(cfg.data).name == "table" and cfg.table_transform != "quantile":
        refuse("table_transform is 'vgm', a mixture fitted to the rows outside the accountant: set table_transform: "
               "quantile (its quantiles are then drawn from noisy histograms)")


@functools.lru_cache(maxsize=64)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Renyi DP of one subsampled-Gaussian step at Opacus' default orders. RDP adds up over steps
    (Mironov 2017, prop. 1), so any history's epsilon is a weighted sum of these: one evaluation per
    (sigma, q), where ``RDPAccountant.get_epsilon`` re-evaluates the slow fractional orders on every call."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    return tuple(rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                 orders=RDPAccountant.DEFAULT_ALPHAS))


def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at ``delta`` of an RDP accountant's history [(sigma, q, steps), ...]: what
    ``opacus.accountants.RDPAccountant.get_epsilon`` returns, computed from the cached per-step RDP."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    if not history:
        return 0.0
    total = sum(n * np.asarray(_rdp_per_step(s, q)) for s, q, n in history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LARGEST_ALPHA)
        eps, _ = rdp.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int,
                         prior: tuple[tuple[float, float, int], ...] = ()) -> float:
    """sigma that spends (epsilon, delta) in ``steps`` steps at rate q after the mechanisms of ``prior`` [(sigma,
    q, steps)] (without one: Opacus' binary search, to 0.01; with one: the same search over the total)."""
    from opacus.accountants.utils import get_noise_multiplier

    if not prior:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LARGEST_ALPHA)
            return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                        steps=steps, accountant="rdp")
    if epsilon_spent(list(prior), delta) >= epsilon:
        raise ValueError("the prior mechanisms spend the whole budget")
    lo, hi = 0.0, 10.0
    while epsilon_spent([*prior, (hi, sample_rate, steps)], delta) > epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            raise ValueError("epsilon too small")
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if epsilon_spent([*prior, (mid, sample_rate, steps)], delta) <= epsilon else (mid, hi)
    return hi


def prior_mechanisms(transform: dict | None) -> tuple[tuple[float, float, int], ...]:
    """The Gaussian mechanisms the data loader already ran on the training rows (a table's noisy histograms)."""
    private = (transform or {}).get("private")
    return ((float(private["noise_multiplier"]), 1.0, 1),) if private else ()


def _check_delta(cfg, n: int, noun: str) -> None:
    """delta must stay below 1 / N: a larger one allows a mechanism that publishes one whole record."""
    if not cfg.dp_delta < 1 / n:
        raise ConfigError(f"'dp_delta' must be below 1 / N = {1 / n:.3g} for the {n} training {noun} "
                          f"(a larger delta allows leaking a whole record), got {cfg.dp_delta!r}")


def _prior_report(prior: tuple[tuple[float, float, int], ...]) -> dict:
    """The report's entries for the data loader's mechanisms, none when it ran none."""
    return {"before_training": PRIOR_MECHANISM, "prior_noise_multipliers": [p[0] for p in prior]} if prior else {}


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise GenforgeError(INSTALL) from None
    return opacus


@functools.cache
def _grad_sampler_class():
    from opacus import GradSampleModule
    from opacus.grad_sample.grad_sample_module import requires_grad

    class GradSampler(GradSampleModule):
        """Opacus' per-sample gradient hooks, silent while the network's weights are frozen.

        The GAN's generator step runs D with frozen weights to reach G; Opacus stored no activations for that
        pass (its forward hook skips frozen layers) and would fail looking for them in the backward hook.
        """

        def capture_backprops_hook(self, module, *args, **kwargs):
            if requires_grad(module):
                return super().capture_backprops_hook(module, *args, **kwargs)

    return GradSampler


def attach_grad_sampler(net: nn.Module) -> nn.Module:
    """Add Opacus' per-sample gradient hooks to ``net`` in place; returns the Opacus wrapper (keep it alive).

    ``net`` itself stays what the trainer calls and what checkpoints save, so its state_dict keys do not change.
    """
    _opacus()
    # Opacus' full backward hooks fire on the first layer too, whose input (the real images) needs no gradient;
    # PyTorch warns about exactly that case, which is expected here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                              "respect to module outputs since no inputs require gradients")
    return _grad_sampler_class()(net, batch_first=True, loss_reduction="mean", strict=True)


class PrivateTraining:
    """DP-SGD for one run: per-sample hooks on the private networks, the DP optimizer (:meth:`wrap`, called by
    the family's ``Trainer`` when it is built with ``private=``), Poisson batches, the RDP accountant, the
    budget, and their resume state.

    The training loop calls :meth:`batch` for each step's indices, :meth:`allows_step` before each step,
    :meth:`log_values` when it logs, :meth:`report` for the model's config.json and
    :meth:`state_dict` / :meth:`load_state_dict` with the checkpoint.
    """

    UNIT = "DP-SGD steps"  # what steps() counts, as the loop says it

    def __init__(self, cfg, nets: dict[str, nn.Module], n_train: int, batch: int, device: torch.device,
                 prior: tuple[tuple[float, float, int], ...] = ()):
        """``batch``: the images one step takes (the loop's global batch), here the expected Poisson batch.
        ``prior``: mechanisms the data loader already ran on the rows [(sigma, q, steps)]: counted first."""
        _opacus()
        from opacus.accountants import RDPAccountant
        from opacus.validators import ModuleValidator

        roles, self.optimizer_name = PRIVATE[family_of(cfg.model)]
        _check_delta(cfg, n_train, "images")
        self.target_epsilon, self.delta, self.max_grad_norm = cfg.dp_epsilon, cfg.dp_delta, cfg.dp_max_grad_norm
        self.prior = tuple(prior)
        self.n = n_train
        self.expected_batch = batch
        self.sample_rate = batch / n_train
        self.roles = roles
        for role in roles:
            problems = ModuleValidator.validate(nets[role], strict=False)
            if problems:
                raise ConfigError(f"the {role} cannot be trained with DP-SGD: {problems[0]}")
        self.samplers = [attach_grad_sampler(nets[role]) for role in roles]
        try:
            self.noise_multiplier = noise_multiplier_for(self.target_epsilon, self.delta, self.sample_rate,
                                                         cfg.max_steps, self.prior)
        except ValueError:
            raise ConfigError(f"'dp_epsilon' {self.target_epsilon:g} is too small for {cfg.max_steps} steps at "
                              f"sampling rate {self.sample_rate:.3g}: the noise would exceed 1e6 times the "
                              "clipping norm. Raise dp_epsilon or lower max_steps") from None
        # Both random streams come from the OS, not from cfg.seed: config.json carries the seed, and whoever
        # knows the noise can subtract it. They are saved in state.pt only (keep it as private as the data).
        self.secret = secrets.randbits(62)
        self.noise = torch.Generator(device=device).manual_seed(secrets.randbits(62))
        self.accountant = RDPAccountant()
        self.optimizer = None  # the DP optimizer, made by wrap() when the trainer builds its optimizers
        self._limit = self._steps_within_budget()

    def wrap(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, torch.optim.Optimizer]:
        """The trainer's optimizers with the private networks' one inside Opacus' ``DPOptimizer`` (clip each
        per-sample gradient, add the noise, count the step in the accountant). Each family's ``Trainer`` calls
        this from its constructor when it is given a ``PrivateTraining``."""
        from opacus.optimizers import DPOptimizer

        self.optimizer = DPOptimizer(optimizers[self.optimizer_name], noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=self.max_grad_norm, expected_batch_size=self.expected_batch,
                                     loss_reduction="mean", generator=self.noise)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return {**optimizers, self.optimizer_name: self.optimizer}

    # ------------------------------------------------------------------ batches
    def batch(self, step: int) -> torch.Tensor:
        """Indices of step ``step``'s Poisson batch: each image in with probability q, independently. (k,) int64.

        A fixed function of (secret, step), so a resumed run draws the batches it would have drawn. The size
        varies around batch_size; it can be 0 (see :meth:`empty_step`).
        """
        gen = torch.Generator().manual_seed((self.secret * 1_000_003 + step) % 2**63)
        return (torch.rand(self.n, generator=gen) < self.sample_rate).nonzero().squeeze(1)

    def empty_step(self) -> dict[str, torch.Tensor]:
        """The DP-SGD step of an empty Poisson batch: no gradient, only the noise, and the accountant still
        counts it (skipping it would change the mechanism the accountant describes). The family's own step
        (the GAN's generator update too) is skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.step()
        return {"dp_empty_batch": torch.ones(())}

    # ------------------------------------------------------------------ accounting
    def steps(self) -> int:
        """DP-SGD steps taken so far (all runs of this training, resumes included)."""
        return sum(n for _, _, n in self.accountant.history)

    def epsilon(self) -> float:
        return epsilon_spent([*self.prior, *self.accountant.history], self.delta)

    def _epsilon_after(self, extra: int) -> float:
        return epsilon_spent([*self.prior, *self.accountant.history,
                              (self.noise_multiplier, self.sample_rate, extra)], self.delta)

    def _steps_within_budget(self) -> int:
        """The total step count at which the budget is spent: the most steps with epsilon <= dp_epsilon."""
        if self._epsilon_after(1) > self.target_epsilon:
            return self.steps()
        lo, hi = 1, 2
        while self._epsilon_after(hi) <= self.target_epsilon and hi < 2**40:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # eps(lo) <= target < eps(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._epsilon_after(mid) <= self.target_epsilon else (lo, mid)
        return self.steps() + lo

    def allows_step(self) -> bool:
        """False once one more step would spend more than dp_epsilon: training stops there."""
        return self.steps() < self._limit

    def describe(self) -> str:
        return (f"genforge: DP-SGD on the {' and '.join(self.roles)}: target epsilon {self.target_epsilon:g} at delta "
                f"{self.delta:g}, noise multiplier {self.noise_multiplier:.3f}, clipping norm {self.max_grad_norm:g}, "
                f"Poisson sampling rate {self.sample_rate:.4f}; budget lasts {self._limit} steps "
                f"({self.steps()} taken, epsilon {self.epsilon():.3f} spent)")

    def log_values(self) -> dict[str, float]:
        return {"epsilon": self.epsilon()}

    def report(self) -> dict:
        """What the model's config.json records, and ``genforge info`` prints."""
        return {"mechanism": "DP-SGD (Opacus)", "epsilon": round(self.epsilon(), 4), "delta": self.delta,
                "target_epsilon": self.target_epsilon, "accountant": "rdp", "sampling": "poisson",
                "sample_rate": self.sample_rate, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm, "steps": self.steps(), "training_images": self.n,
                "private_networks": list(self.roles),
                **_prior_report(self.prior)}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Plain lists, numbers and one tensor: loadable with ``torch.load(weights_only=True)``."""
        return {"history": [[float(s), float(q), int(n)] for s, q, n in self.accountant.history],
                "noise_multiplier": self.noise_multiplier, "secret": self.secret, "noise_rng": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the accountant, the noise and the batches where the checkpoint left them. The noise
        multiplier is the run's own: a resume with a longer max_steps stops when the budget is spent."""
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.noise_multiplier = float(state["noise_multiplier"])
        self.optimizer.noise_multiplier = self.noise_multiplier
        self.secret = int(state["secret"])
        self.noise.set_state(state["noise_rng"])
        self._limit = self._steps_within_budget()


class PrivateFit:
    """Differential privacy for a model fitted in one pass (``PRIVATE_FIT``: the Gaussian copula): its method
    adds Gaussian noise of ``noise_multiplier`` x its statistic's L2 sensitivity to each statistic
    (``MECHANISMS`` of them, each a full-data Gaussian mechanism, q = 1) from ``rng``, a stream from the OS, and
    calls :meth:`record`. The loop drives it like :class:`PrivateTraining`: one step, on every row."""

    UNIT = "Gaussian mechanisms"

    def __init__(self, cfg, method, n_train: int, prior: tuple[tuple[float, float, int], ...] = ()):
        _check_delta(cfg, n_train, "rows")
        self.target_epsilon, self.delta, self.n = cfg.dp_epsilon, cfg.dp_delta, n_train
        self.prior, self.mechanisms = tuple(prior), int(method.MECHANISMS)
        try:
            self.noise_multiplier = noise_multiplier_for(self.target_epsilon, self.delta, 1.0, self.mechanisms,
                                                         self.prior)
        except ValueError:
            raise ConfigError(f"'dp_epsilon' {self.target_epsilon:g} is too small for the fit's {self.mechanisms} "
                              "Gaussian mechanisms (the noise would exceed 1e6 times the sensitivity)") from None
        self.rng = np.random.default_rng(secrets.randbits(64))  # never cfg.seed: whoever knows it knows the noise
        self.history: list[tuple[float, float, int]] = []

    def record(self, mechanisms: int) -> None:
        """The fit ran ``mechanisms`` Gaussian mechanisms of this noise multiplier (at most ``MECHANISMS``)."""
        if self.steps() + mechanisms > self.mechanisms:
            raise GenforgeError(f"the private fit ran {self.steps() + mechanisms} mechanisms, budgeted for "
                                f"{self.mechanisms}")
        self.history.append((self.noise_multiplier, 1.0, int(mechanisms)))

    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def allows_step(self) -> bool:
        return not self.history          # one fit, then the budget is spent

    def batch(self, step: int) -> torch.Tensor:
        return torch.arange(self.n)      # the fit reads every row (bound to the trainer); nothing is sampled

    def epsilon(self) -> float:
        return epsilon_spent([*self.prior, *self.history], self.delta)

    def describe(self) -> str:
        return (f"genforge: differential privacy by Gaussian noise on the fit's statistics: target epsilon "
                f"{self.target_epsilon:g} at delta {self.delta:g}, noise multiplier {self.noise_multiplier:.3f} "
                f"for {self.mechanisms} mechanism(s) after the {len(self.prior)} of the data loader")

    def log_values(self) -> dict[str, float]:
        return {"epsilon": self.epsilon()}

    def report(self) -> dict:
        return {"mechanism": "Gaussian mechanisms on the fitted statistics", "epsilon": round(self.epsilon(), 4),
                "delta": self.delta, "target_epsilon": self.target_epsilon, "accountant": "rdp",
                "noise_multiplier": self.noise_multiplier, "steps": self.steps(), "training_images": self.n,
                "private_networks": ["copula"], "statistics": ["category counts", "score correlation"],
                **_prior_report(self.prior)}

    def state_dict(self) -> dict:
        return {"history": [[float(s), float(q), int(n)] for s, q, n in self.history],
                "noise_multiplier": self.noise_multiplier}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self.noise_multiplier = float(state["noise_multiplier"])


def make_private(cfg, method, nets: dict[str, nn.Module], n_train: int, batch: int, device: torch.device,
                 transform: dict | None):
    """The run's privacy mechanism: DP-SGD for the families that learn by gradients, a noisy one-pass fit for
    the copula; both count the data loader's own mechanisms (a table's noisy histograms) first."""
    prior = prior_mechanisms(transform)
    if family_of(cfg.model) in PRIVATE_FIT:
        return PrivateFit(cfg, method, n_train, prior)
    return PrivateTraining(cfg, nets, n_train, batch, device, prior)


def check_resume(cfg, ckpt: Path | None, state: dict | None = None) -> None:
    """A run keeps its privacy setting across a resume: turning DP on half-way (the first steps were not
    private) or off (the model would be released as if private) is refused before anything is written.

    Two records say whether the run was private: the checkpoint's ``config.json`` and the resume state's own
    ``privacy`` entry (``state``, already read and verified by the caller). Either one is enough to refuse, so
    a damaged or deleted ``config.json`` cannot make a private run resume without DP.
    """
    if ckpt is None:
        return
    try:
        meta = json.loads((Path(ckpt) / "config.json").read_text())
    except (OSError, ValueError):
        meta = None  # the state's own record still decides
    was = (isinstance(meta, dict) and "privacy" in meta) or (isinstance(state, dict) and "privacy" in state)
    if was and not enabled(cfg):
        raise ConfigError(f"{ckpt}: this run was trained with differential privacy; resuming it without "
                          "dp_epsilon would void the guarantee")
    if enabled(cfg) and not was:
        raise ConfigError(f"{ckpt}: this run was trained without differential privacy; dp_epsilon cannot be "
                          "turned on half-way (start a new run)")
