"""The training loop: one explicit loop for every family, readable top to bottom.

``train`` builds a :class:`_Run` (the stages: ``setup`` in its constructor, then ``batch``, the family's
step, ``log``, ``write_grid``, ``validate``, ``checkpoint``) and runs :meth:`_Run.loop`. Per step: take the
next batch (a fixed function of the step, so resuming needs no data-loader state), let the family's
``Trainer.train_step`` do its updates (``models/gan.py``: D then G; ``models/vae.py``: the ELBO;
``models/diffusion.py``: L_simple), update the EMA. Every ``log_every`` steps the losses reach
``metrics.jsonl``, TensorBoard and the progress bar; every ``sample_every`` a grid PNG is written; every
``checkpoint_every`` a checkpoint. Ctrl-C or SIGTERM finishes the step, writes a checkpoint and stops. A
non-finite loss never reaches a checkpoint. Grids and validation draw through the one generation plan
(:func:`genforge.generation.sample`), as ``genforge sample`` does.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from genforge import devices, models
from genforge.config import Config
from genforge.crypto import load_keyring
from genforge.data import augment
from genforge.data.examples import load_examples
from genforge.data.clusters import METHOD as CLUSTER_METHOD
from genforge.data.clusters import VIEWS as CLUSTER_VIEWS
from genforge.data.clusters import cluster_labels
from genforge.errors import ConfigError, GenforgeError, ModelFileError, TrainingError
from genforge.generation import latents, sample
from genforge.generation.writers import preview, save_png
from genforge.generation.model import GenerativeModel
from genforge.generation.provenance import stamp
from genforge.metrics.validation import ValidationBudget, validator_for_run
from genforge.io import atomic_write_json, atomic_write_text, read_json
from genforge.memory import tune_allocator
from genforge.modalities import MODALITIES
from genforge.models import MODELS, build_networks, d_options, network_options
from genforge.training import distributed, privacy
from genforge.training.checkpoint import (ResumeState, check_state, is_encrypted_run, last_checkpoint, read_state,
                                          save_checkpoint, sweep_temporary)
from genforge.training.ema import EMA, recalibrate_batchnorm
from genforge.training.log import RunLogger
from genforge.training.privacy import check_resume, make_private
from genforge.version import __version__


@dataclass
class TrainResult:
    run: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False


def pick_device(name: str) -> torch.device:
    """The config's device (auto: CUDA, then MPS, then the CPU), as every command picks it."""
    try:
        return devices.pick(name)
    except GenforgeError as e:
        raise ConfigError(str(e)) from None


def resolve_precision(cfg: Config, device: torch.device, log) -> str:
    """"fp32" or "bf16" for the training step. auto: bf16 autocast on a CUDA device with native bfloat16
    (it holds the recipes' quality there and is faster), fp32 elsewhere, the CPU included: on CPUs without
    native bfloat16 (AVX2-only machines) bf16 matmul runs hundreds of times slower, and on those with it the
    speed-up of these small networks does not pay for a second set of numerics. An explicit bf16 where the
    hardware lacks it is a warning, with the slowdown measured on this CPU (devices.bf16_slowdown, cached)."""
    native = devices.native_bf16(device)
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" and native else "fp32"
    if cfg.precision == "bf16" and not native:
        measured = (f"a bf16 matrix product measured {devices.bf16_slowdown():.0f}x slower than fp32 on this CPU"
                    if device.type == "cpu" else "expect it to run far slower than fp32")
        log(f"genforge: warning: precision bf16 on {device}, which has no native bfloat16: {measured} "
            "(precision: auto picks fp32 here)")
    return cfg.precision


def set_threads(num_threads: int) -> int:
    """One intra-op thread per core we may run on: more only makes the cores fight (no SMT here). With 0 (auto),
    cores that other processes keep busy at start are left to them (genforge.devices.threads_for)."""
    n = num_threads
    if not n:
        cores = len(os.sched_getaffinity(0))
        n = devices.threads_for(cores, devices.busy_by_others()) if devices.contention_enabled() else cores
    torch.set_num_threads(n)
    return n


class _StopOnSignal:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, stop. Second: abort at once."""

    def __init__(self, logger: RunLogger, debounce: float = 0.0):
        self.logger, self.signum, self.saved = logger, 0, {}
        self.debounce, self.first = debounce, 0.0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:
            if time.monotonic() - self.first < self.debounce:
                return  # under torchrun one Ctrl-C arrives twice: from the terminal and forwarded by torchrun
            raise KeyboardInterrupt
        self.signum, self.first = signum, time.monotonic()
        self.logger.message(f"{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                            "(again to abort at once; the last checkpoint stays intact)")

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def check_run_dir(run: Path, resume: bool) -> None:
    """Refuse to clobber an existing run, or to resume one that has no checkpoint. Writes nothing."""
    if not resume and last_checkpoint(run) is not None:
        raise GenforgeError(f"{run} already holds a training run: continue it with "
                            f"'genforge train --resume {run}' or choose another --out")
    if resume and last_checkpoint(run) is None:
        raise GenforgeError(f"{run}: nothing to resume (no checkpoints/last.json)")


def train(cfg: Config, run: str | Path, resume: bool = False, quiet: bool = False, keyring=None,
          allow_plaintext: bool = False) -> TrainResult:
    """Train ``cfg`` into the run directory ``run`` (or continue it with ``resume=True``).

    ``keyring`` (:mod:`genforge.crypto`): the keys of an encrypted run (``encrypt: true``, or resuming one);
    when None and one is needed it is loaded once here (``--key-file`` or the environment). Resuming an
    encrypted run with ``encrypt: false`` is refused unless ``allow_plaintext`` (the CLI's
    ``--allow-plaintext``): its next checkpoints would be written in the clear.
    Under ``torchrun --nproc_per_node=N`` every process calls this; ``distributed.py`` says what they share.
    """
    tune_allocator()  # before the networks and the data allocate: also when train() is called from Python
    ctx = distributed.setup(pick_device(cfg.device))  # rank 0 of 1 unless torchrun started us
    try:
        return _Run(cfg, Path(run), resume, quiet or not ctx.is_main, ctx, keyring, allow_plaintext).loop()
    finally:
        ctx.close()


def check_config(cfg: Config, source: str = "config") -> Config:
    """The checks of a training config beyond its own fields: a known recipe (:func:`genforge.models.check_config`)
    and settings differential privacy can honour (:func:`genforge.training.privacy.check_config`). ``train``
    runs them first; ``genforge train --print-config`` runs them without training. Returns ``cfg``."""
    models.check_config(cfg, source)
    privacy.check_config(cfg, source)
    return cfg


def images_per_step(cfg: Config, method, world_size: int) -> int:
    """The global batch: the real images one step consumes over all processes. ``batch_size`` is per process
    and per batch; a GAN with d_steps > 1 gives each D step its own batch. The one place it is interpreted."""
    return cfg.batch_size * method.Trainer.batches_per_step(cfg) * world_size


def check_resume_state(cfg: Config, run: Path, keyring, allow_plaintext: bool) -> tuple[ResumeState, object]:
    """Read and verify the last checkpoint's resume state (digest, keys) before anything is written, and the
    settings that must not change across a resume: privacy (both records) and encryption. Returns the state
    and the keyring (loaded here when the run was encrypted and none was given)."""
    ckpt = last_checkpoint(run)
    encrypted = is_encrypted_run(ckpt)
    if encrypted and not cfg.encrypt and not allow_plaintext:
        raise ConfigError(f"{run}: this run is encrypted; resuming it with encrypt=false would write its next "
                          "checkpoints in plaintext. Keep encrypt: true, or pass --allow-plaintext to do so "
                          "deliberately")
    if encrypted and keyring is None:
        keyring = load_keyring()
    resumed = read_state(ckpt, keyring)
    check_resume(cfg, ckpt, resumed.state)
    return resumed, keyring


@dataclass
class Data:
    """The training split on the device, and what the loop needs to know about it."""
    x: torch.Tensor                 # (N, *example_shape) in the method's value range
    y: torch.Tensor | None          # (N,) int64, when the model is conditional
    modality: str                   # the data's (genforge.modalities): recorded with the model
    example_shape: tuple[int, ...]  # images (c, h, w); series (c, t)
    class_names: list[str] | None   # the data's (recorded even when the model is unconditional)
    num_classes: int                # classes the model is conditioned on: 0 for unconditional models
    clusters: dict | None           # cluster guidance: k, prior, method
    transform: dict                 # how outputs in [0, 1] map back to the data's units (saved with the model)
    raw: object                     # the modality's own splits: the validator reads the validation split


def load_data(cfg: Config, device: torch.device, fitted: dict | None = None) -> Data:
    """Cleaned, split, normalized once, kept in memory as one tensor (no per-batch work), for any modality
    (genforge.data.examples). ``fitted``: a resumed private run's transform, drawn with noise once."""
    spec = MODELS[cfg.model]
    ex = load_examples(cfg, spec.method.VALUE_RANGE, fitted)
    x = ex.train_x.to(device)  # (N, *example_shape)
    labels, class_names, clusters = ex.train_y, ex.class_names, None
    if cfg.clusters:  # cluster guidance: k-means clusters replace the labels, which are never read
        view = MODALITIES[ex.modality].cluster_view
        if not view:
            raise ConfigError(f"clusters (cluster guidance) clusters pictures (images, spectrograms); {cfg.data!r} "
                              f"is {ex.modality} data of shape {tuple(ex.example_shape)}")
        labels, prior = cluster_labels(CLUSTER_VIEWS[view](ex), cfg.clusters, cfg.seed)
        class_names = [f"cluster {i}" for i in range(cfg.clusters)]
        # the labels' hash travels with the model, so a resume can tell that it trains on the same clusters
        clusters = {"k": cfg.clusters, "prior": prior.tolist(), "method": f"{CLUSTER_METHOD}, view {view}",
                    "labels_sha256": hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64)).hexdigest()}
    num_classes = len(class_names or []) if spec.conditional else 0
    if spec.conditional and (labels is None or num_classes < 2):
        raise ConfigError(f"model {cfg.model!r} is class-conditional but data {cfg.data!r} has no labels"
                          + (" (set clusters: K to train it on k-means clusters instead)" if x.ndim == 4 else ""))
    if cfg.channels_last:
        if x.ndim != 4:
            raise ConfigError(f"channels_last is a memory layout of images; {cfg.data!r} is {ex.modality} data")
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).to(device) if num_classes else None
    return Data(x, y, ex.modality, ex.example_shape, class_names, num_classes, clusters, ex.transform, ex.raw)


def check_width(cfg: Config, example_shape: tuple[int, ...]) -> None:
    """Refuse 1-D networks narrower than the data's channels. Their full-length layers hold base_channels
    features per time step, so with fewer than the data has channels every generated window lies in one fixed
    subspace (a linear classifier tells it from real data) and a denoiser cannot carry every channel's noise:
    on tep's 53 sensors with base_channels 32, the diffusion model's noise error stayed at 0.42 even at the
    noisiest step, about 1 - 32/53, and a post-hoc classifier told every recipe's samples from real ones 98%
    of the time. (Models saved that way still load and sample; only training refuses.)"""
    if len(example_shape) == 2 and cfg.base_channels and cfg.base_channels < example_shape[0]:
        raise ConfigError(f"base_channels {cfg.base_channels} is fewer than the {example_shape[0]} channels of "
                          f"{cfg.data}: every generated window would lie in a {cfg.base_channels}-channel subspace "
                          f"of the {example_shape[0]}; set base_channels to at least {example_shape[0]}")


def check_same_clusters(clusters: dict, ckpt: Path) -> None:
    """Refuse to resume a cluster-guided run on clusters other than the ones it trained on (k-means computed
    again differs when the data, the seed or genforge's k-means changed); a run from before the labels' hash
    was recorded cannot be checked, so it is refused too, naming why."""
    meta = read_json(Path(ckpt) / "config.json", ModelFileError)
    recorded = (meta.get("clusters") or {}).get("labels_sha256") if isinstance(meta, dict) else None
    if recorded != clusters["labels_sha256"]:
        why = ("its checkpoint records no hash of its cluster labels (written by an older genforge, whose k-means "
               "was its own)" if recorded is None else "the cluster labels computed now differ from the ones it "
               "trained on")
        raise ConfigError(f"{ckpt}: cannot resume this cluster-guided run: {why}. Start a new run; its model "
                          "files still load and sample")


@dataclass
class Progress:
    """The loop's bookkeeping that a checkpoint carries and a resume or rollback restores."""
    step: int = 0
    lr_scale: float = 1.0       # halved by each NaN rollback
    rollbacks: int = 0
    elapsed: float = 0.0        # training seconds before this process started
    best_fid: float = math.inf

    def to_state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load(self, state: dict) -> None:
        for f in fields(self):
            setattr(self, f.name, state.get(f.name, getattr(self, f.name)))


class _Run:
    """One training run's state: data, networks, trainer, EMA, random streams, and the stages that use them."""

    # ------------------------------------------------------------------ setup
    def __init__(self, cfg: Config, run: Path, resume: bool, quiet: bool, ctx: distributed.Context, keyring,
                 allow_plaintext: bool):
        check_config(cfg)
        check_run_dir(run, resume)
        if ctx.active and cfg.dp_epsilon > 0:
            raise ConfigError("differential privacy (dp_epsilon) trains in one process only: run it without torchrun")
        if cfg.encrypt and keyring is None:  # a missing or unreadable key is found now, not at the first checkpoint
            keyring = load_keyring()
        resumed = None
        if resume:  # read, verify and check the resume state now: a damaged one stops us before any write
            resumed, keyring = check_resume_state(cfg, run, keyring, allow_plaintext)
        self.cfg, self.run, self.ctx, self.resumed, self.quiet = cfg, run, ctx, resumed, quiet
        self.keyring = keyring  # the checkpoint writer encrypts with it when cfg.encrypt (a rollback reads with it)
        self.device = ctx.device
        self.notes = []  # said once the logger exists
        self.precision = resolve_precision(cfg, self.device, self.notes.append)
        threads = set_threads(cfg.num_threads or ctx.cpu_threads)
        if not (cfg.num_threads or ctx.cpu_threads) and threads < len(os.sched_getaffinity(0)):
            self.notes.append(f"genforge: other processes keep {devices.busy_by_others():.1f} core(s) busy: training "
                              f"on {threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')} "
                              "(num_threads sets the count; GENFORGE_CONTENTION=off keeps one thread per core)")
        self.method = MODELS[cfg.model].method
        # a private transform (a table's noisy histograms) is drawn once: a resume takes it from the verified state
        fitted = ((resumed.state.get("privacy") or {}).get("transform") if resumed is not None and cfg.dp_epsilon > 0
                  else None)
        self.data = load_data(cfg, self.device, fitted)
        if resumed is not None and self.data.clusters:
            check_same_clusters(self.data.clusters, resumed.path.parent)  # resumed.path: the state.pt
        self.n_train = self.data.x.shape[0]
        self.build()
        if resumed is not None:  # the networks this config builds must be the saved ones: checked before any write
            check_state(resumed.state, self.nets, self.ema.shadow, self.trainer.optimizers, resumed.path)
        self.meta = self.release_meta()
        # The model grids and validation sample from: the EMA copies, and the networks without weights (the
        # diffusion schedule). The trained networks that are not averaged (the GAN's discriminator) take no
        # part in sampling and stay out, so the model's eval()/freeze never reaches a network being trained.
        self.sampler = GenerativeModel({role: self.ema.shadow.get(role, net) for role, net in self.nets.items()
                                        if role in self.ema.shadow or not any(True for _ in net.parameters())},
                                       self.meta)
        # validation scoring (optional): the same latents every time (seed + 5). No evaluator is trained
        # silently: a missing one is announced with an estimate, or validation is skipped with a note when the
        # run is shorter than training it (genforge.metrics.validation.validator_for_run)
        self.validator = None
        if cfg.eval_every and ctx.is_main:
            self.validator = validator_for_run(cfg.data, self.data.modality, self.data.raw, n=cfg.eval_n,
                                               seed=cfg.seed, max_steps=cfg.max_steps, max_seconds=cfg.max_seconds,
                                               log=lambda note: self.notes.append(f"genforge: {note}"))
        # whether any process validates: asked once here (a collective under torchrun), not at every step
        self.validating = ctx.any(self.validator is not None)
        # eval_share: validation sized from its measured cost to stay within that share of the run's time
        self.val_budget = None
        if self.validator is not None and cfg.eval_share > 0:
            steps = self.sampler.sampling_defaults.get("steps")  # diffusion: sampler steps; others: None
            self.val_budget = ValidationBudget(cfg.eval_share, cfg.eval_n, steps)
        # Everything the user can get wrong has been checked by now: only now is anything written.
        swept = []
        if ctx.is_main:
            run.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            swept = sweep_temporary(run)
        if resumed is not None:  # every process loads the same checkpoint
            self.restore(resumed)
        self.logger = RunLogger(run, cfg.max_steps, self.progress.step, cfg.tensorboard, quiet, enabled=ctx.is_main,
                                max_seconds=cfg.max_seconds)
        self.announce(swept)
        for note in self.notes:
            self.logger.message(note)

    def build(self) -> None:
        """Networks, EMA, DP, trainer (in that order: the EMA copies must not carry Opacus' hooks), streams."""
        cfg, ctx, method, device = self.cfg, self.ctx, self.method, self.device
        torch.manual_seed(cfg.seed)
        self.z_dim = method.latent_dim(cfg.z_dim, self.data.example_shape)  # diffusion: the noise, prod(shape)
        self.net_options = network_options(cfg.model, cfg, self.data.transform)  # text: vocabulary, layers, width
        check_width(cfg, self.data.example_shape)
        self.nets = build_networks(cfg.model, self.data.example_shape, self.z_dim, cfg.base_channels,
                                   self.data.num_classes, d_options(cfg), self.net_options)
        for net in self.nets.values():
            net.to(device).train()
            if cfg.channels_last:
                net.to(memory_format=torch.channels_last)
        if cfg.compile:  # in place, so state_dict keys (and so checkpoints) are the same as without it
            for net in self.nets.values():
                net.compile()
        self.per_step = images_per_step(cfg, method, ctx.world_size)
        if self.per_step > self.n_train:
            raise ConfigError(f"batch_size {cfg.batch_size} (x d_steps {cfg.d_steps} for GANs"
                              f"{f', x {ctx.world_size} processes' if ctx.active else ''}) is larger than the "
                              f"training split ({self.n_train} images)")
        self.steps_per_epoch = self.n_train // self.per_step
        self.ema = EMA({role: self.nets[role] for role in method.EMA_NETWORKS}, cfg.ema_decay, cfg.ema_start)
        # DP-SGD: per-sample hooks on the private networks, Poisson batches, the accountant; the trainer wraps
        # its optimizer with it when it is built. genforge/training/privacy.py.
        self.dp = (make_private(cfg, method, self.nets, self.n_train, self.per_step, device, self.data.transform)
                   if cfg.dp_epsilon > 0 else None)
        # under torchrun: DDP-wrapped networks, gradients averaged over processes
        self.trainer = method.Trainer(cfg, ctx.wrap(self.nets), private=self.dp)
        if hasattr(self.trainer, "bind"):  # a method that reads the whole training split (CTGAN's training by
            # sampling, the copula's one-pass fit, the autoregressive model's VAR start), not only the batches
            self.trainer.bind(self.data.x, self.data.y)
            self.ema.copy_buffers(self.nets)  # what it bound (category frequencies) reaches the sampled copy now
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.trainer.optimizers.items()}
        # latents and reparameterization; augmentation (drawn on the CPU). One stream per process under torchrun.
        self.noise = torch.Generator(device=device).manual_seed(ctx.seed(cfg.seed + 1))
        self.aug_rng = torch.Generator().manual_seed(ctx.seed(cfg.seed + 2))
        self.progress = Progress()
        k = self.data.num_classes  # BatchNorm recalibration inputs of the EMA copy: 4 x 256 fixed latents
        self.calib = [(latents(256, self.z_dim, cfg.seed + 4 + i).to(device),
                       torch.arange(256, device=device) % k if k else None) for i in range(4)]

    def release_meta(self) -> dict:
        """What the release weights' config.json says about them (``models/files.py`` checks it on load)."""
        cfg, data = self.cfg, self.data
        return {"model": cfg.model, "modality": data.modality, "example_shape": list(data.example_shape),
                "transform": data.transform, "z_dim": self.z_dim,
                "base_channels": cfg.base_channels, "num_classes": data.num_classes, "d_options": d_options(cfg),
                "class_names": data.class_names, "value_range": self.method.VALUE_RANGE, "data": cfg.data,
                "genforge_version": __version__, "train_config": cfg.to_dict(),
                **({"net_options": self.net_options} if self.net_options else {}),
                **({"clusters": data.clusters} if data.clusters else {})}

    def announce(self, swept: list[str]) -> None:
        cfg, ctx, log = self.cfg, self.ctx, self.logger.message
        log(f"genforge: training {cfg.model} on {cfg.data} ({self.n_train} examples of shape "
            f"{self.data.example_shape}) "
            f"on {self.device}; run directory: {self.run}")
        if swept:
            log(f"genforge: removed {len(swept)} unfinished checkpoint director{'y' if len(swept) == 1 else 'ies'} "
                f"left by an interrupted write ({', '.join(swept[:3])}{', ...' if len(swept) > 3 else ''})")
        if self.resumed is not None and not self.resumed.verified:
            log(f"genforge: {self.resumed.path} has no recorded SHA-256 (written by an older genforge): resuming "
                "from it unverified")
        if ctx.active:
            log(f"genforge: {ctx.world_size} processes, batch_size {cfg.batch_size} each: "
                f"{self.per_step} images per step")
        saved = self.resumed.state if self.resumed is not None else {}
        if saved.get("global_batch", self.per_step) != self.per_step:
            log(f"genforge: this run took {saved['global_batch']} images per step "
                f"({saved.get('world_size', 1)} processes), now {self.per_step}: the data order and the "
                f"learning dynamics change (keep batch_size x processes to continue as before)")
        if self.dp is not None:
            log(self.dp.describe())
        if cfg.encrypt and cfg.sample_every:
            log("genforge: encrypt: no sample grids are written (PNGs cannot be encrypted and would show "
                "what the model learned); draw samples with: genforge sample RUN --out x.npz --encrypt")

    def restore(self, resumed: ResumeState) -> None:
        """Load a verified resume state (checked against these networks by the caller, ``check_state``): weights,
        EMA, optimizers, trainer, DP, random streams, bookkeeping."""
        state, ctx, cfg = resumed.state, self.ctx, self.cfg
        for role, net in self.nets.items():
            net.load_state_dict(state["nets"][role])
        self.ema.load_state_dict(state["ema"])
        for name, opt in self.trainer.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.trainer.load_state_dict(state["trainer"])
        if self.dp is not None:
            self.dp.load_state_dict(state["privacy"])
        streams = state.get("rank_rngs") or [(state["noise_rng"], state["aug_rng"])]
        if ctx.rank < len(streams):
            self.noise.set_state(streams[ctx.rank][0])
            self.aug_rng.set_state(streams[ctx.rank][1])
        else:  # more processes than the run had: a fresh stream of its own, a function of rank and step
            self.noise.manual_seed(ctx.seed(cfg.seed + 1) + 7919 * state["step"])
            self.aug_rng.manual_seed(ctx.seed(cfg.seed + 2) + 7919 * state["step"])
        self.progress.load(state)

    # ------------------------------------------------------------------ one step's batch
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, int] | None:
        """This process's images (b, c, h, w) and classes (b,) or None for ``step``, and the epoch; None when DP's
        budget is spent. A fixed permutation per epoch, so batch k is the same after a resume."""
        cfg = self.cfg
        epoch, i = divmod(step, self.steps_per_epoch)
        if self.dp is not None:  # DP-SGD: a Poisson batch (the accountant's assumption), until the budget
            if not self.dp.allows_step():
                return None
            idx = self.dp.batch(step).to(self.device)
        else:
            if epoch != getattr(self, "_perm_epoch", None):
                perm_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n_train, generator=perm_gen).to(self.device)
                self._perm_epoch = epoch
            idx = self.ctx.shard(self._perm[i * self.per_step:(i + 1) * self.per_step])  # this process's part
        x = self.data.x[idx]                                         # (b, c, h, w)
        y = self.data.y[idx] if self.data.y is not None else None    # (b,) or None
        if (cfg.augment_flip or cfg.augment_shift > 0 or cfg.augment_rotate > 0) and len(idx):
            x = augment(x, self.aug_rng, flip=cfg.augment_flip, shift=cfg.augment_shift, rotate=cfg.augment_rotate)
        return x, y, epoch

    # ------------------------------------------------------------------ sampling: grids and validation
    def release_nets(self) -> dict[str, torch.nn.Module]:
        """EMA copies where the family averages, the trained networks elsewhere (what a checkpoint releases)."""
        released = {role: self.ema.shadow.get(role, net) for role, net in self.nets.items()}
        recalibrate_batchnorm(released[self.method.LATENT], self.calib)
        return released

    def write_grid(self, step: int) -> Path | None:
        """The same grid_n samples (seed + 3) at every step: each class in turn, grid rows one class wide."""
        # grids of a model trained on confidential data may show that data: an encrypted run writes none
        if not self.ctx.is_main or self.cfg.encrypt:
            return None
        self.release_nets()  # the sampler shares the EMA copies; their BatchNorm statistics are refreshed here
        samples = sample(self.sampler, self.cfg.grid_n, seed=self.cfg.seed + 3)
        cols = None if self.data.clusters else (self.sampler.num_classes or None)
        # the modality's preview picks what it draws of the real training split beside the samples
        picture = preview(samples, self.sampler, nrow=cols, real=getattr(self.data.raw, "train", None),
                          title=f"step {step}")
        path = save_png(picture, self.run / "samples" / f"step_{step:08d}.png",
                        metadata=stamp({"kind": "training-grid", "model": self.cfg.model, "run": str(self.run),
                                        "step": step}))
        self.logger.image("samples", picture, step)
        return path

    def validate(self, last: bool = False) -> dict[str, float]:
        """Scores of eval_n samples (seed + 5) against the validation split; under eval_share, as many samples
        and sampler steps as the budget allows (genforge.metrics.validation.ValidationBudget), keeping room for
        the ``last`` validation of a max_seconds run."""
        self.release_nets()

        def draw(n: int, steps: int | None):
            return sample(self.sampler, n, seed=self.cfg.seed + 5, **({} if steps is None else {"steps": steps})).x

        if self.val_budget is None:
            return self.validator(draw(self.cfg.eval_n, None))
        train_seconds = time.perf_counter() - self.t_start - self.val_budget.spent
        return self.val_budget.run(self.validator, draw, train_seconds, self.logger.message, self.cfg.max_seconds,
                                   last)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self, step: int) -> Path:
        """Write checkpoint ``step`` (rank 0; the others wait), after checking every process holds the same
        weights."""
        ctx = self.ctx
        ctx.check_in_sync(self.nets, step)  # under torchrun: every process holds the same weights, or stop here
        streams = ctx.gather((self.noise.get_state(), self.aug_rng.get_state()))  # every process's streams
        if not ctx.is_main:  # rank 0 writes; the others wait until the checkpoint is complete
            ctx.barrier()
            return last_checkpoint(self.run)
        state = {"nets": {role: net.state_dict() for role, net in self.nets.items()}, "ema": self.ema.state_dict(),
                 "optimizers": {name: opt.state_dict() for name, opt in self.trainer.optimizers.items()},
                 "trainer": self.trainer.state_dict(), "noise_rng": self.noise.get_state(),
                 "aug_rng": self.aug_rng.get_state(), **self.progress.to_state(), "step": step,
                 "world_size": ctx.world_size, "global_batch": self.per_step}
        if ctx.active:
            state["rank_rngs"] = streams
        info = self.meta
        if self.dp is not None:  # the accountant travels with the resume state, the epsilon spent with the model
            state["privacy"] = self.dp.state_dict()
            if "private" in self.data.transform:  # ... and the noisy transform, which a resume must not redraw
                state["privacy"]["transform"] = self.data.transform
            info = {**self.meta, "privacy": self.dp.report()}
        path = save_checkpoint(self.run, step, self.release_nets(), info, state, keep=self.cfg.keep_checkpoints,
                               keyring=self.keyring if self.cfg.encrypt else None)
        ctx.barrier()
        return path

    # ------------------------------------------------------------------ a non-finite loss
    def rollback(self, last_ckpt: Path, step: int) -> int:
        """nan_policy rollback: back to the last checkpoint with the learning rates halved; returns its step."""
        state = read_state(last_ckpt, self.keyring)
        check_state(state.state, self.nets, self.ema.shadow, self.trainer.optimizers, state.path)
        self.restore(state)
        self.progress.rollbacks += 1
        self.progress.lr_scale *= 0.5
        for name, opt in self.trainer.optimizers.items():
            for group, lr in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = lr * self.progress.lr_scale
        self.logger.message(f"non-finite loss before step {step}: rolled back to step {self.progress.step} "
                            f"with learning rates x{self.progress.lr_scale:g}")
        return self.progress.step

    def nonfinite_error(self, step: int) -> TrainingError:
        """The error that stops training at a non-finite loss, naming the checkpoint kept and the likely cause."""
        where = (f"the last good checkpoint is step {self.last_ckpt_step} ({self.last_ckpt})" if self.last_ckpt
                 else "no checkpoint had been written yet")
        cause = "Lower the learning rate (--set g_lr=... d_lr=...) or set nan_policy=rollback"
        if self.resumed is not None and self.resumed.verified:
            cause = (f"The run resumed from {self.resumed.path}, whose SHA-256 matched the digest recorded when "
                     f"it was written, so the state was not corrupt: the training diverged. {cause}")
        elif self.resumed is not None:
            cause = (f"The run resumed from {self.resumed.path}, written before resume states carried a digest, so "
                     f"it may be damaged, or the training diverged: resume from an earlier intact copy, or: {cause}")
        return TrainingError(f"loss became non-finite (NaN or inf) by step {step}; training stopped and {where}. "
                             f"{cause}")

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for net in self.nets.values() for p in net.parameters())

    # ------------------------------------------------------------------ the loop
    def loop(self) -> TrainResult:
        """Per step: the batch, the family's updates, the EMA; then logging, grids, validation, checkpoints."""
        cfg, ctx = self.cfg, self.ctx
        step = self.start_step = self.progress.step
        self.elapsed_before = self.progress.elapsed
        self.last_ckpt = last_checkpoint(self.run) if self.resumed is not None else None
        self.last_ckpt_step = step if self.resumed is not None else -1
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)  # stays on the device: no sync per step
        self.t_start = self.t_log = time.perf_counter()
        self.step_log, grid = step, None
        with _StopOnSignal(self.logger, debounce=2.0 if ctx.active else 0.0) as stop:
            try:
                while step < cfg.max_steps and not ctx.any(stop.signum):  # any process's signal stops them all
                    if self.last_ckpt_step == step > self.start_step and self.over_time():
                        # the budget ran out during the last step's validation or checkpoint: that step is saved
                        # (and scored), so stop here rather than train one more step and score it again
                        self.logger.message(f"max_seconds={cfg.max_seconds:g} reached at step {step}")
                        break
                    batch = self.batch(step)
                    if batch is None:
                        self.logger.message(f"privacy budget reached: epsilon {self.dp.epsilon():.3f} of "
                                            f"{cfg.dp_epsilon:g} (delta {cfg.dp_delta:g}) after {self.dp.steps()} "
                                            f"{self.dp.UNIT}; stopping")
                        break
                    x, y, epoch = batch
                    # ---- the family's updates (GAN: D then G; VAE: one ELBO step; diffusion: L_simple), the EMA
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                        losses = self.trainer.train_step(x, y, self.noise, step) if len(x) else self.dp.empty_step()
                    step += 1
                    self.ema.update(self.nets, step)
                    self.finite &= torch.stack(list(losses.values())).isfinite().all()
                    step, stop_now = self.after_step(step, losses, epoch)
                    if stop_now:
                        break
                if self.last_ckpt_step != step:  # stopped by a signal or the DP budget, or nothing left to do
                    self.save(step, {})
                grid = self.write_grid(step)
                if grid is not None:
                    atomic_write_text(self.run / "samples" / "last.txt", grid.name + "\n")
            finally:
                self.logger.close()
        if not self.quiet:
            print(f"genforge: step {step}: checkpoint {self.last_ckpt}\ngenforge: sample grid {grid}")
        return TrainResult(run=self.run, step=step, checkpoint=self.last_ckpt, interrupted=bool(stop.signum))

    def over_time(self) -> bool:
        """max_seconds reached. Validation counts toward it: once the budget has sized validation, training stops
        early enough to leave the last validation its predicted time."""
        reserve = self.val_budget.reserve(self.cfg.max_seconds) if self.val_budget is not None else 0.0
        return bool(self.cfg.max_seconds) and self.ctx.any(
            time.perf_counter() - self.t_start + reserve >= self.cfg.max_seconds)

    def after_step(self, step: int, losses: dict, epoch: int) -> tuple[int, bool]:
        """Log (and catch a non-finite loss), validate, write the grid and the checkpoint that are due.
        Returns the step to continue from (earlier after a NaN rollback) and whether to stop."""
        cfg = self.cfg
        last, over_time = step == cfg.max_steps, self.over_time()
        due_eval = self.validating and (step % cfg.eval_every == 0 or last or over_time)
        due_ckpt = ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last or over_time
                    or due_eval)  # evaluated weights are kept, so "best" can point at them
        scores = {}
        if step % cfg.log_every == 0 or due_ckpt:
            losses, self.finite = self.ctx.mean(losses, self.finite)  # under torchrun: over all processes
            if not bool(self.finite) or (due_ckpt and not self.all_finite()):
                if (cfg.nan_policy == "rollback" and self.last_ckpt is not None
                        and self.progress.rollbacks < cfg.max_rollbacks):
                    self.finite.fill_(True)
                    return self.rollback(self.last_ckpt, step), False
                raise self.nonfinite_error(step)
            now = time.perf_counter()
            scores = self.validate(last=last or over_time) if due_eval and self.ctx.is_main else {}
            self.logger.log(step, {**{k: float(v) for k, v in losses.items()},
                                   "images_per_sec": (step - self.step_log) * self.per_step / max(now - self.t_log, 1e-9),
                                   "epoch": epoch, "time": self.elapsed_before + now - self.t_start,
                                   **(self.dp.log_values() if self.dp is not None else {}), **scores},
                            final=due_ckpt)
            self.t_log, self.step_log = now, step
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.write_grid(step)
        if due_ckpt:
            self.save(step, scores)
        if over_time:
            self.logger.message(f"max_seconds={cfg.max_seconds:g} reached at step {step}")
        return step, bool(over_time)

    def save(self, step: int, scores: dict) -> None:
        """Checkpoint ``step``; point best.json at it when its validation FID is the best so far."""
        improved = "val_fid" in scores and scores["val_fid"] < self.progress.best_fid
        if improved:
            self.progress.best_fid = scores["val_fid"]
        self.progress.step = step
        self.progress.elapsed = self.elapsed_before + time.perf_counter() - self.t_start
        self.last_ckpt, self.last_ckpt_step = self.checkpoint(step), step
        if improved:
            atomic_write_json(self.run / "checkpoints" / "best.json",
                              {"dir": self.last_ckpt.name, "step": step, "val_fid": scores["val_fid"],
                               "evaluator_sha256": self.validator.evaluator_sha256})
