"""What machine a benchmark ran on, measured in the same run: fp32 matmul GFLOP/s and the CPU's vector flags.

    python benchmarks/machine.py

Every benchmark calls :func:`print_machine` first (issue 20), so a figure in RESULTS.md can be read against
the machine that produced it: a recipe's images/s means little without the matmul peak it had to work with,
and bf16 rows depend on avx512_bf16 / amx_bf16 (without them bf16 is emulated, far slower than fp32).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genforge.devices import best_seconds, cpu_flags, cpu_name  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def mm_seconds(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """The best time of repeated fp32 ``torch.mm`` of (m, k) by (k, n) over about ``seconds``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    return best_seconds(lambda: torch.mm(a, b, out=out), seconds=seconds)


def matmul_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    """fp32 GFLOP/s of the best of repeated ``torch.mm`` of two n x n matrices over about ``seconds``: the most
    this machine's cores do now (on a shared machine, what the other jobs leave)."""
    return 2 * n**3 / mm_seconds(n, n, n, seconds) / 1e9


def machine_facts(seconds: float = 1.0) -> dict[str, object]:
    """{"cpu", "cores", "torch_threads", "torch", "fp32_matmul_gflops", "flags": {name: bool}}."""
    flags = cpu_flags()
    cpu = cpu_name()
    if cpu == "unknown CPU":
        cpu = platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "fp32_matmul_gflops": round(matmul_gflops(seconds), 1),
            "flags": {name: name in flags for name in FLAGS}}


def describe(facts: dict[str, object]) -> str:
    """One line for a report: cpu, cores, threads, torch, the measured peak and the flags."""
    flags = " ".join(f"{name}={'yes' if have else 'no'}" for name, have in facts["flags"].items())
    return (f"{facts['cpu']}, {facts['cores']} cores, {facts['torch_threads']} torch threads, torch "
            f"{facts['torch']}; fp32 matmul {facts['fp32_matmul_gflops']:.0f} GFLOP/s (measured now); {flags}")


def print_machine(seconds: float = 1.0) -> dict[str, object]:
    """Measure and print the machine facts; returns them for the caller's report."""
    facts = machine_facts(seconds)
    print(f"machine: {describe(facts)}", flush=True)
    return facts


if __name__ == "__main__":
    print_machine()
