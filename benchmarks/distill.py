"""The distillation row (issue 20): FID of a 4-step distilled sampler against the 20-step teacher on mnist5k.

    python benchmarks/distill.py                             # train mnist5k-ddpm (v) 10 min, distil 32 -> 4 steps
    python benchmarks/distill.py --prediction eps            # the same with the recipe's own eps teacher
    python benchmarks/distill.py --teacher runs/mnist5k-ddpm  # distil a trained model instead
    python benchmarks/distill.py --quick                      # smoke run: tiny everything, nothing written

Scores, on the same ``--n`` samples' seed against mnist5k's test split in genforge's evaluator features
(``genforge.metrics.evaluate``): the teacher at 20 DDIM steps (the reference), the teacher at 4 steps (what
the same budget gives without distillation) and the distilled model at 4 steps. The target: the distilled
4-step FID within 20% of the teacher's 20-step FID. Also the seconds each takes to sample ``--n`` images.
The teacher it trains predicts v (``prediction=v``, Salimans and Ho 2022): a student of an eps teacher cannot
learn its first step and samples no better than plain 4-step DDIM (genforge/models/distill.py).
Writes the table into ``benchmarks/RESULTS.md`` (not with --quick).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
import genforge  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.metrics import evaluate  # noqa: E402
from genforge.models.distill import distill  # noqa: E402
from genforge.training import train  # noqa: E402

MARKS = ("<!-- distill:start -->", "<!-- distill:end -->")
TARGET = 1.20  # distilled 4-step FID at most 1.2 x the teacher's 20-step FID


def score(model, n: int, seed: int, steps: int, where: Path, label: str, sampler: str = "ddim") -> dict:
    """FID (and precision, recall; class match for a class-conditional model) of ``n`` samples of ``model`` at
    ``steps`` steps of ``sampler``, and the seconds it took to draw them. benchmarks/samplers.py scores so too."""
    t0 = time.perf_counter()
    s = model.sample(n, seed=seed, steps=steps, sampler=sampler)
    seconds = time.perf_counter() - t0
    npz = where / f"{label}.npz"
    labels = {"y": s.y} if s.y is not None and model.cluster_prior is None else {}  # clusters are not classes
    np.savez(npz, x=s.x, **labels)
    row = evaluate(str(npz), data=model.meta["data"], n=n, seed=seed, with_cas=False, progress=False)
    row = row["rows"]["samples"]
    return {"label": label, "steps": steps, "sampler": sampler, "fid": row["fid"], "precision": row["precision"],
            "recall": row["recall"], "class_match": row.get("class_match"), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="a trained mnist5k diffusion run or model (default: train mnist5k-ddpm)")
    ap.add_argument("--prediction", choices=("v", "eps"), default="v",
                    help="what the teacher it trains predicts (default v; the recipe's own is eps)")
    ap.add_argument("--train-minutes", type=float, default=10.0, help="teacher training budget when none is given")
    ap.add_argument("--teacher-steps", type=int, default=32, help="the teacher's steps distilled from (4 x 2^k)")
    ap.add_argument("--iterations", type=int, default=2000, help="distillation iterations per halving round")
    ap.add_argument("--n", type=int, default=2000, help="samples scored per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: a 5-step-trained teacher of 4 channels, 8 -> 4 steps, 5 iterations, 32 samples; "
                         "no write, numbers meaningless")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.iterations, args.teacher_steps = 32, 5, 8
    facts = print_machine(0.3 if args.quick else 1.0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = Path(args.teacher) if args.teacher else tmp / "teacher"
        t0 = time.perf_counter()
        if not args.teacher:
            sets = [*train_settings(args.train_minutes * 60), f"prediction={args.prediction}"]
            if args.quick:
                sets = [*train_settings(steps=5), "base_channels=4", "batch_size=32", f"prediction={args.prediction}"]
            train(load_config(ROOT / "genforge/recipes/mnist5k-ddpm.yaml", sets), teacher, quiet=True)
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        student = distill(teacher, tmp / "student", steps=4, teacher_steps=args.teacher_steps,
                          iterations=args.iterations, batch_size=32 if args.quick else 64, seed=args.seed,
                          device="cpu", log=lambda line: print(line, flush=True))
        distill_seconds = time.perf_counter() - t0
        t_model, s_model = genforge.load(teacher, device="cpu"), genforge.load(student, device="cpu")
        prediction = t_model.nets["denoiser"].prediction
        rows = [score(t_model, args.n, args.seed, 20, tmp, "teacher, 20 DDIM steps"),
                score(t_model, args.n, args.seed, 4, tmp, "teacher, 4 DDIM steps (not distilled)"),
                score(s_model, args.n, args.seed, 4, tmp, "distilled, 4 DDIM steps")]
    ratio = rows[2]["fid"] / rows[0]["fid"]
    verdict = "met" if ratio <= TARGET else "not met"
    for r in rows:
        print(f"{r['label']:<40} FID {r['fid']:8.2f}  ({r['seconds']:.1f} s for {args.n} samples)")
    print(f"distilled 4-step / teacher 20-step FID: {ratio:.2f} (target <= {TARGET:.2f}: {verdict})"
          + (" [--quick: a smoke run, the numbers mean nothing]" if args.quick else ""))

    lines = [MARKS[0], "## Few-step sampling by distillation (`benchmarks/distill.py`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {facts['cores']} cores ({cpu_name()}), "
             f"fp32 matmul {facts['fp32_matmul_gflops']:.0f} GFLOP/s",
             f"- command: `{command_line('distill.py')}`",
             f"- teacher: {args.teacher or f'mnist5k-ddpm trained {args.train_minutes:g} min'} "
             f"({prediction}-prediction, {t_model.meta.get('step')} steps, {train_seconds:.0f} s); "
             f"distilled {args.teacher_steps} -> 4 steps, {args.iterations} iterations a round ({distill_seconds:.0f} s)",
             f"- FID of {args.n} samples (seed {args.seed}) against mnist5k's test split, genforge's evaluator", "",
             "| sampler | steps | FID | seconds to sample |", "|---|---:|---:|---:|",
             *(f"| {r['label']} | {r['steps']} | {r['fid']:.2f} | {r['seconds']:.1f} |" for r in rows), "",
             f"Distilled 4-step FID / teacher 20-step FID = {ratio:.2f} (target <= {TARGET:.2f}: {verdict}).", "",
             MARKS[1]]
    if not (args.quick or args.no_write):
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
