"""Where a training step's time goes: torch.profiler over the real ``train_step`` of a recipe.

    python benchmarks/step_profile.py [--recipes mnist5k-vae-mlp mnist5k-gan-mlp] [--steps 50]

For each recipe it builds the networks and the family's Trainer exactly as the loop does, warms up, then
profiles ``--steps`` calls of ``train_step`` on a real batch. The operators' self CPU time is grouped into
matrix products, convolutions, elementwise and normalization work, the optimizer, and the rest; what the
operators do not account for of the wall time is Python and dispatch overhead. The default recipes are the
fastest of the throughput table (``mnist5k-vae-mlp``) and the reference GAN (``mnist5k-gan-mlp``).

Prints the breakdown and writes it into ``benchmarks/RESULTS.md`` (section ``profile``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.devices import cpu_name  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.data import load_splits, to_tensor  # noqa: E402
from genforge.models import MODELS, build_networks, d_options  # noqa: E402
from genforge.training.loop import set_threads  # noqa: E402

MARKS = ("<!-- profile:start -->", "<!-- profile:end -->")
# operator name fragments -> group; the first match wins, so the specific names come first
GROUPS = [("optimizer (Adam)", ("adam",)),
          ("matrix products", ("addmm", "::mm", "bmm", "matmul", "linear")),
          ("convolutions", ("conv", "mkldnn")),
          ("normalization", ("batch_norm", "native_batch_norm", "group_norm", "layer_norm")),
          ("elementwise and activations", ("leaky", "relu", "tanh", "sigmoid", "mul", "add", "sub", "div", "exp",
                                           "log", "pow", "sqrt", "where", "threshold", "neg", "clamp", "binary_cross",
                                           "softplus", "mse", "rsub", "lerp", "fill", "zero", "copy", "randn",
                                           "normal", "uniform", "bernoulli")),
          ("reductions", ("sum", "mean", "max", "min", "norm")),
          ("memory and views", ("empty", "view", "reshape", "cat", "chunk", "split", "transpose", "permute",
                                "expand", "contiguous", "clone", "stack", "slice", "select", "as_strided",
                                "unsqueeze", "squeeze", "detach", "_to_copy"))]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other operators"


def profile_recipe(recipe: Path, steps: int) -> dict:
    cfg = load_config(recipe)
    splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels)
    spec = MODELS[cfg.model]
    k = splits.num_classes if spec.conditional else 0
    torch.manual_seed(cfg.seed)
    nets = build_networks(cfg.model, splits.image_shape, cfg.z_dim, cfg.base_channels, k, d_opts=d_options(cfg))
    trainer = spec.method.Trainer(cfg, nets)
    per_step = cfg.batch_size * (cfg.d_steps if spec.method.__name__.endswith("gan") else 1)
    x = to_tensor(splits.train.x[:per_step], spec.method.VALUE_RANGE)
    y = torch.as_tensor(splits.train.y[:per_step]) if k else None
    noise = torch.Generator().manual_seed(0)
    for _ in range(10):  # warm-up: oneDNN primitive caches, allocator
        trainer.train_step(x, y, noise)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step(x, y, noise)
    wall = time.perf_counter() - t0
    # self time of every operator: nested calls are not counted twice
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("ProfilerStep") or ev.self_cpu_time_total <= 0:
            continue
        by_group[group_of(ev.key)] += ev.self_cpu_time_total / 1e6
        by_op[ev.key] += ev.self_cpu_time_total / 1e6
    ops = sum(by_group.values())
    # the profiler itself slows the step down: time a clean run of the same steps for the images/s figure
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, y, noise)
    clean = time.perf_counter() - t0
    return {"recipe": recipe.stem, "model": cfg.model, "batch": per_step, "steps": steps, "wall": wall,
            "clean": clean, "images_per_sec": steps * per_step / clean, "groups": dict(by_group),
            "overhead": max(wall - ops, 0.0), "top": sorted(by_op.items(), key=lambda kv: -kv[1])[:8]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=["mnist5k-vae-mlp", "mnist5k-gan-mlp"])
    ap.add_argument("--steps", type=int, default=50, help="profiled training steps per recipe (default 50)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    threads = set_threads(0)
    lines = [MARKS[0], "## Where the time goes (`benchmarks/step_profile.py`)", "",
             f"- command: `{command_line('step_profile.py')}`",
             f"- machine: {os.cpu_count()} cores ({cpu_name()}), {threads} torch threads, torch {torch.__version__}",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "- torch.profiler over the family's `train_step` (D then G for GANs, the ELBO for VAEs) on one real "
             "batch; operators' self CPU time on the calling thread, grouped by kind; the share of wall time no "
             "operator accounts for is Python and dispatch overhead. Profiled wall time is longer than a clean "
             "run's (the profiler's own cost): the images/s column is from a clean run of the same steps", ""]
    for name in args.recipes:
        r = profile_recipe(ROOT / "genforge" / "recipes" / f"{name}.yaml", args.steps)
        shares = {g: t / r["wall"] for g, t in r["groups"].items()}
        shares["Python and dispatch overhead"] = r["overhead"] / r["wall"]
        print(f"{name}: {r['images_per_sec']:.0f} images/s (clean), profiled wall {r['wall']:.2f} s")
        lines += [f"### {name} (`{r['model']}`, {r['batch']} images per step, {r['steps']} steps, "
                  f"{r['images_per_sec']:.0f} images/s unprofiled)", "", "| where | share of wall time |", "|---|---:|"]
        for group, share in sorted(shares.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {group} | {100 * share:.1f}% |")
            print(f"  {group:<32} {100 * share:5.1f}%")
        lines += ["", "Top operators by self time: " + ", ".join(
            f"`{op}` {100 * t / r['wall']:.1f}%" for op, t in r["top"]) + ".", ""]
    lines.append(MARKS[1])
    section = "\n".join(lines)
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, MARKS)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    else:
        print(section)


if __name__ == "__main__":
    main()
