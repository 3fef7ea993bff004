"""Fuzzing measured: every fuzz test of tests/test_fuzz.py with many more cases than CI runs.

    flock /tmp/genforge-cpu.lock python benchmarks/fuzz.py [--examples 1000] [--no-write]

Runs each property of ``tests/test_fuzz.py`` (IDX, image folder, npz, safetensors, model config, recipe
config, encrypted files, key files) with ``--examples`` cases and fresh randomness, counts the cases each
ran and how they ended (loaded, or refused with a GenforgeError), and writes the table into
benchmarks/RESULTS.md. A case that raises anything else is a bug: it is printed with hypothesis's
reproduction blob, and the script exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.machine import print_machine  # noqa: E402
MARK = ("<!-- fuzzing:start -->", "<!-- fuzzing:end -->")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="cases per fuzz test (CI runs 60)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    os.environ["GENFORGE_FUZZ_EXAMPLES"] = str(args.examples)  # read by tests/test_fuzz.py at import: random
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "tests"))
    fuzz = importlib.import_module("test_fuzz")
    from benchmarks.common import write_section
    from genforge.devices import cpu_name

    tests = [(name, fn) for name, fn in vars(fuzz).items() if name.startswith("test_") and hasattr(fn, "hypothesis")]
    rows, failed, t_all = [], 0, time.perf_counter()
    for name, fn in tests:
        cases = [0]
        inner = fn.hypothesis.inner_test

        def counting(*a, _inner=inner, _cases=cases, **kw):
            _cases[0] += 1
            return _inner(*a, **kw)

        fn.hypothesis.inner_test = counting
        fuzz.OUTCOMES.clear()
        t0 = time.perf_counter()
        try:
            fn()
            verdict = "no crash"
        except BaseException as e:  # noqa: BLE001  the finding itself: report it and go on
            failed += 1
            verdict = f"**{type(e).__name__}**"
            traceback.print_exc()
        finally:
            fn.hypothesis.inner_test = inner
        seconds = time.perf_counter() - t0
        rows.append((name.removeprefix("test_"), cases[0], fuzz.OUTCOMES["loaded"], fuzz.OUTCOMES["refused"], seconds,
                     verdict))
        print(f"{name}: {cases[0]} cases in {seconds:.1f} s ({fuzz.OUTCOMES['loaded']} loaded, "
              f"{fuzz.OUTCOMES['refused']} refused): {verdict}", flush=True)
    total = time.perf_counter() - t_all

    lines = [MARK[0], "## Fuzzing (`benchmarks/fuzz.py`)", "",
             f"- machine: {cpu_name()}, torch {torch.__version__}, {platform.python_version()}, one thread",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `flock /tmp/genforge-cpu.lock python benchmarks/fuzz.py --examples {args.examples}`",
             "- hypothesis, fresh randomness; each case starts from a valid file and mutates it (or builds a valid "
             "container with hostile contents). \"loaded\" and \"refused\" count reader calls (some cases call two "
             "readers, some stop earlier; the calls on each test's unmutated seeds, which must load, are included); "
             "any exception other than a GenforgeError, a refused seed, or a run in which no case was refused "
             "(or, where required, none loaded) is a failure. CI runs the same "
             "tests with 60 derandomized cases each (`pytest tests/test_fuzz.py`).",
             f"- total: {sum(r[1] for r in rows)} cases in {total:.0f} s, {failed} failing tests", "",
             "| fuzz test | cases | loaded | refused | seconds | result |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {n} | {c} | {lo} | {rf} | {s:.1f} | {v} |" for n, c, lo, rf, s, v in rows]
    lines += ["", MARK[1]]
    print("\n".join(lines))
    if not args.no_write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", "\n".join(lines), MARK)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
