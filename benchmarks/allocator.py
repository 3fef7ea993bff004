"""The allocator fix of issue 20, with and without, in the same run: sampling and training, each in a child.

    python benchmarks/allocator.py [--n 200] [--train-steps 200] [--repeats 2] [--model DIR] [--no-write]

Without ``--model`` it first trains a small but real diffusion model (``mnist5k-ddpm``, its recipe's UNet of
base_channels 16, ``--model-steps`` steps, tuned allocator) into a temporary directory. Then each workload runs
as ``genforge ...`` through ``genforge.cli.main`` in a fresh child process, alternating "glibc defaults"
(``GENFORGE_MALLOC=default``, the escape hatch) and "genforge tuning" (``genforge.memory.tune_allocator``,
which main() calls), ``--repeats`` times each:

- sample: ``genforge sample MODEL --n N --seed 0 --out X.npz`` (the pixels are compared: the tuning must not
  change them);
- train: ``genforge train mnist5k-ddpm --max-steps K`` (no validation, one checkpoint at the end).

For each child the parent reads wall time and, from ``os.wait4``'s rusage, user and system CPU seconds and minor
page faults. On a shared machine wall time moves with the other jobs' load; the page faults and the system
share of CPU time are properties of the process's own allocation pattern and hardly move with load, so they
are the figures to compare. Prints the machine facts first, then the table; writes it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402

SETTINGS = {"glibc defaults": {"GENFORGE_MALLOC": "default"}, "genforge tuning": {}}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any allocator choice of its own, plus ``extra``; the worktree first
    on the path so the children run this checkout's genforge."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GENFORGE_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def run_child(args: list[str], extra_env: dict[str, str]) -> dict[str, float]:
    """Run ``genforge ARGS`` in a child; its wall, user and system seconds and minor page faults."""
    cmd = [sys.executable, "-c", "import sys; from genforge.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(extra_env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}\n{err[-2000:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "system_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt}


def pixels_digest(path: Path) -> str:
    import numpy as np  # late: only to check that both settings made the same samples

    with np.load(path) as f:
        return hashlib.sha256(f["x"].tobytes()).hexdigest()[:16]


def measure(name: str, make_args, repeats: int) -> dict[str, dict]:
    """Alternate the settings ``repeats`` times (defaults first, then tuned, ...) so load drifts hit both."""
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    # one child first, not counted: the first run after an edit compiles .pyc files and fills the page cache
    run_child(make_args("glibc defaults", "warm-up")[0], SETTINGS["glibc defaults"])
    for r in range(repeats):
        for setting, env in SETTINGS.items():
            args, after = make_args(setting, r)
            row = run_child(args, env)
            if after:
                row.update(after())
            runs[setting].append(row)
            print(f"  {name} / {setting} #{r + 1}: wall {row['wall_s']:.1f} s, user {row['user_s']:.1f} s, "
                  f"system {row['system_s']:.1f} s, minor faults {row['minor_faults']:,}", flush=True)
    return runs


def summary(runs: list[dict]) -> dict[str, float]:
    """Medians over the repeats; the system share is of the child's own CPU time (user + system)."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "user_s", "system_s", "minor_faults")}
    med["system_share"] = statistics.median(r["system_s"] / max(r["user_s"] + r["system_s"], 1e-9) for r in runs)
    return med


def table(results: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Medians with the range over the children in brackets: on a shared machine the range shows the load."""
    def cell(rs, key, fmt):
        values = [r[key] for r in rs]
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    lines = ["| workload | allocator | wall s | user s | system s | system share | minor page faults | "
             "faults vs defaults |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for workload, runs in results.items():
        base = summary(runs["glibc defaults"])
        for setting, rs in runs.items():
            m = summary(rs)
            lines.append(f"| {workload} | {setting} | {cell(rs, 'wall_s', '{:.1f}')} | "
                         f"{cell(rs, 'user_s', '{:.1f}')} | "
                         f"{cell(rs, 'system_s', '{:.1f}')} | {100 * m['system_share']:.0f}% | "
                         f"{cell(rs, 'minor_faults', '{:,.0f}')} | {m['minor_faults'] / base['minor_faults']:.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model or run directory to sample (default: train mnist5k-ddpm first)")
    ap.add_argument("--model-steps", type=int, default=300, help="steps of the model trained first (default 300)")
    ap.add_argument("--n", type=int, default=200, help="images sampled per child (default 200)")
    ap.add_argument("--train-steps", type=int, default=200, help="steps of the timed training run (default 200)")
    ap.add_argument("--repeats", type=int, default=2, help="children per setting and workload (default 2)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    facts = print_machine()
    started = datetime.now(timezone.utc)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_args = ["--quiet", "--set", "eval_every=0", "--set", "sample_every=0", "--set", "log_every=50"]
        model = args.model
        if model is None:
            model = str(tmp / "model")
            print(f"training the model to sample: mnist5k-ddpm, {args.model_steps} steps", flush=True)
            run_child(["train", "mnist5k-ddpm", "--max-steps", str(args.model_steps), "--out", model,
                       *train_args], {})

        digests = {}

        def sample_args(setting, r):
            out = tmp / f"sample-{r}-{setting.replace(' ', '_')}.npz"
            return (["sample", model, "--n", str(args.n), "--seed", "0", "--out", str(out)],
                    lambda: {"digest": digests.setdefault((setting, r), pixels_digest(out))})

        def training_args(setting, r):
            out = tmp / f"train-{r}-{setting.replace(' ', '_')}"
            return (["train", "mnist5k-ddpm", "--max-steps", str(args.train_steps), "--out", str(out),
                     *train_args], None)

        results = {}
        sample_name = f"sample {args.n} (ddpm)"
        results[sample_name] = measure(sample_name, sample_args, args.repeats)
        same = len({d for d in digests.values()}) == 1
        print(f"  same pixels under both settings: {'yes' if same else 'NO'}")
        train_name = f"train {args.train_steps} steps (mnist5k-ddpm)"
        results[train_name] = measure(train_name, training_args, args.repeats)

    lines = table(results)
    print("\n".join(lines))
    if args.no_write:
        return
    command = command_line("allocator.py")
    section = [
        "<!-- allocator:start -->",
        "## Memory allocator: glibc defaults against genforge's tuning (`benchmarks/allocator.py`)",
        "",
        f"- machine: {describe(facts)}",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- command: `{command.strip()}`",
        "- each cell: the median of the children, their range in brackets (alternating settings after one "
        "uncounted warm-up child, each a fresh `genforge` process through `genforge.cli.main`); user, system and "
        "minor page faults from `os.wait4`'s rusage of the child",
        "- glibc defaults: `GENFORGE_MALLOC=default` (the escape hatch); genforge tuning: `genforge.memory."
        "tune_allocator()` (mallopt M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 256 MiB)",
        f"- the sampled pixels were {'identical' if same else 'NOT identical'} under both settings",
        "- the machine was shared with other jobs: wall and user seconds move with their load (OpenMP threads "
        "spin while they wait for a core, and that counts as user time); minor page faults and system seconds are "
        "the process's own allocation pattern and are the figures to compare",
        "",
        *lines,
        "",
        "<!-- allocator:end -->",
    ]
    write_section(ROOT / "benchmarks" / "RESULTS.md", "\n".join(section))


if __name__ == "__main__":
    main()
