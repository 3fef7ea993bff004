"""Model families and the registry of recipes.

``MODELS`` maps a recipe name to its method (the module that says how it
learns: ``gan``, ``vae`` or ``diffusion``), the networks it composes and the
axes of the examples those networks take (images (c, h, w); series and
waveforms (c, t)). Adding a recipe is one line here; a 1-D recipe is the same
method with 1-D networks (``networks1d.py``; the UNet builds either rank).
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, NamedTuple

from torch import nn

from genforge.errors import ConfigError
from genforge.modalities import of_spec
from genforge.models import (autoregressive, copula, ctgan, diffusion, gan, lm, networks, networks1d, recurrent,
                             sentence_vae, tabddpm, tabular, transformer, unet, vae, wavegan)


class ModelSpec(NamedTuple):
    method: ModuleType                    # genforge.models.gan or genforge.models.vae
    networks: dict[str, type[nn.Module]]  # role -> network class
    conditional: bool = False             # trained on (image, class) pairs; generates a requested class
    fixed: dict = {}                      # discriminator options the recipe fixes (acgan: conditioning="aux")
    axes: tuple[str, ...] = ("c", "h", "w")  # the examples its networks take: a modality's example_axes
    # network options beyond shape, z_dim and width, from the training config and the data's transform:
    # options(cfg, transform) -> dict (text: vocabulary, layers, heads; tables: the column layout). Computed
    # once when training starts, saved in config.json as net_options, given to every network; None: none.
    options: Callable[[object, dict], dict] | None = None


def d_options(cfg) -> dict:
    """The discriminator options of a config, in the networks' own words. They change the network's
    weights, so they are saved in the model's config.json."""
    return {"norm": cfg.d_norm, "spectral_norm": cfg.spectral_norm, "mbstd": cfg.mbstd}


_AXES_1D = ("c", "t")
_AXES_ROW = ("d",)
_GAN_1D = {"generator": networks1d.Conv1dGenerator, "discriminator": networks1d.Conv1dDiscriminator}
_WAVEGAN = {"generator": networks1d.Conv1dGenerator, "discriminator": wavegan.WaveGANDiscriminator}
_VAE_1D = {"encoder": networks1d.Conv1dEncoder, "decoder": networks1d.Conv1dDecoder}
_DDPM = {"denoiser": unet.UNet, "schedule": diffusion.NoiseSchedule}  # one UNet for images, series and waveforms

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
    "ddpm": ModelSpec(diffusion, _DDPM, options=diffusion.network_options),
    "cddpm": ModelSpec(diffusion, _DDPM, conditional=True, options=diffusion.network_options),
    # (channels, time) examples: sensor series and waveforms. The same three methods with 1-D networks.
    "gan-1d": ModelSpec(gan, _GAN_1D, axes=_AXES_1D),
    "cgan-1d": ModelSpec(gan, _GAN_1D, conditional=True, axes=_AXES_1D),
    "vae-1d": ModelSpec(vae, _VAE_1D, axes=_AXES_1D),
    "cvae-1d": ModelSpec(vae, _VAE_1D, conditional=True, axes=_AXES_1D),
    "ddpm-1d": ModelSpec(diffusion, _DDPM, axes=_AXES_1D, options=diffusion.network_options),
    "cddpm-1d": ModelSpec(diffusion, _DDPM, conditional=True, axes=_AXES_1D, options=diffusion.network_options),
    # series step by step: a Gaussian per step given the steps before it (a VAR plus dilated causal convolutions)
    "ar-1d": ModelSpec(autoregressive, {"ar": autoregressive.SeriesAR}, axes=_AXES_1D),
    "car-1d": ModelSpec(autoregressive, {"ar": autoregressive.SeriesAR}, conditional=True, axes=_AXES_1D),
    # waveforms: the 1-D GAN with WaveGAN's phase shuffle in the discriminator (Donahue et al. 2019)
    "wavegan": ModelSpec(gan, _WAVEGAN, axes=_AXES_1D),
    "cwavegan": ModelSpec(gan, _WAVEGAN, conditional=True, axes=_AXES_1D),
    # tables: encoded rows (d,). TVAE is the VAE method with a mixed-type likelihood (the decoder's own); CTGAN,
    # TabDDPM and the Gaussian copula learn otherwise and are method modules of their own
    "tvae": ModelSpec(vae, {"encoder": tabular.TableEncoder, "decoder": tabular.TableDecoder}, axes=_AXES_ROW,
                      options=tabular.network_options),
    "ctgan": ModelSpec(ctgan, {"generator": tabular.TableGenerator, "discriminator": tabular.TableDiscriminator},
                       axes=_AXES_ROW, options=tabular.network_options),
    "tabddpm": ModelSpec(tabddpm, {"denoiser": tabular.TableDenoiser, "schedule": tabddpm.TableSchedule},
                         axes=_AXES_ROW, options=tabular.network_options),
    "copula": ModelSpec(copula, {"copula": copula.GaussianCopula}, axes=_AXES_ROW, options=tabular.network_options),
    # text: token sequences (t,). A decoder-only transformer (GPT) and a sentence VAE with GRUs.
    "gpt": ModelSpec(lm, {"gpt": transformer.GPT}, axes=("t",), options=lm.network_options),
    "sentence-vae": ModelSpec(sentence_vae, {"encoder": recurrent.SentenceEncoder,
                                             "decoder": recurrent.SentenceDecoder}, axes=("t",),
                             options=sentence_vae.network_options),
}


def family_of(model: str) -> str:
    return MODELS[model].method.__name__.rsplit(".", 1)[-1]


# each family's controls, in the registry's order: controls.resolve names a control's family from it when a model
# of another family gets it (the first family to declare a control names it: steps, diffusion)
FAMILY_CONTROLS = {family_of(name): spec.method.CONTROLS for name, spec in MODELS.items()}


def network_options(model: str, cfg, transform: dict) -> dict:
    """The options beyond shape, z_dim and width that a recipe's networks take (text: vocabulary size, layers,
    heads, width; tables: the column layout), from the config and the data's transform (``ModelSpec.options``);
    saved in the model's config.json as ``net_options``. Recipes without any return {}."""
    options = MODELS[model].options
    return options(cfg, transform) if options is not None else {}


def build_networks(model: str, example_shape: tuple[int, ...], z_dim: int, base_channels: int,
                   num_classes: int = 0, d_opts: dict | None = None,
                   net_options: dict | None = None) -> dict[str, nn.Module]:
    """Instantiate every network of a recipe for examples of ``example_shape`` ((c, h, w) or (c, t)). Seed the
    global RNG first for reproducible weights.

    ``d_opts`` (see :func:`d_options`) go to the discriminator; the MLP discriminator of the reference design
    takes none of them. ``net_options`` (see :func:`network_options`) go to every network.
    """
    spec = MODELS[model]
    if len(example_shape) != len(spec.axes):
        raise ConfigError(f"model {model!r} takes examples of axes ({', '.join(spec.axes)}), got shape "
                          f"{tuple(example_shape)}")
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
        nets[role] = cls(example_shape, z_dim=z_dim, base_channels=base_channels, num_classes=num_classes, **extra,
                         **(net_options or {}))
    return nets


_DEFAULT_D = {"norm": "batch", "spectral_norm": False, "mbstd": False}


def check_config(cfg, source: str = "config") -> None:
    """Checks of a training config that need the registry: a known recipe whose networks take the data's
    modality, cluster guidance only for cddpm."""
    if cfg.model not in MODELS:
        raise ConfigError(f"{source}: unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[cfg.model]
    modality = of_spec(cfg.data)
    if spec.axes != modality.example_axes:
        fits = [name for name, s in MODELS.items() if s.axes == modality.example_axes]
        raise ConfigError(f"{source}: model {cfg.model!r} makes examples of axes ({', '.join(spec.axes)}), but data "
                          f"{cfg.data!r} is {modality.name} data ({', '.join(modality.example_axes)}); models for it: "
                          f"{', '.join(fits)}")
    unit = getattr(spec.method, "TEXT_UNIT", None)  # the examples a text family trains on
    if unit is not None and cfg.text_unit != unit:
        raise ConfigError(f"{source}: model {cfg.model!r} trains on text_unit {unit!r}, got {cfg.text_unit!r}")
    if spec.method is lm and cfg.text_n_embd % cfg.text_n_head:
        raise ConfigError(f"{source}: 'text_n_embd' ({cfg.text_n_embd}) must be a multiple of 'text_n_head' "
                          f"({cfg.text_n_head}): each attention head takes an equal share of the width")
    if cfg.prediction != "eps" and spec.method is not diffusion:
        raise ConfigError(f"{source}: 'prediction' {cfg.prediction!r} is for the diffusion models (ddpm, cddpm, "
                          f"ddpm-1d, cddpm-1d), got model {cfg.model!r}")
    if cfg.linear_path and spec.method is not diffusion:
        raise ConfigError(f"{source}: 'linear_path' is a path of the diffusion models' denoiser (ddpm, cddpm, "
                          f"ddpm-1d, cddpm-1d), got model {cfg.model!r}")
    if cfg.clusters and not (spec.conditional and spec.method is diffusion):  # guidance is diffusion's control
        raise ConfigError(f"{source}: 'clusters' (cluster guidance) needs the class-conditional diffusion model "
                          f"cddpm, got model {cfg.model!r}")


def sampling_defaults(method: ModuleType, train_config: dict, conditional: bool) -> dict:
    """The controls a model samples with when its caller gives none: the recipe's own (``Control.recipe_field``
    of the family's controls, e.g. diffusion's sampler, sample_steps, guidance), else each control's default.
    Only controls that decode (``stage == "decode"``) are filled in; noise controls default to no change."""
    return {c.name: c.check(train_config.get(c.recipe_field, c.default))
            for c in method.CONTROLS
            if c.stage == "decode" and (conditional or not c.conditional_only)}
