"""What differential privacy costs in sample quality: FID and CAS at epsilon 1, 10 and infinity.

    flock /tmp/genforge-cpu.lock python benchmarks/privacy.py [--recipe genforge/recipes/mnist5k-dp-cvae-conv.yaml]
        [--steps 300] [--epsilons 1 10 inf] [--n 2000] [--runs DIR] [--no-write]

One recipe (default: the conditional VAE, the cheaper family, conditional so that CAS applies) is trained for
the same fixed number of steps at each epsilon: DP-SGD with the noise sized so that the budget is spent at the
last step (delta from the recipe), and at epsilon = inf the same recipe without DP (no clipping, no noise,
shuffled batches). Each model is then scored with ``genforge.metrics.evaluate``: ``--n`` samples against the
test split (FID in genforge's evaluator features, with the real-data reference row) and CAS (the evaluator's
network trained on the samples only, tested on the real test split).

The data is the embedded mnist5k (4,000 training images), not the 60,000 of full MNIST that published DP
results use, and FID here is in the evaluator's features, not Inception's: the numbers compare the rows of
this table with each other, not with papers.

Prints the table and writes it into ``benchmarks/RESULTS.md`` (section ``privacy``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.config import Config, load_config  # noqa: E402
from genforge.metrics import evaluate  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

MARKS = ("<!-- privacy:start -->", "<!-- privacy:end -->")


def run_one(recipe: Path, epsilon: float, steps: int, runs: Path, n: int, seed: int) -> dict:
    if math.isinf(epsilon):  # the same recipe without differential privacy
        dp = ["dp_epsilon=0", f"dp_delta={Config.dp_delta}", f"dp_max_grad_norm={Config.dp_max_grad_norm}"]
    else:
        dp = [f"dp_epsilon={epsilon}"]
    cfg = load_config(recipe, [*train_settings(steps=steps), *dp])
    run = runs / f"{recipe.stem}-eps{epsilon:g}"
    t0 = time.perf_counter()
    result = train(cfg, run, quiet=True)
    train_s = time.perf_counter() - t0
    import genforge

    privacy = genforge.load(run).meta.get("privacy")
    t0 = time.perf_counter()
    scored = evaluate(run, n=n, seed=seed, progress=False)
    return {"epsilon": epsilon, "steps": result.step, "train_seconds": train_s,
            "eval_seconds": time.perf_counter() - t0,
            "privacy": privacy, "result": scored, "batch_size": cfg.batch_size, "delta": cfg.dp_delta}


def table(rows: list[dict]) -> list[str]:
    lines = ["| epsilon (target) | epsilon spent | noise multiplier | steps | train s | FID | precision | recall "
             "| CAS (real) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, cas, p = r["result"]["rows"]["samples"], r["result"]["cas"], r["privacy"]
        spent = f"{p['epsilon']:.3f}" if p else "-"
        sigma = f"{p['noise_multiplier']:.3f}" if p else "0 (no DP)"
        lines.append(f"| {r['epsilon']:g} | {spent} | {sigma} | {r['steps']} | {r['train_seconds']:.0f} | "
                     f"{s['fid']:.2f} | {s['precision']:.3f} | {s['recall']:.3f} | "
                     f"{100 * cas['generated']:.1f}% ({100 * cas['real']:.1f}%) |")
    real = rows[0]["result"]["rows"]["real"]
    lines.append(f"| **real data** (train subset vs test) | - | - | - | - | {real['fid']:.2f} | "
                 f"{real['precision']:.3f} | {real['recall']:.3f} | - |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "genforge" / "recipes" / "mnist5k-dp-cvae-conv.yaml"),
                    help="a conditional recipe (CAS needs labelled samples); default the DP conditional VAE")
    ap.add_argument("--steps", type=int, default=300, help="training steps at every epsilon (default 300)")
    ap.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 10.0, math.inf],
                    help="target epsilons; inf trains without DP (default 1 10 inf)")
    ap.add_argument("--n", type=int, default=2000, help="samples scored per model (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and subset seed (default 0)")
    ap.add_argument("--runs", help="keep the run directories here (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them

    threads = set_threads(0)
    recipe = Path(args.recipe)
    tmp = tempfile.TemporaryDirectory() if not args.runs else None
    runs = Path(args.runs) if args.runs else Path(tmp.name)
    t_all = time.perf_counter()
    rows = []
    for eps in args.epsilons:
        print(f"== epsilon {eps:g}: training {recipe.stem} for {args.steps} steps, then scoring {args.n} samples",
              flush=True)
        row = run_one(recipe, eps, args.steps, runs, args.n, args.seed)
        rows.append(row)
        s = row["result"]["rows"]["samples"]
        print(f"epsilon {eps:g}: {row['steps']} steps in {row['train_seconds']:.0f} s"
              + (f" (epsilon spent {row['privacy']['epsilon']:.3f}, sigma {row['privacy']['noise_multiplier']:.3f})"
                 if row["privacy"] else "")
              + f"; FID {s['fid']:.2f}, CAS {100 * row['result']['cas']['generated']:.1f}% "
              f"(scored in {row['eval_seconds']:.0f} s)", flush=True)
    total = time.perf_counter() - t_all
    print("\n".join(table(rows)))

    first = rows[0]
    ev = first["result"]["evaluator"]
    command = "flock /tmp/genforge-cpu.lock " + command_line("privacy.py")
    lines = [MARKS[0],
             "## Differential privacy: sample quality at epsilon 1, 10 and infinity (`benchmarks/privacy.py`)",
             "",
             f"- command: `{command}` ({total / 60:.1f} minutes in all)",
             f"- machine: {os.cpu_count()} cores ({cpu_name()}), {threads} torch threads, torch {torch.__version__}, "
             "shared with other jobs (the train seconds vary with the load)",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- recipe `{recipe.stem}` ({first['result']['model']['name']}), {args.steps} steps of batch "
             f"{first['batch_size']} at every epsilon; delta {first['delta']:g}; DP-SGD on encoder and decoder "
             "(Opacus: per-sample clipping, Gaussian noise sized so that the target epsilon is spent at the last "
             "step, Poisson batches, RDP accountant); epsilon = inf is the same recipe without DP (no clipping, no "
             "noise, shuffled batches)",
             f"- data: the embedded **mnist5k** (5,000 MNIST digits; 4,000 in the training split), not the 60,000 "
             "of full MNIST (its test split: 500 images): a batch is a 15 times larger share of the data, so the same "
             "epsilon and step count need more noise per step than on full MNIST",
             f"- scores: {args.n} samples (seed {args.seed}) against the test split with `genforge.metrics.evaluate` "
             f"(evaluator `{ev['name']}`, sha256 `{ev['weights_sha256'][:16]}`): FID in the evaluator's features; "
             "CAS = the evaluator's network and recipe trained on the samples only, tested on the real test split, "
             "with the evaluator itself (trained on real data) in brackets",
             "- published reference, **not comparable**: a DP-GAN on full MNIST at epsilon 10, delta 1e-5 reached "
             "FID 13.0 (Inception features) and 95% downstream accuracy; other data size, other feature space, "
             "other model", ""]
    lines += table(rows)
    lines.append(MARKS[1])
    section = "\n".join(lines)
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", section, MARKS)
        print(f"wrote the privacy section of {ROOT / 'benchmarks' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
