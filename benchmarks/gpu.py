"""Training throughput of every recipe on a CUDA GPU, and its share of the GPU's measured matmul peak (issue 20).

    python benchmarks/gpu.py                                  # every mnist5k recipe, precision auto and fp32
    python benchmarks/gpu.py --recipes mnist5k-ddpm fashion-cddpm --precisions bf16 --compile

Each recipe trains through the real loop (``genforge.training.train``, ``device: cuda``) for ``--windows`` + 1
windows of ``--steps`` steps; the first window (CUDA start-up, cuDNN autotuning, compilation) is dropped and
the median of the rest is reported. The share of peak is images/s x FLOPs per image of one training step
(torch's FlopCounterMode, counted once on the CPU) over the best matmul GFLOP/s measured on the same GPU in
the same run, in the precision the row trains in (bf16 rows against the bf16 peak, fp32 rows against fp32
with TF32 off, as genforge leaves it). On a machine without CUDA it says so and exits 0.

Writes the table into ``benchmarks/RESULTS.md`` (``--no-write`` to print only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from benchmarks.throughput import step_flops  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.data import load_splits  # noqa: E402
from genforge.training import train  # noqa: E402

MARKS = ("<!-- gpu:start -->", "<!-- gpu:end -->")


@torch.no_grad()
def gpu_matmul_peak(dtype: torch.dtype, seconds: float = 2.0, n: int = 8192) -> float:
    """GFLOP/s of the best of repeated n x n x n products on the GPU in ``dtype``, events around each."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3)
    return 2 * n**3 / best / 1e9


def measure(recipe: Path, precision: str, steps: int, windows: int, compile_: bool) -> dict:
    sets = [f"precision={precision}", "device=cuda", *train_settings(0, steps * (windows + 1), log_every=steps),
            f"compile={'true' if compile_ else 'false'}"]
    cfg = load_config(recipe, sets)
    shape = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels).image_shape
    flops, _ = step_flops(load_config(recipe, ["precision=fp32", "device=cpu"]), shape)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", quiet=True)
        rates = [json.loads(line)["images_per_sec"] for line in (Path(tmp) / "run/metrics.jsonl").open()]
    ips = statistics.median(rates[1:])
    return {"recipe": recipe.stem, "model": cfg.model, "batch": cfg.batch_size, "precision": precision,
            "compile": compile_, "images_per_sec": ips, "spread": (min(rates[1:]), max(rates[1:])),
            "mflop_per_image": flops / 1e6, "gflops": ips * flops / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", help="recipe names (default: every genforge/recipes/mnist5k-*.yaml)")
    ap.add_argument("--precisions", nargs="*", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=50, help="training steps per timed window")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per recipe (median taken)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (compile=true)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    facts = print_machine()  # the CPU's matmul peak and flags first, as every benchmark
    if not torch.cuda.is_available():
        print("gpu: no CUDA GPU is present on this machine (torch.cuda.is_available() is False): nothing to "
              "measure")
        return 0
    name = torch.cuda.get_device_name(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # genforge's default: fp32 means fp32
    peak = {"fp32": gpu_matmul_peak(torch.float32), "bf16": gpu_matmul_peak(torch.bfloat16)}
    native_bf16 = torch.cuda.is_bf16_supported()
    print(f"gpu: {name}; matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; "
          f"native bf16: {'yes' if native_bf16 else 'no'}", flush=True)
    recipes = sorted(ROOT.glob("genforge/recipes/mnist5k-*.yaml"))
    if args.recipes:
        recipes = [r for r in sorted(ROOT.glob("genforge/recipes/*.yaml")) if r.stem in args.recipes]
    rows = []
    for recipe in recipes:
        for precision in args.precisions:
            try:
                row = measure(recipe, precision, args.steps, args.windows, args.compile)
            except Exception as e:  # e.g. fashion-mnist not installed, DP on CUDA: say so, keep going
                print(f"{recipe.stem} {precision}: skipped ({type(e).__name__}: {e})", flush=True)
                continue
            used = "bf16" if precision == "bf16" or (precision == "auto" and native_bf16) else "fp32"
            row["share_of_peak"] = row["gflops"] / peak[used]
            row["used"] = used
            rows.append(row)
            print(f"{row['recipe']:<22} {precision:>4} ({used}) batch {row['batch']:>3}: {row['images_per_sec']:9.0f} "
                  f"images/s ({row['mflop_per_image']:.1f} MFLOP/image, {row['gflops']:.0f} GFLOP/s, "
                  f"{100 * row['share_of_peak']:.1f}% of the {used} peak)", flush=True)
    lines = [MARKS[0], "## Training throughput on a GPU (`benchmarks/gpu.py`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; GPU: {name}; host: {facts['cpu']}, "
             f"{facts['cores']} cores; torch {torch.__version__}",
             f"- command: `{command_line('gpu.py', argv)}`",
             f"- GPU matmul peak measured in the same run: fp32 (TF32 off) {peak['fp32']:.0f} GFLOP/s, "
             f"bf16 {peak['bf16']:.0f} GFLOP/s",
             f"- images/s: median of {args.windows} windows of {args.steps} steps of the real training loop (first "
             f"window dropped){'; torch.compile on' if args.compile else ''}", "",
             "| recipe | model | batch | precision | images/s | MFLOP/image | GFLOP/s | share of peak |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["spread"]
        lines.append(f"| {r['recipe']} | {r['model']} | {r['batch']} | {r['precision']} ({r['used']}) | "
                     f"{r['images_per_sec']:.0f} ({lo:.0f}-{hi:.0f}) | {r['mflop_per_image']:.1f} | {r['gflops']:.0f} "
                     f"| {100 * r['share_of_peak']:.1f}% |")
    lines += ["", MARKS[1]]
    if rows and not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
