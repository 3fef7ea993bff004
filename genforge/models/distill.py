"""Progressive distillation of a trained diffusion model into a few-step sampler (Salimans and Ho 2022).

A diffusion model samples by solving its probability-flow ODE over N deterministic DDIM steps
(``diffusion.generate``). Progressive distillation trains a student, initialised from the teacher, so that
ONE of its DDIM steps from x_t lands where TWO of the teacher's land: the student then samples in N/2 steps.
Repeating with the student as the next teacher halves the steps again (N -> N/2 -> ... -> steps).

With the trailing spacing of ``diffusion.ddim_timesteps``, the N/2-step grid is every other timestep of the
N-step grid (ts_{N/2}[i] = ts_N[2i]), so the student's step i spans the teacher's steps 2i and 2i+1. Per
training example (Salimans and Ho 2022, algorithm 2), with alpha = sqrt(ab), sigma = sqrt(1 - ab):

    x ~ data,  i ~ U{0 .. N/2 - 1},  t = ts_N[2i], t' = ts_N[2i+1], s = ts_N[2i+2] (or the data, ab_s = 1)
    z_t  = alpha_t x + sigma_t eps                                      (DDPM eq. 4)
    z''  = DDIM_teacher(DDIM_teacher(z_t, t -> t'), t' -> s)            two teacher steps, no gradient
    x~   = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)    (eq. 8 of the paper)
           the x_0 that makes ONE DDIM step from z_t land on z''; at s = data, x~ = z''

The student keeps its teacher's parameterisation (eps, v or x0, ``prediction`` in the recipe), so its files load
and sample like any diffusion model. Its loss (``distill_loss``) is the distance between where its one DDIM
step lands and z'', through the sampler's own x_0 clip. A v student learns every step so. An eps student
cannot learn the steps where an eps error moves z far more than itself (the first, from t = T-1: the paper's
reason for v): there it is held to the teacher's own prediction and keeps the teacher's single step, so an
eps teacher distils into a student whose 4-step samples are no better than plain 4-step DDIM (measured:
mean pixel distance to the teacher's 12.69 against 12.81). Distil a model trained with ``prediction: v``.

Conditional models are distilled at the teacher's default guidance: the teacher's target uses the guided
noise eps_uncond + g (eps_cond - eps_uncond), the student learns it as its plain conditional prediction, and
the distilled model samples with guidance 1 (the guidance is baked in, as Meng et al. 2023 distil it).
The student is written as a normal model directory whose recipe samples in ``steps`` DDIM steps by default.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from genforge import devices
from genforge.config import from_dict
from genforge.crypto import is_encrypted, load_keyring
from genforge.data.clusters import cluster_labels
from genforge.data.examples import load_examples
from genforge.errors import GenforgeError
from genforge.models import MODELS, family_of, sampling_defaults
from genforge.models import diffusion
from genforge.models.files import CONFIG, WEIGHTS, read_model, resolve, save_model

METHOD = "progressive distillation (Salimans and Ho 2022), DDIM steps"  # + the parameterisation, in meta
# fields save_model writes itself; a copy of the teacher's meta must not carry the teacher's values of them
_WRITTEN_BY_SAVE = ("format", "format_version", "family", "networks", "weights_sha256", "saved_at")


def check_steps(steps: int, teacher_steps: int) -> int:
    """The number of halvings from ``teacher_steps`` to ``steps``; a one-line error unless teacher_steps is
    steps x 2^k with k >= 1 (each round halves the steps)."""
    if not isinstance(steps, int) or steps < 1:
        raise GenforgeError(f"--steps must be a positive integer, got {steps!r}")
    if not isinstance(teacher_steps, int) or not 1 < teacher_steps <= diffusion.T:
        raise GenforgeError(f"--teacher-steps must be an integer from 2 to {diffusion.T}, got {teacher_steps!r}")
    ratio = teacher_steps // steps
    if teacher_steps % steps or ratio < 2 or ratio & (ratio - 1):
        raise GenforgeError(f"--steps {steps} must be the teacher's {teacher_steps} steps halved one or more times "
                            f"(teacher steps / steps a power of two, at least 2): try --teacher-steps "
                            f"{default_teacher_steps(steps, teacher_steps)}")
    return ratio.bit_length() - 1


def default_teacher_steps(steps: int, model_steps: int) -> int:
    """The teacher's steps when none are given: ``steps`` doubled until it reaches the model's own sample_steps
    (at least once), so the teacher samples at least as finely as the model was meant to."""
    n = steps * 2
    while n < model_steps and n * 2 <= diffusion.T:
        n *= 2
    return n


def _coefficients(ab: torch.Tensor, t: torch.Tensor, shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t, sigma_t (b, 1, ...) for per-example timesteps ``t`` (b,); t = -1 is the data (ab = 1)."""
    a = torch.where(t >= 0, ab[t.clamp(min=0)], torch.ones_like(ab[:1]))
    a = a.view(-1, *(1,) * (shape - 1)).double()
    return a.sqrt(), (1 - a).sqrt()


def ddim_step(denoiser: nn.Module, ab: torch.Tensor, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
              y: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """One deterministic DDIM step from z_t (b, ...) at timesteps t (b,) to s (b,) (s = -1: the data), exactly
    as ``diffusion.generate`` takes it: x_0 predicted and clipped to [-1, 1], eps recomputed from it."""
    a_t, s_t = _coefficients(ab, t, z.ndim)
    a_s, s_s = _coefficients(ab, s, z.ndim)
    out = diffusion.predict(denoiser, z, t, y, guidance)
    x0 = diffusion.x0_from(out.double(), z.double(), a_t, s_t, diffusion.prediction_of(denoiser)).clamp(-1, 1)
    eps = (z.double() - a_t * x0) / s_t
    return (a_s * x0 + s_s * eps).float()


def distill_loss(out_student: torch.Tensor, x_target: torch.Tensor, eps_teacher: torch.Tensor | None,
                 z: torch.Tensor, a_t: torch.Tensor, s_t: torch.Tensor, a_s: torch.Tensor, s_s: torch.Tensor,
                 prediction: str = "eps") -> torch.Tensor:
    """Per example (all (b, ...), float64). A v student (``prediction``; its output is v, see ``diffusion.py``)
    takes the first form at every step: its x_0 = alpha z - sigma v stays finite where alpha is near 0, so it can
    learn the first step too (Salimans and Ho's reason for v); so does an x0 student, whose output is x_0. An eps
    student (the output is eps):

    - where the step is well conditioned: |z_s(student) - z''|^2 = ((alpha_s - (sigma_s / sigma_t) alpha_t)
      (clip(x0_student) - x~))^2, where the student's one DDIM step lands against where the teacher's two land,
      through the sampler's own x_0 clip (a prediction beyond +-1 on the side of a target at +-1, MNIST's
      background, costs nothing). It weights each step by its effect on the sample: the truncated-SNR
      weighting of Salimans and Ho, taken to the sampler's output.
    - where it is not (z would move more than eps: near t = T-1, where alpha_t ~ 5e-5 under the cosine schedule
      and x_0 = (z - sigma eps) / alpha moves 20,000 times as far as eps): |eps_student - eps_teacher|^2, the
      student keeps the teacher's own step there. Measured on a small teacher: training those steps towards
      the distilled target, in z (Adam overshoots: a fixed batch's loss rose from 4.5e-4 to 1.6e-3 in 100
      steps at lr 1e-4) or in eps (the paper's loss: the student's step landed further from the teacher's two
      than the teacher's own single step), made the 4-step samples worse than not distilling at all. An eps
      parameterisation cannot learn those steps (the paper's reason for its v-parameterisation); an eps
      student leaves them alone.
    """
    x0 = diffusion.x0_from(out_student.double(), z.double(), a_t, s_t, prediction).clamp(-1, 1)
    ratio = s_s / s_t
    in_z = ((a_s - ratio * a_t) * (x0 - x_target)).pow(2).flatten(1).mean(1)         # (b,)
    if prediction != "eps":
        return in_z.mean()
    anchor = (out_student.double() - eps_teacher.double()).pow(2).flatten(1).mean(1)  # (b,)
    steep = ((a_s - ratio * a_t) * s_t / a_t).flatten() > 1                          # (b,): z moves more than eps
    return torch.where(steep, anchor, in_z).mean()


def distill_round(teacher: nn.Module, ab: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, guidance: float,
                  teacher_steps: int, iterations: int, batch_size: int, lr: float, seed: int,
                  log: Callable[[str], None]) -> nn.Module:
    """One halving: a student (a copy of ``teacher``) whose DDIM steps on the teacher_steps/2 grid match two
    teacher steps each. ``x``: the training split (N, *example_shape) in [-1, 1]; ``y``: its classes or None.
    ``ab``: alphas_cumprod (T,). Returns the student (eval mode)."""
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    teacher.eval().requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    grid = torch.tensor(diffusion.ddim_timesteps(teacher_steps) + [-1], device=x.device)  # (N + 1,), -1: data
    gen = torch.Generator(device=x.device).manual_seed(seed)
    half = teacher_steps // 2
    prediction = diffusion.prediction_of(teacher)  # the student keeps the teacher's parameterisation
    t_log = time.perf_counter()
    for it in range(iterations):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen, device=x.device)
        x0, yb = x[idx], (y[idx] if y is not None else None)                          # (b, ...), (b,)
        i = torch.randint(0, half, (batch_size,), generator=gen, device=x.device)      # the student's step
        t, t1, s = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]                        # (b,) each
        eps = torch.randn(x0.shape, generator=gen, device=x.device)
        a_t, s_t = _coefficients(ab, t, x0.ndim)
        a_s, s_s = _coefficients(ab, s, x0.ndim)
        z = (a_t * x0.double() + s_t * eps.double()).float()                            # z_t, DDPM eq. 4
        with torch.no_grad():
            # an eps student keeps the teacher's own step where it cannot learn the target (distill_loss)
            eps_teacher = diffusion.predict(teacher, z, t, yb, guidance) if prediction == "eps" else None
            z2 = ddim_step(teacher, ab, ddim_step(teacher, ab, z, t, t1, yb, guidance), t1, s, yb, guidance)
            ratio = s_s / s_t
            x_target = (z2.double() - ratio * z.double()) / (a_s - ratio * a_t)        # eq. 8; = z'' at s = data
        out_student = student(z, t, yb)  # guidance 1: the plain (conditional) prediction
        loss = distill_loss(out_student, x_target, eps_teacher, z, a_t, s_t, a_s, s_s, prediction)
        if not torch.isfinite(loss):
            raise GenforgeError(f"distillation loss became non-finite at iteration {it + 1} of the round "
                                f"{teacher_steps} -> {half} steps; try a lower --lr (now {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % max(1, iterations // 4) == 0 or it + 1 == iterations:
            now = time.perf_counter()
            log(f"genforge: distill {teacher_steps} -> {half} steps: iteration {it + 1}/{iterations}, "
                f"loss {loss.item():.4g} ({now - t_log:.1f} s)")
            t_log = now
    return student.eval().requires_grad_(False)


def distill(model: str | Path, out: str | Path, steps: int = 4, teacher_steps: int | None = None,
            iterations: int = 2000, batch_size: int = 64, lr: float = 1e-4, seed: int = 0, data: str | None = None,
            device: str = "auto", log: Callable[[str], None] = print) -> Path:
    """Distil the diffusion model at ``model`` (run or model directory) into a model directory ``out`` that
    samples in ``steps`` DDIM steps by default. ``teacher_steps`` (default: ``steps`` doubled up to the model's
    own sample_steps) must be steps x 2^k; each of the k rounds trains ``iterations`` Adam steps of
    ``batch_size`` examples of the model's training data (``data`` to use another spec of the same shape).
    Returns ``out``."""
    directory = resolve(model)
    out = Path(out)
    if (out / CONFIG).exists() or (out / "checkpoints").exists():
        raise GenforgeError(f"{out} already holds a model or run: choose another --out")
    for name, value in (("--iterations", iterations), ("--batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise GenforgeError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise GenforgeError(f"--lr must be a positive number, got {lr!r}")
    dev = devices.pick(device)
    encrypted = is_encrypted(directory / WEIGHTS)
    keyring = load_keyring() if encrypted else None  # an encrypted teacher gives an encrypted student
    nets, meta, directory = read_model(directory, dev)
    family = family_of(meta["model"])
    if family != "diffusion":
        diffusion_models = ", ".join(m for m in MODELS if family_of(m) == "diffusion")
        raise GenforgeError(f"{directory}: {meta['model']} is a {family} model; distill makes a few-step sampler "
                            f"of a diffusion model ({diffusion_models})")
    train_config = dict(meta.get("train_config") or {})
    spec = MODELS[meta["model"]]
    defaults = sampling_defaults(diffusion, train_config, spec.conditional)
    if not isinstance(steps, int) or steps < 1:
        raise GenforgeError(f"--steps must be a positive integer, got {steps!r}")
    teacher_steps = default_teacher_steps(steps, defaults["steps"]) if teacher_steps is None else teacher_steps
    rounds = check_steps(steps, teacher_steps)
    guidance = float(defaults.get("guidance", 1.0))

    # the teacher's training data, read as it was for training (or the spec given), in [-1, 1]
    cfg = from_dict({**train_config, **({"data": data} if data else {})}, f"{directory / CONFIG}: train_config")
    ex = load_examples(cfg, diffusion.VALUE_RANGE)
    shape = tuple(meta["example_shape"])
    if tuple(ex.example_shape) != shape:
        raise GenforgeError(f"data {cfg.data!r} gives examples of shape {tuple(ex.example_shape)}, the model makes "
                            f"{shape}")
    x = ex.train_x.to(dev)
    y = None
    if spec.conditional:
        labels = ex.train_y
        if meta.get("clusters"):  # cluster guidance: the classes are the k-means clusters it was trained on
            labels, _ = cluster_labels(ex.raw.train.x, meta["clusters"]["k"], cfg.seed)
        if labels is None:
            raise GenforgeError(f"{meta['model']} is class-conditional but data {cfg.data!r} has no labels")
        y = torch.as_tensor(labels, dtype=torch.long, device=dev)
    if batch_size > len(x):
        raise GenforgeError(f"--batch-size {batch_size} is larger than the training split ({len(x)} examples)")

    log(f"genforge: distilling {meta['model']} from {directory}: {teacher_steps} -> {steps} DDIM steps in {rounds} "
        f"round(s) of {iterations} iterations (batch {batch_size}, lr {lr:g}"
        f"{f', guidance {guidance:g} baked in' if spec.conditional else ''}) on {len(x)} examples of {cfg.data}")
    ab = nets["schedule"].alphas_cumprod.to(dev)
    teacher = nets["denoiser"]
    n = teacher_steps
    for r in range(rounds):
        teacher = distill_round(teacher, ab, x, y, guidance, n, iterations, batch_size, lr, seed + r, log)
        n //= 2
        guidance = 1.0  # the first student carries the guidance; later rounds distil its plain prediction

    student_meta = {k: v for k, v in meta.items() if k not in _WRITTEN_BY_SAVE}
    student_meta["train_config"] = {**train_config, "sample_steps": steps, "sampler": "ddim",
                                    **({"guidance": 1.0} if spec.conditional else {})}
    student_meta["distilled"] = {"method": METHOD, "from": str(directory), "teacher_weights_sha256":
                                 meta["weights_sha256"], "teacher_steps": teacher_steps, "steps": steps,
                                 "prediction": diffusion.prediction_of(teacher),
                                 "rounds": rounds, "iterations_per_round": iterations, "batch_size": batch_size,
                                 "lr": lr, "seed": seed, "data": cfg.data,
                                 **({"guidance": float(defaults["guidance"])} if spec.conditional else {})}
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, {"denoiser": teacher, "schedule": nets["schedule"]}, student_meta, keyring=keyring)
    log(f"genforge: wrote {out} (samples in {steps} DDIM steps by default: genforge sample {out} --out x.png)")
    return out
