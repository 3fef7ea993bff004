"""``genforge eval``, ``genforge evaluator train|list`` and ``genforge report``: plain functions, docstrings as help.

Registered in :data:`genforge.cli.COMMANDS`; errors raised here as :class:`~genforge.errors.GenforgeError`
become one-line messages with exit status 2 there.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from genforge.cli.options import (CONTEXT, Group, data_option, device_option, image_options, n_option, out_option,
                                  progress_option, renamed, seed_option)
from genforge.errors import GenforgeError
from genforge.io import atomic_write_json, read_json


@click.command("eval", context_settings=CONTEXT)
@click.argument("source", metavar="MODEL_OR_NPZ")
@data_option("real data to score against (default: the model's own data)")
@n_option(10000, "samples to draw from a model")
@seed_option("sampling and subset seed")
@out_option("also write the result, with the evaluator hash, as JSON", required=False, metavar="FILE.json")
@renamed("--json", "--out FILE.json")
@click.option("--baseline", metavar="FILE.json",
              help="an earlier --out result to print beside this one (refused if another evaluator made it)")
@click.option("--inception-weights", metavar="FILE", help="pytorch-fid Inception weights "
              "(pt_inception-2015-12-05-*.pth) for an Inception-v3 FID as well; slow on a CPU")
@click.option("--no-cas", is_flag=True, help="skip CAS (it trains a classifier on the samples)")
@click.option("--report", "report_path", metavar="FILE.html",
              help="tables: also an HTML page, each column real beside synthetic and the pair-trend heatmaps")
@device_option("where the model, the evaluator and the CAS classifier run")
@progress_option
def eval_command(source: str, data: str | None, n: int, seed: int, out: str | None, baseline: str | None,
                 inception_weights: str | None, no_cas: bool, report_path: str | None, device: str,
                 progress: bool) -> int:
    """Score a model or an npz of samples: genforge eval MODEL_OR_NPZ [--data SPEC] [--n 10000] [--out FILE].

    MODEL_OR_NPZ is a run directory, a model directory, or an npz with x uint8 (N, H, W) or (N, H, W, C) and
    optional labels y (another tool's output is scored with the same ruler). Prints FID, KID, precision,
    recall, density, coverage, classifier IS and class entropy in the features of genforge's frozen evaluator
    for the data, beside the same metrics for real data (a train subset against the test split). Samples
    with labels also get the class match and CAS. --baseline refuses results from another evaluator.
    A text model gets its held-out nats per token and per character (bits per character), distinct-1/2 and
    the longest substring shared with the training text of --n samples (default 32), and the Kneser-Ney
    character 5-gram of the same training split as the reference row.
    """
    # late: the metrics load torch (seconds); `genforge --help` must not pay for them
    from genforge.metrics.evaluate import evaluate, format_table, load_result

    modality = _modality_of(source)  # from config.json alone: no weights are read to choose the scorer
    if report_path and modality != "table":
        raise GenforgeError("--report is for table models (genforge report RUN writes a run's training page)")
    if modality in EVALUATORS:
        return EVALUATORS[modality](source=source, data=data, n=n, seed=seed, out=out, report_path=report_path,
                                    device=device, progress=progress)
    previous = load_result(baseline) if baseline else None
    result = evaluate(source, data=data, n=n, seed=seed, inception_weights=inception_weights, with_cas=not no_cas,
                      baseline=previous, bars=progress, device=device)
    print(format_table(result, previous), end="")
    if out:
        atomic_write_json(out, result)
        print(f"genforge: wrote {out}")
    return 0


def _modality_of(source: str) -> str | None:
    """The modality a run or model directory's config.json records (image for older files); None for anything
    else (an npz of samples, a missing path: the image and series scorer reports what it is)."""
    from genforge.models.files import resolve  # late: models import torch; genforge --help must not

    try:
        meta = read_json(resolve(source) / "config.json", GenforgeError)
    except (GenforgeError, OSError):
        return None
    return meta.get("modality", "image") if isinstance(meta, dict) else None


def _eval_audio(source, data, n, seed, out, report_path, device, progress) -> int:
    """Audio: IS, FD, class match in the shipped audio evaluator's features, beside the real-data rows."""
    # late: torch and the audio metrics load in seconds; genforge --help must not pay for them
    from genforge.generation.model import load as load_model
    from genforge.metrics.audio import evaluate_audio

    result = evaluate_audio(load_model(source, device=device), n=n, seed=seed, progress=progress)
    print(result["table"])
    if out:
        atomic_write_json(out, {k: v for k, v in result.items() if k != "table"})
        print(f"genforge: wrote {out}")
    return 0


def _eval_text(source, data, n, seed, out, report_path, device, progress) -> int:
    """Text: held-out nats per character, samples' distinct-n and copying, the n-gram reference row."""
    from genforge.metrics.text import evaluate_text, format_text_result  # late: torch, as above

    ctx = click.get_current_context(silent=True)
    default_n = ctx is None or ctx.get_parameter_source("n") == click.core.ParameterSource.DEFAULT
    result = evaluate_text(source, data=data, n=32 if default_n else n, seed=seed, device=device)
    print(format_text_result(result), end="")
    if out:
        atomic_write_json(out, result)
        print(f"genforge: wrote {out}")
    return 0


def _eval_rows(source, data, n, seed, out, report_path, device, progress) -> int:
    """Tables: SDMetrics-style quality, detection, TSTR, DCR (genforge.metrics.table)."""
    return _eval_table(source, data, n, seed, out, report_path, device)


# modality -> its scorer; images and series (models or npz files of samples) go through metrics.evaluate
EVALUATORS = {"audio": _eval_audio, "audio-wave": _eval_audio, "text": _eval_text, "table": _eval_rows}


def _eval_table(source: str, data: str | None, n: int, seed: int, out: str | None, report_path: str | None,
                device: str) -> int:
    """genforge eval on a table model: ``n`` rows (10000 unless --n) scored against its training rows and holdout."""
    from genforge.metrics.table import evaluate_table_model, format_scores, write_table_report  # late: torch

    scores, synth, train = evaluate_table_model(source, n=n, seed=seed, device=device, data=data)
    print(format_scores(scores))
    if out:
        atomic_write_json(out, scores)
        print(f"genforge: wrote {out}")
    if report_path:
        write_table_report(report_path, train, synth, scores, title=f"{scores['model']}: {n} rows, seed {seed}")
        print(f"genforge: wrote {report_path}")
    return 0


@click.group(cls=Group, context_settings=CONTEXT)
def evaluator() -> None:
    """The frozen classifiers behind every score: genforge evaluator train|list."""


@evaluator.command("train", context_settings=CONTEXT)
@data_option("the data set to train it on", required=True)
@image_options
@click.option("--train-steps", type=int, help="training steps (default: 30 epochs, at least 1,000, at most 5,000)")
@renamed("--steps", "--train-steps", "--steps is the diffusion sampler's")
@out_option("where to write it (default: the cache)", required=False, metavar="DIR")
@click.option("--force", is_flag=True, help="replace an existing evaluator of the same name")
@device_option()
@progress_option
def evaluator_train(data: str, image_size: int, channels: int, train_steps: int | None, out: str | None,
                    force: bool, device: str, progress: bool) -> int:
    """Train the evaluator of a data set on its train split (fixed seed) and save it as safetensors + JSON.

    Written to the cache ($GENFORGE_CACHE/evaluators, else $XDG_CACHE_HOME/genforge/evaluators, ~/.cache
    when unset) unless --out DIR; genforge eval and evaluation during training then find it. The JSON
    records the data, split, test accuracy, the device and the SHA-256 of the weights. --device auto trains
    on a GPU when there is one: the same seed gives the same weights only on the same kind of device.
    """
    # late, as in cmd_eval: torch loads only when the command runs
    from genforge.data import load_splits
    from genforge.metrics.evaluator_net import (TrainRecipe, cache_dir, evaluator_key, find_evaluator,
                                                save_evaluator, train_evaluator)

    if train_steps is not None and train_steps < 1:
        raise GenforgeError(f"--train-steps must be positive, got {train_steps}")
    splits = load_splits(data, image_size=image_size, channels=channels)
    where = Path(out) if out else cache_dir()
    target = where / f"{evaluator_key(data, splits.image_shape)}.json"
    if target.exists() and not force:
        raise GenforgeError(f"{target} already exists: retraining changes the ruler earlier scores were measured "
                            "with (their hash would no longer match); pass --force to replace it")
    trained = train_evaluator(data, recipe=TrainRecipe(steps=train_steps or 0), splits=splits, device=device,
                              bars=progress)
    path = save_evaluator(trained, where)
    found = find_evaluator(data, trained.image_shape)
    print(f"genforge: evaluator {trained.name}: test accuracy {100 * trained.meta['test_accuracy']:.2f}% on "
          f"{trained.meta['test_size']} images, sha256 {trained.sha256}\ngenforge: wrote {path}")
    if found is not None and found.resolve() != path.resolve():
        print(f"genforge: note: {found} comes first when looking up {data}; this one is used only from there")
    return 0


@evaluator.command("list", context_settings=CONTEXT)
def evaluator_list() -> int:
    """List the evaluators genforge can use: the shipped ones, then the cache."""
    from genforge.metrics.evaluator_net import SHIPPED_DIR, cache_dir  # late: torch, as in cmd_eval
    from genforge.metrics.series import FORMAT as SERIES_FORMAT, FORMAT_VERSION as SERIES_VERSION

    for where, directory in (("shipped", SHIPPED_DIR), ("cache", cache_dir())):
        for path in sorted(directory.glob("*.json")):
            try:
                meta = json.loads(path.read_text())
                name = meta["name"] if "name" in meta else path.stem  # a series evaluator names its data as "data"
                old = (" (an older format: trained again on first use)"
                       if meta.get("format") == SERIES_FORMAT and meta.get("format_version") != SERIES_VERSION else "")
                acc = meta.get("test_accuracy")  # none where it was trained without a test split
                acc = f"{100 * acc:6.2f}%" if isinstance(acc, (int, float)) else "    n/a"
                print(f"{where:<8} {name:<32} test accuracy {acc}  "
                      f"sha256 {meta['weights_sha256'][:16]}  {path}{old}")
            except (ValueError, KeyError, TypeError):
                print(f"{where:<8} {path}: unreadable evaluator JSON")
    return 0


@click.command(context_settings=CONTEXT)
@click.argument("run", metavar="RUN")
@out_option("output file (default RUN/report.html)", required=False, metavar="FILE.html")
def report(run: str, out: str | None) -> int:
    """Write one self-contained HTML page for a run: loss, validation and images/s curves, the last grids, config.

    The page embeds its plots as PNG data, so it opens offline and can be mailed as one file.
    """
    from genforge.metrics.report import write_report  # late: torch and matplotlib, as in cmd_eval

    path = write_report(run, out)
    print(f"genforge: wrote {path}")
    return 0
