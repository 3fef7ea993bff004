"""A recipe's ten minutes before and after issue 20's fixes, on this machine, in one run.

    python benchmarks/before_after.py                            # fashion-cddpm, 600 s, against e174c47
    python benchmarks/before_after.py --seconds 30 --no-write    # a smoke run

Issue 20's figure, 1,319 steps of ``genforge train configs/fashion-cddpm.yaml --max-seconds 600``, came from
another AVX2 machine (about 80 GFLOP/s fp32 matmul); a machine with another peak gives another count. So this
script runs both versions here, one after the other: the code of the commit the issue was filed against
(``--before``, default e174c47: ``git archive`` into a temporary folder, imported through ``PYTHONPATH``, the
same Python and packages) and today's. Each runs ``genforge train RECIPE --out RUN --max-seconds S`` as a user
runs it: the recipe's validation, grids and checkpoints included. Each version's evaluator is made ready first,
untimed (the old code trains it on first use, into a cache folder of its own kept for the next run;
today's ships it).

Reported per version: steps within the budget, images/s over them, and the wall seconds to exit (the last
validation and checkpoint included); then after / before for each. The target: at least 2.5x the steps.
Writes its section of ``benchmarks/RESULTS.md`` (``--no-write`` to print only).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402
from genforge.io import cache_dir  # noqa: E402

MARKS = ("<!-- before-after:start -->", "<!-- before-after:end -->")
TARGET = 2.5
REACHED = re.compile(r"max_seconds=\S+ reached at step (\d+)")


def unpack(commit: str, into: Path) -> Path:
    """The tree of ``commit`` of this repository, written under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def recipe_path(tree: Path, recipe: str) -> Path:
    """The recipe file in ``tree``: ``configs/`` before the recipes moved into the package, then the package's."""
    for path in (tree / "configs" / f"{recipe}.yaml", tree / "genforge" / "recipes" / f"{recipe}.yaml"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{tree}: no recipe {recipe}")


def run_version(tree: Path, recipe: str, seconds: float, out: Path, env: dict) -> dict:
    """Warm the evaluator (untimed), then time ``genforge train`` of ``tree``'s code."""
    config = recipe_path(tree, recipe)
    env = {**env, "PYTHONPATH": str(tree)}
    warm = ("import sys, genforge; from genforge.config import load_config; cfg = load_config(sys.argv[1])\n"
            "assert genforge.__file__.startswith(sys.argv[2]), f'imported {genforge.__file__}, not {sys.argv[2]}'\n"
            "try:\n    from genforge.metrics.evaluator_net import get_evaluator\n"
            "except ImportError:\n    from genforge.metrics.evaluator import get_evaluator\n"
            "get_evaluator(cfg.data, (1, cfg.image_size, cfg.image_size), progress=False)")
    subprocess.run([sys.executable, "-c", warm, str(config), str(tree)], env=env, check=True, cwd=tree)
    cmd = [sys.executable, "-m", "genforge", "train", str(config), "--out", str(out), "--max-seconds", f"{seconds:g}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{tree.name}: genforge train failed: {done.stderr.strip()[-500:]}")
    found = REACHED.findall(done.stderr)
    if not found:
        raise RuntimeError(f"{tree.name}: the run ended before max_seconds: {done.stderr.strip()[-500:]}")
    steps = int(found[-1])
    batch = yaml.safe_load(config.read_text())["batch_size"]
    return {"steps": steps, "wall_s": wall, "images_per_s": steps * batch / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="e174c47", help="the commit before the fixes (default: where issue 20 was "
                                                        "filed)")
    ap.add_argument("--recipe", default="fashion-cddpm")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    facts = print_machine()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "this tree"
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True).stdout.strip():
        head += " with uncommitted changes"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the old code's evaluator is trained once into a cache of its own, kept for the next run of this script
        envs = {"before": dict(os.environ, GENFORGE_CACHE=str(cache_dir(f"before-{args.before}"))),
                "after": dict(os.environ)}
        for name, tree in (("before", unpack(args.before, tmp / "before")), ("after", ROOT)):
            rows[name] = run_version(tree, args.recipe, args.seconds, tmp / f"run-{name}", envs[name])
            r = rows[name]
            print(f"{name}: {r['steps']} steps in {args.seconds:g} s ({r['images_per_s']:.0f} images/s), "
                  f"{r['wall_s']:.0f} s to exit", flush=True)
    ratio = rows["after"]["steps"] / rows["before"]["steps"]
    lines = [MARKS[0], f"## {args.recipe}: {args.seconds:g} s before and after issue 20's fixes "
             "(`benchmarks/before_after.py`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {describe(facts)}",
             f"- command: `{command_line('before_after.py')}`",
             f"- before: the code of {args.before}; after: {head}; each `genforge train {args.recipe} --max-seconds "
             f"{args.seconds:g}` as a user runs it (the recipe's validation, grids and checkpoints), evaluators made "
             "ready first, untimed", "",
             "| code | steps in the budget | images/s over the budget | seconds to exit |", "|---|---:|---:|---:|"]
    for name, label in (("before", args.before), ("after", head)):
        r = rows[name]
        lines.append(f"| {name} ({label}) | {r['steps']} | {r['images_per_s']:.0f} | {r['wall_s']:.0f} |")
    verdict = "met" if ratio >= TARGET else "not met"
    lines += ["", f"- steps after / before: {ratio:.2f}x (target >= {TARGET:g}x: {verdict})"
              f"; seconds to exit after / before: {rows['after']['wall_s'] / rows['before']['wall_s']:.2f}", "",
              MARKS[1]]
    print(lines[-3])
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
