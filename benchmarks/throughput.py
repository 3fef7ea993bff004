"""Training throughput of every recipe, in images per second, through the real training loop.

    python benchmarks/throughput.py [--windows 5] [--recipes mnist5k-gan-mlp ...] [--no-bf16]
    python benchmarks/throughput.py --long 10 [--recipes fashion-cddpm mnist5k-dcgan ...] [--allocators tuned default]

For each recipe (and precision) it runs ``genforge.training.train`` with logging
every K steps, drops the first window as warm-up and reports the median
images/s of the rest. The reference row is the reference design's MLP GAN
(``gan-mlp``, batch 128); every recipe is also given as a ratio to it, measured
in this same run, because this machine is shared and noisy. The matmul peak
(fp32 and bf16) is measured here too, so each recipe's share of the machine
follows from the FLOPs of one training step (torch's FlopCounterMode).

Prints the table and writes it into ``benchmarks/RESULTS.md``.

``--long MINUTES`` (issue 20: a collapse that starts minutes in is invisible to short windows) trains each
recipe for MINUTES through ``genforge train --max-seconds``, in a fresh process per run, and reports per
minute of the run: images/s, the system-time share of the process's CPU time and page faults per second
(from the ``page_faults_per_s`` and ``system_share`` that every ``metrics.jsonl`` line carries, read from
/proc/self/stat), with genforge's allocator tuning (``tuned``) and without it (``GENFORGE_MALLOC=default``).
Validation is off in these runs (``eval_every=0``), so the curve is training alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import as_flags, command_line, section_marks, train_settings, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.data import load_splits  # noqa: E402
from genforge.models import MODELS, build_networks  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

WINDOW_SECONDS = 1.5
MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"


def _gflops(fn, flops: float, seconds: float) -> float:
    for _ in range(3):
        fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        reps += 1
    return flops * reps / (time.perf_counter() - t0) / 1e9


@torch.no_grad()
def matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of the best large matrix product in ``dtype``: the most this machine's cores do.

    Two routes, because torch sends them to different libraries: a 2048^3 ``mm`` (MKL for fp32) and the same
    product as a 1x1 convolution (oneDNN). On an AMD CPU MKL's fp32 path is the slower one, so the peak is the
    faster of the two and the share-of-peak column is not flattered.
    """
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    mm = _gflops(lambda: a @ b, 2 * n**3, seconds)
    x = torch.randn(32, 1024, 16, 16, dtype=dtype)
    conv = torch.nn.Conv2d(1024, 1024, kernel_size=1, bias=False).to(dtype)
    c1 = _gflops(lambda: conv(x), 2 * 32 * 16 * 16 * 1024 * 1024, seconds)
    return max(mm, c1)


def step_flops(cfg, image_shape) -> tuple[float, float]:
    """(FLOPs per image of one training step, rough images/s) for the recipe's batch size."""
    torch.manual_seed(0)
    k = 10 if MODELS[cfg.model].conditional else 0
    nets = build_networks(cfg.model, image_shape, cfg.z_dim, cfg.base_channels, k)
    method = MODELS[cfg.model].method
    trainer = method.Trainer(cfg, nets)
    x = torch.rand(cfg.batch_size, *image_shape)
    x = x * 2 - 1 if method.VALUE_RANGE == "-1,1" else x
    y = torch.arange(cfg.batch_size) % k if k else None
    noise = torch.Generator().manual_seed(0)
    trainer.train_step(x, y, noise)
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(x, y, noise)
    except RuntimeError:  # the flop counter cannot follow autograd.grad (WGAN-GP's penalty): count without it
        trainer = method.Trainer(load_config(None, [f"model={cfg.model}", f"batch_size={cfg.batch_size}",
                                                    f"d_steps={cfg.d_steps}", "d_norm=none"]), nets)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(x, y, noise)
    t0 = time.perf_counter()
    for _ in range(2):
        trainer.train_step(x, y, noise)
    rate = 2 * cfg.batch_size / (time.perf_counter() - t0)
    return counter.get_total_flops() / cfg.batch_size, rate


def measure(recipe: Path, precision: str, windows: int, overrides: tuple[str, ...] = ()) -> dict:
    cfg = load_config(recipe, [f"precision={precision}", *overrides])
    shape = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels).image_shape
    flops, rough = step_flops(cfg, shape)
    k = max(3, round(WINDOW_SECONDS * rough / cfg.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(recipe, [f"precision={precision}", *train_settings(0, k * (windows + 1), log_every=k),
                                   *overrides])
        train(cfg, Path(tmp) / "run", quiet=True)
        rates = [json.loads(line)["images_per_sec"] for line in (Path(tmp) / "run/metrics.jsonl").open()]
    ips = statistics.median(rates[1:])  # first window is warm-up
    return {"recipe": recipe.stem, "model": cfg.model, "batch": cfg.batch_size, "precision": precision,
            "images_per_sec": ips, "spread": (min(rates[1:]), max(rates[1:])), "mflop_per_image": flops / 1e6,
            "gflops": ips * flops / 1e9, "steps_per_window": k}


LONG_RECIPES = ("fashion-cddpm", "mnist5k-ddpm", "mnist5k-dcgan", "fashion-sngan")


def per_minute(records: list[dict], images_per_step: int) -> list[dict]:
    """Bucket ``metrics.jsonl`` lines by the minute of the run they end in: images/s (images over seconds),
    the system share and page faults per second, each weighted by the seconds its line covers."""
    out: dict[int, dict] = {}
    prev_step, prev_time = None, None
    for r in records:
        if "time" not in r or "images_per_sec" not in r:
            continue
        if prev_time is not None and r["time"] > prev_time:
            dt = r["time"] - prev_time
            b = out.setdefault(int(r["time"] // 60), {"seconds": 0.0, "images": 0.0, "faults": 0.0, "sys": 0.0,
                                                      "sys_seconds": 0.0})
            b["seconds"] += dt
            b["images"] += (r["step"] - prev_step) * images_per_step
            b["faults"] += r.get("page_faults_per_s", 0.0) * dt
            if "system_share" in r:
                b["sys"] += r["system_share"] * dt
                b["sys_seconds"] += dt
        prev_step, prev_time = r["step"], r["time"]
    return [{"minute": m + 1, "seconds": b["seconds"], "images_per_sec": b["images"] / b["seconds"],
             "page_faults_per_s": b["faults"] / b["seconds"],
             "system_share": b["sys"] / b["sys_seconds"] if b["sys_seconds"] else float("nan")}
            for m, b in sorted(out.items()) if b["seconds"] > 0]


def long_run(recipe: str, minutes: float, allocator: str) -> tuple[list[dict], int]:
    """Train ``recipe`` for ``minutes`` in a fresh process (its own page-fault counters and allocator) and
    return its per-minute rows and the steps it trained."""
    cfg = load_config(ROOT / "genforge/recipes" / f"{recipe}.yaml", [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if allocator == "default":
        env["GENFORGE_MALLOC"] = "default"
    else:
        env.pop("GENFORGE_MALLOC", None)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "genforge", "train", recipe, "--out", str(run), "--quiet",
               *as_flags(train_settings(minutes * 60, log_every=20))]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "training failed")
        records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = max((r["step"] for r in records if "step" in r), default=0)
    return per_minute(records, cfg.batch_size * MODELS[cfg.model].method.Trainer.batches_per_step(cfg)), steps


def long_mode(recipes: list[str], minutes: float, allocators: list[str], write: bool, machine: str,
              section: str) -> None:
    marks, suffix = section_marks(section, "throughput-long")
    lines = [marks[0], "## Throughput over a whole run (`benchmarks/throughput.py --long`)" + suffix, "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {machine}",
             f"- command: `{command_line('throughput.py')}`",
             f"- each recipe trained {minutes:g} min in a fresh process (`genforge train --max-seconds`), validation "
             "off; per minute of the run: images/s, system time as a share of the process's CPU time, page faults/s",
             "- allocator `tuned`: genforge's own malloc settings; `default`: `GENFORGE_MALLOC=default` (glibc's)", "",
             "| recipe | allocator | minute | images/s | system share | page faults/s |", "|---|---|---:|---:|---:|---:|"]
    summary = []
    for recipe in recipes:
        for allocator in allocators:
            try:
                rows, steps = long_run(recipe, minutes, allocator)
            except Exception as e:  # e.g. fashion-mnist not installed: say so, keep going
                print(f"{recipe} ({allocator}): skipped ({e})", flush=True)
                continue
            for r in rows:
                print(f"{recipe:<16} {allocator:<8} minute {r['minute']:>3}: {r['images_per_sec']:8.0f} images/s, "
                      f"system {100 * r['system_share']:5.1f}%, {r['page_faults_per_s']:9.0f} page faults/s",
                      flush=True)
                minute = r["minute"] if r["seconds"] >= 30 else f"{r['minute']} (last {r['seconds']:.0f} s)"
                lines.append(f"| {recipe} | {allocator} | {minute} | {r['images_per_sec']:.0f} | "
                             f"{100 * r['system_share']:.1f}% | {r['page_faults_per_s']:.0f} |")
            # the run's last seconds (past the budget: the final step and checkpoint) make a bucket of their own
            full = [r for r in rows if r["seconds"] >= 30]
            if len(full) >= 2:
                change = full[-1]["images_per_sec"] / full[0]["images_per_sec"] - 1
                summary.append(f"- {recipe} ({allocator}): {steps} steps; last full minute {100 * change:+.0f}% "
                               "against the first")
    lines += ["", *summary, "", marks[1]]
    print("\n".join(summary))
    if write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=5, help="timed windows per recipe (median taken)")
    ap.add_argument("--recipes", nargs="*", help="recipe names (default: every genforge/recipes/mnist5k-*.yaml)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--long", type=float, metavar="MINUTES", default=0.0,
                    help="train each recipe this long and report images/s, system share and page faults per minute")
    ap.add_argument("--allocators", nargs="*", default=["tuned", "default"], choices=["tuned", "default"],
                    help="--long: with genforge's allocator tuning, without it, or both")
    ap.add_argument("--section", default="throughput-long",
                    help="--long: the RESULTS.md section to write (one per kind of machine keeps each one's rows)")
    args = ap.parse_args()
    facts = print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    if args.long > 0:
        long_mode(args.recipes or list(LONG_RECIPES), args.long, args.allocators, not args.no_write,
                  describe(facts), args.section)
        return

    threads = set_threads(0)
    # By default one recipe per network and method: the mnist5k ones (fashion-* share their networks).
    recipes = sorted(ROOT.glob("genforge/recipes/mnist5k-*.yaml"))
    if args.recipes:
        recipes = [r for r in sorted(ROOT.glob("genforge/recipes/*.yaml")) if r.stem in args.recipes]
    reference = ROOT / "genforge/recipes/mnist5k-gan-mlp.yaml"  # the reference row comes first
    recipes = [reference] + [r for r in recipes if r != reference]
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak on {threads} threads: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")

    rows = []
    for recipe in recipes:
        for precision in ("fp32",) if args.no_bf16 else ("fp32", "bf16"):
            try:
                row = measure(recipe, precision, args.windows)
            except Exception as e:  # e.g. fashion-mnist not installed: say so, keep going
                print(f"{recipe.stem} {precision}: skipped ({e})")
                continue
            row["share_of_peak"] = row["gflops"] / peak[precision]
            rows.append(row)
            print(f"{row['recipe']:<20} {precision} batch {row['batch']:>3}: {row['images_per_sec']:8.0f} images/s "
                  f"({row['mflop_per_image']:.1f} MFLOP/image, {row['gflops']:.0f} GFLOP/s, "
                  f"{100 * row['share_of_peak']:.0f}% of {precision} peak)")
    ref = next(r["images_per_sec"] for r in rows if r["recipe"] == reference.stem and r["precision"] == "fp32")

    lines = [MARK_START, "## Training throughput (`benchmarks/throughput.py`)", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
             f"({cpu_name()}), {threads} torch threads, torch {torch.__version__}",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `{command_line('throughput.py')}`",
             f"- matmul peak measured in the same run: fp32 {peak['fp32']:.0f} GFLOP/s, "
             f"bf16 {peak['bf16']:.0f} GFLOP/s",
             f"- images/s: median of {args.windows} windows of the real training loop (first window dropped as "
             "warm-up); range in brackets",
             f"- reference row: `gan-mlp` batch 128 fp32 = {ref:.0f} images/s. The same network in TF/Keras is "
             "timed beside it by `benchmarks/keras_peer.py` (its own section).", "",
             "| recipe | model | batch | precision | images/s | vs gan-mlp fp32 | MFLOP/image | GFLOP/s | share of peak |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["spread"]
        lines.append(f"| {r['recipe']} | {r['model']} | {r['batch']} | {r['precision']} | {r['images_per_sec']:.0f} "
                     f"({lo:.0f}-{hi:.0f}) | {r['images_per_sec'] / ref:.2f} | {r['mflop_per_image']:.1f} | "
                     f"{r['gflops']:.0f} | {100 * r['share_of_peak']:.0f}% |")
    lines += ["", MARK_END]
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


if __name__ == "__main__":
    main()
