"""Which diffusion sampler to use at a fixed number of steps: DDIM, DPM-Solver++(2M) and its stochastic form.

    python benchmarks/samplers.py                         # fashion-cddpm and fashion-ddpm-clusters, 10 min each
    python benchmarks/samplers.py --recipes fashion-cddpm --budget-seconds 300 --steps 10 20
    python benchmarks/samplers.py --run runs/fashion-cddpm  # a trained run or model instead of training
    python benchmarks/samplers.py --quick                 # smoke run: a tiny mnist5k model, nothing written

Each recipe is trained for ``--budget-seconds`` (``max_seconds``, ``max_steps`` lifted), then sampled from the
same ``--n`` latents (seed ``--seed``) with every sampler of ``genforge.controls.SAMPLERS`` at each of
``--steps``, with the recipe's own guidance, and scored against the test split in genforge's evaluator features
(``genforge.metrics.evaluate``): FID, precision, recall, and class match for a class-conditional recipe. The
samplers are compared within a recipe, on one trained model, so the ratios hold whatever the machine; the
seconds to sample are those of this machine. Writes the tables into ``benchmarks/RESULTS.md`` (not with --quick
or --no-write).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, section_marks, train_settings, write_section  # noqa: E402
from benchmarks.distill import score  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402
import genforge  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.controls import SAMPLERS  # noqa: E402
from genforge.training import train  # noqa: E402

DEFAULT_RECIPES = ["fashion-cddpm", "fashion-ddpm-clusters"]  # the best conditional and unconditional recipes
QUICK = ["base_channels=4", "batch_size=16"]


def train_seconds(recipe: str, budget: float, where: Path, quick: bool) -> float:
    """Train ``recipe`` for ``budget`` seconds into ``where``; the seconds it took."""
    sets = [*train_settings(steps=3), *QUICK] if quick else train_settings(budget, evaluate=True)
    t0 = time.perf_counter()
    train(load_config(recipe, sets), where, quiet=True)
    return time.perf_counter() - t0


def table(name: str, model, rows: list[dict], train_note: str) -> list[str]:
    conditional = any(r["class_match"] is not None for r in rows)
    lines = [f"### {name} ({train_note}; guidance {model.sampling_defaults.get('guidance', 1):g}, the recipe's)",
             "", "| sampler | steps | FID | FID / dpm++2m's | precision | recall |"
             + (" class match |" if conditional else "") + " seconds to sample |",
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if conditional else "") + "---:|"]
    for r in rows:
        ref = next(q["fid"] for q in rows if q["steps"] == r["steps"] and q["sampler"] == "dpm++2m")
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {r['fid'] / ref:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} |"
                     + (f" {r['class_match']:.3f} |" if conditional else "") + f" {r['seconds']:.1f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES, help="diffusion recipes to train and compare")
    ap.add_argument("--run", help="a trained diffusion run or model to compare instead of training recipes")
    ap.add_argument("--budget-seconds", type=float, default=600, help="training seconds per recipe (default 600)")
    ap.add_argument("--steps", type=int, nargs="*", default=[10, 20], help="sampler steps (default 10 20)")
    ap.add_argument("--n", type=int, default=2000, help="samples scored per row (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: mnist5k-cddpm, 3 training steps of a 4-channel "
                    "network, 32 samples, 2 sampler steps; nothing written, numbers meaningless")
    ap.add_argument("--section", default="samplers", help="RESULTS.md section to replace (default samplers; another "
                    "name keeps its own section, e.g. one per kind of machine)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.recipes = 32, [2], ["mnist5k-cddpm"]
    facts = print_machine(0.3 if args.quick else 1.0)
    marks, suffix = section_marks(args.section, "samplers")
    lines = [marks[0], f"## Diffusion samplers at a fixed number of steps (`benchmarks/samplers.py`){suffix}", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {describe(facts)}",
             f"- command: `{command_line('samplers.py', argv)}`",
             f"- {args.n} samples (seed {args.seed}) per row, the same latents for every sampler, scored against the "
             "test split in genforge's evaluator features; FID / dpm++2m's: the row's FID over DPM-Solver++(2M)'s at "
             "the same steps", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = [(Path(args.run).name, Path(args.run), "given")] if args.run else []
        for recipe in ([] if args.run else args.recipes):
            print(f"== {recipe}: training {args.budget_seconds:g} s", flush=True)
            seconds = train_seconds(recipe, args.budget_seconds, tmp / recipe, args.quick)
            jobs.append((recipe, tmp / recipe, f"{seconds:.0f} s of training"))
        for name, run, note in jobs:
            model = genforge.load(run, device="cpu")
            if model.family != "diffusion":
                sys.exit(f"samplers.py: {name} is a {model.family} model, not a diffusion model")
            rows = []
            for steps in args.steps:
                for sampler in SAMPLERS:
                    rows.append(r := score(model, args.n, args.seed, steps, tmp, f"{name}-{sampler}-{steps}",
                                           sampler))
                    print(f"{name} {sampler:>12} {steps:>3} steps: FID {r['fid']:.2f}, precision "
                          f"{r['precision']:.3f}, recall {r['recall']:.3f}"
                          + (f", class match {r['class_match']:.3f}" if r["class_match"] is not None else "")
                          + f" ({r['seconds']:.1f} s)", flush=True)
            lines += table(name, model, rows, f"{model.meta.get('step')} training steps, {note}")
    lines.append(marks[1])
    print("\n".join(lines))
    if not (args.quick or args.no_write):
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
