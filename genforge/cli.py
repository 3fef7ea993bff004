"""The ``genforge`` command: subcommands mapped to plain functions whose docstrings are their help.

Errors the user can fix print one line naming the file, key or value and exit
with status 2; ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import sys
import time
from pathlib import Path

from genforge.controls import SAMPLERS
from genforge.errors import GenforgeError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
KEY_FILE_HELP = ("encryption key file (default $GENFORGE_ENCRYPTION_KEY_FILE, else $GENFORGE_ENCRYPTION_KEY); "
                 "keys are never taken on the command line")


def cmd_train(args) -> int:
    """Train a model from a recipe: genforge train genforge/recipes/mnist5k-dcgan.yaml [--set key=value ...].

    The run directory (default runs/NAME-TIME) receives the resolved config, metrics.jsonl, TensorBoard
    events, sample grids and checkpoints. Continue a stopped run with --resume RUN_DIR.
    """
    from genforge.config import load_config
    from genforge.training import train

    overrides = list(args.set or [])
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.max_seconds is not None:
        overrides.append(f"max_seconds={args.max_seconds}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    for flag, value in (("dp_epsilon", args.dp_epsilon), ("dp_delta", args.dp_delta),
                        ("dp_max_grad_norm", args.dp_max_grad_norm)):
        if value is not None:
            if not value > 0:  # in a config, dp_epsilon: 0 means no DP; on the command line it is a mistake
                raise GenforgeError(f"--{flag.replace('_', '-')} must be positive, got {value:g}")
            overrides.append(f"{flag}={value!r}")
    if args.encrypt:
        overrides.append("encrypt=true")
    if args.resume:
        if args.config or args.out:
            raise GenforgeError("--resume RUN_DIR takes the run's own config.yaml: give no CONFIG or --out")
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise GenforgeError(f"{run}: not a run directory (no config.yaml)")
        cfg = load_config(run / "config.yaml", overrides)
    else:
        if not args.config:
            raise GenforgeError("give a CONFIG file (see genforge/recipes/) or --resume RUN_DIR")
        cfg = load_config(args.config, overrides)
        run = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, run, resume=bool(args.resume), quiet=args.quiet)
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_sample(args) -> int:
    """Generate images: genforge sample MODEL --n 64 --seed 0 --out grid.png (or samples.npz, or a directory).

    MODEL is a run directory (its best, else last, checkpoint) or a model directory. A .png gets a grid and
    a .png.json sidecar with its latents; a .npz gets x as uint8 (N, H, W) or (N, H, W, C), and y for
    conditional models (--class picks them); a name without suffix gets a directory of PNGs. Feedback: pick
    the samples you like from a saved grid, --from grid.png --like 3,7,12, and get new ones near them.
    """
    from genforge.generation.model import load as load_model
    from genforge.generation import feedback, sample, write_samples
    from genforge.generation.steering import parse_ints

    keyring = None
    if args.encrypt:  # the key is found before any sampling work
        from genforge.crypto import load_keyring

        keyring = load_keyring()
    model = load_model(args.model, device=args.device)
    extra = None
    if args.like or args.from_grid:
        if not (args.like and args.from_grid):
            raise GenforgeError("feedback needs both --from GRID.png and --like I,J,...")
        if args.classes or args.truncation is not None or args.temperature is not None or args.steps is not None \
                or args.guidance is not None or args.sampler is not None:
            raise GenforgeError("a feedback round takes its classes and latents from the grid: "
                                "drop --class, --truncation, --temperature, --steps, --guidance and --sampler")
        samples, extra = feedback(model, args.from_grid, parse_ints(args.like, "--like"), args.n, args.radius,
                                  args.seed)
    else:
        classes = args.classes.split(",") if args.classes else None
        samples = sample(model, args.n, seed=args.seed, classes=classes, truncation=args.truncation,
                         temperature=args.temperature, size=args.size, resample=args.resample, steps=args.steps,
                         guidance=args.guidance, sampler=args.sampler)
    if args.filter or args.keep_top is not None or args.dedup is not None:
        samples, note = postprocess_samples(model, samples, args)
        extra = {**(extra or {}), "postprocess": note}
        print(f"genforge: kept {len(samples.x)} of {args.n} samples ({note})")
    path = write_samples(samples, args.out, model, extra, keyring)
    print(f"genforge: wrote {len(samples.x)} samples (seed {args.seed}) from {model.path} to {path}")
    return 0


def postprocess_samples(model, samples, args):
    """Apply --filter/--keep-top and --dedup; returns the kept samples and a note of what was done."""
    import dataclasses

    from genforge.postprocess.filtering import filter_samples, near_duplicates

    keep = np.ones(len(samples.x), dtype=bool)
    note = {}
    if args.filter or args.keep_top is not None:
        method = args.filter or ("drs" if model.family == "gan" else "confidence")
        evaluator = None
        if method == "confidence":
            from genforge.metrics import get_evaluator

            evaluator = get_evaluator(model.meta["data"], model.image_shape)
        keep_share = 0.8 if args.keep_top is None else args.keep_top
        keep &= filter_samples(model, samples, method, keep_share, evaluator, seed=args.seed)
        note.update({"filter": method, "keep_top": keep_share})
    if args.dedup is not None:
        if not 0 <= args.dedup <= 255:
            raise GenforgeError(f"--dedup must be an RMS pixel distance in [0, 255], got {args.dedup}")
        keep &= ~near_duplicates(samples.x, args.dedup)
        note["dedup_rms"] = args.dedup
    idx = np.flatnonzero(keep)
    return dataclasses.replace(samples, x=samples.x[idx], z=samples.z[idx],
                               y=None if samples.y is None else samples.y[idx]), note


def cmd_memorization(args) -> int:
    """Are samples copies of training images? genforge memorization MODEL --data SPEC --n 2000 --out pairs.png.

    Nearest training image of each sample in pixel and evaluator-feature space; samples closer than real
    held-out test images usually are (the --quantile of their distances) are near-copies. Prints the share
    and writes the worst pairs side by side (sample, then its nearest training image) to --out.
    """
    from genforge.generation.model import load as load_model
    from genforge.data import load_splits
    from genforge.generation import sample, save_grid
    from genforge.metrics import get_evaluator
    from genforge.generation import provenance
    from genforge.postprocess import memorization

    model = load_model(args.model)
    spec = args.data or model.meta["data"]
    c, h, _ = model.image_shape
    splits = load_splits(spec, image_size=h, channels=c)
    samples = sample(model, args.n, seed=args.seed)
    report = memorization.check(samples.x, splits.train.x, splits.test.x, get_evaluator(spec, model.image_shape),
                                args.quantile)
    print(report.format())
    if args.out:
        pairs = memorization.worst_pairs(samples.x, splits.train.x, report, k=args.pairs)
        meta = provenance.stamp({**provenance.model_metadata(model), "kind": "memorization-pairs",
                                 "seed": args.seed, "n": args.n, "data": spec})
        save_grid(pairs, args.out, nrow=2, metadata=meta)
        print(f"genforge: the {args.pairs} closest pairs (sample | nearest training image) in {args.out}")
    return 0


def cmd_interpolate(args) -> int:
    """Walk the latent space: genforge interpolate MODEL --seeds 1,2,3 --steps 16 --out walk.gif.

    Spherical (slerp) paths between the latents of the seeds, written as a GIF. --class-sweep instead draws
    each seed's latent as every class of a conditional model, as a grid PNG (rows: seeds, columns: classes).
    """
    from genforge.generation.model import load as load_model
    from genforge.generation import class_sweep, interpolate, save_gif, save_grid
    from genforge.generation.steering import parse_ints
    from genforge.generation import provenance

    model = load_model(args.model, device=args.device)
    seeds = parse_ints(args.seeds, "--seeds")
    if args.class_sweep:
        samples = class_sweep(model, seeds)
        meta = provenance.stamp({**provenance.model_metadata(model), "kind": "class-sweep", "seeds": seeds})
        path = save_grid(samples.x, args.out, nrow=model.num_classes, metadata=meta, ledger=True)
    else:
        samples = interpolate(model, seeds, args.steps, classes=args.classes)
        path = save_gif(samples.x, args.out, scale=args.scale)
    print(f"genforge: wrote {len(samples.x)} frames from {model.path} to {path}")
    return 0


def cmd_verify(args) -> int:
    """Check whether an image is one genforge generated, unaltered, and print its settings.

    Exit 0 when verified, 1 when not. Uses the ledger ($GENFORGE_LEDGER) and, when set, the HMAC key
    ($GENFORGE_PROVENANCE_KEY or $GENFORGE_PROVENANCE_KEY_FILE).
    """
    from genforge.generation.provenance import verify

    verdict = verify(args.image, Path(args.ledger) if args.ledger else None)
    print(("verified: " if verdict.verified else "not verified: ") + verdict.reason)
    if verdict.metadata:
        print(json.dumps(verdict.metadata, indent=2, sort_keys=True))
    return 0 if verdict.verified else 1


def cmd_info(args) -> int:
    """Show what a model or run directory holds: recipe, data, image shape, step, weights hash."""
    from genforge.generation.model import load as load_model

    model = load_model(args.model)
    meta = dict(model.meta)
    meta.pop("train_config", None)
    print(f"model directory: {model.path}")
    privacy = meta.get("privacy")  # written by genforge/training/privacy.py; all its fields follow below
    print("  differential privacy: " + (f"epsilon {privacy['epsilon']:g} at delta {privacy['delta']:g} for the "
                                        f"{' and '.join(privacy['private_networks'])} ({privacy['mechanism']}, "
                                        f"{privacy['steps']} steps, target epsilon {privacy['target_epsilon']:g})"
                                        if privacy else "none"))
    for key, value in meta.items():
        print(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    from genforge.models.files import WEIGHTS
    from genforge.crypto import key_id_of

    key_id = key_id_of(Path(model.path) / WEIGHTS)
    print(f"  weights file: {'encrypted with key ' + repr(key_id) if key_id else 'not encrypted'}")
    return 0


def cmd_data_check(args) -> int:
    """Load, clean and split a data source and print the cleaning report and class counts.

    SPEC: mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR. Exits non-zero when the source is
    malformed or nothing usable remains.
    """
    from genforge.data import check_report

    print(check_report(args.spec, image_size=args.image_size, channels=args.channels, on_bad=args.on_bad,
                       dedup=not args.no_dedup))
    return 0


def build_parser() -> argparse.ArgumentParser:
    def doc(fn):
        return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()

    parser = argparse.ArgumentParser(prog="genforge", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--key-file", dest="global_key_file", metavar="KEY_FILE",
                        help=KEY_FILE_HELP + " (for any command, e.g. genforge --key-file K eval x.npz)")
    from genforge.version import __version__

    parser.add_argument("--version", action="version", version=f"genforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    short, long = doc(cmd_train)
    p = sub.add_parser("train", help=short, description=long)
    p.add_argument("config", nargs="?", help="recipe YAML, e.g. genforge/recipes/mnist5k-dcgan.yaml")
    p.add_argument("--out", help="run directory (default runs/NAME-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields")
    p.add_argument("--max-steps", type=int, help="same as --set max_steps=N")
    p.add_argument("--max-seconds", type=float, help="same as --set max_seconds=S")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (same as --set device=...)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--dp-epsilon", type=float, metavar="E",
                   help="train with differential privacy (DP-SGD, Opacus) to this epsilon (same as --set dp_epsilon=E)")
    p.add_argument("--dp-delta", type=float, metavar="D", help="DP delta, below 1/N (default 1e-5)")
    p.add_argument("--dp-max-grad-norm", type=float, metavar="C", help="DP per-sample clipping norm (default 1.0)")
    p.add_argument("--encrypt", action="store_true", help="write checkpoints encrypted (same as --set encrypt=true)")
    p.add_argument("--key-file", help=KEY_FILE_HELP)
    p.set_defaults(func=cmd_train)

    short, long = doc(cmd_sample)
    p = sub.add_parser("sample", help=short, description=long)
    p.add_argument("model", help="run directory or model directory")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--class", dest="classes", metavar="CLASS[,CLASS...]",
                   help="conditional models: class index or name, or a list cycled over the samples")
    p.add_argument("--truncation", type=float, help="GANs: keep this central share of each latent, in (0, 1]")
    p.add_argument("--temperature", type=float, help="VAEs: scale of the prior's spread, in (0, 10]")
    p.add_argument("--steps", type=int, help="diffusion: sampler steps (default 50; 1000 is the full chain)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="diffusion: ddim (default) or dpm++2m (DPM-Solver++, better at 10 to 20 steps)")
    p.add_argument("--guidance", type=float, help="conditional diffusion: classifier-free guidance scale (1: none)")
    p.add_argument("--size", type=int, help="resize the output to SIZE x SIZE")
    p.add_argument("--resample", default="lanczos", choices=("nearest", "bilinear", "lanczos"),
                   help="resize filter (default lanczos)")
    p.add_argument("--from", dest="from_grid", metavar="GRID.png", help="feedback: a grid written by genforge sample")
    p.add_argument("--like", metavar="I,J,...", help="feedback: indices of the liked samples in that grid")
    p.add_argument("--radius", type=float, default=0.3, help="feedback: 0 repeats, 1 ignores the liked (default 0.3)")
    p.add_argument("--filter", choices=("drs", "confidence"),
                   help="quality filter: discriminator rejection sampling (GANs) or evaluator confidence")
    p.add_argument("--keep-top", type=float, help="share of samples the filter keeps, in (0, 1] (default 0.8)")
    p.add_argument("--dedup", type=float, metavar="RMS",
                   help="drop samples within this RMS pixel distance (0-255) of an earlier one")
    p.add_argument("--out", required=True, help="output: .png (grid), .npz, or a directory name (PNGs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--encrypt", action="store_true", help="write the .npz encrypted")
    p.add_argument("--key-file", help=KEY_FILE_HELP)
    p.set_defaults(func=cmd_sample)

    short, long = doc(cmd_memorization)
    p = sub.add_parser("memorization", help=short, description=long)
    p.add_argument("model", help="run directory or model directory")
    p.add_argument("--data", help="data spec (default: the model's own training data)")
    p.add_argument("--n", type=int, default=2000, help="samples to check (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantile", type=float, default=0.01, help="threshold quantile of real test distances")
    p.add_argument("--pairs", type=int, default=8, help="closest pairs to draw (default 8)")
    p.add_argument("--out", help="PNG of the closest pairs")
    p.set_defaults(func=cmd_memorization)

    short, long = doc(cmd_interpolate)
    p = sub.add_parser("interpolate", help=short, description=long)
    p.add_argument("model", help="run directory or model directory")
    p.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 1,2,3")
    p.add_argument("--steps", type=int, default=16, help="frames per leg (default 16)")
    p.add_argument("--class", dest="classes", help="conditional models: the class to walk in (default 0)")
    p.add_argument("--class-sweep", action="store_true", help="grid of each seed as every class (a .png)")
    p.add_argument("--scale", type=int, default=2, help="GIF pixel scale (default 2)")
    p.add_argument("--out", required=True, help="walk.gif, or sweep.png with --class-sweep")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=cmd_interpolate)

    short, long = doc(cmd_verify)
    p = sub.add_parser("verify", help=short, description=long)
    p.add_argument("image", help="a PNG file")
    p.add_argument("--ledger", help="ledger JSONL (default $GENFORGE_LEDGER or ~/.local/share/genforge/ledger.jsonl)")
    p.set_defaults(func=cmd_verify)

    short, long = doc(cmd_info)
    p = sub.add_parser("info", help=short, description=long)
    p.add_argument("model", help="run directory or model directory")
    p.add_argument("--key-file", help=KEY_FILE_HELP)
    p.set_defaults(func=cmd_info)

    short, long = doc(cmd_data_check)
    p = sub.add_parser("data", help="data sources: genforge data check SPEC")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("check", help=short, description=long)
    q.add_argument("spec", help="mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR")
    q.add_argument("--image-size", type=int, default=28, help="resize images to this side (default 28)")
    q.add_argument("--channels", type=int, default=0, choices=(0, 1, 3), help="0: as the source has")
    q.add_argument("--on-bad", default="drop", choices=("drop", "reject"), help="drop bad images or fail")
    q.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    q.set_defaults(func=cmd_data_check)
    from genforge.metrics.cli import add_metrics_commands

    add_metrics_commands(sub)
    from genforge.serve.cli import add_serve_commands

    add_serve_commands(sub)
    from genforge.apps.cli import add_apps_commands; add_apps_commands(sub)  # noqa: E702  repair, transfer, augment
    from genforge.apps.inspection.cli import add_inspect_commands; add_inspect_commands(sub)  # noqa: E702  inspection
    from genforge.security.cli import add_security_commands

    add_security_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from genforge.crypto import use_key_file

        use_key_file(getattr(args, "key_file", None) or args.global_key_file)
        return args.func(args)
    except GenforgeError as e:
        if args.debug:
            raise
        print(f"genforge: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # disk full, permission denied...: the user's environment, not a bug
        if args.debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"genforge: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("genforge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
