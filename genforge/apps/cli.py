"""``genforge repair``, ``genforge transfer`` and ``genforge augment``: plain functions, docstrings as help.

``genforge.cli.build_parser`` calls :func:`add_apps_commands`; errors raised here as
:class:`~genforge.errors.GenforgeError` become one-line messages with exit status 2 there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from genforge.errors import GenforgeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_SIDE = 4096


def _doc(fn):
    return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()


# --------------------------------------------------------------------------------------- image files

def _read_picture(path: Path) -> np.ndarray:
    """One image file -> uint8 (h, w, 1) grayscale or (h, w, 3) colour; the size is checked before decoding.

    Transparency is dropped (Pillow's conversion to RGB).
    """
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

def cmd_repair(args) -> int:
    """Repair images with a trained model: genforge repair MODEL IMAGES --task inpaint|denoise|sr2x --out OUT.

    IMAGES: an image file, a folder of them, or an npz with x. inpaint: --mask x,y,w,h (pixels) or a mask
    image (white = missing); known pixels come back unchanged. denoise: --noise-std in [0, 1] pixel units
    (estimated when omitted). sr2x: images of half the model's side (14x14 for a 28x28 model), read as 2x2
    means, out at full size. VAEs and GANs repair by latent optimisation, diffusion models by DDIM with the
    measurement imposed at every step. OUT: a .png grid (--compare: each input beside its repair), a .npz
    or a folder of PNGs.
    """
    from genforge.generation.model import load as load_model
    from genforge.apps.repair import RepairOptions, repair
    from genforge.generation.sampling import resize
    from genforge.generation import provenance

    model = load_model(args.model, device=args.device)
    x, names = read_images(args.images)
    mask = read_mask(args.mask, model.image_shape[1:]) if args.mask else None
    options = RepairOptions(steps=args.steps, restarts=args.restarts, diffusion_steps=args.diffusion_steps,
                            resample=args.resample, seed=args.seed)
    for name in ("steps", "restarts", "diffusion_steps", "resample"):
        if getattr(options, name) < 1:
            raise GenforgeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    out = repair(model, x, args.task, mask=mask, noise_std=args.noise_std, options=options)
    meta = provenance.stamp({**provenance.model_metadata(model), "kind": "repair", "task": args.task,
                             "mask": args.mask, "noise_std": args.noise_std, "seed": args.seed})
    nrow = None
    if args.compare:
        shown = x[..., 0] if x.shape[-1] == 1 else x
        if args.task == "sr2x":
            shown = resize(shown, model.image_shape[1], "nearest")
        if mask is not None:
            shown = shown.copy()
            shown[:, mask] = 128  # the missing region in grey
        out = np.stack([shown, out], 1).reshape(-1, *out.shape[1:])  # input, repair, input, repair...
        nrow = 2 * min(10, len(x))
    path = write_images(out, names if not args.compare else [f"{n}_{k}" for n in names for k in ("in", "out")],
                        args.out, meta, nrow)
    print(f"genforge: repaired {len(x)} images ({args.task}) with {model.path}; wrote {path}")
    return 0


def cmd_transfer(args) -> int:
    """Draw images as other classes with a conditional VAE: genforge transfer MODEL IMAGES --to 3,8 --out grid.png.

    Each image is encoded with its own class (--from, or the class the model finds most likely) and decoded
    as each --to class, keeping its pose and stroke. The grid has one row per image: the image, then one
    column per target class. Only conditional VAEs (cvae-conv) can do this.
    """
    from genforge.generation.model import load as load_model
    from genforge.apps.transfer import check_model, transfer
    from genforge.generation import provenance

    model = load_model(args.model, device=args.device)
    check_model(model)
    x, names = read_images(args.images)
    to = args.to.split(",") if args.to != "all" else list(range(model.num_classes))
    source = args.source.split(",") if args.source else None
    out, src = transfer(model, x, to, source)  # (n, k, h, w[, c])
    shown = x[..., 0] if x.shape[-1] == 1 else x
    grid = np.concatenate([shown[:, None], out], 1)  # (n, 1 + k, ...)
    meta = provenance.stamp({**provenance.model_metadata(model), "kind": "class-transfer", "to": to,
                             "source_classes": src.tolist()})
    path = write_images(grid.reshape(-1, *grid.shape[2:]), [f"{n}_{k}" for n in names for k in ["in", *map(str, to)]],
                        args.out, meta, nrow=grid.shape[1])
    class_names = model.class_names or [str(i) for i in range(model.num_classes)]
    print(f"genforge: source classes: {', '.join(f'{n}={class_names[c]}' for n, c in zip(names, src))}")
    print(f"genforge: drew {len(x)} images as {len(to)} classes with {model.path}; wrote {path}")
    return 0


def cmd_augment(args) -> int:
    """Does synthetic data help with K real images per class? genforge augment RECIPE --k 10,50,100 --seeds 0,1,2.

    For each K and seed: K real images per class from the train split of --data; the conditional RECIPE
    (e.g. genforge/recipes/mnist5k-cvae-conv.yaml) trained on them only; a classifier trained on real only and one on
    real + generated images (same network, seed and steps); both scored on the test split. Prints mean and
    spread over the seeds. --keep FILE.npz writes the real + synthetic training set of the first K and seed.
    """
    from genforge.apps.augment import AugmentOptions, format_table, run, run_seed
    from genforge.data import load_splits
    from genforge.generation.steering import parse_ints
    from genforge.io import atomic_write_json

    ks, seeds = parse_ints(args.k, "--k"), parse_ints(args.seeds, "--seeds")
    options = AugmentOptions(gen_steps=args.gen_steps, synthetic_per_class=args.synthetic_per_class,
                             classifier_steps=args.classifier_steps)
    for name in ("gen_steps", "synthetic_per_class", "classifier_steps"):
        if getattr(options, name) < 1:
            raise GenforgeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(options, name)}")
    data = args.data
    if data is None:
        from genforge.config import load_config

        data = load_config(args.recipe).data

    def progress(row):
        print(f"  K={row['k']} seed {row['seed']}: real only {100 * row['real_only']:.1f}%, real + synthetic "
              f"{100 * row['real_plus_synthetic']:.1f}%", flush=True)

    result = run(data, args.recipe, ks, seeds, options, device=args.device, progress=progress)
    print(format_table(result["summary"]), end="")
    print(f"(test split of {data}: {result['test_size']} images)")
    if args.keep:
        run_seed(load_splits(data), args.recipe, ks[0], seeds[0], options, args.device, keep=Path(args.keep))
        print(f"genforge: wrote the real + synthetic training set (K={ks[0]}, seed {seeds[0]}) to {args.keep}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"genforge: wrote {args.json}")
    return 0


def add_apps_commands(sub) -> None:
    short, long = _doc(cmd_repair)
    p = sub.add_parser("repair", help=short, description=long)
    p.add_argument("model", help="run directory or model directory (VAE, GAN or diffusion)")
    p.add_argument("images", help="an image file, a folder of image files, or an npz with x")
    p.add_argument("--task", required=True, choices=("inpaint", "denoise", "sr2x"))
    p.add_argument("--mask", help="inpaint: x,y,w,h in pixels, or a mask image (white = missing)")
    p.add_argument("--noise-std", type=float, help="denoise: noise std in [0, 1] pixel units (default: estimated)")
    p.add_argument("--steps", type=int, default=100, help="VAE/GAN: optimisation steps on the latent (default 100)")
    p.add_argument("--restarts", type=int, default=2, help="VAE/GAN: starting latents per image (default 2)")
    p.add_argument("--diffusion-steps", type=int, default=25, help="diffusion: DDIM steps (default 25)")
    p.add_argument("--resample", type=int, default=4,
                   help="diffusion, inpaint and sr2x: RePaint passes over each step (default 4; 1: plain replacement)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="grid: each input beside its repair")
    p.add_argument("--out", required=True, help=".png grid, .npz, or a folder of PNGs")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_repair)

    short, long = _doc(cmd_transfer)
    p = sub.add_parser("transfer", help=short, description=long)
    p.add_argument("model", help="run directory or model directory of a conditional VAE")
    p.add_argument("images", help="an image file, a folder of image files, or an npz with x")
    p.add_argument("--to", required=True, help="target classes: indices or names, comma-separated, or 'all'")
    p.add_argument("--from", dest="source", help="the images' own class (one, or one per image; default: inferred)")
    p.add_argument("--out", required=True, help=".png grid (rows: images; columns: the image, then each class), "
                                                ".npz, or a folder of PNGs")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_transfer)

    short, long = _doc(cmd_augment)
    p = sub.add_parser("augment", help=short, description=long)
    p.add_argument("recipe", help="a class-conditional recipe, e.g. genforge/recipes/mnist5k-cvae-conv.yaml")
    p.add_argument("--data", help="data spec (default: the recipe's data)")
    p.add_argument("--k", default="10,50,100", help="real images per class, comma-separated (default 10,50,100)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument("--gen-steps", type=int, default=600, help="training steps of the generator (default 600)")
    p.add_argument("--synthetic-per-class", type=int, default=100, help="generated images per class (default 100)")
    p.add_argument("--classifier-steps", type=int, default=500, help="training steps of each classifier (default 500)")
    p.add_argument("--keep", metavar="FILE.npz", help="also write the real + synthetic set of the first K and seed")
    p.add_argument("--json", help="write every seed's result and the summary here")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_augment)
