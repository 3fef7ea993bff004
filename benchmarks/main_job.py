"""The README's main job against a plain PyTorch DCGAN of the same width, in one run (issue 20).

    python benchmarks/main_job.py                          # 3 x 120 s of training each, 1000 samples scored
    python benchmarks/main_job.py --seconds 20 --repeats 1 --n 200 --no-write   # a smoke run

Each trainer runs ``--repeats`` times in fresh processes, alternating, on the same quiet machine (run k uses
seed k for both; 2-minute GAN runs vary by several percent in speed and more in recall, so medians are
compared):

- **genforge**: ``genforge train mnist5k-dcgan --out RUN --max-seconds S --set seed=K``, the README's command
  (its grids, checkpoints and validation included), then ``genforge.metrics.evaluate`` on the run, which samples
  the model ``genforge sample`` would load.
- **plain PyTorch**: the same networks written out here in about 40 lines (a 128 x 7 x 7 projection, 4x4
  stride-2 transposed convolutions 128 -> 64 -> 1 with BatchNorm and ReLU; convolutions 1 -> 32 -> 64 with
  LeakyReLU 0.2 and BatchNorm, one logit), the same batch (64), Adam (2e-4, betas 0.5 and 0.999), the
  non-saturating loss, and the same 5,000 digits' train split. It has no EMA, no checkpoints, no validation
  and no grids. Its samples go through the same ``evaluate``.

Set-up: seconds from the process's launch to the start of the training loop, read from outside: the launch
time, the moment the run's first ``metrics.jsonl`` line appears (polled every 20 ms), less the loop seconds
that line reports. images/s: real images read over the training loop's seconds (the last log line's). The
targets: set-up under 5 s, genforge's images/s at least the plain DCGAN's, and FID and recall at S seconds
no worse. Writes its section of ``benchmarks/RESULTS.md`` (``--no-write`` to print only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402

MARKS = ("<!-- main-job:start -->", "<!-- main-job:end -->")
SETUP_TARGET = 5.0
# what the plain DCGAN below is written for: mnist5k-dcgan's settings (checked against the recipe at start)
PLAIN_SETUP = {"model": "dcgan", "base_channels": 32, "z_dim": 100, "batch_size": 64, "g_lr": 2e-4, "d_lr": 2e-4,
               "g_betas": (0.5, 0.999), "d_betas": (0.5, 0.999), "gan_loss": "ns", "d_steps": 1}


def plain_dcgan(seconds: float, out: Path, n: int, seed: int) -> None:
    """The reference, run as a child process: train, then write ``samples.npz`` and ``metrics.jsonl``."""
    import numpy as np
    import torch
    from torch import nn

    from genforge.data import load_splits

    torch.manual_seed(seed)
    x = torch.from_numpy(load_splits("mnist5k").train.x).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    g = nn.Sequential(nn.Linear(100, 128 * 7 * 7, bias=False), nn.Unflatten(1, (128, 7, 7)), nn.BatchNorm2d(128),
                      nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                      nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
    d = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1, bias=False),
                      nn.BatchNorm2d(64), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64 * 7 * 7, 1))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    batch = PLAIN_SETUP["batch_size"]
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)
    log = (out / "metrics.jsonl").open("w")
    step, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for idx in torch.randperm(len(x)).split(batch):
            if len(idx) < batch or time.perf_counter() - start >= seconds:
                continue
            fake = g(torch.randn(batch, 100))
            loss_d = bce(d(x[idx]), ones) + bce(d(fake.detach()), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(d(fake), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            step += 1
            if step % 50 == 0:
                log.write(json.dumps({"step": step, "time": time.perf_counter() - start}) + "\n")
                log.flush()
    log.write(json.dumps({"step": step, "time": time.perf_counter() - start}) + "\n")
    log.close()
    g.eval()
    with torch.no_grad():
        images = g(torch.randn(n, 100, generator=torch.Generator().manual_seed(seed)))
    pixels = images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    np.savez(out / "samples.npz", x=pixels)


def timed(cmd: list[str], metrics: Path) -> dict:
    """Run ``cmd``; set-up seconds (launch to loop start), steps and loop seconds from its ``metrics.jsonl``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    launch = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_seen = None
    while proc.poll() is None and first_seen is None:
        if metrics.is_file() and metrics.read_text().strip():
            first_seen = time.perf_counter()
        else:
            time.sleep(0.02)
    err = proc.communicate()[1]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {err.strip().splitlines()[-1] if err.strip() else ''}")
    records = [json.loads(line) for line in metrics.open() if '"step"' in line]
    first = records[0]
    last = max(records, key=lambda r: r["step"])
    return {"setup_s": (first_seen or time.perf_counter()) - launch - first["time"], "steps": last["step"],
            "loop_s": last["time"], "wall_s": time.perf_counter() - launch}


def check_same_setup() -> None:
    """The plain DCGAN is written for the recipe as it stands: stop if the recipe has moved away from it."""
    from genforge.config import load_config

    cfg = load_config("mnist5k-dcgan")
    got = {"model": cfg.model, "base_channels": cfg.base_channels, "z_dim": cfg.z_dim, "batch_size": cfg.batch_size,
           "g_lr": cfg.g_lr, "d_lr": cfg.d_lr, "g_betas": tuple(cfg.g_betas), "d_betas": tuple(cfg.d_betas),
           "gan_loss": cfg.gan_loss, "d_steps": cfg.d_steps}
    if got != PLAIN_SETUP:
        raise SystemExit(f"mnist5k-dcgan is now {got}; the plain DCGAN here is written for {PLAIN_SETUP}")


def median_row(rows: list[dict]) -> dict:
    pick = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {"setup_s": pick("setup_s"), "steps": pick("steps"), "images_per_s": pick("images_per_s"),
            **{k: statistics.median(r["scores"][k] for r in rows) for k in ("fid", "precision", "recall")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="training seconds of each trainer")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternating (medians compared)")
    ap.add_argument("--n", type=int, default=1000, help="samples scored for each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--plain-child", metavar="DIR", help=argparse.SUPPRESS)  # the reference's own process
    args = ap.parse_args(argv)
    if args.plain_child:
        plain_dcgan(args.seconds, Path(args.plain_child), args.n, args.seed)
        return 0
    check_same_setup()
    facts = print_machine()
    from genforge.metrics import evaluate

    names = {"genforge": "genforge `mnist5k-dcgan` (the README's command)",
             "plain": "plain PyTorch DCGAN of the same width (written here)"}
    runs: dict[str, list[dict]] = {"genforge": [], "plain": []}
    real = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            run = Path(tmp) / f"quickstart-{i}"
            cmd = [sys.executable, "-m", "genforge", "train", "mnist5k-dcgan", "--out", str(run),
                   "--max-seconds", f"{args.seconds:g}", "--set", f"seed={args.seed + i}"]
            row = timed(cmd, run / "metrics.jsonl")
            result = evaluate(str(run), n=args.n, seed=args.seed, progress=False)
            real = result["rows"]["real"]
            runs["genforge"].append({**row, "scores": result["rows"]["samples"]})
            plain = Path(tmp) / f"plain-{i}"
            plain.mkdir()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-child", str(plain),
                   "--seconds", f"{args.seconds:g}", "--n", str(args.n), "--seed", str(args.seed + i)]
            row = timed(cmd, plain / "metrics.jsonl")
            result = evaluate(str(plain / "samples.npz"), data="mnist5k", n=args.n, seed=args.seed, progress=False)
            runs["plain"].append({**row, "scores": result["rows"]["samples"]})
            for key in runs:
                r = runs[key][-1]
                r["images_per_s"] = r["steps"] * PLAIN_SETUP["batch_size"] / r["loop_s"]
                print(f"run {i + 1}, {names[key]}: set-up {r['setup_s']:.1f} s, {r['steps']} steps, "
                      f"{r['images_per_s']:.0f} images/s, FID {r['scores']['fid']:.1f}, precision "
                      f"{r['scores']['precision']:.3f}, recall {r['scores']['recall']:.3f}", flush=True)
    lines = [MARKS[0], "## The README's main job against a plain PyTorch DCGAN (`benchmarks/main_job.py`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {describe(facts)}",
             f"- command: `{command_line('main_job.py')}`",
             f"- {args.repeats} runs of each, alternating, each {args.seconds:g} s in a fresh process; "
             f"{args.n} samples "
             f"(seed {args.seed}) scored by genforge's mnist5k evaluator against the test split; set-up: launch to "
             "the training loop's start; images/s over the training loop (genforge's grids, checkpoints and "
             "validation included)", "",
             "| trainer | run | set-up s | steps | images/s | FID | precision | recall |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    medians = {}
    for key, rows in runs.items():
        for i, r in enumerate(rows):
            sc = r["scores"]
            lines.append(f"| {names[key]} | {i + 1} | {r['setup_s']:.1f} | {r['steps']} | {r['images_per_s']:.0f} | "
                         f"{sc['fid']:.1f} | {sc['precision']:.3f} | {sc['recall']:.3f} |")
        m = medians[key] = median_row(rows)
        lines.append(f"| {names[key]} | **median** | {m['setup_s']:.1f} | {m['steps']:.0f} | {m['images_per_s']:.0f} | "
                     f"{m['fid']:.1f} | {m['precision']:.3f} | {m['recall']:.3f} |")
    lines.append(f"| real train images (reference row) | | | | | {real['fid']:.1f} | {real['precision']:.3f} | "
                 f"{real['recall']:.3f} |")
    ours, theirs = medians["genforge"], medians["plain"]
    checks = [("set-up under 5 s", ours["setup_s"] < SETUP_TARGET, f"{ours['setup_s']:.1f} s"),
              ("images/s at least the plain DCGAN's", ours["images_per_s"] >= theirs["images_per_s"],
               f"{ours['images_per_s'] / theirs['images_per_s']:.2f}x"),
              ("FID no worse", ours["fid"] <= theirs["fid"], f"{ours['fid']:.1f} against {theirs['fid']:.1f}"),
              ("recall no worse", ours["recall"] >= theirs["recall"],
               f"{ours['recall']:.3f} against {theirs['recall']:.3f}")]
    lines += ["", "Medians against medians:", "",
              *(f"- {name}: {got} ({'met' if ok else 'not met'})" for name, ok, got in checks), "", MARKS[1]]
    print("\n".join(lines[-len(checks) - 2:-1]))
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
