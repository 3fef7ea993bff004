"""Which device a command runs its networks on: ``auto`` is CUDA when present, then Apple's MPS, then the CPU.

:func:`check_name` is torch-free (the CLI checks ``--device`` before importing torch); :func:`pick` turns a
checked name into a ``torch.device`` and refuses a device this machine does not have, naming it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from genforge.errors import GenforgeError

NAMES_TEXT = "auto, cpu, cuda, cuda:N or mps"
_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_name(name: str) -> str:
    """``name`` stripped and lower-cased, or a GenforgeError naming the accepted spellings."""
    text = str(name).strip().lower()
    if not _NAME.fullmatch(text):
        raise GenforgeError(f"device {name!r}: use {NAMES_TEXT}")
    return text


def pick(name: str = "auto"):
    """A ``torch.device`` for ``name`` (auto, cpu, cuda, cuda:N, mps); an error when it is not available here."""
    import torch  # late: check_name and the CLI's --help stay free of torch

    name = check_name(name)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenforgeError(f"device {name!r} asked for, but no CUDA device is available here (use auto or cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise GenforgeError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not has_mps:
        raise GenforgeError("device 'mps' asked for, but Apple's MPS is not available here (use auto or cpu)")
    return torch.device(name)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device) -> bool:
    """Whether ``device`` (a torch.device) computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX-BF16. Elsewhere bf16 is emulated, hundreds of times slower than fp32 matmul."""
    import torch  # late: check_name and the CLI's --help stay free of torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    return False


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def best_seconds(fn, repeats: int = 1, seconds: float = 0.0) -> float:
    """The shortest of timed calls of ``fn`` after one untimed warm-up (the first call picks and loads the
    kernels): at least ``repeats`` calls, and more until about ``seconds`` have passed."""
    fn()
    best, calls = float("inf"), 0
    end = time.perf_counter() + seconds
    while calls < repeats or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        calls += 1
    return best


def bf16_slowdown(n: int = 256) -> float:
    """How many times longer an n x n bfloat16 matrix product takes than the float32 one on this CPU (best of a
    few each), measured once per CPU, vector flags and torch version and kept in genforge's cache
    (``machine/bf16.json``). About 1 or below with native bfloat16; hundreds on AVX2-only machines."""
    import torch  # late: check_name and the CLI's --help stay free of torch

    from genforge.io import atomic_write_json, cache_dir

    flags = sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & cpu_flags())
    key = f"{cpu_name()} | {' '.join(flags)} | torch {torch.__version__} | n {n}"
    path = cache_dir("machine") / "bf16.json"
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)) and known[key] > 0:
        return float(known[key])
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = best_seconds(lambda: torch.mm(a, b), 5)
    a16, b16 = a.bfloat16(), b.bfloat16()
    ratio = best_seconds(lambda: torch.mm(a16, b16), 2) / max(fp32, 1e-9)
    try:
        atomic_write_json(path, {**known, key: ratio})
    except OSError:
        pass  # a read-only home: measured again next time, nothing else changes
    return ratio


# --------------------------------------------------------------------------- sharing the CPU with other work
#
# Two OpenMP thread teams on the same cores are a known trap (issue 20; issue 2 measured a 50x slowdown with two
# trainings at once). A torch parallel region ends only when its slowest thread does: with one thread per core
# and another CPU-bound process on one of the cores, that thread gets half a core and every region waits for
# it, and libgomp's default wait policy then spins the finished threads, taking CPU from the very process that
# holds the straggler. So when the cores are already busy at start, genforge (1) asks for OMP_WAIT_POLICY=
# PASSIVE (waiting threads sleep; set by the CLI before torch loads, as libgomp reads it once) and (2) runs one
# intra-op thread fewer per core the others keep busy. On a quiet machine nothing changes. An explicit
# OMP_WAIT_POLICY, num_threads, or GENFORGE_CONTENTION=off (both choices left alone) is the user's.

BUSY_SAMPLE_S = 0.1        # how long /proc/stat is watched at start: long enough to see a CPU-bound neighbour
_busy_others: float | None = None


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; None without it."""
    try:
        with open("/proc/stat") as f:
            values = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def _own_ticks() -> float | None:
    """This process's user + system clock ticks (threads included), from /proc/self/stat."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return float(fields[11]) + float(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def busy_by_others(seconds: float = BUSY_SAMPLE_S) -> float:
    """How many cores other processes keep busy now (0.0 to the core count), measured once per process over
    ``seconds`` from /proc/stat minus this process's own ticks; 0.0 where /proc cannot be read."""
    global _busy_others
    if _busy_others is not None:
        return _busy_others
    first, own_first = _cpu_ticks(), _own_ticks()
    time.sleep(seconds)
    last, own_last = _cpu_ticks(), _own_ticks()
    if first is None or last is None or last[1] <= first[1]:
        _busy_others = 0.0
        return _busy_others
    cores = os.cpu_count() or 1
    own = (own_last - own_first) if own_first is not None and own_last is not None else 0.0
    _busy_others = max(0.0, min(float(cores), (last[0] - first[0] - own) / (last[1] - first[1]) * cores))
    return _busy_others


def contention_enabled() -> bool:
    """False when GENFORGE_CONTENTION=off: one thread per core and libgomp's default waits, whatever the load."""
    return os.environ.get("GENFORGE_CONTENTION", "auto").strip().lower() != "off"


def threads_for(cores: int, busy_others: float) -> int:
    """Intra-op threads for ``cores`` usable cores of which others keep ``busy_others`` busy: one per core left
    free, at least one. A neighbour counts from half a core (a short burst of another process is not one)."""
    return max(1, cores - int(busy_others + 0.5))


def set_wait_policy_if_busy() -> str | None:
    """Before torch loads (the CLI's entry): OMP_WAIT_POLICY=PASSIVE when other processes keep at least half a
    core busy and the user set no policy. Returns the policy set, or None (also once torch is loaded: too late)."""
    if not contention_enabled() or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return None
    if busy_by_others() < 0.5:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"
