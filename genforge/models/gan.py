"""The GAN method (Goodfellow et al. 2014): losses, defences, the training step and the sampler.

The networks (generator, discriminator) come from ``networks.py``; this file
only says how they learn. Both updates of a step are spelled out in
``Trainer.train_step``, D first (``d_steps`` times), then G, as in the PyTorch
DCGAN example.

Losses (``gan_loss``): "ns", the non-saturating loss; "hinge" (Lim and Ye
2017, as in SNGAN); "wgan-gp" (Gulrajani et al. 2017). Mode-collapse
defences, each a config option: R1 penalty, instance noise, spectral norm and
minibatch std (in the discriminator network), DiffAugment and adaptive
discriminator augmentation (ADA). Conditional: projection discriminator
(``cdcgan``) or ACGAN's auxiliary classifier (``acgan``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genforge.config import Config
from genforge.controls import TRUNCATION

VALUE_RANGE = "-1,1"           # the generator ends in tanh, so real data is scaled to [-1, 1] too
NETWORKS = ("generator", "discriminator")
EMA_NETWORKS = ("generator",)  # released samples come from the EMA generator (Karras et al. 2018)
LATENT = "generator"           # the network whose input is the latent z
CONTROLS = (TRUNCATION,)       # how a caller steers sampling (genforge/controls.py declares them)


def latent_dim(z_dim: int, image_shape: tuple[int, int, int]) -> int:
    return z_dim


# ----------------------------------------------------------------------------------- losses

def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """What D minimizes. ns: -[log D(x) + log(1 - D(G(z)))], with -log sigmoid(t) = softplus(-t)."""
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()  # wgan-gp: the critic's estimate of -W(real, fake)


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """What G minimizes. ns: -log D(G(z)) (Goodfellow et al. 2014, section 3); hinge and wgan: -D(G(z))."""
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None,
                     noise: torch.Generator) -> torch.Tensor:
    """WGAN-GP: E[(||grad D(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample.

    eps is uniform, as in the paper's Algorithm 1 (a widely copied example drew it from a normal distribution).
    """
    eps = torch.rand(real.shape[0], *(1,) * (real.ndim - 1), generator=noise, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, y).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9 without gamma/2): E[||grad_x D(x)||^2] on real data."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


# ----------------------------------------------------------------------------------- augmentation

def _uniform(b: int, noise: torch.Generator, device, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(b, 1, 1, 1, generator=noise, device=device) * (hi - lo) + lo


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move each image by integer pixels shift (b, 2) = (dx, dy), zero-filled; differentiable in x."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / w  # grid_sample reads from the shifted-back position
    theta[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def diffaugment(x: torch.Tensor, policy: list[str], noise: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): the same random, differentiable transforms for real and fake batches,
    so D cannot memorize a small training set and G still gets gradients through them."""
    b, c, h, w = x.shape
    if "color" in policy:
        x = x + _uniform(b, noise, x.device, -0.5, 0.5)                                 # brightness
        if c > 1:
            mean = x.mean(1, keepdim=True)
            x = (x - mean) * _uniform(b, noise, x.device, 0.0, 2.0) + mean              # saturation
        mean = x.mean([1, 2, 3], keepdim=True)
        x = (x - mean) * _uniform(b, noise, x.device, 0.5, 1.5) + mean                  # contrast
    if "translation" in policy:
        limit = max(1, round(h / 8))
        shift = torch.randint(-limit, limit + 1, (b, 2), generator=noise, device=x.device).to(x.dtype)
        x = _translate(x, shift)
    if "cutout" in policy:
        size = h // 2
        top = torch.randint(0, h - size + 1, (b, 1, 1), generator=noise, device=x.device)
        left = torch.randint(0, w - size + 1, (b, 1, 1), generator=noise, device=x.device)
        rows = torch.arange(h, device=x.device)[None, :, None]
        cols = torch.arange(w, device=x.device)[None, None, :]
        hole = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)  # (b, h, w)
        x = x * (~hole)[:, None].to(x.dtype)
    return x


def ada_augment(x: torch.Tensor, p: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """Adaptive discriminator augmentation (Karras et al. 2020): each transform applied to each image with
    probability p. Below p ~ 0.8 the transforms do not leak into G's samples (their section 2.2)."""
    b, _, h, w = x.shape

    def chosen() -> torch.Tensor:  # (b, 1, 1, 1) bool: which images get this transform
        return (torch.rand(b, 1, 1, 1, generator=noise, device=x.device) < p)

    x = torch.where(chosen(), x.flip(3), x)                                              # x-flip
    x = torch.where(chosen(), x.rot90(1, dims=(2, 3)) if h == w else x, x)                # 90-degree turn
    limit = max(1, round(h / 8))
    shift = torch.randint(-limit, limit + 1, (b, 2), generator=noise, device=x.device).to(x.dtype)
    x = torch.where(chosen(), _translate(x, shift), x)                                   # integer shift
    x = torch.where(chosen(), x + _uniform(b, noise, x.device, -0.2, 0.2), x)            # brightness
    mean = x.mean([1, 2, 3], keepdim=True)
    x = torch.where(chosen(), (x - mean) * _uniform(b, noise, x.device, 0.7, 1.4) + mean, x)  # contrast
    return x


# ----------------------------------------------------------------------------------- sampling

def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (b, z_dim) and, for conditional models, classes (b,) -> images (b, c, h, w) in [0, 1]."""
    return (nets["generator"](z, y) + 1) / 2


# ----------------------------------------------------------------------------------- training

class Trainer:
    """Holds the optimizers and the defences' state, and runs one GAN step; ``training/loop.py`` calls it."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        """``private``: differential privacy for the run (``training/privacy.py`` ``PrivateTraining``) or None;
        it wraps the discriminator's optimizer in DP-SGD, the only one that sees real images."""
        self.G, self.D = nets["generator"], nets["discriminator"]
        self.cfg = cfg
        self.kind = cfg.gan_loss
        self.acgan = getattr(self.D, "conditioning", None) == "aux"
        # Separate Adam per network: TTUR-style learning rates are one config line away. fused=True runs
        # each update as one kernel instead of a dozen per tensor.
        optimizers = {
            "generator": torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=tuple(cfg.g_betas), fused=True),
            "discriminator": torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.d_betas),
                                              fused=True),
        }
        self.optimizers = private.wrap(optimizers) if private is not None else optimizers
        # D scores real and fake in one pass when nothing in it mixes samples (same numbers, larger matrix
        # products). BatchNorm and minibatch std do mix them, so then the batches stay apart, as in DCGAN.
        # With DP (dp_epsilon > 0) they stay apart too: Opacus then adds the per-sample gradients of the real
        # and the fake pass row by row, so the unit it clips is the pair (x_i, G(z_i)), and one noisy step is
        # charged per D update. The fakes need no privacy, but clipping them with their real partner does not
        # charge the budget twice (Opacus issue #418: its DCGAN example once took a second, noisy step on the
        # fakes alone); it only bounds their pull on D as well. See genforge/training/privacy.py.
        mixes = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.D.modules())
        self.joint_d = not mixes and not getattr(self.D, "mbstd", False) and private is None
        self.policy = [p for p in cfg.diffaugment.split(",") if p]
        device = next(self.D.parameters()).device
        # ADA's probability and its running overfitting signal live on the device: no sync per step.
        self.ada_p = torch.zeros((), device=device)
        self.ada_sum = torch.zeros((), device=device)
        self.ada_n = torch.zeros((), device=device)

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        """Real batches of ``batch_size`` one step consumes: each D step gets its own."""
        return cfg.d_steps

    def state_dict(self) -> dict:
        return {"ada_p": self.ada_p, "ada_sum": self.ada_sum, "ada_n": self.ada_n}

    def load_state_dict(self, state: dict) -> None:
        for key in ("ada_p", "ada_sum", "ada_n"):
            getattr(self, key).copy_(state[key])

    def d_input(self, x: torch.Tensor, noise: torch.Generator, step: int) -> torch.Tensor:
        """What D sees of an image batch, real or fake: the same augmentations and noise for both."""
        if self.policy:
            x = diffaugment(x, self.policy, noise)
        if self.cfg.ada_target > 0:
            x = ada_augment(x, self.ada_p, noise)
        sigma = self.cfg.instance_noise * max(0.0, 1.0 - step / self.cfg.instance_noise_steps)
        if sigma > 0:  # instance noise (Sonderby et al. 2017): overlapping supports give D a smoother boundary
            x = x + sigma * torch.randn(x.shape, generator=noise, device=x.device, dtype=x.dtype)
        return x

    def discriminate(self, x: torch.Tensor, y: torch.Tensor | None):
        """(adversarial logits, class logits or None) for a batch D has already been given via d_input."""
        if self.acgan:
            return self.D(x, None, with_classes=True)  # ACGAN's D is not told the class: it must find it
        return self.D(x, y), None

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on real images (d_steps * b, c, h, w) in [-1, 1] and their classes, or None.

        A conditional G draws fakes for the batch's own classes, so D compares like with like.
        Returns detached losses.
        """
        cfg, kind = self.cfg, self.kind
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        reals = real.chunk(cfg.d_steps)
        ys = y.chunk(cfg.d_steps) if y is not None else [None] * cfg.d_steps
        b = reals[0].shape[0]

        # (1) Update D d_steps times: ns maximizes log D(x) + log(1 - D(G(z))); hinge and wgan-gp their
        # counterparts. Fakes are detached: G gets no gradient here. The last fake batch is kept for (2).
        for k, (x, yk) in enumerate(zip(reals, ys)):
            z = torch.randn(b, self.cfg.z_dim, generator=noise, device=x.device)  # (b, z_dim)
            fake = self.G(z, yk)                                                 # (b, c, h, w)
            if cfg.r1_weight > 0:
                x = x.detach().requires_grad_(True)
            d_real_in, d_fake_in = self.d_input(x, noise, step), self.d_input(fake.detach(), noise, step)
            opt_d.zero_grad(set_to_none=True)
            if self.joint_d and not self.acgan:
                yy = None if yk is None else torch.cat([yk, yk])
                real_logits, fake_logits = self.D(torch.cat([d_real_in, d_fake_in]), yy).chunk(2)
                real_cls = fake_cls = None
            else:
                (real_logits, real_cls), (fake_logits, fake_cls) = (self.discriminate(d_real_in, yk),
                                                                    self.discriminate(d_fake_in, yk))
            loss_d = d_loss(kind, real_logits, fake_logits)
            if kind == "wgan-gp":
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(self.D, d_real_in, d_fake_in, yk, noise)
            if cfg.r1_weight > 0:
                loss_d = loss_d + cfg.r1_weight / 2 * r1_penalty(real_logits, x)
            if self.acgan:  # the auxiliary classifier learns the classes of real and fake images
                loss_d = loss_d + cfg.acgan_weight * (F.cross_entropy(real_cls, yk) + F.cross_entropy(fake_cls, yk))
            loss_d.backward()
            opt_d.step()
            if cfg.ada_target > 0:
                self.ada_sum += torch.sign(real_logits.detach()).sum()
                self.ada_n += real_logits.shape[0]

        # ADA: nudge p towards the target of the overfitting signal r_t = E[sign(D(x_real))] (their eq. 1).
        if cfg.ada_target > 0 and (step + 1) % cfg.ada_interval == 0:
            processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            if processes > 1:  # under torchrun every process moves p the same way
                dist.all_reduce(self.ada_sum)
                dist.all_reduce(self.ada_n)
            r_t = self.ada_sum / self.ada_n.clamp(min=1)
            adjust = b * processes * cfg.d_steps * cfg.ada_interval / (cfg.ada_kimg * 1000)
            self.ada_p.add_(torch.sign(r_t - cfg.ada_target) * adjust).clamp_(0.0, 1.0)
            self.ada_sum.zero_()
            self.ada_n.zero_()

        # (2) Update G against the just-updated D: ns maximizes log D(G(z)); hinge and wgan maximize D(G(z)).
        # D's weights are frozen so the backward pass computes only the input gradients it needs to reach G.
        opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        fake_logits_g, fake_cls_g = self.discriminate(self.d_input(fake, noise, step), ys[-1])
        loss_g = g_loss(kind, fake_logits_g)
        if self.acgan:
            loss_g = loss_g + cfg.acgan_weight * F.cross_entropy(fake_cls_g, ys[-1])
        loss_g.backward()
        self.D.requires_grad_(True)
        opt_g.step()

        out = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
               "d_real": real_logits.detach().mean(),   # D's mean output (logit or critic value) on real data
               "d_fake": fake_logits.detach().mean()}   # ... and on fakes
        if cfg.ada_target > 0:
            out["ada_p"] = self.ada_p.clone()
        return out
