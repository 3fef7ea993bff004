"""Model families and the registry of recipes.

``MODELS`` maps a recipe name to its method (the module that says how it
learns: ``gan`` or ``vae``) and the networks it composes. Adding a recipe is
one line here.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch
from torch import nn

from genforge.errors import ConfigError
from genforge.models import diffusion, gan, networks, unet, vae


class ModelSpec(NamedTuple):
    method: ModuleType                    # genforge.models.gan or genforge.models.vae
    networks: dict[str, type[nn.Module]]  # role -> network class
    conditional: bool = False             # trained on (image, class) pairs; generates a requested class
    fixed: dict = {}                      # discriminator options the recipe fixes (acgan: conditioning="aux")


def d_options(cfg) -> dict:
    """The discriminator options of a config, in the networks' own words. They change the network's
    weights, so they are saved in the model's config.json."""
    return {"norm": cfg.d_norm, "spectral_norm": cfg.spectral_norm, "mbstd": cfg.mbstd}


MODELS: dict[str, ModelSpec] = {
    "gan-mlp": ModelSpec(gan, {"generator": networks.MLPGenerator, "discriminator": networks.MLPDiscriminator}),
    "dcgan": ModelSpec(gan, {"generator": networks.DCGANGenerator, "discriminator": networks.DCGANDiscriminator}),
    "vae-mlp": ModelSpec(vae, {"encoder": networks.MLPEncoder, "decoder": networks.MLPDecoder}),
    "vae-conv": ModelSpec(vae, {"encoder": networks.ConvEncoder, "decoder": networks.ConvDecoder}),
    # class-conditional: DCGAN with a projection discriminator; convolutional conditional VAE
    "cdcgan": ModelSpec(gan, {"generator": networks.DCGANGenerator, "discriminator": networks.DCGANDiscriminator},
                        conditional=True),
    "cvae-conv": ModelSpec(vae, {"encoder": networks.ConvEncoder, "decoder": networks.ConvDecoder},
                           conditional=True),
    "acgan": ModelSpec(gan, {"generator": networks.DCGANGenerator, "discriminator": networks.DCGANDiscriminator},
                       conditional=True, fixed={"conditioning": "aux"}),
    # DDPM with a small UNet, sampled with DDIM; the conditional one with classifier-free guidance
    "ddpm": ModelSpec(diffusion, {"denoiser": unet.UNet, "schedule": diffusion.NoiseSchedule}),
    "cddpm": ModelSpec(diffusion, {"denoiser": unet.UNet, "schedule": diffusion.NoiseSchedule}, conditional=True),
}


def family_of(model: str) -> str:
    return MODELS[model].method.__name__.rsplit(".", 1)[-1]


def build_networks(model: str, image_shape: tuple[int, int, int], z_dim: int, base_channels: int,
                   num_classes: int = 0, d_opts: dict | None = None) -> dict[str, nn.Module]:
    """Instantiate every network of a recipe. Seed the global RNG first for reproducible weights.

    ``d_opts`` (see :func:`d_options`) go to the discriminator; the MLP discriminator of the reference design
    takes none of them.
    """
    spec = MODELS[model]
    if spec.conditional and num_classes < 2:
        raise ConfigError(f"model {model!r} is class-conditional: it needs labelled data with at least 2 classes")
    if not spec.conditional:
        num_classes = 0
    nets = {}
    for role, cls in spec.networks.items():
        extra = {}
        if role == "discriminator":
            extra = {**{k: v for k, v in (d_opts or {}).items() if v != _DEFAULT_D[k]}, **spec.fixed}
            if extra and cls is networks.MLPDiscriminator:
                raise ConfigError(f"model {model!r} (the reference MLP discriminator) takes no discriminator "
                                  f"options, got {', '.join(extra)}")
        nets[role] = cls(image_shape, z_dim=z_dim, base_channels=base_channels, num_classes=num_classes, **extra)
    return nets


_DEFAULT_D = {"norm": "batch", "spectral_norm": False, "mbstd": False}


class GenerativeModel:
    """A trained model ready to sample: its networks (in eval mode) and the metadata of ``config.json``.

    Obtain one with :func:`genforge.load`. ``model.sample(n, seed=0)`` returns uint8 images.
    """

    def __init__(self, nets: dict[str, nn.Module], meta: dict, path: str = ""):
        self.nets = nets
        self.meta = meta
        self.path = path
        self.method = MODELS[meta["model"]].method
        for net in nets.values():
            net.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def family(self) -> str:
        return family_of(self.meta["model"])  # from the recipe, not config.json's copy: one source of truth

    @property
    def cluster_prior(self) -> list[float] | None:
        """Cluster-guided models (config ``clusters``): each cluster's share of the training images; else None.

        Such a model is unconditional to its users: its classes are k-means clusters, drawn in proportion
        to these shares when no class is asked for (checked by genforge.load)."""
        clusters = self.meta.get("clusters")
        return clusters["prior"] if clusters else None

    @property
    def sampling_defaults(self) -> dict:
        """Diffusion: the recipe's sampler, steps and (conditional models) guidance, for callers that give none.

        From the training config (``sampler``, ``sample_steps``, ``guidance``); models saved before those
        keys existed get 50 DDIM steps and guidance 1. Other families: {}.
        """
        if self.family != "diffusion":
            return {}
        return self.method.recipe_controls(self.meta.get("train_config") or {},  # checked by genforge.load
                                           bool(self.num_classes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["image_shape"])

    @property
    def z_dim(self) -> int:
        return self.meta["z_dim"]

    @property
    def num_classes(self) -> int:
        return self.meta.get("num_classes", 0)

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def device(self) -> torch.device:
        return next(iter(self.nets.values())).parameters().__next__().device

    def to(self, device: str | torch.device) -> "GenerativeModel":
        for net in self.nets.values():
            net.to(device)
        return self

    def sample(self, n: int, seed: int = 0, classes=None, batch_size: int = 500):
        """``n`` images as uint8 numpy, (n, h, w) for grayscale or (n, h, w, c) for colour.

        ``classes`` (conditional models): one class, or a list cycled over the n samples; by default all
        classes in turn. Use :func:`genforge.generation.sample` to get the classes and latents back too.
        """
        from genforge.generation import sample

        return sample(self, n, seed=seed, classes=classes, batch_size=batch_size).x

    def __repr__(self) -> str:
        return (f"GenerativeModel({self.name}, family={self.family}, image_shape={self.image_shape}, "
                f"z_dim={self.z_dim}, step={self.meta.get('step')})")
