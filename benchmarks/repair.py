"""Repair measured: PSNR and SSIM of genforge's inpainting, denoising and 2x super-resolution against
classical baselines, on held-out test images, in one run.

    python benchmarks/repair.py runs/apps-vae [runs/apps-dcgan runs/apps-ddpm ...] [--n 200] [--noise 0.3]

MODELS are run directories of models trained on mnist5k (any family). The images are the first --n of
the mnist5k test split, which no model trained on. Corruptions, all seeded:

- inpaint: a 12x12 square per image, its corner drawn uniformly in [4, 12] so it covers part of the digit;
- denoise: Gaussian noise of std --noise (in [0, 1] units), clipped to [0, 1] and rounded to 8 bits;
- sr2x: the 2x2 means (Pillow's BOX filter at 2x), rounded to 8 bits: 14x14 in, 28x28 out.

Baselines, run on the same images: scikit-image's biharmonic inpainting; a Gaussian filter and a median
filter whose size is chosen on 100 validation images (the best PSNR there, never on the test images);
Lanczos and bicubic upscaling (Pillow). PSNR (dB, data range 255) and SSIM (scikit-image, 7x7 window) are
per-image values averaged over the images. Prints the table and writes it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import print_machine  # noqa: E402
import genforge  # noqa: E402
from benchmarks.common import command_line, write_section  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.apps.repair import RepairOptions, repair  # noqa: E402
from genforge.data import load_splits  # noqa: E402


# ------------------------------------------------------------------------------------------- corruptions

def corrupt(x: np.ndarray, noise: float, seed: int) -> dict:
    """Clean uint8 (n, 28, 28) -> the three corrupted inputs (and the inpainting masks)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    masks = np.zeros(x.shape, dtype=bool)
    for i, (top, left) in enumerate(rng.integers(4, 13, size=(n, 2))):
        masks[i, top:top + 12, left:left + 12] = True
    holed = np.where(masks, 0, x).astype(np.uint8)
    noisy = np.clip(x / 255 + rng.normal(0, noise, x.shape), 0, 1)
    noisy = (noisy * 255).round().astype(np.uint8)
    low = x.reshape(n, 14, 2, 14, 2).mean((2, 4)).round().astype(np.uint8)
    return {"masks": masks, "inpaint": holed, "denoise": noisy, "sr2x": low}


# ------------------------------------------------------------------------------------------- metrics

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(np.mean([peak_signal_noise_ratio(p, q, data_range=255) for p, q in zip(a, b)]))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(p, q, data_range=255) for p, q in zip(a, b)]))


# ------------------------------------------------------------------------------------------- baselines

def biharmonic(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = [inpaint_biharmonic(img / 255, m) for img, m in zip(x, masks)]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([np.clip(gaussian_filter(img.astype(float), sigma), 0, 255).round() for img in x]).astype(np.uint8)


def median(x: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import median_filter

    return np.stack([median_filter(img, size=size) for img in x])


def upscale(x: np.ndarray, method) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(img).resize((28, 28), method)) for img in x])


def tuned(name: str, make, values, val_noisy: np.ndarray, val_clean: np.ndarray):
    """The baseline's parameter with the best PSNR on the validation images; returns (label, function)."""
    best = max(values, key=lambda v: psnr(make(val_noisy, v), val_clean))
    return f"{name} ({best}, chosen on val)", lambda x: make(x, best)


# ------------------------------------------------------------------------------------------- the run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="run or model directories trained on mnist5k")
    parser.add_argument("--n", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--noise", type=float, default=0.3, help="denoise: noise std in [0, 1] units (default 0.3)")
    parser.add_argument("--steps", type=int, default=100, help="VAE/GAN: latent optimisation steps (default 100)")
    parser.add_argument("--restarts", type=int, default=2, help="VAE/GAN: starts per image (default 2)")
    parser.add_argument("--diffusion-steps", type=int, default=25, help="diffusion: DDIM steps (default 25)")
    parser.add_argument("--resample", type=int, default=4, help="diffusion: RePaint passes per step (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    torch.set_num_threads(2)

    splits = load_splits("mnist5k")
    clean = splits.test.x[:args.n, ..., 0]
    val_clean = splits.val.x[:100, ..., 0]
    bad, val_bad = corrupt(clean, args.noise, args.seed), corrupt(val_clean, args.noise, args.seed + 1)

    rows = []  # (task, method, psnr, ssim, seconds)

    def score(task: str, method: str, run) -> None:
        t0 = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - t0
        rows.append((task, method, psnr(out, clean), ssim(out, clean), seconds))
        print(f"{task:8s} {method:44s} PSNR {rows[-1][2]:6.2f}  SSIM {rows[-1][3]:.3f}  ({seconds:.1f} s)", flush=True)

    score("inpaint", "input (hole left black)", lambda: bad["inpaint"])
    score("inpaint", "biharmonic (scikit-image)", lambda: biharmonic(bad["inpaint"], bad["masks"]))
    score("denoise", "input (noisy)", lambda: bad["denoise"])
    label, fn = tuned("Gaussian filter, sigma", gaussian, (0.5, 0.75, 1.0, 1.25, 1.5, 2.0), val_bad["denoise"], val_clean)
    score("denoise", label, lambda: fn(bad["denoise"]))
    label, fn = tuned("median filter, size", median, (2, 3, 4, 5), val_bad["denoise"], val_clean)
    score("denoise", label, lambda: fn(bad["denoise"]))
    score("sr2x", "nearest (Pillow)", lambda: upscale(bad["sr2x"], Image.Resampling.NEAREST))
    score("sr2x", "bicubic (Pillow)", lambda: upscale(bad["sr2x"], Image.Resampling.BICUBIC))
    score("sr2x", "Lanczos (Pillow)", lambda: upscale(bad["sr2x"], Image.Resampling.LANCZOS))

    options = RepairOptions(steps=args.steps, restarts=args.restarts, diffusion_steps=args.diffusion_steps,
                            resample=args.resample, seed=args.seed)
    steps = {}
    for path in args.models:
        model = genforge.load(path)
        if model.meta.get("data") != "mnist5k":
            sys.exit(f"{path}: trained on {model.meta.get('data')}, not mnist5k")
        name = f"genforge {model.name} (step {model.meta.get('step')})"
        steps[model.name] = model.meta.get("step")
        score("inpaint", name, lambda: repair(model, bad["inpaint"], "inpaint", bad["masks"], options=options))
        score("denoise", name, lambda: repair(model, bad["denoise"], "denoise", noise_std=args.noise, options=options))
        score("denoise", name + ", noise std estimated",
              lambda: repair(model, bad["denoise"], "denoise", options=options))
        score("sr2x", name, lambda: repair(model, bad["sr2x"], "sr2x", options=options))

    verdicts = []  # each genforge row against the best baseline of its task, measured in this run
    for task in ("inpaint", "denoise", "sr2x"):
        base = [r for r in rows if r[0] == task and not r[1].startswith(("genforge", "input"))]
        bp, bs = max(r[2] for r in base), max(r[3] for r in base)
        for _, method, p, s, _ in (r for r in rows if r[0] == task and r[1].startswith("genforge")):
            won = "beats" if p > bp and s > bs else "does not beat"
            verdicts.append(f"- {task}, {method}: {won} every baseline (PSNR {p - bp:+.2f} dB, SSIM {s - bs:+.3f} "
                            "against the best baseline of each column)")
    table = ["| task | method | PSNR (dB) | SSIM | seconds |", "|---|---|---:|---:|---:|"]
    for task in ("inpaint", "denoise", "sr2x"):
        mine = [r for r in rows if r[0] == task]
        best_psnr, best_ssim = max(r[2] for r in mine), max(r[3] for r in mine)
        for _, method, p, s, sec in mine:
            ps = f"**{p:.2f}**" if p == best_psnr else f"{p:.2f}"
            ss = f"**{s:.3f}**" if s == best_ssim else f"{s:.3f}"
            table.append(f"| {task} | {method} | {ps} | {ss} | {sec:.1f} |")
    section = "\n".join([
        "<!-- repair:start -->",
        "## Repair: inpainting, denoising, 2x super-resolution (`benchmarks/repair.py`)",
        "",
        f"- machine: {cpu_name()}, torch {torch.__version__}, {platform.python_version()}, 2 threads",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `{command_line('repair.py')}`",
        f"- images: the first {args.n} of the mnist5k test split (no model saw them). inpaint: a 12x12 square "
        "per image at a random place in [4, 12]; denoise: Gaussian noise of std "
        f"{args.noise:g} (of the [0, 1] range), clipped and rounded to 8 bits; sr2x: 2x2 means, 14x14 in, 28x28 out",
        f"- genforge: latent optimisation ({args.steps} Adam steps, {args.restarts} starts per image) for VAEs and "
        f"GANs; for diffusion models DDIM ({args.diffusion_steps} steps) with the measurement imposed, "
        f"{args.resample} RePaint passes per step for inpaint and sr2x; "
        "denoising is told the noise std unless the row says estimated",
        "- baselines' parameters chosen on 100 validation images; best of each column in bold",
        "",
        *table,
        "",
        *verdicts,
        "",
        "<!-- repair:end -->",
    ])
    print("\n" + "\n".join(table + [""] + verdicts))
    if not args.no_write:
        write_section(Path(args.results), section)
        print(f"wrote the repair section of {args.results}")


if __name__ == "__main__":
    main()
