"""``genforge repair``, ``genforge transfer`` and ``genforge augment``: plain functions, docstrings as help.

Registered in :data:`genforge.cli.COMMANDS`; errors raised here as :class:`~genforge.errors.GenforgeError`
become one-line messages with exit status 2 there. numpy and Pillow are imported inside the functions, so
``genforge --help`` does not load them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from genforge.cli.options import (CONTEXT, comma_list, data_option, device_option, model_argument, out_option,
                                  progress_option, renamed, require_modality, seed_option)
from genforge.errors import GenforgeError

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_SIDE = 4096


# --------------------------------------------------------------------------------------- image files

def _read_picture(path: Path) -> np.ndarray:
    """One image file -> uint8 (h, w, 1) grayscale or (h, w, 3) colour; the size is checked before decoding.

    Transparency is dropped (Pillow's conversion to RGB).
    """
    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if max(w, h) > MAX_SIDE:
                    raise GenforgeError(f"{path}: {w}x{h} pixels; images larger than {MAX_SIDE} a side are refused")
                img.load()
                x = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (h, w, 3)
    except GenforgeError:
        raise
    except Exception as e:  # Pillow raises many types on hostile bytes (OSError, SyntaxError, ...): a bad file
        raise GenforgeError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    # grayscale when no pixel has colour, whatever the file's mode (as genforge's folder source reads images)
    gray = (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    return x[..., :1] if gray else x


def read_images(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """An image file, a folder of image files (sorted by name) or an npz with ``x`` -> (uint8 (n, h, w, c), names).

    Every image must have the same size and channels; the error names the first that differs.
    """
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise GenforgeError(f"{path}: no such file or folder")
    if path.suffix == ".npz":
        from genforge.data.npz import read_npz

        x = read_npz(path).x
        return x, [f"{path.stem}_{i:04d}" for i in range(len(x))]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")) \
        if path.is_dir() else [path]
    if not files:
        raise GenforgeError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    images = []
    for f in files:
        x = _read_picture(f)
        if images and x.shape != images[0].shape:
            raise GenforgeError(f"{f}: {x.shape[1]}x{x.shape[0]} with {x.shape[2]} channels, but {files[0]} is "
                                f"{images[0].shape[1]}x{images[0].shape[0]} with {images[0].shape[2]}: "
                                "give images of one size")
        images.append(x)
    return np.stack(images), [f.stem for f in files]


def read_mask(text: str, side: tuple[int, int]) -> np.ndarray:
    """--mask: a rectangle "x,y,w,h" or a mask image (white or any non-black pixel = missing) -> bool (h, w)."""
    from genforge.apps.repair import rect_mask

    if Path(text).suffix.lower() in IMAGE_SUFFIXES:
        m = _read_picture(Path(text))
        if m.shape[:2] != tuple(side):
            raise GenforgeError(f"mask {text}: {m.shape[1]}x{m.shape[0]} pixels, but the images are "
                                f"{side[1]}x{side[0]}")
        return (m > 127).any(axis=2)
    return rect_mask(text, side)


def write_images(x: np.ndarray, names: list[str], out: str | Path, metadata: dict, nrow: int | None = None) -> Path:
    """.png: one grid; .npz: x; any other name: a folder with one PNG per image, named after its input."""
    from genforge.generation.writers import save_grid, save_npz, save_png

    out = Path(out)
    if out.suffix == ".png":
        return save_grid(x, out, nrow=nrow, metadata=metadata, ledger=True)
    if out.suffix == ".npz":
        return save_npz(out, x)
    if out.suffix:
        raise GenforgeError(f"--out {out}: give a .png (grid), a .npz or a folder name without suffix")
    for img, name in zip(x, names):
        save_png(img, out / f"{name}.png", metadata={**metadata, "source": name}, ledger=True)
    return out


# --------------------------------------------------------------------------------------- commands

@click.command(context_settings=CONTEXT)
@model_argument
@click.argument("images", metavar="IMAGES")
@click.option("--task", required=True, type=click.Choice(["inpaint", "denoise", "sr2x"]), help="what to repair")
@click.option("--mask", help="inpaint: x,y,w,h in pixels, or a mask image (white = missing)")
@click.option("--noise-std", type=float, help="denoise: noise std in [0, 1] pixel units (default: estimated)")
@click.option("--latent-steps", type=int, default=100, show_default=True,
              help="VAE/GAN: optimisation steps on the latent")
@renamed("--steps", "--latent-steps", "VAE/GAN optimisation steps; --steps is the diffusion sampler's")
@click.option("--restarts", type=int, default=2, show_default=True, help="VAE/GAN: starting latents per image")
@click.option("--diffusion-steps", type=int, default=25, show_default=True, help="diffusion: DDIM steps")
@click.option("--repaint-passes", type=int, default=4, show_default=True,
              help="diffusion, inpaint and sr2x: RePaint passes over each step (1: plain replacement)")
@renamed("--resample", "--repaint-passes", "--resample is the resize filter of genforge sample")
@seed_option()
@click.option("--compare", is_flag=True, help="grid: each input beside its repair")
@out_option(".png grid, .npz, or a folder of PNGs")
@device_option()
def repair(model: str, images: str, task: str, mask: str | None, noise_std: float | None, latent_steps: int,
           restarts: int, diffusion_steps: int, repaint_passes: int, seed: int, compare: bool, out: str,
           device: str) -> int:
    """Repair images with a trained model: genforge repair MODEL IMAGES --task inpaint|denoise|sr2x --out OUT.

    IMAGES: an image file, a folder of them, or an npz with x. inpaint: --mask x,y,w,h (pixels) or a mask
    image (white = missing); known pixels come back unchanged. denoise: --noise-std in [0, 1] pixel units
    (estimated when omitted). sr2x: images of half the model's side (14x14 for a 28x28 model), read as 2x2
    means, out at full size. VAEs and GANs repair by latent optimisation, diffusion models by DDIM with the
    measurement imposed at every step. OUT: a .png grid (--compare: each input beside its repair), a .npz
    or a folder of PNGs.

    Audio (issue #17): IMAGES may be a .wav/.flac file or a folder of them with --task denoise; MODEL is then a
    denoiser directory (genforge.apps.enhance.train_denoiser) or spectral-subtraction / wiener, and OUT a .wav
    or a folder of WAVs (speech at 8 kHz, mono).
    """
    import numpy as np

    from genforge.apps.enhance import denoise_files, is_audio_input

    if is_audio_input(images):
        if task != "denoise":
            raise GenforgeError(f"{images}: audio can be repaired with --task denoise only, got --task {task}")
        path, notes = denoise_files(model, images, out)
        print(f"genforge: denoised {images} with {model}; wrote {path}" + "".join(f"\n  note: {n}" for n in notes))
        return 0

    from genforge.apps.repair import RepairOptions, repair as run_repair
    from genforge.generation import provenance
    from genforge.generation.model import load as load_model
    from genforge.generation.sampling import resize

    for flag, value in (("--latent-steps", latent_steps), ("--restarts", restarts),
                        ("--diffusion-steps", diffusion_steps), ("--repaint-passes", repaint_passes)):
        if value < 1:
            raise GenforgeError(f"{flag} must be at least 1, got {value}")
    net = load_model(model, device=device)
    require_modality(net, "genforge repair")
    x, names = read_images(images)
    region = read_mask(mask, net.image_shape[1:]) if mask else None
    options = RepairOptions(steps=latent_steps, restarts=restarts, diffusion_steps=diffusion_steps,
                            resample=repaint_passes, seed=seed)
    fixed = run_repair(net, x, task, mask=region, noise_std=noise_std, options=options)
    meta = provenance.stamp({**provenance.model_metadata(net), "kind": "repair", "task": task,
                             "mask": mask, "noise_std": noise_std, "seed": seed})
    nrow = None
    if compare:
        shown = x[..., 0] if x.shape[-1] == 1 else x
        if task == "sr2x":
            shown = resize(shown, net.image_shape[1], "nearest")
        if region is not None:
            shown = shown.copy()
            shown[:, region] = 128  # the missing region in grey
        fixed = np.stack([shown, fixed], 1).reshape(-1, *fixed.shape[1:])  # input, repair, input, repair...
        nrow = 2 * min(10, len(x))
    path = write_images(fixed, names if not compare else [f"{n}_{k}" for n in names for k in ("in", "out")],
                        out, meta, nrow)
    print(f"genforge: repaired {len(x)} images ({task}) with {net.path}; wrote {path}")
    return 0


@click.command(context_settings=CONTEXT)
@model_argument
@click.argument("images", metavar="IMAGES")
@click.option("--to", required=True, metavar="CLASS[,CLASS...]|all",
              help="target classes: indices or names, comma-separated, or 'all'")
@click.option("--source-class", metavar="CLASS[,CLASS...]",
              help="the images' own class (one, or one per image; default: inferred by the model)")
@renamed("--from", "--source-class", "--from is the feedback grid of genforge sample")
@out_option(".png grid (rows: images; columns: the image, then each class), .npz, or a folder of PNGs")
@device_option()
def transfer(model: str, images: str, to: str, source_class: str | None, out: str, device: str) -> int:
    """Draw images as other classes with a conditional VAE: genforge transfer MODEL IMAGES --to 3,8 --out grid.png.

    Each image is encoded with its own class (--source-class, or the class the model finds most likely) and
    decoded as each --to class, keeping its pose and stroke. The grid has one row per image: the image, then
    one column per target class. Only conditional VAEs (cvae-conv) can do this.
    """
    import numpy as np

    from genforge.apps.transfer import check_model, transfer as run_transfer
    from genforge.generation import provenance
    from genforge.generation.model import load as load_model

    net = load_model(model, device=device)
    require_modality(net, "genforge transfer")
    check_model(net)
    x, names = read_images(images)
    targets = comma_list(to) if to != "all" else list(range(net.num_classes))
    drawn, src = run_transfer(net, x, targets, comma_list(source_class))  # (n, k, h, w[, c])
    shown = x[..., 0] if x.shape[-1] == 1 else x
    grid = np.concatenate([shown[:, None], drawn], 1)  # (n, 1 + k, ...)
    meta = provenance.stamp({**provenance.model_metadata(net), "kind": "class-transfer", "to": targets,
                             "source_classes": src.tolist()})
    path = write_images(grid.reshape(-1, *grid.shape[2:]),
                        [f"{n}_{k}" for n in names for k in ["in", *map(str, targets)]], out, meta,
                        nrow=grid.shape[1])
    class_names = net.class_names or [str(i) for i in range(net.num_classes)]
    print(f"genforge: source classes: {', '.join(f'{n}={class_names[c]}' for n, c in zip(names, src))}")
    print(f"genforge: drew {len(x)} images as {len(targets)} classes with {net.path}; wrote {path}")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("recipe", metavar="RECIPE")
@data_option("data spec (default: the recipe's data)")
@click.option("--k", default="10,50,100", show_default=True, metavar="K,K,...",
              help="real images per class, comma-separated")
@click.option("--seeds", default="0,1,2", show_default=True, metavar="S,S,...", help="seeds, comma-separated")
@click.option("--gen-steps", type=int, default=600, show_default=True, help="training steps of the generator")
@click.option("--synthetic-per-class", type=int, default=100, show_default=True, help="generated images per class")
@click.option("--classifier-steps", type=int, default=500, show_default=True,
              help="training steps of each classifier")
@click.option("--keep", metavar="FILE.npz", help="also write the real + synthetic set of the first K and seed")
@out_option("write every seed's result and the summary here as JSON", required=False, metavar="FILE.json")
@renamed("--json", "--out FILE.json")
@device_option()
@progress_option
def augment(recipe: str, data: str | None, k: str, seeds: str, gen_steps: int, synthetic_per_class: int,
            classifier_steps: int, keep: str | None, out: str | None, device: str, progress: bool) -> int:
    """Does synthetic data help with K real images per class? genforge augment RECIPE --k 10,50,100 --seeds 0,1,2.

    For each K and seed: K real images per class from the train split of --data; the conditional RECIPE
    (a bundled name such as mnist5k-cvae-conv, or a YAML file) trained on them only; a classifier trained on
    real only and one on real + generated images (same network, seed and steps); both scored on the test
    split. Prints mean and spread over the seeds. --keep FILE.npz writes the real + synthetic training set
    of the first K and seed.
    """
    from genforge.apps.augment import AugmentOptions, format_table, run
    from genforge.devices import pick
    from genforge.generation.steering import parse_ints
    from genforge.io import atomic_write_json
    from genforge.recipes import path_of

    ks, seed_list = parse_ints(k, "--k"), parse_ints(seeds, "--seeds")
    for flag, value in (("--gen-steps", gen_steps), ("--synthetic-per-class", synthetic_per_class),
                        ("--classifier-steps", classifier_steps)):
        if value < 1:
            raise GenforgeError(f"{flag} must be at least 1, got {value}")
    options = AugmentOptions(gen_steps=gen_steps, synthetic_per_class=synthetic_per_class,
                             classifier_steps=classifier_steps)
    recipe_path = path_of(recipe)
    if data is None:
        from genforge.config import load_config

        data = load_config(recipe_path).data
    where = str(pick(device))

    def done(row):
        print(f"  K={row['k']} seed {row['seed']}: real only {100 * row['real_only']:.1f}%, real + synthetic "
              f"{100 * row['real_plus_synthetic']:.1f}%", flush=True)

    result = run(data, recipe_path, ks, seed_list, options, device=where, progress=done, bars=progress,
                 keep=Path(keep) if keep else None)
    print(format_table(result["summary"]), end="")
    print(f"(test split of {data}: {result['test_size']} images)")
    if keep:
        print(f"genforge: wrote the real + synthetic training set (K={ks[0]}, seed {seed_list[0]}) to {keep}")
    if out:
        atomic_write_json(out, result)
        print(f"genforge: wrote {out}")
    return 0
