"""``genforge eval``, ``genforge evaluator train|list`` and ``genforge report``: plain functions, docstrings as help.

``genforge.cli.build_parser`` calls :func:`add_metrics_commands`; errors raised here as
:class:`~genforge.errors.GenforgeError` become one-line messages with exit status 2 there.
"""

from __future__ import annotations

import json
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.io import atomic_write_json


def cmd_eval(args) -> int:
    """Score a model or an npz of samples: genforge eval MODEL_OR_NPZ [--data SPEC] [--n 10000] [--json FILE].

    MODEL_OR_NPZ is a run directory, a model directory, or an npz with x uint8 (N, H, W) or (N, H, W, C) and
    optional labels y (another tool's output is scored with the same ruler). Prints FID, KID, precision,
    recall, density, coverage, classifier IS and class entropy in the features of genforge's frozen evaluator
    for the data, beside the same metrics for real data (a train subset against the test split). Samples
    with labels also get the class match and CAS. --baseline refuses results from another evaluator.
    """
    # late: the metrics load torch (seconds); `genforge --help` must not pay for them
    from genforge.metrics.evaluate import evaluate, format_table, load_result

    baseline = load_result(args.baseline) if args.baseline else None
    result = evaluate(args.source, data=args.data, n=args.n, seed=args.seed,
                      inception_weights=args.inception_weights, with_cas=not args.no_cas, baseline=baseline)
    print(format_table(result, baseline), end="")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"genforge: wrote {args.json}")
    return 0


def cmd_evaluator_train(args) -> int:
    """Train the evaluator of a data set on its train split (fixed seed) and save it as safetensors + JSON.

    Written to the cache ($GENFORGE_CACHE/evaluators or ~/.cache/genforge/evaluators) unless --out DIR;
    genforge eval and evaluation during training then find it. The JSON records the data, split, test
    accuracy and the SHA-256 of the weights.
    """
    # late, as in cmd_eval: torch loads only when the command runs
    from genforge.data import load_splits
    from genforge.metrics.evaluator_net import (TrainRecipe, cache_dir, evaluator_key, find_evaluator, save_evaluator,
                                            train_evaluator)

    if args.steps is not None and args.steps < 1:
        raise GenforgeError(f"--steps must be positive, got {args.steps}")
    splits = load_splits(args.data, image_size=args.image_size, channels=args.channels)
    out = Path(args.out) if args.out else cache_dir()
    target = out / f"{evaluator_key(args.data, splits.image_shape)}.json"
    if target.exists() and not args.force:
        raise GenforgeError(f"{target} already exists: retraining changes the ruler earlier scores were measured "
                            "with (their hash would no longer match); pass --force to replace it")
    evaluator = train_evaluator(args.data, recipe=TrainRecipe(steps=args.steps or 0), splits=splits)
    path = save_evaluator(evaluator, out)
    found = find_evaluator(args.data, evaluator.image_shape)
    print(f"genforge: evaluator {evaluator.name}: test accuracy {100 * evaluator.meta['test_accuracy']:.2f}% on "
          f"{evaluator.meta['test_size']} images, sha256 {evaluator.sha256}\ngenforge: wrote {path}")
    if found is not None and found.resolve() != path.resolve():
        print(f"genforge: note: {found} comes first when looking up {args.data}; this one is used only from there")
    return 0


def cmd_evaluator_list(args) -> int:
    """List the evaluators genforge can use: the shipped ones, then the cache."""
    from genforge.metrics.evaluator_net import SHIPPED_DIR, cache_dir  # late: torch, as in cmd_eval

    for where, directory in (("shipped", SHIPPED_DIR), ("cache", cache_dir())):
        for path in sorted(directory.glob("*.json")):
            try:
                meta = json.loads(path.read_text())
                print(f"{where:<8} {meta['name']:<32} test accuracy {100 * meta['test_accuracy']:6.2f}%  "
                      f"sha256 {meta['weights_sha256'][:16]}  {path}")
            except (ValueError, KeyError, TypeError):
                print(f"{where:<8} {path}: unreadable evaluator JSON")
    return 0


def cmd_report(args) -> int:
    """Write one self-contained HTML page for a run: loss, metric and images/s curves, the latest samples, config.

    The page embeds its plots as PNG data, so it opens offline and can be mailed as one file.
    Default output: RUN_DIR/report.html.
    """
    from genforge.metrics.report import write_report  # late: torch and matplotlib, as in cmd_eval

    path = write_report(args.run, args.out)
    print(f"genforge: wrote {path}")
    return 0


def add_metrics_commands(sub) -> None:
    """Add eval, evaluator and report to the ``genforge`` subcommands."""
    def doc(fn):
        return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()

    short, long = doc(cmd_eval)
    p = sub.add_parser("eval", help=short, description=long)
    p.add_argument("source", metavar="MODEL_OR_NPZ", help="run directory, model directory, or samples .npz")
    p.add_argument("--data", help="real data spec to score against (default: the model's own data)")
    p.add_argument("--n", type=int, default=10000, help="samples to draw from a model (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="sampling and subset seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the result, with the evaluator hash, as JSON")
    p.add_argument("--baseline", metavar="FILE", help="an earlier --json result to print beside this one "
                   "(refused if another evaluator made it)")
    p.add_argument("--inception-weights", metavar="FILE", help="pytorch-fid Inception weights "
                   "(pt_inception-2015-12-05-*.pth) for an Inception-v3 FID as well; slow on a CPU")
    p.add_argument("--no-cas", action="store_true", help="skip CAS (it trains a classifier on the samples)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("evaluator", help="the frozen classifiers behind every score: genforge evaluator train|list")
    ev_sub = p.add_subparsers(dest="evaluator_command", required=True, metavar="ACTION")
    short, long = doc(cmd_evaluator_train)
    q = ev_sub.add_parser("train", help=short, description=long)
    q.add_argument("--data", required=True, help="mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR")
    q.add_argument("--image-size", type=int, default=28, help="image side (default 28)")
    q.add_argument("--channels", type=int, default=0, choices=(0, 1, 3), help="0: as the source has")
    q.add_argument("--steps", type=int, help="training steps (default: 30 epochs, at least 1,000, at most 5,000)")
    q.add_argument("--out", metavar="DIR", help="where to write it (default: the cache)")
    q.add_argument("--force", action="store_true", help="replace an existing evaluator of the same name")
    q.set_defaults(func=cmd_evaluator_train)
    short, long = doc(cmd_evaluator_list)
    q = ev_sub.add_parser("list", help=short, description=long)
    q.set_defaults(func=cmd_evaluator_list)

    short, long = doc(cmd_report)
    p = sub.add_parser("report", help=short, description=long)
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (with metrics.jsonl)")
    p.add_argument("--out", metavar="FILE.html", help="output file (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)
