"""Sample quality of every recipe at a fixed training budget, beside real data, in the evaluator's features.

    python benchmarks/quality.py --budget-seconds 120 [--recipes mnist5k-dcgan ...] [--n 10000] [--runs DIR]

Each recipe is trained with ``genforge.training.train`` for the budget (``max_seconds``; its ``max_steps`` is
lifted so the clock decides), then ``genforge.metrics.evaluate`` scores ``--n`` samples against the test
split: FID, KID, precision, recall, density, coverage, classifier IS and class entropy, CAS for conditional
recipes. Each data set's table ends with the real-data reference row (a train subset of the same size
against the same test split), so every number reads against what real images score.

Prints the tables and writes them into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import _cpu_name, write_section  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.metrics import evaluate  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

MARKS = ("<!-- quality:start -->", "<!-- quality:end -->")


def run_recipe(recipe: Path, budget: float, runs: Path, n: int, seed: int) -> dict:
    cfg = load_config(recipe, [f"max_seconds={budget}", "max_steps=100000000", "sample_every=0",
                               "checkpoint_every=0", "tensorboard=false"])
    run = runs / recipe.stem
    t0 = time.perf_counter()
    result = train(cfg, run, quiet=True)
    train_s = time.perf_counter() - t0
    scored = evaluate(run, n=n, seed=seed)
    return {"recipe": recipe.stem, "model": cfg.model, "data": cfg.data, "steps": result.step,
            "train_seconds": train_s, "result": scored}


def _cells(row: dict) -> list[str]:
    return [f"{row['fid']:.2f}", f"{row['kid']:.3g} ± {row['kid_std']:.2g}", f"{row['precision']:.3f}",
            f"{row['recall']:.3f}", f"{row['density']:.3f}", f"{row['coverage']:.3f}", f"{row['is']:.2f}",
            f"{row['class_entropy']:.3f}"]


def tables(rows: list[dict]) -> list[str]:
    """One markdown table per data set: the recipes, then the real-data row."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == data]
        first = group[0]["result"]
        ev = first["evaluator"]
        lines += [f"### {data}: test split of {first['reference']['size']} images", "",
                  f"Evaluator `{ev['name']}` (sha256 `{ev['weights_sha256'][:16]}`, test accuracy "
                  f"{100 * ev['test_accuracy']:.2f}%).", "",
                  "| recipe | steps | n | FID | KID ± std | precision | recall | density | coverage | IS | class H "
                  "| CAS (real) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            res, s = r["result"], r["result"]["rows"]["samples"]
            cas = res.get("cas")
            cas_cell = f"{100 * cas['generated']:.1f}% ({100 * cas['real']:.1f}%)" if cas else "-"
            lines.append(f"| {r['recipe']} | {r['steps']} | {s['n']} | " + " | ".join(_cells(s)) + f" | {cas_cell} |")
        real = first["rows"]["real"]
        lines.append(f"| **real data** (train subset vs test) | - | {real['n']} | " + " | ".join(_cells(real))
                     + f" | {100 * ev['test_accuracy']:.1f}% |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-seconds", type=float, default=120, help="training seconds per recipe (default 120)")
    ap.add_argument("--recipes", nargs="*", help="recipe names (default: every configs/*.yaml)")
    ap.add_argument("--n", type=int, default=10000, help="samples scored per recipe (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and subset seed (default 0)")
    ap.add_argument("--runs", help="keep the run directories here (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    threads = set_threads(0)
    recipes = sorted(ROOT.glob("configs/*.yaml"))
    if args.recipes:
        unknown = sorted(set(args.recipes) - {r.stem for r in recipes})
        if unknown:
            sys.exit(f"quality.py: unknown recipes {unknown}; see configs/")
        recipes = [r for r in recipes if r.stem in args.recipes]
    tmp = tempfile.TemporaryDirectory() if not args.runs else None
    runs = Path(args.runs) if args.runs else Path(tmp.name)

    rows = []
    for recipe in recipes:
        print(f"== {recipe.stem}: training {args.budget_seconds:g} s, then scoring {args.n} samples", flush=True)
        try:
            row = run_recipe(recipe, args.budget_seconds, runs, args.n, args.seed)
        except Exception as e:  # e.g. fashion-mnist not installed: say so, keep going
            print(f"{recipe.stem}: skipped ({type(e).__name__}: {e})", flush=True)
            continue
        rows.append(row)
        s = row["result"]["rows"]["samples"]
        print(f"{recipe.stem}: {row['steps']} steps; FID {s['fid']:.2f}, KID {s['kid']:.3g}, precision "
              f"{s['precision']:.3f}, recall {s['recall']:.3f}, density {s['density']:.3f}, coverage "
              f"{s['coverage']:.3f}" + (f", CAS {row['result']['cas']['generated']:.3f}" if row["result"]["cas"]
                                        else ""), flush=True)
    if not rows:
        sys.exit("quality.py: no recipe could be scored")

    command = "python benchmarks/quality.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    lines = [MARKS[0], "## Sample quality at a fixed training budget (`benchmarks/quality.py`)", "",
             f"- command: `{command}`",
             f"- machine: {os.cpu_count()} cores ({_cpu_name()}), {threads} torch threads, torch {torch.__version__}, "
             "shared with other jobs (steps reached in the budget vary with the load)",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- each recipe trained for {args.budget_seconds:g} s of wall clock (`max_seconds`, `max_steps` lifted), "
             f"then {args.n} samples (seed {args.seed}) scored against the test split with `genforge eval`'s code "
             "(`genforge.metrics.evaluate`), on the release weights `genforge.load` picks (best, else last checkpoint)",
             "- features: the penultimate layer of genforge's frozen evaluator for the data set; scores from "
             "different evaluators (hashes) are not comparable",
             "- precision/recall: k=3 (Kynkaanniemi et al. 2019); density/coverage: k=5 (Naeem et al. 2020), on "
             "equal-sized sets (the smaller of samples and test split); KID: polynomial kernel, 100 subsets of "
             "at most 1,000; IS and class H (entropy of the predicted-class histogram, max ln 10 = 2.303) use "
             "the evaluator as classifier; CAS (conditional recipes): the evaluator's network and recipe trained on "
             "the samples only, tested on the real test split, with the evaluator itself (trained on real data) "
             "in brackets",
             "- real data row: a random train subset of the same size (at most the whole train split) against "
             "the test split. The evaluator was trained on that train split, so this row is what a model that "
             "reproduced its training images exactly would score", ""]
    lines += tables(rows)
    lines.append(MARKS[1])
    section = "\n".join(lines)
    print("\n" + section)
    if args.runs:
        (runs / "quality.json").write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1))
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, MARKS)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


if __name__ == "__main__":
    main()
