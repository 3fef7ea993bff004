"""Training beside another CPU-bound process (issue 20): images/s against the same training on a quiet machine.

    python benchmarks/contention.py                               # mnist5k-dcgan, 60 s a run, numpy neighbour
    python benchmarks/contention.py --recipes mnist5k-dcgan fashion-sngan --seconds 120 --background sklearn
    python benchmarks/contention.py --background genforge         # the neighbour is a second genforge training

For each recipe, ``genforge train`` runs for ``--seconds`` (validation off) three times, each in a fresh
process: alone (quiet); beside the neighbour with genforge's own choice (``GENFORGE_CONTENTION=auto``: when
other processes keep cores busy at start, one intra-op thread fewer per busy core and
``OMP_WAIT_POLICY=PASSIVE``; genforge/devices.py); and beside it as before that choice
(``GENFORGE_CONTENTION=off``: one thread per core, libgomp's default spinning waits). The neighbour runs at
the lowest priority (``nice -n 19``), as in the issue, with its own threads (one per core): a numpy matrix
product loop, a scikit-learn k-means loop, or another genforge training of the same recipe. It starts a few
seconds before genforge, so genforge's start-of-run check can see it.

images/s: the median over the run's ``metrics.jsonl`` lines, the first (set-up, warm-up) dropped. The target:
beside the neighbour, at least 40% of the quiet images/s on 2 cores. Writes the table into
``benchmarks/RESULTS.md`` (``--no-write`` to print only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import as_flags, command_line, train_settings, write_section  # noqa: E402
from benchmarks.machine import describe, print_machine  # noqa: E402

MARKS = ("<!-- contention:start -->", "<!-- contention:end -->")
TARGET = 0.40
NEIGHBOURS = {
    "numpy": "import numpy as np\na = np.random.rand(1024, 1024)\nwhile True:\n    a = (a @ a) / 1024\n",
    "sklearn": ("import numpy as np\nfrom sklearn.cluster import KMeans\nx = np.random.rand(50000, 32)\n"
                "while True:\n    KMeans(n_clusters=16, n_init=1, max_iter=50).fit(x)\n"),
}


def start_neighbour(kind: str, recipe: str, tmp: Path) -> subprocess.Popen:
    """The background CPU-bound process at nice 19, in its own process group (stopped with its children)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kind == "genforge":
        cmd = [sys.executable, "-m", "genforge", "train", recipe, "--out", str(tmp / "neighbour"), "--quiet",
               *as_flags(train_settings())]
    else:
        cmd = [sys.executable, "-c", NEIGHBOURS[kind]]
    return subprocess.Popen(["nice", "-n", "19", *cmd], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def train_rate(recipe: str, seconds: float, contention: str, tmp: Path, name: str) -> tuple[float, str]:
    """Median images/s of ``genforge train recipe`` for ``seconds``, and the threads note it logged (if any)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), GENFORGE_CONTENTION=contention)
    env.pop("OMP_WAIT_POLICY", None)
    run = tmp / name
    cmd = [sys.executable, "-m", "genforge", "train", recipe, "--out", str(run),
           *as_flags(train_settings(seconds, log_every=10))]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "training failed")
    rates = [json.loads(line)["images_per_sec"] for line in (run / "metrics.jsonl").open()]
    note = next((line.split("genforge: ", 1)[1] for line in done.stderr.splitlines()
                 if "core(s) busy: training on" in line), "")
    return (statistics.median(rates[1:]) if len(rates) > 1 else rates[0]), note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=["mnist5k-dcgan"])
    ap.add_argument("--seconds", type=float, default=60.0, help="training seconds per run")
    ap.add_argument("--background", nargs="+", choices=["numpy", "sklearn", "genforge"], default=["numpy"],
                    help="the neighbour(s): each recipe is measured beside each in turn")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    facts = print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for recipe in args.recipes:
            quiet, _ = train_rate(recipe, args.seconds, "auto", tmp, f"{recipe}-quiet")
            print(f"{recipe}: quiet {quiet:.0f} images/s", flush=True)
            for background in args.background:
                for contention in ("auto", "off"):
                    neighbour = start_neighbour(background, recipe, tmp)
                    try:
                        time.sleep(3.0)  # the neighbour is up and busy before genforge looks at the cores
                        busy, note = train_rate(recipe, args.seconds, contention, tmp,
                                                f"{recipe}-{background}-{contention}")
                    finally:
                        stop(neighbour)
                    ratio = busy / quiet
                    rows.append({"recipe": recipe, "background": background, "contention": contention,
                                 "quiet": quiet, "busy": busy, "ratio": ratio, "note": note})
                    print(f"{recipe}: beside {background} (GENFORGE_CONTENTION={contention}) {busy:.0f} images/s = "
                          f"{100 * ratio:.0f}% of quiet (target >= {100 * TARGET:.0f}%: "
                          f"{'met' if ratio >= TARGET else 'not met'}){'; ' + note if note else ''}", flush=True)
    lines = [MARKS[0], "## Training beside another CPU-bound process (`benchmarks/contention.py`)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- machine: {describe(facts)}",
             f"- command: `{command_line('contention.py', argv)}`",
             "- neighbour at nice 19, started 3 s before (numpy: a matrix-product loop; sklearn: k-means; genforge: "
             f"a second training of the same recipe); each run {args.seconds:g} s, median "
             "images/s of its log lines (first dropped)",
             "- auto: genforge's choice (fewer threads, OMP_WAIT_POLICY=PASSIVE when cores are busy at start); off: "
             "one thread per core, libgomp's default waits", "",
             "| recipe | neighbour | GENFORGE_CONTENTION | quiet images/s | beside neighbour | share of quiet | "
             "genforge's note |", "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['background']} | {r['contention']} | {r['quiet']:.0f} | {r['busy']:.0f} | "
                     f"{100 * r['ratio']:.0f}% | {r['note'] or '-'} |")
    lines += ["", f"Target: at least {100 * TARGET:.0f}% of quiet beside the neighbour.", "", MARKS[1]]
    if rows and not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", "\n".join(lines))
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
