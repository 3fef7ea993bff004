"""The diffusion method: DDPM training (Ho et al. 2020), the DDIM (Song et al. 2021) and DPM-Solver++(2M)
(Lu et al. 2022) samplers, deterministic and stochastic, and classifier-free guidance (Ho and Salimans 2022).

The denoising network (a UNet) comes from ``unet.py``; this file says how it
learns and how it samples. Notation follows DDPM with 0-based timesteps
t = 0 .. T-1 (DDPM's 1 .. T):

    alpha_bar[t] = prod_{s <= t} (1 - beta[s])                 the schedule, (T,)
    x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps     eps ~ N(0, I)   (DDPM eq. 4)

The network learns eps from (x_t, t), with the plain loss |eps - eps_theta|^2
(DDPM eq. 14, "L_simple"); or, with ``prediction: v``, v = alpha_t eps - sigma_t x_0 (Salimans and Ho 2022,
appendix D), with alpha_t = sqrt(alpha_bar[t]), sigma_t = sqrt(1 - alpha_bar[t]); or, with ``prediction: x0``,
x_0 itself (the loss |x_0 - x_0_theta|^2, as Diffusion-TS trains on time series, Yuan and Qiao 2024). Each
gives eps and x_0:

    eps = alpha_t v + sigma_t x_t,    x_0 = alpha_t x_t - sigma_t v       (v)
    eps = (x_t - alpha_t x_0) / sigma_t                                  (x0)

but where alpha_t is near 0 (the first sampling step) an eps model's x_0 = (x_t - sigma_t eps) / alpha_t
multiplies its error by 1 / alpha_t, while a v model's stays finite: a few-step sampler distilled from a
v model (``distill.py``) can learn its first step. The schedule is kept as a buffer of its own
"network", ``schedule``, so it is saved in model.safetensors beside the UNet
and a model always samples with the schedule it was trained with.

The latent of a diffusion model is its starting noise x_T, flattened to
(b, c*h*w): ``genforge sample --seed`` gives the same images everywhere, and
interpolation and feedback work on it as on a GAN's z. The stochastic sampler
draws fresh noise at every step from a stream seeded by each sample's own
latent (:func:`step_noise`), so a latent still fixes its sample, whatever
batch it is decoded in.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from genforge.config import Config
from genforge.controls import GUIDANCE, SAMPLER, SAMPLERS, STEPS
from genforge.errors import GenforgeError

VALUE_RANGE = "-1,1"           # the forward process shrinks data towards N(0, I): data centred on 0
NETWORKS = ("denoiser", "schedule")
EMA_NETWORKS = ("denoiser",)   # samples come from the EMA weights, as in DDPM (decay 0.9999 there)
LATENT = "denoiser"            # the network that turns the latent (the noise image) into images

CONTROLS = (STEPS, SAMPLER, GUIDANCE)  # how a caller steers sampling (genforge/controls.py declares them)
# samples per UNet call when sampling (twice that with guidance): on 2 cores digits-cddpm's 40x40 UNet took 0.86 ms
# a sample in calls of 128 and 1.99 in calls of 1,000 (the old 500 with guidance); a 28x28 one 0.36 and 0.42
SAMPLE_BATCH = 128
# pictures sample in channels-last layout whatever the recipe trained in: oneDNN's NHWC convolutions ran
# digits-cddpm's 40x40 UNet 1.2-1.3x faster on 2 cores, a 28x28 one 1.0-1.05x (``files.read_model`` reads this;
# GAN generators measured mixed, so a GAN switches only when trained so)
SAMPLE_CHANNELS_LAST = True

T = 1000            # training timesteps (DDPM)


def latent_dim(z_dim: int, image_shape: tuple[int, int, int]) -> int:
    """The starting noise image, flattened: c*h*w (``z_dim`` does not apply)."""
    return math.prod(image_shape)


# --------------------------------------------------------------------------- the noise schedule

def make_schedule(kind: str, steps: int = T) -> torch.Tensor:
    """alpha_bar (steps,) float32, decreasing from just below 1 to just above 0.

    "linear": beta from 1e-4 to 0.02 (Ho et al. 2020, section 4).
    "cosine": alpha_bar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2 with s = 0.008, each beta
    clipped at 0.999 so the last steps stay finite (Nichol and Dhariwal 2021, eq. 17). It destroys
    information more evenly than "linear", whose last few hundred steps are almost pure noise.
    Computed in float64, stored as float32.
    """
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    elif kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # beta[t] = 1 - alpha_bar(t+1) / alpha_bar(t)
    else:
        raise GenforgeError(f"noise_schedule must be linear or cosine, got {kind!r}")
    return torch.cumprod(1 - betas, dim=0).float()


class NoiseSchedule(nn.Module):
    """The schedule as a module without parameters: buffer ``alphas_cumprod`` (T,), saved with the weights.

    Built like every network (the extra arguments, the denoiser's ``network_options`` included, are ignored);
    the Trainer fills it from ``cfg.noise_schedule``, and loading a model restores the saved values.
    """

    def __init__(self, image_shape=None, z_dim: int = 0, base_channels: int = 0, num_classes: int = 0,
                 kind: str = "cosine", **network_options):
        super().__init__()
        self.register_buffer("alphas_cumprod", make_schedule(kind), persistent=True)


def network_options(cfg, transform: dict) -> dict:
    """``ModelSpec.options``: {"prediction": "v"} for a v model (or "x0"), {"linear_path": k} with a linear path;
    {} for the defaults, so older models' files stay as they were."""
    options = {"prediction": cfg.prediction} if cfg.prediction != "eps" else {}
    return {**options, "linear_path": cfg.linear_path} if cfg.linear_path else options


# --------------------------------------------------------------------------- sampling

def ddim_timesteps(steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down, evenly spaced and ending T/steps - 1 above the data.

    The "trailing" spacing (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed"): the chain starts at t = T-1, where x_T ~ N(0, I) is what training saw, rather than at
    T - T/steps as the original DDIM code does ("leading"). On mnist5k-ddpm, from the same noise, 20
    trailing steps land a mean 0.026 per pixel (in [0, 1]) from the 1000-step chain's images, 20 leading
    steps 0.063. steps=T gives every timestep, T-1 .. 0.
    """
    return [round(T - i * T / steps) - 1 for i in range(steps)]


def predict(denoiser: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
            guidance: float) -> torch.Tensor:
    """The network's own output (eps, or v for a v model) at (x_t, t, y), with classifier-free guidance when
    ``guidance != 1`` (conditional models).

    Guided output: out_uncond + guidance * (out_cond - out_uncond) (Ho and Salimans 2022, eq. 6 with
    w = guidance - 1; v is affine in eps at fixed x_t, so guiding v guides eps alike). 0 is the unconditional
    model, 1 the plain conditional one, above 1 sharper classes at some cost in variety. Both predictions come
    from one batched forward: (2b, c, h, w).
    """
    if y is None or guidance == 1:
        return denoiser(x, t, y)
    null = torch.full_like(y, denoiser.num_classes)
    out_cond, out_uncond = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return out_uncond + guidance * (out_cond - out_uncond)


def prediction_of(denoiser: nn.Module) -> str:
    """What the network's output means: "eps", "v" or "x0" (its ``prediction``, from the model's net_options)."""
    return getattr(denoiser, "prediction", "eps")


def x0_at(denoiser: nn.Module, x: torch.Tensor, t: int, y: torch.Tensor | None, guidance: float,
          ab: list[float]) -> torch.Tensor:
    """x_0 (not clipped) predicted from x_t at one timestep ``t`` for the whole batch; ``ab``: the schedule as
    Python floats (the step coefficients in double precision), as every DDIM loop here takes them."""
    out = predict(denoiser, x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), y, guidance)
    return x0_from(out, x, math.sqrt(ab[t]), math.sqrt(1 - ab[t]), prediction_of(denoiser))


def x0_from(out, x, alpha, sigma, prediction: str):
    """The x_0 a network output means at x_t: alpha x_t - sigma v (a v model), the output itself (an x0 model),
    or (x_t - sigma eps) / alpha. ``alpha``, ``sigma``: floats, or tensors that broadcast (per-example steps)."""
    if prediction == "v":
        return alpha * x - sigma * out
    return out if prediction == "x0" else (x - sigma * out) / alpha


def target_for(prediction: str, x0, eps, alpha, sigma):
    """What a network of this ``prediction`` learns to output for x_t = alpha x0 + sigma eps: eps, x0 itself, or
    v = alpha eps - sigma x0 (the inverse of :func:`x0_from`). Only that one is computed."""
    if prediction == "v":
        return alpha * eps - sigma * x0
    return x0 if prediction == "x0" else eps


def generate(nets: dict[str, nn.Module], z: torch.Tensor, y: torch.Tensor | None = None, steps: int | None = None,
             guidance: float | None = None, sampler: str | None = None) -> torch.Tensor:
    """Starting noise (b, c*h*w) and, for conditional models, classes (b,) -> images (b, c, h, w) in [0, 1].

    Both samplers solve the same deterministic probability-flow ODE over ``steps`` timesteps (default 50)
    from ``ddim_timesteps``; steps=1000 visits every training timestep: the full-step chain, the reference
    that fewer steps are compared against. Each step predicts x_0 and clips it to the data range [-1, 1]
    (as guided-diffusion's DDIM does). With alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t):

    "ddim" (default; Song et al. 2021, eq. 12 with sigma = 0), first order:
        x0   = (x_t - sigma_t eps) / alpha_t    (a v model: alpha_t x_t - sigma_t v), eps recomputed from the
                                                clipped x0
        x_s  = alpha_s x0 + sigma_s eps                    s < t, ab_s = 1 after the last step

    "dpm++2m" (DPM-Solver++(2M), Lu et al. 2022, algorithm 2), second order in the half log-SNR
    lambda = log(alpha / sigma), from the same one network call per step: the last two x0 predictions
    extrapolate the data along the step, h = lambda_s - lambda_t, r = h_prev / h,
        D    = (1 + 1/(2r)) x0 - 1/(2r) x0_prev            (D = x0 on the first step)
        x_s  = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D
    and the last step, to lambda = infinity, lands on x0 itself (first order, as diffusers'
    ``lower_order_final``). On fashion-ddpm at 20 steps it halves DDIM's FID gap to the full chain (RESULTS.md).

    "dpm++2m-sde" (SDE-DPM-Solver++(2M), Lu et al. 2022, appendix; diffusers' "sde-dpmsolver++" with the
    midpoint update) solves the reverse SDE instead: each step forgets part of x_t and puts fresh noise in its
    place, which corrects part of the network's error from earlier steps rather than carrying it to the end
    (Karras et al. 2022, section 4, on stochastic sampling of imperfect networks). From the same x0, D:
        D    = x0 + (h / (2 h_prev)) (x0 - x0_prev)        (D = x0 on the first step)
        x_s  = (sigma_s / sigma_t) exp(-h) x_t + alpha_s (1 - exp(-2h)) D + sigma_s sqrt(1 - exp(-2h)) n
    with n the step's noise (:func:`step_noise`); the last step lands on x0 as above. On fashion-cddpm after
    340 s of training it took the 20-step FID from 27.1 (dpm++2m) to 7.8 (benchmarks/samplers.py).
    """
    denoiser, alphas_cumprod = nets["denoiser"], nets["schedule"].alphas_cumprod
    image_shape = denoiser.image_shape
    if z.ndim != 2 or z.shape[1] != math.prod(image_shape):
        raise GenforgeError(f"a diffusion model's latent is its starting noise image: expected "
                            f"(n, {math.prod(image_shape)}), got {tuple(z.shape)}")
    steps = STEPS.default if steps is None else steps
    guidance = GUIDANCE.default if guidance is None else float(guidance)
    sampler = SAMPLER.default if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise GenforgeError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    x = z.view(z.shape[0], *image_shape)  # x_T, (b, c, h, w)
    ab = alphas_cumprod.tolist()          # Python floats: the step coefficients in double precision
    timesteps = ddim_timesteps(steps)
    noise = step_noise(z, len(timesteps) - 1) if sampler == "dpm++2m-sde" else None  # (steps - 1, b, c*h*w)
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        x0 = x0_at(denoiser, x, t, y, guidance, ab).clamp(-1, 1)
        if i + 1 == len(timesteps):
            x = x0  # ab_s = 1: every sampler lands on the prediction of x_0
            break
        ab_s = ab[timesteps[i + 1]]
        if sampler == "ddim":
            eps = (x - math.sqrt(ab[t]) * x0) / math.sqrt(1 - ab[t])
            x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps
            continue
        h = _half_log_snr(ab_s) - _half_log_snr(ab[t])
        d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2 * h_prev))  # = (1+1/2r) x0 - 1/2r x0_prev
        ratio = math.sqrt((1 - ab_s) / (1 - ab[t]))  # sigma_s / sigma_t
        if noise is None:
            x = ratio * x - math.sqrt(ab_s) * math.expm1(-h) * d
        else:
            forget = -math.expm1(-2 * h)  # 1 - exp(-2h)
            x = (ratio * math.exp(-h) * x + math.sqrt(ab_s) * forget * d
                 + math.sqrt((1 - ab_s) * forget) * noise[i].view_as(x))
        x0_prev, h_prev = x0, h
    return (x + 1) / 2  # in [-1, 1] before the shift: the last step is a clipped x0


def step_noise(z: torch.Tensor, steps: int) -> torch.Tensor:
    """The stochastic sampler's fresh noise, (steps, b, c*h*w) on ``z``'s device: for each sample a standard
    normal stream seeded by its latent's own bytes (BLAKE2b of the float32 values), drawn on the CPU. A
    sample's noise depends on its latent only, so the same seed gives the same sample alone, in any batch, in
    the server's shared batches and on any device; and it never repeats the latent's own numbers."""
    rows = z.detach().to("cpu", torch.float32).contiguous().numpy()
    out = torch.empty(steps, z.shape[0], z.shape[1])
    for j, row in enumerate(rows):
        seed = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") >> 1
        out[:, j] = torch.randn(steps, z.shape[1], generator=torch.Generator().manual_seed(seed))
    return out.to(z.device, z.dtype)


def _half_log_snr(ab: float) -> float:
    """lambda = log(alpha / sigma) = 0.5 log(ab / (1 - ab))."""
    return 0.5 * math.log(ab / (1 - ab))


# --------------------------------------------------------------------------- training

class Trainer:
    """One Adam on the denoiser; runs one DDPM step. The loop calls it."""

    def __init__(self, cfg: Config, nets: dict[str, nn.Module], private=None):
        """``private`` must be None: DP-SGD is not implemented for diffusion (``privacy.check_config`` refuses it)."""
        if private is not None:
            raise GenforgeError("differential privacy is not implemented for the diffusion family")
        self.denoiser, self.schedule = nets["denoiser"], nets["schedule"]
        with torch.no_grad():
            self.schedule.alphas_cumprod.copy_(make_schedule(cfg.noise_schedule))
        self.cfg_dropout = cfg.cfg_dropout
        self.optimizers = {"denoiser": torch.optim.Adam(self.denoiser.parameters(), lr=cfg.g_lr,
                                                        betas=tuple(cfg.g_betas), fused=True)}

    @staticmethod
    def batches_per_step(cfg: Config) -> int:
        """Real batches of ``batch_size`` one step consumes."""
        return 1

    def state_dict(self) -> dict:
        """Trainer state beyond the optimizers that an exact resume needs: none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, noise: torch.Generator,
                   step: int = 0) -> dict[str, torch.Tensor]:
        """One step on images (b, c, h, w) in [-1, 1] and classes (b,) or None: L_simple (DDPM algorithm 1).

        t, eps and the label dropout all come from ``noise``, so a resumed run draws the same numbers.
        """
        opt = self.optimizers["denoiser"]
        b = x.shape[0]
        t = torch.randint(0, T, (b,), generator=noise, device=x.device)               # (b,)
        eps = torch.randn(x.shape, generator=noise, device=x.device, dtype=x.dtype)    # (b, c, h, w)
        if y is not None:
            # Classifier-free guidance training: the null class replaces the label with probability
            # cfg_dropout, so the same network also learns the unconditional eps (Ho and Salimans 2022, alg. 1).
            drop = torch.rand(b, generator=noise, device=x.device) < self.cfg_dropout
            y = torch.where(drop, torch.full_like(y, self.denoiser.num_classes), y)
        ab = self.schedule.alphas_cumprod[t].view(-1, *(1,) * (x.ndim - 1))              # (b, 1, 1, 1)
        x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps                                    # DDPM eq. 4
        target = target_for(prediction_of(self.denoiser), x, eps, ab.sqrt(), (1 - ab).sqrt())
        loss = F.mse_loss(self.denoiser(x_t, t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}
