"""``genforge sample``, ``interpolate``, ``memorization``, ``verify``, ``info`` and ``data check``.

The sampling-control flags of ``sample`` (``--truncation``, ``--steps``, ``--size`` ...) are built from the
declarations in :mod:`genforge.controls` (name, type, range, help), and their values go unchanged to
:func:`genforge.generation.sample`, which checks them against what the model takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from genforge import controls
from genforge.cli.options import (CONTEXT, Group, comma_list, data_option, device_option, image_options,
                                  key_file_option, model_argument, n_option, out_option, progress_option, renamed,
                                  require_modality, seed_option)
from genforge.errors import GenforgeError


def control_options(fn):
    """One flag per declared sampling control, default None (the model's own default then applies)."""
    for c in reversed(controls.ALL):
        kind = click.Choice(c.choices) if c.choices else c.type
        only = " (conditional models only)" if c.conditional_only else ""
        shown = f"; default {c.default}" if c.default is not None else ""
        metavar = "|".join(c.choices) if c.choices else {int: "N", float: "X"}[c.type]
        fn = click.option(f"--{c.name}", c.name, type=kind, default=None, metavar=metavar,
                          help=f"{c.help}: {c.range_text()}{only}{shown}")(fn)
    return fn


@click.command(context_settings=CONTEXT)
@model_argument
@n_option(64, "number of samples")
@seed_option()
@click.option("--class", "classes", metavar="CLASS[,CLASS...]",
              help="conditional models: class index or name, or a list cycled over the samples")
@control_options
@click.option("--from", "from_grid", metavar="GRID.png", help="feedback: a grid written by genforge sample")
@click.option("--like", metavar="I,J,...", help="feedback: indices of the liked samples in that grid")
@click.option("--radius", type=float, default=0.3, show_default=True,
              help="feedback: 0 repeats the liked samples, 1 ignores them")
@click.option("--from-image", metavar="DIGIT.png",
              help="image-to-speech models: say the digit of this 28x28 image (--out a .wav)")
@click.option("--filter", "filter_method", type=click.Choice(["drs", "confidence"]),
              help="quality filter: discriminator rejection sampling (GANs) or evaluator confidence")
@click.option("--keep-top", type=float, help="share of samples the filter keeps, in (0, 1] (default 0.8)")
@click.option("--dedup", type=float, metavar="RMS",
              help="drop samples within this RMS pixel distance (0-255) of an earlier one")
@out_option("a .png (grid), a .npz, or a directory name (one PNG per sample)")
@click.option("--scale", type=int, default=1, show_default=True,
              help="grid PNG pixel scale: each pixel becomes a SCALE x SCALE block")
@device_option()
@click.option("--encrypt", is_flag=True, help="write the .npz encrypted (key from --key-file or the environment)")
@key_file_option
@progress_option
def sample(model: str, n: int, seed: int, classes: str | None, from_grid: str | None, like: str | None,
           radius: float, from_image: str | None, filter_method: str | None, keep_top: float | None, dedup: float | None, out: str,
           scale: int, device: str, encrypt: bool, progress: bool, **control_values) -> int:
    """Generate samples: genforge sample MODEL --n 64 --seed 0 --out grid.png.

    MODEL is a run directory (its best, else last, checkpoint) or a model directory. A .png gets a grid and
    a .png.json sidecar with its latents; a .npz gets x as uint8 (N, H, W) or (N, H, W, C), and y for
    conditional models (--class picks them); a name without suffix gets a directory of PNGs. Feedback: pick
    the samples you like from a saved grid, --from grid.png --like 3,7,12, and get new ones near them.
    Image to speech: genforge sample RUN --from-image digit.png --out say.wav says the digit the image shows.
    """
    from genforge.apps.image_to_speech import is_image_to_speech, say_file
    from genforge.generation import feedback, sample as draw, write_samples

    if from_image or is_image_to_speech(model):
        if not (from_image and is_image_to_speech(model)):
            raise GenforgeError(f"--from-image goes with an image-to-speech model: {model} "
                                + ("is not one" if from_image else "is one; give --from-image DIGIT.png"))
        path = say_file(model, from_image, out, seed)
        print(f"genforge: said the digit of {from_image} (seed {seed}) with {model}; wrote {path}")
        return 0
    from genforge.generation.model import load as load_model
    from genforge.generation.steering import parse_ints

    given = {name: value for name, value in control_values.items() if value is not None}
    keyring = None
    if encrypt:  # the key is found before any sampling work
        from genforge.crypto import load_keyring

        keyring = load_keyring()
    net = load_model(model, device=device)
    extra = None
    if like or from_grid:
        if not (like and from_grid):
            raise GenforgeError("feedback needs both --from GRID.png and --like I,J,...")
        shaping = [f"--{c.name}" for c in controls.ALL if c.stage != "output" and c.name in given]
        if classes or shaping:
            raise GenforgeError("a feedback round takes its classes and latents from the grid: drop "
                                + ", ".join((["--class"] if classes else []) + shaping))
        samples, extra = feedback(net, from_grid, parse_ints(like, "--like"), n, radius, seed)
    else:
        samples = draw(net, n, seed=seed, classes=comma_list(classes), progress=progress, **given)
    if filter_method or keep_top is not None or dedup is not None:
        require_modality(net, "genforge sample --filter / --keep-top / --dedup")
        samples, note = postprocess_samples(net, samples, filter_method, keep_top, dedup, seed)
        extra = {**(extra or {}), "postprocess": note}
        print(f"genforge: kept {len(samples.x)} of {n} samples ({note})")
    path = write_samples(samples, out, net, extra, keyring, scale=scale)
    print(f"genforge: wrote {len(samples.x)} samples (seed {seed}) from {net.path} to {path}")
    return 0


def postprocess_samples(model, samples, method: str | None, keep_top: float | None, dedup: float | None,
                        seed: int):
    """Apply --filter/--keep-top and --dedup; returns the kept samples and a note of what was done."""
    import dataclasses

    import numpy as np

    from genforge.postprocess.filtering import filter_samples, near_duplicates

    keep = np.ones(len(samples.x), dtype=bool)
    note = {}
    if method or keep_top is not None:
        method = method or ("drs" if model.family == "gan" else "confidence")
        evaluator = None
        if method == "confidence":
            from genforge.metrics import get_evaluator

            evaluator = get_evaluator(model.meta["data"], model.image_shape)
        keep_share = 0.8 if keep_top is None else keep_top
        keep &= filter_samples(model, samples, method, keep_share, evaluator, seed=seed)
        note.update({"filter": method, "keep_top": keep_share})
    if dedup is not None:
        if not 0 <= dedup <= 255:
            raise GenforgeError(f"--dedup must be an RMS pixel distance in [0, 255], got {dedup}")
        keep &= ~near_duplicates(samples.x, dedup)
        note["dedup_rms"] = dedup
    idx = np.flatnonzero(keep)
    return dataclasses.replace(samples, x=samples.x[idx], z=samples.z[idx],
                               y=None if samples.y is None else samples.y[idx]), note


@click.command(context_settings=CONTEXT)
@model_argument
@data_option()
@n_option(2000, "samples to check")
@seed_option()
@click.option("--quantile", type=float, default=0.01, show_default=True,
              help="threshold: this quantile of the real held-out images' distances")
@click.option("--pairs", type=int, default=8, show_default=True, help="closest pairs to draw")
@out_option("PNG of the closest pairs (sample | nearest training image)", required=False, metavar="FILE.png")
@device_option()
def memorization(model: str, data: str | None, n: int, seed: int, quantile: float, pairs: int, out: str | None,
                 device: str) -> int:
    """Are samples copies of training images? genforge memorization MODEL --n 2000 --out pairs.png.

    Nearest training image of each sample in pixel and evaluator-feature space; samples closer than real
    held-out test images usually are (the --quantile of their distances) are near-copies. Prints the share
    and writes the worst pairs side by side (sample, then its nearest training image) to --out.
    """
    from genforge.data import load_splits
    from genforge.generation import provenance, sample as draw, save_grid
    from genforge.generation.model import load as load_model
    from genforge.metrics import get_evaluator
    from genforge.postprocess import memorization as memo

    net = load_model(model, device=device)
    require_modality(net, "genforge memorization")
    spec = data or net.meta["data"]
    c, h, _ = net.image_shape
    splits = load_splits(spec, image_size=h, channels=c)
    samples = draw(net, n, seed=seed)
    report = memo.check(samples.x, splits.train.x, splits.test.x, get_evaluator(spec, net.image_shape), quantile)
    print(report.format())
    if out:
        worst = memo.worst_pairs(samples.x, splits.train.x, report, k=pairs)
        meta = provenance.stamp({**provenance.model_metadata(net), "kind": "memorization-pairs",
                                 "seed": seed, "n": n, "data": spec})
        save_grid(worst, out, nrow=2, metadata=meta)
        print(f"genforge: the {pairs} closest pairs (sample | nearest training image) in {out}")
    return 0


@click.command(context_settings=CONTEXT)
@model_argument
@click.option("--seeds", required=True, metavar="S,S,...", help="comma-separated seeds, e.g. 1,2,3")
@click.option("--frames", type=int, default=16, show_default=True, help="frames per leg between two seeds")
@renamed("--steps", "--frames", "frames per leg; --steps is the diffusion sampler's")
@click.option("--class", "classes", metavar="CLASS", help="conditional models: the class to walk in (default 0)")
@click.option("--class-sweep", is_flag=True, help="a grid of each seed as every class (a .png)")
@click.option("--scale", type=int, default=2, show_default=True, help="GIF pixel scale")
@out_option("walk.gif, or sweep.png with --class-sweep")
@device_option()
def interpolate(model: str, seeds: str, frames: int, classes: str | None, class_sweep: bool, scale: int, out: str,
                device: str) -> int:
    """Walk the latent space: genforge interpolate MODEL --seeds 1,2,3 --frames 16 --out walk.gif.

    Spherical (slerp) paths between the latents of the seeds, written as a GIF. --class-sweep instead draws
    each seed's latent as every class of a conditional model, as a grid PNG (rows: seeds, columns: classes).
    """
    from genforge.generation import class_sweep as sweep, interpolate as walk, provenance, save_gif, save_grid
    from genforge.generation.model import load as load_model
    from genforge.generation.steering import parse_ints

    net = load_model(model, device=device)
    require_modality(net, "genforge interpolate")
    seed_list = parse_ints(seeds, "--seeds")
    if class_sweep:
        samples = sweep(net, seed_list)
        meta = provenance.stamp({**provenance.model_metadata(net), "kind": "class-sweep", "seeds": seed_list})
        path = save_grid(samples.x, out, nrow=net.num_classes, metadata=meta, ledger=True)
    else:
        samples = walk(net, seed_list, frames, classes=classes)
        path = save_gif(samples.x, out, scale=scale)
    print(f"genforge: wrote {len(samples.x)} frames from {net.path} to {path}")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("image", metavar="IMAGE.png")
@click.option("--ledger", metavar="FILE",
              help="ledger JSONL (default $GENFORGE_LEDGER, else $XDG_DATA_HOME/genforge/ledger.jsonl, ~/.local/share when unset)")
def verify(image: str, ledger: str | None) -> int:
    """Check whether an image is one genforge generated, unaltered, and print its settings.

    Exit 0 when verified, 1 when not. Uses the ledger ($GENFORGE_LEDGER) and, when set, the HMAC key
    ($GENFORGE_PROVENANCE_KEY or $GENFORGE_PROVENANCE_KEY_FILE).
    """
    from genforge.generation.provenance import verify as check

    verdict = check(image, Path(ledger) if ledger else None)
    print(("verified: " if verdict.verified else "not verified: ") + verdict.reason)
    if verdict.metadata:
        print(json.dumps(verdict.metadata, indent=2, sort_keys=True))
    return 0 if verdict.verified else 1


@click.command(context_settings=CONTEXT)
@model_argument
@key_file_option
def info(model: str) -> int:
    """Show what a model or run directory holds: recipe, data, modality and example shape, step, privacy,
    weights hash."""
    from genforge.crypto import key_id_of
    from genforge.generation.model import load as load_model
    from genforge.models.files import WEIGHTS

    net = load_model(model)
    meta = dict(net.meta)
    meta.pop("train_config", None)
    print(f"model directory: {net.path}")
    privacy = meta.get("privacy")  # written by genforge/training/privacy.py; all its fields follow below
    print("  differential privacy: " + (f"epsilon {privacy['epsilon']:g} at delta {privacy['delta']:g} for the "
                                        f"{' and '.join(privacy['private_networks'])} ({privacy['mechanism']}, "
                                        f"{privacy['steps']} steps, target epsilon {privacy['target_epsilon']:g})"
                                        if privacy else "none"))
    transform = meta.pop("transform", None)
    for key, value in meta.items():
        print(f"  {key}: {json.dumps(value) if not isinstance(value, str) else value}")
    if transform and transform.get("kind") == "series":  # per-channel numbers: the channel names say enough
        names = transform.get("channel_names") or []
        print(f"  transform: {transform['normalization']['method']} per channel, undone on output; "
              f"{len(names)} channel(s): {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    elif transform:
        print(f"  transform: {json.dumps(transform)}")
    key_id = key_id_of(Path(net.path) / WEIGHTS)
    print(f"  weights file: {'encrypted with key ' + repr(key_id) if key_id else 'not encrypted'}")
    return 0


@click.group(cls=Group, context_settings=CONTEXT)
def data() -> None:
    """Data sources: genforge data check SPEC; genforge data make spoken-digits."""


@data.command("check", context_settings=CONTEXT)
@click.argument("spec", metavar="SPEC")
@image_options
@click.option("--on-bad", type=click.Choice(["drop", "reject"]), default="drop", show_default=True,
              help="drop bad images (with a report) or fail")
@click.option("--no-dedup", is_flag=True, help="keep exact duplicates")
@click.option("--window", type=int, help="series: window length in samples (tep:, series-csv:, series-npz:)")
@click.option("--stride", type=int, help="series: samples between window starts (default: the window)")
@click.option("--length-policy", type=click.Choice(["equal", "pad", "resample", "crop"]), default="equal",
              show_default=True, help="series: how ragged UCR/UEA sets get one length")
@key_file_option
def data_check(spec: str, image_size: int, channels: int, on_bad: str, no_dedup: bool, window: int | None,
               stride: int | None, length_policy: str) -> int:
    """Load, clean and split a data source and print the cleaning report and class counts.

    SPEC: images: mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR; sensor series: ucr:NAME |
    tep:[OPTIONS] | series-csv:FILE | series-npz:FILE; audio: audio:spoken-digits | audio:drums |
    audio:asterisk-digits | audio:DIR (one-second clips at 16 kHz) (the series extra: pip install 'genforge[series]';
    tep: without --window says what was simulated). Exits non-zero when the source is malformed or nothing
    usable remains.
    """
    from genforge.data import check_report
    from genforge.data.series import KINDS, check_series

    if spec.split(":", 1)[0] == "audio":
        from genforge.data.audio import check_audio

        print(check_audio(spec, on_bad="reject" if on_bad == "reject" else "drop"))
        return 0
    if spec.split(":", 1)[0] in KINDS:
        print(check_series(spec, window=window, stride=stride, length_policy=length_policy))
        return 0
    print(check_report(spec, image_size=image_size, channels=channels, on_bad=on_bad, dedup=not no_dedup))
    return 0


@data.command("make", context_settings=CONTEXT)
@click.argument("name", metavar="NAME", type=click.Choice(["spoken-digits"]))
@click.option("--voices", type=int, default=200, show_default=True,
              help="voices (accent, variant, pitch, rate), each saying every digit once: 10 clips, 320 KB per voice")
@seed_option()
@click.option("--noise", is_flag=True, help="put each clip in a small synthetic room with a noise floor")
@out_option("folder to write (default: $XDG_DATA_HOME/genforge/spoken-digits, what audio:spoken-digits reads)",
            required=False, metavar="DIR")
def data_make(name: str, voices: int, seed: int, noise: bool, out: str | None) -> int:
    """Synthesize a data set: genforge data make spoken-digits [--voices 200] [--seed 0] [--noise].

    spoken-digits: one-second clips of "zero" ... "nine" at 16 kHz spoken by Debian's espeak-ng in --voices
    voices (accents, voice variants, pitch and rate drawn from --seed), split 80/10/10 by voice so test voices
    are unseen. 200 voices: 2,000 clips, 64 MB, about half a minute. Needs: apt-get install espeak-ng.
    """
    from genforge.data.audio import make_spoken_digits

    path = make_spoken_digits(out, voices=voices, seed=seed, noise=noise)
    print(f"genforge: audio:spoken-digits is ready in {path}" + ("" if out is None else
                                                                 f" (read it as audio:{path})"))
    return 0
