"""Image repair with a trained model: inpainting, denoising and 2x super-resolution.

Each task is a known corruption ``y = A(x) + noise`` of a clean image ``x``:

    inpaint   A(x) = x on the known pixels (a mask marks the missing ones)
    denoise   A(x) = x, plus Gaussian noise of standard deviation sigma, clipped to [0, 1] by the 8 bits
              (so A(x) = E[clip(x + noise)], see ``expected_clipped``)
    sr2x      A(x) = the 2x2 mean of x (28x28 -> 14x14), the same as Pillow's BOX filter at 2x

and repair looks for the image the model finds likely that explains ``y``:

- VAEs and GANs, by latent optimisation (Yeh et al. 2017, "Semantic image inpainting with deep generative
  models"; Bora et al. 2017, "Compressed sensing using generative models"): the MAP latent
  ``argmin_z |A(G(z)) - y|^2 / (2 sigma^2) + |z|^2 / 2`` under the N(0, I) prior, by Adam from several
  starts (the VAE's encoder gives the first one), then the measurement is put back exactly: known pixels
  pasted (inpainting), the 2x2 means corrected (super-resolution, back-projection).
- diffusion models, by DDIM with the measurement imposed at every step ("replacement", Song et al. 2021,
  appendix I; ILVR, Choi et al. 2021, for super-resolution): after each step the part of x_s that A sees
  is replaced by the measurement noised to the same level, and each step is taken ``resample`` times,
  diffusing back in between (RePaint, Lugmayr et al. 2022). Denoising starts the chain at the timestep
  whose noise level equals sigma (the noisy image *is* a scaled x_t, as in SDEdit, Meng et al. 2022).

Images are uint8 numpy, (n, h, w) or (n, h, w, c), as everywhere in genforge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genforge.errors import GenforgeError
from genforge.models import diffusion

TASKS = ("inpaint", "denoise", "sr2x")
MODEL_ERROR = 0.1  # per-pixel std of what the model cannot draw exactly, in [0, 1] units: the data term's floor


@dataclass(frozen=True)
class RepairOptions:
    """Knobs of the latent optimisation (VAE, GAN) and of the diffusion sampler."""

    steps: int = 100          # Adam steps on z (more fits the known pixels closer, and the hole worse)
    lr: float = 0.05
    restarts: int = 2         # starting latents per image (and per class for conditional models); best kept
    diffusion_steps: int = 25  # DDIM steps
    resample: int = 4          # diffusion inpainting and sr2x: passes over each step (RePaint's U; 1: plain
                               # replacement). On mnist5k, 25 steps x 4 passes inpaint 1.8 dB better than 50 x 1
    seed: int = 0


# --------------------------------------------------------------------------------------- inputs and masks

def as_nhwc(x: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 (n, h, w) or (n, h, w, c) -> (n, h, w, c); anything else is an error naming its shape."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) == 0:
        raise GenforgeError(f"{what}: expected uint8 images (n, h, w) or (n, h, w, c) with n >= 1, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    return x[..., None] if x.ndim == 3 else x


def check_images(model, x: np.ndarray, task: str = "", what: str = "images") -> np.ndarray:
    """The images as (n, h, w, c), after checking they fit the model: its channels, and its side (half of it
    for sr2x). The message names the size or channel count given and the one expected."""
    x = as_nhwc(x, what)
    c, h, w = model.image_shape
    want = (h // 2, w // 2) if task == "sr2x" else (h, w)
    if task == "sr2x" and (h % 2 or w % 2):
        raise GenforgeError(f"2x super-resolution needs a model with an even side; {model.name} makes {h}x{w}")
    if x.shape[1:3] != want:
        if task == "sr2x":
            raise GenforgeError(f"{what}: a 2x super-resolution input must be {want[0]}x{want[1]} (half the "
                                f"model's {h}x{w}), got {x.shape[1]}x{x.shape[2]}")
        raise GenforgeError(f"{what}: the model {model.name} takes {h}x{w} images, got {x.shape[1]}x{x.shape[2]}")
    if x.shape[3] != c:
        raise GenforgeError(f"{what}: the model {model.name} takes {c}-channel images, got {x.shape[3]} channels")
    return x


def rect_mask(text: str, side: tuple[int, int]) -> np.ndarray:
    """"x,y,w,h" (pixels, x to the right, y down) -> bool mask (h, w), True where pixels are missing."""
    try:
        x0, y0, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise GenforgeError(f"--mask {text!r}: a rectangle is x,y,w,h in whole pixels, e.g. 8,8,12,12") from None
    H, W = side
    if w < 1 or h < 1 or x0 < 0 or y0 < 0 or x0 + w > W or y0 + h > H:
        raise GenforgeError(f"--mask {text!r}: the rectangle must have w, h >= 1 and lie inside the {H}x{W} image")
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


def check_mask(mask: np.ndarray, n: int, side: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A bool mask (h, w) for every image or (n, h, w) one per image -> (n, h, w); True marks missing pixels."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise GenforgeError(f"{what}: expected a boolean mask (True where pixels are missing), got {mask.dtype}")
    given = "x".join(map(str, mask.shape))
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (n, *mask.shape))
    if mask.ndim != 3 or mask.shape[1:] != tuple(side) or len(mask) != n:
        raise GenforgeError(f"{what}: has shape {given}; it must be {side[0]}x{side[1]} (the images' size), "
                            f"or one such mask for each of the {n} images")
    if mask.all(axis=(1, 2)).any():
        raise GenforgeError(f"{what}: masks every pixel of an image; inpainting needs some known pixels")
    return mask


def estimate_noise_std(x: np.ndarray) -> float:
    """Gaussian noise std of uint8 images, in [0, 1] units (Immerkaer 1996, "Fast noise variance estimation").

    The 3x3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels smooth image content; the mean absolute response
    times sqrt(pi/2)/6 is sigma. Strong edges (digits' strokes) bias it upwards a little.
    """
    t = torch.from_numpy(as_nhwc(x)).permute(0, 3, 1, 2).float().div(255).flatten(0, 1)[:, None]  # (n*c, 1, h, w)
    kernel = torch.tensor([[1., -2, 1], [-2, 4, -2], [1, -2, 1]])[None, None]
    response = F.conv2d(t, kernel).abs().mean()
    return float(math.sqrt(math.pi / 2) / 6 * response)


# --------------------------------------------------------------------------------------- the measurement

class Measurement:
    """A corruption A and its measurement, in image space: (b, c, h, w) tensors in [0, 1].

    ``forward(x)`` is A(x) drawn at full size: missing pixels zeroed (inpaint), the 2x2 means spread back
    over their blocks (sr2x), x itself (denoise). Each is a projection, A(A(x)) = A(x), so ``consistent``
    can put the measurement back exactly. ``y`` is the measurement in the same space (sr2x: the low-res
    image upsampled by repeating each pixel 2x2).
    """

    def __init__(self, task: str, y: torch.Tensor, known: torch.Tensor | None = None, noise_std: float = 0.0):
        self.task, self.y, self.known = task, y, known  # known: (b, 1, h, w), 1 where the pixel is known
        self.noise_std = noise_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "inpaint":
            return x * self.known
        if self.task == "sr2x":
            return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
        return expected_clipped(x, self.noise_std)

    def consistent(self, x: torch.Tensor, rounds: int = 30) -> torch.Tensor:
        """x with the measurement put back, A(out) = y, and pixels in [0, 1] (denoising: x itself, clamped).

        Alternating projections onto the two convex sets (POCS): the images A maps to y, and the [0, 1] box.
        One round is exact for inpainting; for sr2x a dark block's correction can push pixels below 0, so the
        clamp and the correction alternate until both hold (the nearest-upsampled y is in both sets).
        """
        if self.task == "denoise":
            return x.clamp(0, 1)
        for _ in range(rounds if self.task == "sr2x" else 1):
            x = (x - self.forward(x) + self.y).clamp(0, 1)
        return x

    def first_guess(self) -> torch.Tensor:
        """A full image to start from: missing pixels filled with the known pixels' mean; else y itself."""
        if self.task != "inpaint":
            return self.y
        mean = (self.y * self.known).sum((2, 3), keepdim=True) / self.known.sum((2, 3), keepdim=True)
        return self.y * self.known + mean * (1 - self.known)

    def part(self, rows: slice) -> Measurement:
        return Measurement(self.task, self.y[rows], None if self.known is None else self.known[rows], self.noise_std)


def expected_clipped(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[clip(x + sigma * eps, 0, 1)], eps ~ N(0, 1): what a noisy 8-bit image shows on average.

    Noise on a black background is clipped at 0, so the noisy background is grey on average (0.4 sigma),
    not black; matching x to the noisy image directly would draw that grey. With a = -x / sigma and
    b = (1 - x) / sigma: E = P(Y > 1) + x (Phi(b) - Phi(a)) + sigma (phi(a) - phi(b)).
    """
    if sigma <= 0:
        return x
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = -x / sigma, (1 - x) / sigma
    pdf_a, pdf_b = normal.log_prob(a).exp(), normal.log_prob(b).exp()
    return (1 - normal.cdf(b)) + x * (normal.cdf(b) - normal.cdf(a)) + sigma * (pdf_a - pdf_b)


def measure(model, x: np.ndarray, task: str, mask: np.ndarray | None, noise_std: float = 0.0) -> Measurement:
    """Check the images (and mask) against the model and the task; returns their :class:`Measurement`."""
    if task not in TASKS:
        raise GenforgeError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    x = check_images(model, x, task)
    y = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div(255).to(model.device)
    known = None
    if task == "inpaint":
        if mask is None:
            raise GenforgeError("inpainting needs a mask: --mask x,y,w,h or --mask mask.png")
        mask = check_mask(mask, len(x), model.image_shape[1:])
        known = torch.from_numpy(~mask).float()[:, None].to(model.device)  # (b, 1, h, w)
    elif mask is not None:
        raise GenforgeError(f"a mask is for inpainting; task {task} takes none")
    if task == "sr2x":
        y = F.interpolate(y, scale_factor=2, mode="nearest")  # (b, c, 2h, 2w)
    return Measurement(task, y, known, noise_std if task == "denoise" else 0.0)


# --------------------------------------------------------------------------------------- latent optimisation

def _decode(model, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return model.method.generate(model.nets, z, y)  # (b, c, h, w) in [0, 1]


def _latent_repair(model, m: Measurement, sigma: float, opts: RepairOptions) -> torch.Tensor:
    """MAP latent by Adam from ``restarts`` starts per image and class; returns G(z*) (b, c, h, w).

    Adam's update of each coordinate depends on that coordinate's gradients only, and each image's loss
    depends on its own latents, so every image is repaired as if it were alone in the batch.
    """
    b = m.y.shape[0]
    classes = list(range(model.num_classes)) or [None]
    r, k = opts.restarts, len(classes)
    gen = torch.Generator().manual_seed(opts.seed)
    z = torch.randn(k, r, b, model.z_dim, generator=gen).to(model.device)   # (k, r, b, z_dim)
    y_cls = None
    if classes[0] is not None:
        y_cls = torch.arange(k, device=model.device)[:, None, None].expand(k, r, b).reshape(-1)  # (k*r*b,)
    if model.family == "vae":
        # The encoder's posterior mean of the first guess is the first start; the others are prior draws.
        guess = m.first_guess()
        for i, c in enumerate(classes):
            yc = None if c is None else torch.full((b,), c, device=model.device)
            with torch.no_grad():
                z[i, 0] = model.nets["encoder"](guess, yc)[0]
    z = z.reshape(k * r * b, -1).requires_grad_(True)                    # (k*r*b, z_dim)
    # every start of every class sees the same measurement: (k*r*b, c, h, w)
    mm = Measurement(m.task, m.y.repeat(k * r, 1, 1, 1), None if m.known is None else m.known.repeat(k * r, 1, 1, 1),
                     m.noise_std)
    opt = torch.optim.Adam([z], lr=opts.lr)

    def objective() -> torch.Tensor:  # (k*r*b,): -log p(y | z) - log p(z), up to constants
        residual = mm.forward(_decode(model, z, y_cls)) - mm.y   # missing pixels: 0 on both sides
        return residual.square().flatten(1).sum(1) / (2 * sigma ** 2) + 0.5 * z.square().sum(1)

    for _ in range(opts.steps):
        loss = objective()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        loss = objective().view(k * r, b)
        best = loss.argmin(0)                                             # (b,) which start and class won
        z_best = z.detach().view(k * r, b, -1)[best, torch.arange(b)]     # (b, z_dim)
        y_best = None if y_cls is None else y_cls.view(k * r, b)[best, torch.arange(b)]
        return _decode(model, z_best, y_best)


# --------------------------------------------------------------------------------------- diffusion

def _diffusion_repair(model, m: Measurement, sigma: float, opts: RepairOptions) -> torch.Tensor:
    """DDIM with the measurement imposed after every step (replacement / ILVR); (b, c, h, w) in [0, 1]."""
    denoiser = model.nets["denoiser"]
    ab = model.nets["schedule"].alphas_cumprod.tolist()
    y = m.y * 2 - 1                                                      # the data range of diffusion: [-1, 1]
    gen = torch.Generator().manual_seed(opts.seed)
    null = None
    if model.num_classes:  # a conditional model, used unconditionally: its null class (classifier-free training)
        null = torch.full((y.shape[0],), denoiser.num_classes, dtype=torch.long, device=y.device)
    timesteps = diffusion.ddim_timesteps(opts.diffusion_steps)
    if m.task == "denoise":
        # y = x + 2 sigma eps in [-1, 1] units, so sqrt(ab_t) y is x_t where (1 - ab_t) / ab_t = (2 sigma)^2.
        var = (2 * sigma) ** 2
        start = min(range(len(ab)), key=lambda t: abs((1 - ab[t]) / ab[t] - var))
        timesteps = [start] + [t for t in timesteps if t < start]
        x = math.sqrt(ab[start]) * y
    else:
        x = torch.randn(y.shape, generator=gen).to(y.device)             # x_T
    passes = 1 if m.task == "denoise" else opts.resample
    for i, t in enumerate(timesteps):
        ab_s = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        for u in range(passes):
            if u:  # RePaint (Lugmayr et al. 2022, algorithm 1): diffuse x_s back to t and take the step again,
                # so the generated part has another chance to agree with the imposed one
                x = math.sqrt(ab[t] / ab_s) * x + math.sqrt(1 - ab[t] / ab_s) * torch.randn(
                    y.shape, generator=gen).to(y.device)
            with torch.no_grad():
                x0 = diffusion.x0_at(denoiser, x, t, null, 1.0, ab).clamp(-1, 1)
            eps = (x - math.sqrt(ab[t]) * x0) / math.sqrt(1 - ab[t])
            x = math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * eps          # DDIM step t -> s (sigma = 0)
            if m.task != "denoise":
                # what A sees of x_s is replaced by the measurement, noised to the level of step s
                noise = torch.randn(y.shape, generator=gen).to(y.device)
                y_s = math.sqrt(ab_s) * y + math.sqrt(1 - ab_s) * noise
                x = x - m.forward(x) + m.forward(y_s)
            if ab_s == 1.0:
                break  # the last step lands on the data: nothing to resample
    return (x + 1) / 2


# --------------------------------------------------------------------------------------- the entry point

def repair(model, x: np.ndarray, task: str, mask: np.ndarray | None = None, noise_std: float | None = None,
           options: RepairOptions = RepairOptions(), batch_size: int = 256) -> np.ndarray:
    """Repair uint8 images with a loaded model; returns uint8 images of the model's size.

    task "inpaint": ``mask`` (h, w) or (n, h, w) bool, True where pixels are missing; known pixels come back
    unchanged. "denoise": ``noise_std`` in [0, 1] units (estimated from the images when None). "sr2x":
    images of half the model's side, (e.g. 14x14 for a 28x28 model), taken as 2x2 means of the clean image.
    """
    if model.family not in ("vae", "gan", "diffusion"):
        raise GenforgeError(f"repair needs a VAE, GAN or diffusion model; {model.name} is a {model.family}")
    if noise_std is not None and (isinstance(noise_std, bool) or not isinstance(noise_std, (int, float))
                                  or not 0 < noise_std < 1):
        raise GenforgeError(f"noise_std must be in (0, 1) (pixel units of [0, 1]), got {noise_std!r}")
    if noise_std is not None and task != "denoise":
        raise GenforgeError(f"noise_std is for denoising; task {task} takes none")
    if task == "denoise" and noise_std is None:
        noise_std = estimate_noise_std(check_images(model, x, task))
    m_all = measure(model, x, task, mask, noise_std or 0.0)
    # the data term's sigma: the measurement noise and what the model cannot draw exactly, added in variance
    sigma = math.hypot(noise_std or 0.0, MODEL_ERROR)
    out = []
    with torch.random.fork_rng(devices=[]):
        for i in range(0, len(m_all.y), batch_size):
            m = m_all.part(slice(i, i + batch_size))
            if model.family == "diffusion":
                restored = _diffusion_repair(model, m, noise_std or 0.0, options)
            else:
                restored = _latent_repair(model, m, sigma, options)
            out.append(m.consistent(restored.detach()).cpu())
    images = (torch.cat(out) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (n, h, w, c)
    if task == "inpaint":  # bit-exact known pixels (the float round trip could move one by a rounding step)
        keep = ~check_mask(mask, len(images), images.shape[1:3])
        images[keep] = check_images(model, x, task)[keep]
    return images[..., 0] if images.shape[-1] == 1 else images
