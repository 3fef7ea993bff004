"""Post-processing measured: sample quality before and after filtering, and the near-copy share.

    python benchmarks/postprocess.py [--budget 120] [--n 5000] [--keep 0.8] [--runs DIR ...]

Trains (or reuses, with --runs) one GAN and one VAE recipe on mnist5k, draws --n samples from each,
and scores them with the shipped mnist5k evaluator against the test split: unfiltered, after discriminator
rejection sampling (GAN) and after evaluator-confidence filtering (both), keeping --keep of the samples.
Then the memorization check: the share of samples closer to a training image than 1% of real test images
are. Prints the table and writes it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import print_machine  # noqa: E402
import genforge  # noqa: E402
from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.data import load_splits  # noqa: E402
from genforge.generation import sample  # noqa: E402
from genforge.metrics import get_evaluator  # noqa: E402
from genforge.metrics.evaluate import score_features  # noqa: E402
from genforge.postprocess import filtering, memorization  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

RECIPES = ("mnist5k-dcgan", "mnist5k-vae-conv")
MARK = ("<!-- postprocess:start -->", "<!-- postprocess:end -->")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=120, help="training seconds per recipe (when not --runs)")
    ap.add_argument("--runs", nargs="*", help="existing run directories to use instead of training")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--keep", type=float, default=0.8)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    set_threads(0)

    splits = load_splits("mnist5k")
    evaluator = get_evaluator("mnist5k", splits.image_shape)
    real_f = evaluator.features(splits.test.x)
    tmp = tempfile.TemporaryDirectory()
    runs = [Path(r) for r in args.runs] if args.runs else []
    if not runs:
        for recipe in RECIPES:
            cfg = load_config(ROOT / "genforge" / "recipes" / f"{recipe}.yaml", train_settings(args.budget))
            runs.append(train(cfg, Path(tmp.name) / recipe, quiet=True).run)

    rows, memo = [], []
    for run in runs:
        model = genforge.load(run)
        s = sample(model, args.n, seed=0)
        feats, probs = evaluator.features_and_probs(s.x)
        variants = [("none", np.ones(len(s.x), dtype=bool))]
        if model.family == "gan":
            variants.append(("drs", filtering.filter_samples(model, s, "drs", args.keep, seed=0)))
        variants.append(("confidence", filtering.keep_top(filtering.confidence_scores(evaluator, s.x), args.keep)))
        for name, mask in variants:
            sc = score_features(real_f, feats[mask], probs[mask], seed=0)
            rows.append({"model": model.name, "step": model.meta.get("step"), "filter": name, "kept": int(mask.sum()),
                         **{k: sc[k] for k in ("fid", "kid", "precision", "recall", "density", "coverage")}})
            print(f"{model.name:10} {name:10} kept {mask.sum():5d}  FID {sc['fid']:8.3f}  precision "
                  f"{sc['precision']:.3f}  recall {sc['recall']:.3f}")
        report = memorization.check(s.x, splits.train.x, splits.test.x, evaluator)
        memo.append((model.name, report))
        print(report.format())

    lines = [MARK[0], "## Post-processing: filtering and memorization (`benchmarks/postprocess.py`)", "",
             f"- machine: {cpu_name()}, torch {torch.__version__}, {platform.python_version()}",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `{command_line('postprocess.py')}`",
             f"- {args.n} samples per model (seed 0), scored with the shipped mnist5k evaluator "
             f"({evaluator.sha256[:12]}) against the {len(splits.test.x)}-image test split; filters keep "
             f"{args.keep:g} of the samples ({'trained ' + str(args.budget) + ' s each' if not args.runs else 'given runs'})",
             "", "| model | step | filter | kept | FID | KID | precision | recall | density | coverage |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['step']} | {r['filter']} | {r['kept']} | {r['fid']:.3f} | {r['kid']:.4f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} |")
    lines += ["", "Near-copies (memorization check, thresholds = 1% quantile of real test images' distance to "
              "their nearest training image):", "",
              "| model | pixel threshold (RMS) | share closer | feature threshold | share closer | either | exact copies |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rep in memo:
        lines.append(f"| {name} | {rep.pixel_threshold:.2f} | {100 * rep.pixel_share:.2f}% | "
                     f"{rep.feature_threshold:.3f} | {100 * rep.feature_share:.2f}% | {100 * rep.either_share:.2f}% | "
                     f"{rep.exact_copies} |")
    lines += ["", MARK[1]]
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines), MARK)
        print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
