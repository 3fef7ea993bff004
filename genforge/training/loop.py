"""The training loop: one explicit loop for every family, readable top to bottom.

Per step: take the next batch (a fixed function of the step, so resuming needs
no data-loader state), let the family's ``Trainer.train_step`` do its updates
(``models/gan.py``: D then G; ``models/vae.py``: the ELBO), update the EMA.
Every ``log_every`` steps the losses reach ``metrics.jsonl``, TensorBoard and
the progress bar; every ``sample_every`` a grid PNG is written; every
``checkpoint_every`` a checkpoint. Ctrl-C or SIGTERM finishes the step, writes
a checkpoint and stops. A non-finite loss never reaches a checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from genforge.version import __version__
from genforge.config import Config
from genforge.data import augment, load_splits, to_tensor
from genforge.errors import ConfigError, GenforgeError, TrainingError
from genforge.generation import latents, make_grid, save_grid, to_uint8
from genforge.generation.sampling import prior_classes
from genforge.io import atomic_write_json, atomic_write_text
from genforge.generation.provenance import stamp
from genforge.models import MODELS, build_networks, d_options, family_of, sampling_defaults
from genforge import models
from genforge.training import privacy
from genforge.training.privacy import PrivateTraining, check_resume
from genforge.training import distributed
from genforge.training.checkpoint import last_checkpoint, load_state, save_checkpoint
from genforge.training.ema import EMA, recalibrate_batchnorm
from genforge.training.log import RunLogger


@dataclass
class TrainResult:
    run: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available here (use device=cpu)")
    return torch.device(name)


def set_threads(num_threads: int) -> int:
    """One intra-op thread per core we may run on: more only makes the cores fight (no SMT here)."""
    n = num_threads or len(os.sched_getaffinity(0))
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


def train(cfg: Config, run: str | Path, resume: bool = False, quiet: bool = False) -> TrainResult:
    """Train ``cfg`` into the run directory ``run`` (or continue it with ``resume=True``).

    Under ``torchrun --nproc_per_node=N`` every process calls this; ``distributed.py`` says what they share.
    """
    ctx = distributed.setup(pick_device(cfg.device))  # rank 0 of 1 unless torchrun started us
    try:
        return _train(cfg, run, resume, quiet or not ctx.is_main, ctx)
    finally:
        ctx.close()


def _train(cfg: Config, run: str | Path, resume: bool, quiet: bool, ctx: distributed.Context) -> TrainResult:
    run = Path(run)
    models.check_config(cfg)
    privacy.check_config(cfg)
    check_run_dir(run, resume)
    if cfg.encrypt:  # a missing or unreadable key is found now, not at the first checkpoint
        from genforge.crypto import load_keyring

        load_keyring()
    device = ctx.device
    set_threads(cfg.num_threads or ctx.cpu_threads)
    if ctx.active and getattr(cfg, "dp_epsilon", 0) > 0:
        raise ConfigError("differential privacy (dp_epsilon) trains in one process only: run it without torchrun")
    spec = MODELS[cfg.model]
    method = spec.method

    # ---- data: cleaned, split, normalized once, kept in memory as one tensor (no per-batch image work)
    splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels, on_bad=cfg.on_bad,
                         dedup=cfg.dedup, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                         seed=cfg.split_seed)
    x_train = to_tensor(splits.train.x, method.VALUE_RANGE).to(device)  # (N, c, h, w)
    n_train = x_train.shape[0]
    labels, class_names, clusters = splits.train.y, splits.class_names, None
    if cfg.clusters:  # cluster guidance: k-means clusters replace the labels, which are never read
        from genforge.data.clusters import cluster_labels

        labels, prior = cluster_labels(splits.train.x, cfg.clusters, cfg.seed)
        class_names = [f"cluster {i}" for i in range(cfg.clusters)]
        clusters = {"k": cfg.clusters, "prior": prior.tolist(), "method": "k-means on 32 principal components"}
    num_classes = len(class_names or []) if spec.conditional else 0
    if spec.conditional and (labels is None or num_classes < 2):
        raise ConfigError(f"model {cfg.model!r} is class-conditional but data {cfg.data!r} has no labels "
                          "(set clusters: K to train it on k-means clusters instead)")
    y_train = torch.from_numpy(labels).to(device) if num_classes else None  # (N,) int64
    augmenting = cfg.augment_flip or cfg.augment_shift > 0 or cfg.augment_rotate > 0

    # ---- networks, optimizers, EMA, random streams
    torch.manual_seed(cfg.seed)
    z_dim = method.latent_dim(cfg.z_dim, splits.image_shape)          # diffusion: the noise image, c*h*w
    nets = build_networks(cfg.model, splits.image_shape, z_dim, cfg.base_channels, num_classes, d_options(cfg))
    for net in nets.values():
        net.to(device).train()
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
    if cfg.channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    trainer = method.Trainer(cfg, ctx.wrap(nets))  # under torchrun: DDP-wrapped, gradients averaged over processes
    if cfg.compile:  # in place, so state_dict keys (and so checkpoints) are the same as without it
        for net in nets.values():
            net.compile()
    # real images one step consumes (over all processes: the global batch); a GAN with d_steps > 1 gives each
    # D step its own batch
    per_step = cfg.batch_size * getattr(trainer, "batch_multiplier", 1) * ctx.world_size
    if per_step > n_train:
        raise ConfigError(f"batch_size {cfg.batch_size} (x d_steps {cfg.d_steps} for GANs"
                          f"{f', x {ctx.world_size} processes' if ctx.active else ''}) is larger than the "
                          f"training split ({n_train} images)")
    steps_per_epoch = n_train // per_step
    ema = EMA({role: nets[role] for role in method.EMA_NETWORKS}, cfg.ema_decay, cfg.ema_start)
    # DP-SGD (after the EMA copies, which must not carry Opacus' hooks): takes over the private networks'
    # optimizer, draws Poisson batches, keeps the privacy accountant. genforge/training/privacy.py.
    dp = PrivateTraining(cfg, trainer, nets, n_train, device) if cfg.dp_epsilon > 0 else None
    # latents and reparameterization; augmentation (drawn on the CPU). One stream per process under torchrun.
    noise = torch.Generator(device=device).manual_seed(ctx.seed(cfg.seed + 1))
    aug_rng = torch.Generator().manual_seed(ctx.seed(cfg.seed + 2))
    grid_z = latents(cfg.grid_n, z_dim, cfg.seed + 3).to(device)       # the same grid latents all run long

    def classes(n: int, seed: int) -> torch.Tensor | None:
        """Classes of n grid or validation samples: each class in turn; clusters drawn by size; or None."""
        if clusters:  # a cluster-guided model is shown and scored as the unconditional model it stands for
            return torch.from_numpy(prior_classes(clusters["prior"], n, seed)).to(device)
        return torch.arange(n, device=device) % num_classes if num_classes else None

    # conditional grids cycle through the classes and are drawn num_classes wide: one column per class
    grid_y = classes(cfg.grid_n, cfg.seed + 3)
    grid_cols = None if clusters else (num_classes or None)
    calib = [(latents(256, z_dim, cfg.seed + 4 + i).to(device),
              torch.arange(256, device=device) % num_classes if num_classes else None) for i in range(4)]
    meta = {"model": cfg.model, "modality": "image", "image_shape": list(splits.image_shape), "z_dim": z_dim,
            "base_channels": cfg.base_channels, "num_classes": num_classes, "d_options": d_options(cfg), "class_names": class_names,
            "value_range": method.VALUE_RANGE, "data": cfg.data, "genforge_version": __version__,
            "train_config": cfg.to_dict(), **({"clusters": clusters} if clusters else {})}
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in trainer.optimizers.items()}
    book = {"step": 0, "lr_scale": 1.0, "rollbacks": 0, "elapsed": 0.0, "best_fid": math.inf}

    # ---- validation scoring (optional): the same latents every time, so the curve measures the model only
    validator = None
    if cfg.eval_every and ctx.is_main:
        from genforge.metrics import TrainingEvaluator

        validator = TrainingEvaluator(cfg.data, splits.val.x, splits.image_shape, n=cfg.eval_n, seed=cfg.seed)
        eval_z = latents(cfg.eval_n, z_dim, cfg.seed + 5).to(device)
        eval_y = classes(cfg.eval_n, cfg.seed + 5)

    def restore(ckpt: Path) -> None:
        state = load_state(ckpt)
        for role, net in nets.items():
            net.load_state_dict(state["nets"][role])
        ema.load_state_dict(state["ema"])
        for name, opt in trainer.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        trainer.load_state_dict(state["trainer"])
        if dp is not None:
            dp.load_state_dict(state["privacy"])
        streams = state.get("rank_rngs") or [(state["noise_rng"], state["aug_rng"])]
        if ctx.rank < len(streams):
            noise.set_state(streams[ctx.rank][0])
            aug_rng.set_state(streams[ctx.rank][1])
        else:  # more processes than the run had: a fresh stream of its own, a function of rank and step
            noise.manual_seed(ctx.seed(cfg.seed + 1) + 7919 * state["step"])
            aug_rng.manual_seed(ctx.seed(cfg.seed + 2) + 7919 * state["step"])
        book.update({k: state.get(k, book[k]) for k in book})
        return state

    def release_nets() -> dict[str, torch.nn.Module]:
        """EMA copies where the family averages, the trained networks elsewhere."""
        released = {role: ema.shadow.get(role, net) for role, net in nets.items()}
        recalibrate_batchnorm(released[method.LATENT], calib)
        return released

    def checkpoint(step: int) -> Path:
        ctx.check_in_sync(nets, step)  # under torchrun: every process holds the same weights, or stop here
        streams = ctx.gather((noise.get_state(), aug_rng.get_state()))  # every process's random streams
        if not ctx.is_main:  # rank 0 writes; the others wait until the checkpoint is complete
            ctx.barrier()
            return last_checkpoint(run)
        state = {"nets": {role: net.state_dict() for role, net in nets.items()}, "ema": ema.state_dict(),
                 "optimizers": {name: opt.state_dict() for name, opt in trainer.optimizers.items()},
                 "trainer": trainer.state_dict(),
                 "noise_rng": noise.get_state(), "aug_rng": aug_rng.get_state(), **book, "step": step,
                 "world_size": ctx.world_size, "global_batch": per_step}
        if ctx.active:
            state["rank_rngs"] = streams
        info = meta
        if dp is not None:  # the accountant travels with the resume state, the epsilon spent with the model
            state["privacy"] = dp.state_dict()
            info = {**meta, "privacy": dp.report()}
        path = save_checkpoint(run, step, release_nets(), info, state, keep=cfg.keep_checkpoints)
        ctx.barrier()
        return path

    # diffusion: grids and validation sample the way the finished model will (the recipe's sampler settings)
    sampling = sampling_defaults(method, cfg.to_dict(), bool(num_classes))

    def write_grid(step: int) -> Path | None:
        # grids of a model trained on confidential data may show that data: an encrypted run writes none
        if not ctx.is_main or cfg.encrypt:
            return None
        with torch.inference_mode():
            images = to_uint8(method.generate(release_nets(), grid_z, grid_y, **sampling)).cpu().numpy()
        path = save_grid(images, run / "samples" / f"step_{step:08d}.png", nrow=grid_cols,
                         metadata=stamp({"kind": "training-grid", "model": cfg.model, "run": str(run), "step": step}))
        logger.image("samples", make_grid(images, nrow=grid_cols), step)
        return path

    def validate() -> dict[str, float]:
        with torch.inference_mode():
            nets_ = release_nets()
            images = torch.cat([to_uint8(method.generate(nets_, z, None if eval_y is None else eval_y[i:i + 500],
                                                         **sampling))
                                for i, z in zip(range(0, cfg.eval_n, 500), eval_z.split(500))]).cpu().numpy()
        return validator(images[..., 0] if images.shape[-1] == 1 else images)

    def all_finite() -> bool:
        return all(bool(torch.isfinite(p).all()) for net in nets.values() for p in net.parameters())

    if resume:
        check_resume(cfg, last_checkpoint(run))
    # Everything the user can get wrong has been checked by now: only now is anything written.
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    saved = restore(last_checkpoint(run)) if resume else {}  # every process loads the same checkpoint
    start_step = step = book["step"]
    elapsed_before = book["elapsed"]
    logger = RunLogger(run, cfg.max_steps, start_step, cfg.tensorboard, quiet, enabled=ctx.is_main)
    logger.message(f"genforge: training {cfg.model} on {cfg.data} ({n_train} images, {splits.image_shape}) "
                   f"on {device}; run directory: {run}")
    if ctx.active:
        logger.message(f"genforge: {ctx.world_size} processes, batch_size {cfg.batch_size} each: "
                       f"{per_step} images per step")
    if saved.get("global_batch", per_step) != per_step:
        logger.message(f"genforge: this run took {saved['global_batch']} images per step "
                       f"({saved.get('world_size', 1)} processes), now {per_step}: the data order and the "
                       f"learning dynamics change (keep batch_size x processes to continue as before)")
    if dp is not None:
        logger.message(dp.describe())
    if cfg.encrypt and cfg.sample_every:
        logger.message("genforge: encrypt: no sample grids are written (PNGs cannot be encrypted and would show "
                       "what the model learned); draw samples with: genforge sample RUN --out x.npz --encrypt")

    last_ckpt: Path | None = last_checkpoint(run) if resume else None
    last_ckpt_step = step if resume else -1
    finite = torch.ones((), dtype=torch.bool, device=device)  # stays on the device: no sync per step
    t_start = t_log = time.perf_counter()
    step_log = step
    perm, perm_epoch = None, -1
    with _StopOnSignal(logger, debounce=2.0 if ctx.active else 0.0) as stop:
        try:
            while step < cfg.max_steps and not ctx.any(stop.signum):  # any process's signal stops them all
                if (cfg.max_seconds and last_ckpt_step == step and step > start_step
                        and ctx.any(time.perf_counter() - t_start >= cfg.max_seconds)):
                    # the budget ran out during the last step's validation or checkpoint: that step is saved
                    # (and scored), so stop here rather than train one more step and score it again
                    logger.message(f"max_seconds={cfg.max_seconds:g} reached at step {step}")
                    break
                # ---- the batch: a fixed permutation per epoch, so batch k is the same after a resume
                epoch, i = divmod(step, steps_per_epoch)
                if dp is not None:  # DP-SGD: a Poisson batch (the accountant's assumption), until the budget
                    if not dp.allows_step():
                        logger.message(f"privacy budget reached: epsilon {dp.epsilon():.3f} of {cfg.dp_epsilon:g} "
                                       f"(delta {cfg.dp_delta:g}) after {dp.steps()} DP-SGD steps; stopping")
                        break
                    idx = dp.batch(step).to(device)
                else:
                    if epoch != perm_epoch:
                        perm_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
                        perm, perm_epoch = torch.randperm(n_train, generator=perm_gen).to(device), epoch
                    idx = ctx.shard(perm[i * per_step:(i + 1) * per_step])  # this process's part of the batch
                x = x_train[idx]                                   # (b, c, h, w)
                y = y_train[idx] if y_train is not None else None  # (b,) or None
                if augmenting and len(idx):
                    x = augment(x, aug_rng, flip=cfg.augment_flip, shift=cfg.augment_shift,
                                rotate=cfg.augment_rotate)

                # ---- the family's updates (GAN: D then G; VAE: one ELBO step), then the EMA
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    losses = trainer.train_step(x, y, noise, step) if len(idx) else dp.empty_step()
                step += 1
                ema.update(nets, step)
                finite &= torch.stack(list(losses.values())).isfinite().all()

                last = step == cfg.max_steps
                over_time = cfg.max_seconds and ctx.any(time.perf_counter() - t_start >= cfg.max_seconds)
                due_eval = bool(cfg.eval_every) and (step % cfg.eval_every == 0 or last or over_time)
                due_ckpt = ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last or over_time
                            or due_eval)  # evaluated weights are kept, so "best" can point at them
                if step % cfg.log_every == 0 or due_ckpt:
                    losses, finite = ctx.mean(losses, finite)  # under torchrun: over all processes
                    if not bool(finite) or (due_ckpt and not all_finite()):
                        if cfg.nan_policy == "rollback" and last_ckpt is not None \
                                and book["rollbacks"] < cfg.max_rollbacks:
                            restore(last_ckpt)
                            book["rollbacks"] += 1
                            book["lr_scale"] *= 0.5
                            for name, opt in trainer.optimizers.items():
                                for group, lr in zip(opt.param_groups, base_lrs[name]):
                                    group["lr"] = lr * book["lr_scale"]
                            logger.message(f"non-finite loss before step {step}: rolled back to step "
                                           f"{book['step']} with learning rates x{book['lr_scale']:g}")
                            step = book["step"]
                            finite.fill_(True)
                            continue
                        where = (f"the last good checkpoint is step {last_ckpt_step} ({last_ckpt})" if last_ckpt
                                 else "no checkpoint had been written yet")
                        raise TrainingError(f"loss became non-finite (NaN or inf) by step {step}; training stopped "
                                            f"and {where}. Lower the learning rate (--set g_lr=... d_lr=...) or "
                                            f"set nan_policy=rollback")
                    now = time.perf_counter()
                    values = {k: float(v) for k, v in losses.items()}
                    values["images_per_sec"] = (step - step_log) * per_step / max(now - t_log, 1e-9)
                    values["epoch"] = epoch
                    values["time"] = elapsed_before + now - t_start
                    if dp is not None:
                        values.update(dp.log_values())
                    scores = validate() if due_eval and ctx.is_main else {}
                    values.update(scores)
                    logger.log(step, values, final=due_ckpt)
                    t_log, step_log = now, step
                if cfg.sample_every and step % cfg.sample_every == 0:
                    write_grid(step)
                if due_ckpt:
                    improved = "val_fid" in scores and scores["val_fid"] < book["best_fid"]
                    if improved:
                        book["best_fid"] = scores["val_fid"]
                    book["step"], book["elapsed"] = step, elapsed_before + time.perf_counter() - t_start
                    last_ckpt, last_ckpt_step = checkpoint(step), step
                    if improved:
                        atomic_write_json(run / "checkpoints" / "best.json",
                                          {"dir": last_ckpt.name, "step": step, "val_fid": scores["val_fid"],
                                           "evaluator_sha256": validator.evaluator_sha256})
                if over_time:
                    logger.message(f"max_seconds={cfg.max_seconds:g} reached at step {step}")
                    break
            if last_ckpt_step != step:  # stopped by a signal, or resumed with nothing left to do
                book["step"], book["elapsed"] = step, elapsed_before + time.perf_counter() - t_start
                last_ckpt, last_ckpt_step = checkpoint(step), step
            grid = write_grid(step)
            if grid is not None:
                atomic_write_text(run / "samples" / "last.txt", grid.name + "\n")
        finally:
            logger.close()
    if not quiet:
        print(f"genforge: step {step}: checkpoint {last_ckpt}\ngenforge: sample grid {grid}")
    return TrainResult(run=run, step=step, checkpoint=last_ckpt, interrupted=bool(stop.signum))

