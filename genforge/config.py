"""Typed, flat training configuration: every default in one place.

A recipe under ``genforge/recipes/`` is a YAML mapping of a few of these fields; any
field can be overridden from the command line with ``--set key=value``. The
config is validated on load (unknown key, wrong type, out-of-range value) and
the resolved version is written beside every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genforge import controls, recipes
from genforge.errors import ConfigError, GenforgeError


@dataclass
class Config:
    # --- what to train on -------------------------------------------------------
    data: str = "mnist5k"            # data spec: images mnist5k, fashion-mnist[:DIR], idx:DIR, npz:FILE, folder:DIR;
                                     # series ucr:NAME, tep:[OPTIONS], series-csv:FILE, series-npz:FILE;
                                     # tables csv:FILE, parquet:FILE, table:NAME
    image_size: int = 28             # images are resized to image_size x image_size when the source differs
    channels: int = 0                # 0: take the source's channel count; 1 or 3 to insist
    on_bad: str = "drop"             # bad images (corrupt, blank, duplicate...): "drop" with a report, or "reject"
    dedup: bool = True               # drop exact duplicate images
    val_fraction: float = 0.1
    test_fraction: float = 0.1       # ignored when the source ships its own test split
    split_seed: int = 0
    augment_flip: bool = False       # augmentation is off by default: digits are not mirror-symmetric
    augment_shift: int = 0           # max shift in pixels
    augment_rotate: float = 0.0      # max rotation in degrees
    # --- sensor series sources (ucr:, tep:, series-csv:, series-npz:; genforge.data.series) ---------------
    series_window: int = 0           # tep and logs: window length in samples (required for them)
    series_stride: int = 0           # samples between window starts; 0: the window length (no overlap)
    series_length_policy: str = "equal"  # ragged UCR sets: "equal" (refuse), "pad", "resample" or "crop"
    series_length: int = 0           # the target length of pad / resample / crop; 0: the policy's own choice
    series_missing: str = "refuse"   # missing values: "refuse", or "fill" (linear interpolation)
    series_scaling: str = "minmax"   # each channel to [-1, 1] for training: "minmax", or "asinh" (rare excursions)
    series_time_column: str = ""     # series-csv: the time column (checked for order and duplicates), if any
    series_label_column: str = ""    # series-csv / series-npz: the class column, if any
    # --- tables (csv:, parquet:, table:; genforge.data.table) -------------------------------------------
    table_schema: str = ""           # a schema YAML (from genforge data check SPEC --schema-out FILE); "": infer
    table_target: str = ""           # the risk task's column (ML efficacy in genforge eval); "": a bundled table's own
    table_transform: str = "vgm"     # numbers: "vgm" (CTGAN's mode-specific normalization) or "quantile"
    table_max_modes: int = 10        # vgm: most mixture components per number column
    table_pac: int = 1               # ctgan: rows the discriminator judges at once (PacGAN; CTGAN uses 10)
    table_cond_vector: bool = True   # ctgan: the conditional vector and training by sampling (off under DP)
    table_cond_target: bool = False  # tabddpm: rows generated for a class of the target column, drawn at its
                                     # training frequency (Kotelnikov et al. 2023; the table-tabddpm recipe sets
                                     # it); a category target only
    # --- audio sources (audio:NAME|DIR for spectrogram models, audio-wave:NAME|DIR for waveform models) -----
    audio_rate: int = 16000          # every clip resampled to this rate (Hz)
    audio_length: int = 16000        # samples per clip: clipped or zero-padded (1 s at 16 kHz)
    audio_mels: int = 64             # spectrogram models: mel bands, and frames: pictures are audio_mels square
    audio_griffin_lim: int = 32      # spectrogram models: Griffin-Lim iterations turning a sample into sound

    # --- what to train ------------------------------------------------------------
    model: str = "dcgan"             # a key of genforge.models.MODELS
    z_dim: int = 100                 # latent size (GAN noise / VAE code)
    base_channels: int = 64          # width of the convolutional networks (dcgan, vae-conv)
    recon_loss: str = "bce"          # VAE reconstruction likelihood: "bce" (Bernoulli) or "mse" (Gaussian)
    kl_weight: float = 1.0           # weight of the KL term: 1.0 is the plain ELBO, above 1 a beta-VAE

    # --- GAN losses and mode-collapse defences ------------------------------------------
    gan_loss: str = "ns"             # "ns" (non-saturating), "hinge" (SNGAN) or "wgan-gp"
    gp_weight: float = 10.0          # WGAN-GP gradient penalty weight (Gulrajani et al. 2017)
    r1_weight: float = 0.0           # R1 penalty on real data, gamma (Mescheder et al. 2018); 0 is off
    d_steps: int = 1                 # discriminator (critic) steps per generator step, each on its own batch
    d_norm: str = "batch"            # discriminator normalization: "batch", "group" or "none" (WGAN-GP, DP: not "batch")
    spectral_norm: bool = False      # spectral normalization of every discriminator layer (Miyato et al. 2018)
    mbstd: bool = False              # minibatch standard deviation feature in the discriminator (Karras et al. 2018)
    instance_noise: float = 0.0      # std of Gaussian noise added to D's inputs, annealed to 0 (Sonderby et al. 2017)
    instance_noise_steps: int = 2000 # steps over which the instance noise decays linearly to 0
    diffaugment: str = ""            # DiffAugment policy (Zhao et al. 2020): any of "color,translation,cutout"
    ada_target: float = 0.0          # adaptive discriminator augmentation target for r_t (Karras et al. 2020); 0 off
    ada_interval: int = 4            # steps between ADA probability updates
    ada_kimg: float = 100.0          # thousands of real images over which ADA's p can move from 0 to 1
    acgan_weight: float = 1.0        # weight of the auxiliary classification loss (acgan model)

    # --- diffusion -------------------------------------------------------------------
    noise_schedule: str = "cosine"   # DDPM beta schedule: "linear" (Ho et al. 2020) or "cosine" (Nichol and Dhariwal 2021)
    cfg_dropout: float = 0.1         # share of class labels dropped in training, for classifier-free guidance
    prediction: str = "eps"          # what the denoiser predicts: "eps" (the noise, Ho et al. 2020), "v"
                                     # (alpha eps - sigma x_0, Salimans and Ho 2022: finite at every step; the
                                     # parameterisation a few-step distilled sampler needs) or "x0" (the clean
                                     # example, as Diffusion-TS on time series)
    linear_path: int = 0             # diffusion: a linear filter from x_t straight to the output, over channels
                                     # and this many time steps (odd), mixed per noise level; 0: none. Where the
                                     # data are near-Gaussian (a plant's sensors), the best denoiser is mostly
                                     # such a filter, which the UNet alone learns slowly
    clusters: int = 0                # cddpm without labels: k-means clusters of the training images stand in for
                                     # classes, drawn by size when sampling (cluster guidance); 0: use the labels
    # how the trained model samples unless a caller says otherwise (genforge sample --sampler/--steps/--guidance)
    sampler: str = "ddim"            # "ddim", "dpm++2m" (DPM-Solver++, better at 10 to 20 steps) or "dpm++2m-sde"
                                     # (its stochastic form, fresh noise each step; see models/diffusion.py)
    sample_steps: int = 50           # sampler steps, 1 to 1000 (1000: the full chain)
    guidance: float = 1.0            # conditional models: classifier-free guidance scale (1: plain conditional)

    # --- text (data text:...; genforge/models/lm.py, sentence_vae.py) -------------------------------------
    text_unit: str = "window"        # what one example is: "window" (GPT: context + 1 tokens of running text) or
                                     # "line" (sentence VAE: one line of the text, <bos> ... <eos>)
    text_tokenizer: str = "char"     # "char" (one id per character of the training split) or "bpe" (byte-level)
    text_vocab_size: int = 2048      # byte-level BPE: tokens, the 256 bytes and 4 specials included
    text_context: int = 256          # GPT: tokens it sees at once (its learned positions); VAE: longest line
    text_stride: int = 0             # GPT: tokens between the starts of training windows (0: context // 2)
    text_on_bad_utf8: str = "refuse" # text:FILE/DIR bytes that are not UTF-8: "refuse" (the byte offset named) or
                                     # "replace" (U+FFFD, counted in the notes)
    text_n_layer: int = 6            # GPT: transformer blocks
    text_n_head: int = 6             # GPT: attention heads (text_n_embd must be a multiple)
    text_n_embd: int = 384           # GPT: width; sentence VAE: token embedding width
    text_dropout: float = 0.0        # GPT: dropout on embeddings, attention and MLP outputs
    text_rnn_hidden: int = 256       # sentence VAE: GRU width
    text_word_dropout: float = 0.25  # sentence VAE: share of decoder inputs replaced by <unk> (Bowman et al. 2016)
    weight_decay: float = 0.1        # AdamW weight decay on matrices (GPT)
    warmup_steps: int = 100          # GPT: learning rate warm-up, linear from 0
    lr_decay_steps: int = 0          # GPT: cosine decay of the learning rate to min_lr at this step (0: constant)
    lr_decay_over: str = "steps"     # GPT: "steps" (the cosine ends at lr_decay_steps) or "time" (it ends when
                                     # max_seconds is spent, or at lr_decay_steps if that comes first)
    min_lr: float = 1e-4
    grad_clip: float = 1.0           # gradient norm clipping, text families (0: off)
    kl_anneal_steps: int = 2000      # sentence VAE: KL weight rises linearly from 0 to kl_weight over these steps
    free_bits: float = 0.1           # sentence VAE: nats per latent dimension the KL term never goes below

    # --- differential privacy (DP-SGD with Opacus; genforge/training/privacy.py) ----------
    dp_epsilon: float = 0.0          # target epsilon of the networks that see real data; 0: no differential privacy
    dp_delta: float = 1e-5           # target delta; must be below 1 / (training images)
    dp_max_grad_norm: float = 1.0    # per-sample gradient clipping norm C

    # --- how to train -------------------------------------------------------------
    seed: int = 0
    batch_size: int = 128
    g_lr: float = 2e-4               # generator (GAN) or encoder+decoder (VAE) learning rate
    g_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    d_lr: float = 2e-4               # discriminator learning rate (GAN only)
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    ema_decay: float = 0.999         # EMA of the generator / VAE; 0 turns it off
    ema_start: int = 0               # steps before the EMA starts tracking (copies weights until then)
    max_steps: int = 5000
    max_seconds: float = 0.0         # wall-clock budget; 0 means none
    nan_policy: str = "stop"         # on a non-finite loss: "stop", or "rollback" to the last checkpoint
    max_rollbacks: int = 3

    # --- what to write ------------------------------------------------------------
    log_every: int = 50
    sample_every: int = 500          # sample grid PNG every N steps (0: only at the end)
    checkpoint_every: int = 1000     # checkpoint every N steps (one is always written at the end)
    keep_checkpoints: int = 2
    encrypt: bool = False            # checkpoint weights and resume state AES-256-GCM encrypted (genforge.crypto)
    grid_n: int = 64
    tensorboard: bool = True
    eval_every: int = 0              # every N steps score eval_n samples on the validation split (0: off); the
    eval_n: int = 2000               # run keeps checkpoints/best.json by validation FID beside last.json
    eval_share: float = 0.1          # validation takes at most this share of the run's time: eval_n and the sampler
                                     # steps are scaled down from the first validation's measured cost (0: no budget;
                                     # genforge.metrics.validation.ValidationBudget)

    # --- where to run -------------------------------------------------------------
    device: str = "auto"             # "auto" (CUDA, then MPS, then the CPU), "cpu", "cuda", "cuda:N" or "mps"
    num_threads: int = 0             # 0: one intra-op thread per physical core
    precision: str = "auto"          # "auto": bf16 autocast on a GPU with native bfloat16, else fp32; "fp32";
                                     # "bf16" (warned where the hardware would run it slowly)
    channels_last: bool = False      # NHWC memory layout for the convolutional networks and the data
    compile: bool = False            # torch.compile the networks (opt-in: the first steps pay the compile time)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)

CHOICES = {
    "on_bad": ("drop", "reject"),
    "recon_loss": ("bce", "mse"),
    "nan_policy": ("stop", "rollback"),
    "channels": (0, 1, 3),
    "precision": ("auto", "fp32", "bf16"),
    "gan_loss": ("ns", "hinge", "wgan-gp"),
    "d_norm": ("batch", "group", "none"),
    "noise_schedule": ("linear", "cosine"),
    "prediction": ("eps", "v", "x0"),
    "text_unit": ("window", "line"),
    "text_tokenizer": ("char", "bpe"),
    "text_on_bad_utf8": ("refuse", "replace"),
    "lr_decay_over": ("steps", "time"),
    "series_length_policy": ("equal", "pad", "resample", "crop"),
    "series_missing": ("refuse", "fill"),
    "series_scaling": ("minmax", "asinh"),
    "table_transform": ("vgm", "quantile"),
}
# recipe fields that set a trained model's sampling defaults: their ranges are the controls' own
RECIPE_CONTROLS = {c.recipe_field: c for c in controls.ALL if c.recipe_field}
POSITIVE = ("eval_n", "image_size", "z_dim", "base_channels", "batch_size", "g_lr", "d_lr", "max_steps", "grid_n",
            "d_steps", "instance_noise_steps", "ada_interval", "ada_kimg",
            "keep_checkpoints", "dp_max_grad_norm", "table_max_modes", "table_pac", "text_vocab_size",
            "text_context", "text_n_layer", "text_n_head", "text_n_embd", "text_rnn_hidden", "audio_rate",
            "audio_length", "audio_mels", "audio_griffin_lim")
NON_NEGATIVE = ("dp_epsilon", "eval_every", "gp_weight", "r1_weight", "instance_noise", "acgan_weight", "kl_weight", "max_seconds", "log_every", "sample_every", "checkpoint_every", "augment_shift",
                "augment_rotate", "ema_start", "num_threads", "max_rollbacks", "series_window", "series_stride",
                "series_length", "text_stride", "weight_decay", "warmup_steps", "lr_decay_steps", "min_lr",
                "grad_clip", "kl_anneal_steps", "free_bits")


def _coerce(name: str, value, source: str):
    """Check ``value`` against the field's declared type; ints are accepted for floats."""
    hint = _HINTS[name]
    where = f"{source}: '{name}'"
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        number = value if isinstance(value, float) else float(value) if abs(value) < 1e308 else math.inf
        if not math.isfinite(number):  # .nan would pass every range check (all its comparisons are false)
            raise ConfigError(f"{where} must be a finite number, got {str(value)[:20]}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if hint == list[float]:
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where} must be a list of two numbers like [0.5, 0.999], got {value!r}")
        return [float(v) for v in value]
    raise AssertionError(f"unhandled config type {hint} for {name}")


def linear_path_ok(value) -> bool:
    """A diffusion denoiser's linear path length: 0 (none) or an odd whole number from 1 to 63. The config and a
    model file's net_options (genforge.models.unet) are both checked by it."""
    return (not isinstance(value, bool) and isinstance(value, int)
            and (value == 0 or (value % 2 == 1 and 1 <= value <= 63)))


def validate(cfg: Config, source: str = "config") -> Config:
    """Range and choice checks of the fields themselves, which a type alone cannot express.

    Checks that need the model registry or the privacy rules (is ``model`` a known recipe, can it train with
    differential privacy) belong to the layers that own them: :func:`genforge.training.check_config`."""
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{source}: '{name}' must be one of {', '.join(map(str, choices))}, "
                              f"got {getattr(cfg, name)!r}")
    for name in POSITIVE:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{source}: '{name}' must be positive, got {getattr(cfg, name)!r}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{source}: '{name}' must not be negative, got {getattr(cfg, name)!r}")
    for name in ("g_betas", "d_betas"):
        if not all(0.0 <= b < 1.0 for b in getattr(cfg, name)):
            raise ConfigError(f"{source}: '{name}' values must be in [0, 1), got {getattr(cfg, name)!r}")
    policies = [p for p in cfg.diffaugment.split(",") if p]
    unknown = [p for p in policies if p not in ("color", "translation", "cutout")]
    if unknown:
        raise ConfigError(f"{source}: 'diffaugment' takes color, translation and cutout, got {unknown[0]!r}")
    for name, control in RECIPE_CONTROLS.items():
        try:
            control.check(getattr(cfg, name))
        except GenforgeError:
            raise ConfigError(f"{source}: '{name}' must be {control.range_text()}, got "
                              f"{str(getattr(cfg, name))[:40]}") from None
    if not linear_path_ok(cfg.linear_path):
        raise ConfigError(f"{source}: 'linear_path' is an odd filter length from 1 to 63 time steps (0: none), "
                          f"got {cfg.linear_path}")
    if cfg.clusters and not 2 <= cfg.clusters <= 1000:
        raise ConfigError(f"{source}: 'clusters' (cluster guidance) takes 2 to 1000 clusters, got {cfg.clusters}")
    if not 0.0 <= cfg.ada_target < 1.0 or not 0.0 <= cfg.cfg_dropout < 1.0:
        raise ConfigError(f"{source}: 'ada_target' and 'cfg_dropout' must be in [0, 1)")
    if cfg.gan_loss == "wgan-gp" and cfg.d_norm == "batch":
        raise ConfigError(f"{source}: gan_loss wgan-gp penalizes per-sample gradients, which BatchNorm couples: "
                          "set d_norm: none")
    if not 0.0 <= cfg.text_dropout < 1.0 or not 0.0 <= cfg.text_word_dropout < 1.0:
        raise ConfigError(f"{source}: 'text_dropout' and 'text_word_dropout' must be in [0, 1)")
    if not 0.0 <= cfg.eval_share <= 1.0:
        raise ConfigError(f"{source}: 'eval_share' must be in [0, 1] (0: no validation budget), got {cfg.eval_share!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"{source}: 'ema_decay' must be in [0, 1), got {cfg.ema_decay!r}")
    for name in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(cfg, name) < 0.5:
            raise ConfigError(f"{source}: '{name}' must be in [0, 0.5), got {getattr(cfg, name)!r}")
    if not (cfg.device in ("cpu", "cuda", "auto", "mps") or re.fullmatch(r"cuda:\d+", cfg.device)):
        raise ConfigError(f"{source}: 'device' must be auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    return cfg


def from_dict(values: dict, source: str = "config", base: Config | None = None) -> Config:
    """Build a validated Config from a mapping, on top of ``base`` (defaults if None)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
    merged = dataclasses.asdict(base or Config())
    for key, value in values.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        merged[key] = _coerce(key, value, source)
    return validate(Config(**merged), source)


def parse_override(item: str) -> tuple[str, object]:
    """``key=value`` from the command line; the value is read as YAML (so 1e-4, true, [0.5, 0.9] work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an impossible date like 2001-02-30
        value = raw
    if _HINTS.get(key.strip()) is str and not isinstance(value, str):
        value = raw  # "data=npz:x.npz" or "model=123" stay strings
    return key.strip(), value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe, by path or by the name of a bundled one (or start from defaults when ``path`` is
    None), and apply ``--set`` overrides."""
    values: dict = {}
    source = "defaults"
    if path is not None:
        path = recipes.path_of(path)  # a YAML path, or the name of a bundled recipe ("mnist5k-dcgan")
        source = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{at}") from None
        except ValueError as e:  # PyYAML's constructors: an impossible date (2001-02-30), ...
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    cfg = from_dict(values, source)
    if overrides:
        extra = dict(parse_override(o) for o in overrides)
        cfg = from_dict(extra, "--set", base=cfg)
    return cfg


def dump(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2) + "\n"
