"""How the process allocates memory: glibc malloc kept from mapping and unmapping every tensor (issue 20).

PyTorch's CPU tensors come from ``malloc``. glibc serves a request of 128 KiB or more with its own ``mmap``
and gives it back with ``munmap`` when freed, and it returns the free top of the heap to the kernel
(``M_TRIM_THRESHOLD``) as soon as 128 KiB are free there. A network's activations are megabytes, allocated and
freed every step, so each step maps fresh pages and the kernel zeroes them on first touch: on a 2-core machine
sampling a diffusion model spent 7.2 of 49.7 s in the kernel with 3.3 million minor page faults, and a long
training run fell to a third of its speed with 44-48% of the CPU in the kernel. Keeping that memory mapped
(the tunables below) cut the faults 20-fold in the issue's measurement; ``benchmarks/allocator.py`` measures it.

:func:`tune_allocator` sets the tunables with ``mallopt`` (glibc's ``malloc.h``), the way
``MALLOC_MMAP_THRESHOLD_=... MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...`` in the environment would, but
without asking the user to export anything. The cost is resident memory: up to ``TRIM_THRESHOLD`` of freed
heap stays with the process instead of going back to the system until the process ends.

:class:`ProcessCounters` reads the process's page faults and CPU times from ``/proc/self/stat``, so a training
log can show a collapse of this kind (many faults per second, a large system-time share) as it happens.
"""

from __future__ import annotations

import ctypes
import os
import time

from genforge.errors import GenforgeError

# glibc malloc.h: #define M_TRIM_THRESHOLD -1, M_TOP_PAD -2, M_MMAP_THRESHOLD -3
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

# 32 MiB: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB * sizeof(long)); a
# request below it comes from the heap and its pages are reused after free. Larger ones are still mapped.
MMAP_THRESHOLD = 32 << 20
# 1 GiB of free heap top is kept before glibc trims it (mallopt takes an int, so at most 2 GiB - 1).
TRIM_THRESHOLD = 1 << 30
# each time the heap grows, 256 MiB more than asked for, so growth is rare rather than every step
TOP_PAD = 256 << 20

ESCAPE_ENV = "GENFORGE_MALLOC"  # GENFORGE_MALLOC=default leaves glibc's defaults alone

_result: dict[str, object] | None = None


def tune_allocator() -> dict[str, object]:
    """Set glibc's malloc tunables for tensor-sized allocations, once per process; later calls return the
    first call's result without touching anything.

    Returns ``{"applied": {"M_MMAP_THRESHOLD": 33554432, ...}, "reason": "..."}``: ``applied`` names each
    tunable set and its value (empty when nothing was set) and ``reason`` says why. Nothing is set on a system
    without glibc (macOS, musl, Windows), when ``GENFORGE_MALLOC=default``, when the user chose an allocator
    themselves (any ``MALLOC_*`` variable, ``glibc.malloc`` in ``GLIBC_TUNABLES``, or an allocator in
    ``LD_PRELOAD`` such as jemalloc or tcmalloc): their choice wins. Any other value of ``GENFORGE_MALLOC`` is
    a GenforgeError naming it.
    """
    global _result
    if _result is None:
        _result = _tune(os.environ)
    return _result


def _tune(environ) -> dict[str, object]:
    choice = environ.get(ESCAPE_ENV, "").strip().lower()
    if choice == "default":
        return {"applied": {}, "reason": f"{ESCAPE_ENV}=default: glibc's defaults kept"}
    if choice:
        raise GenforgeError(f"{ESCAPE_ENV}={environ[ESCAPE_ENV]!r}: use 'default' to keep glibc's malloc "
                            "defaults, or unset it to let genforge tune them")
    user = sorted(k for k in environ if k.startswith("MALLOC_"))
    if user:
        return {"applied": {}, "reason": f"the environment sets {', '.join(user)}: the user's choice kept"}
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return {"applied": {}, "reason": "GLIBC_TUNABLES sets glibc.malloc: the user's choice kept"}
    if "malloc" in environ.get("LD_PRELOAD", ""):  # libjemalloc.so, libtcmalloc.so: glibc's malloc unused
        return {"applied": {}, "reason": "LD_PRELOAD names another allocator: left alone"}
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; None or ValueError where there is none
    except (ValueError, OSError):
        glibc = None
    if not glibc:
        return {"applied": {}, "reason": "not glibc: nothing to tune"}
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = {}
    # the mmap threshold first: setting it also turns off glibc's sliding threshold, which would otherwise move
    for name, param, value in (("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                               ("M_TOP_PAD", M_TOP_PAD, TOP_PAD)):
        if mallopt(param, value) == 1:  # mallopt returns 1 on success, 0 when glibc refuses the value
            applied[name] = value
    return {"applied": applied, "reason": "set by genforge (GENFORGE_MALLOC=default to keep glibc's defaults)"}


def read_counters() -> dict[str, float] | None:
    """This process's cumulative minor and major page faults and user and system CPU seconds, from
    ``/proc/self/stat`` (fields 10, 12, 14, 15); None where there is no /proc (macOS, Windows)."""
    try:
        with open("/proc/self/stat") as f:
            text = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing one
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    return {"minor_faults": float(fields[7]), "major_faults": float(fields[9]),
            "user_s": int(fields[11]) / ticks, "system_s": int(fields[12]) / ticks}


class ProcessCounters:
    """Page faults per second and the system-time share of this process's CPU time since the last call, for a
    training log: a run whose allocator maps and unmaps memory shows tens of thousands of faults per second and
    a system share of tens of percent, where a healthy one shows a few hundred and a few percent."""

    def __init__(self):
        self.last = read_counters()
        self.last_time = time.monotonic()

    def delta(self) -> dict[str, float]:
        """``{"page_faults": ..., "page_faults_per_s": ..., "system_share": ...}`` (minor and major faults)
        since the previous call (or creation); empty where /proc cannot be read or no time has passed."""
        now, at = read_counters(), time.monotonic()
        before, before_at = self.last, self.last_time
        self.last, self.last_time = now, at
        if now is None or before is None or at <= before_at:
            return {}
        faults = (now["minor_faults"] + now["major_faults"]) - (before["minor_faults"] + before["major_faults"])
        cpu = (now["user_s"] - before["user_s"]) + (now["system_s"] - before["system_s"])
        out = {"page_faults": int(faults), "page_faults_per_s": round(faults / (at - before_at), 1)}
        if cpu > 0:
            out["system_share"] = round((now["system_s"] - before["system_s"]) / cpu, 4)
        return out


_log_counters: ProcessCounters | None = None


def counters_since_last_log() -> dict[str, float]:
    """``{"page_faults_per_s": ..., "system_share": ...}`` since the previous call in this process (the first
    call: since the process started), for one line of ``metrics.jsonl``; empty where there is no /proc."""
    global _log_counters
    if _log_counters is None:
        _log_counters = ProcessCounters()
        _log_counters.last = {"minor_faults": 0.0, "major_faults": 0.0, "user_s": 0.0, "system_s": 0.0}
        _log_counters.last_time = time.monotonic() - _process_age()
    got = _log_counters.delta()
    got.pop("page_faults", None)
    return got


def _process_age() -> float:
    """Seconds since this process started (field 22 of /proc/self/stat, in clock ticks since boot)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return max(float(f.read().split()[0]) - started, 1e-3)
    except (OSError, ValueError, IndexError):
        return 1.0
