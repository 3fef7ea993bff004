"""The GAN method (Goodfellow et al. 2014): losses, the training step and the sampler.

The networks (generator, discriminator) come from ``networks.py``; this file
only says how they learn. Both updates of a step are spelled out below, D
first, then G, as in the PyTorch DCGAN example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import Config

VALUE_RANGE = "-1,1"           # the generator ends in tanh, so real data is scaled to [-1, 1] too
NETWORKS = ("generator", "discriminator")
EMA_NETWORKS = ("generator",)  # released samples come from the EMA generator (Karras et al. 2018)
LATENT = "generator"           # the network whose input is the latent z


def latent_dim(z_dim: int, image_shape: tuple[int, int, int]) -> int:
    return z_dim


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], written with softplus for stability: -log sigmoid(t) = softplus(-t)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    return F.softplus(-fake_logits).mean()


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (b, z_dim) and, for conditional models, classes (b,) -> images (b, c, h, w) in [0, 1]."""
    return (nets["generator"](z, y) + 1) / 2


class Trainer:
    """Holds the optimizers and runs one GAN step; the loop in ``training/loop.py`` calls it."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module]):
        self.G, self.D = nets["generator"], nets["discriminator"]
        self.z_dim = cfg.z_dim
        # Separate Adam per network: TTUR-style learning rates are one config line away. fused=True runs
        # each update as one kernel instead of a dozen per tensor.
        self.optimizers = {
            "generator": torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=tuple(cfg.g_betas), fused=True),
            "discriminator": torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.d_betas),
                                              fused=True),
        }
        # Without BatchNorm, D scores real and fake in one pass (same numbers, larger matrix products).
        # With BatchNorm the two batches stay apart, as in DCGAN: mixed batch statistics would change D.
        self.joint_d = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.D.modules())

    def state_dict(self) -> dict:
        """Trainer state beyond the optimizers that an exact resume needs."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, real: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on real images (b, c, h, w) in [-1, 1] and their classes (b,) or None. Returns detached losses.

        A conditional G draws the fakes for the batch's own classes, so D compares like with like.
        """
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = torch.randn(real.shape[0], self.z_dim, generator=noise, device=real.device)  # (b, z_dim)
        fake = self.G(z, y)  # (b, c, h, w); generated once, used by both updates

        # (1) Update D: maximize log D(x) + log(1 - D(G(z))). fake is detached so G gets no gradient here.
        opt_d.zero_grad(set_to_none=True)
        if self.joint_d:
            yy = None if y is None else torch.cat([y, y])
            real_logits, fake_logits = self.D(torch.cat([real, fake.detach()]), yy).chunk(2)
        else:
            real_logits, fake_logits = self.D(real, y), self.D(fake.detach(), y)
        loss_d = d_loss(real_logits, fake_logits)
        loss_d.backward()
        opt_d.step()

        # (2) Update G: maximize log D(G(z)) against the just-updated D. D's weights are frozen so the
        # backward pass computes only the input gradients it needs to reach G.
        opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(False)
        loss_g = g_loss(self.D(fake, y))
        loss_g.backward()
        self.D.requires_grad_(True)
        opt_g.step()

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.detach()).mean(),  # D's belief that real is real
            "d_fake": torch.sigmoid(fake_logits.detach()).mean(),  # ... and that fake is real
        }
