"""The VAE method (Kingma and Welling 2014): the ELBO, the training step and the sampler.

The encoder and decoder come from ``networks.py``. The decoder outputs pixel
logits; ``sigmoid(logits)`` is the mean image, used both for the Bernoulli
likelihood (BCE) and the Gaussian one (MSE).

A decoder may bring its own likelihood instead: one with ``nll(x, out)`` (per-example negative
log-likelihood, (b,)) and ``mean(out)`` is trained and sampled through those. TVAE is this method with the
mixed-type likelihood of a table's decoder (``tabular.TableDecoder``: Gaussian numbers, categorical one-hot
groups; Xu et al. 2019), so it is a VAE recipe, not a family of its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import Config
from genforge.controls import TEMPERATURE

VALUE_RANGE = "0,1"  # Bernoulli likelihood needs targets in [0, 1]
NETWORKS = ("encoder", "decoder")
EMA_NETWORKS = ("encoder", "decoder")
LATENT = "decoder"
CONTROLS = (TEMPERATURE,)  # how a caller steers sampling (genforge/controls.py declares them)


def latent_dim(z_dim: int, image_shape: tuple[int, int, int]) -> int:
    return z_dim


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): sampling made differentiable in mu and logvar."""
    eps = torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def elbo_terms(x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               recon: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample reconstruction loss and KL, each (b,), summed over pixels / latent dims.

    recon="bce": -log p(x|z) for a Bernoulli decoder. recon="mse": squared error of the mean image, a
    Gaussian decoder with fixed variance (constant terms dropped).
    KL(q(z|x) || N(0, I)) = -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2) (Kingma and Welling 2014, appendix B).
    """
    if recon == "bce":
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    else:
        rec = (torch.sigmoid(logits) - x).square().flatten(1).sum(1)
    return rec, kl_divergence(mu, logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per example (b,)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Latents (b, z_dim) and, for conditional models, classes (b,) -> mean images (b, c, h, w) in [0, 1]
    (a decoder with its own likelihood: its ``mean``, e.g. table rows)."""
    return _mean(nets["decoder"], nets["decoder"](z, y))


def _mean(decoder: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return decoder.mean(out) if hasattr(decoder, "mean") else torch.sigmoid(out)


def reconstruct(nets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [0, 1] -> their reconstructions through the posterior mean (no sampling)."""
    mu, _ = nets["encoder"](x, y)
    return _mean(nets["decoder"], nets["decoder"](mu, y))


class Trainer:
    """One Adam over encoder and decoder; runs one ELBO step. The loop calls it."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        """``private``: differential privacy for the run (``training/privacy.py`` ``PrivateTraining``) or None;
        it wraps the one optimizer in DP-SGD (encoder and decoder both see real images)."""
        self.encoder, self.decoder = nets["encoder"], nets["decoder"]
        self.recon, self.kl_weight = cfg.recon_loss, cfg.kl_weight
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        optimizers = {"vae": torch.optim.Adam(params, lr=cfg.g_lr, betas=tuple(cfg.g_betas), fused=True)}
        self.optimizers = private.wrap(optimizers) if private is not None else optimizers

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        """Real batches of ``batch_size`` one step consumes."""
        return 1

    def state_dict(self) -> dict:
        """Trainer state beyond the optimizers that an exact resume needs."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on a batch (b, c, h, w) in [0, 1] (classes (b,) or None): minimize recon + kl_weight * KL."""
        opt = self.optimizers["vae"]
        mu, logvar = self.encoder(x, y)                 # (b, z_dim) each
        z = reparameterize(mu, logvar, noise)           # (b, z_dim)
        out = self.decoder(z, y)
        if hasattr(self.decoder, "nll"):  # the decoder's own likelihood (a table's mixed types: TVAE)
            rec, kl = self.decoder.nll(x, out), kl_divergence(mu, logvar)
        else:
            rec, kl = elbo_terms(x, out, mu, logvar, self.recon)
        loss = (rec + self.kl_weight * kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "recon": rec.mean().detach(), "kl": kl.mean().detach()}


@torch.no_grad()
def iwae_nll(nets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor | None = None, k: int = 100,
             recon: str = "bce", noise: torch.Generator | None = None) -> torch.Tensor:
    """Importance-weighted estimate of -log p(x) in nats, per image (b,) (Burda et al. 2016, eq. 8).

    log p(x) >= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x); the bound tightens as k grows.
    Only the Bernoulli likelihood (recon="bce") is a normalized density here. On grayscale (not binarized)
    pixels it is the usual, slightly loose convention; the Gaussian "mse" decoder has no fitted variance, so
    it has no NLL and is refused.
    """
    if recon != "bce":
        raise ValueError("the NLL estimate needs the Bernoulli likelihood (recon_loss: bce)")
    mu, logvar = nets["encoder"](x, y)                       # (b, z_dim)
    std = torch.exp(0.5 * logvar)
    log_w = []
    for _ in range(k):
        eps = torch.randn(mu.shape, generator=noise, device=mu.device, dtype=mu.dtype)
        z = mu + std * eps                                   # (b, z_dim)
        log_px_z = -F.binary_cross_entropy_with_logits(nets["decoder"](z, y), x, reduction="none").flatten(1).sum(1)
        log_pz = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(1)
        log_qz = (-0.5 * eps.square() - 0.5 * math.log(2 * math.pi) - 0.5 * logvar).sum(1)
        log_w.append(log_px_z + log_pz - log_qz)            # (b,)
    log_w = torch.stack(log_w)                               # (k, b)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def bits_per_dim(nll_nats: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    return nll_nats / (math.prod(image_shape) * math.log(2))
