"""genforge.memory: the glibc malloc tuning of issue 20 and the page-fault counters for the training log.

mallopt changes the whole process's allocator and cannot be undone, so every check of tune_allocator runs in a
child process with the environment it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genforge import memory
from genforge.errors import GenforgeError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DDPM = Path(__file__).parent / "fixtures" / "legacy" / "models" / "ddpm"
EXPECTED = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 256 << 20}

try:
    GLIBC = bool(os.confstr("CS_GNU_LIBC_VERSION"))
except (ValueError, OSError):
    GLIBC = False
glibc_only = pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any allocator choice, this checkout first on the path, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GENFORGE_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def child(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; the JSON it prints on its last line."""
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(**env), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TUNE_TWICE = """
import json
from genforge.memory import tune_allocator
first = tune_allocator()
second = tune_allocator()
print(json.dumps({"first": first, "same_object": first is second}))
"""


@glibc_only
def test_tune_allocator_sets_the_three_tunables_once():
    got = child(TUNE_TWICE)
    assert got["first"]["applied"] == EXPECTED  # glibc accepted every value (mallopt returned 1)
    assert got["same_object"]  # the second call changes nothing and reports the first call's result


@glibc_only
def test_escape_hatch_keeps_glibc_defaults():
    got = child(TUNE_TWICE, GENFORGE_MALLOC="default")
    assert got["first"]["applied"] == {}
    assert "GENFORGE_MALLOC=default" in got["first"]["reason"]


@pytest.mark.parametrize("env, named", [
    ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
    ({"MALLOC_CONF": "dirty_decay_ms:-1"}, "MALLOC_CONF"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
])
def test_the_users_own_allocator_choice_wins(env, named):
    got = child(TUNE_TWICE, **env)
    assert got["first"]["applied"] == {}
    assert named in got["first"]["reason"]


def test_an_unknown_escape_value_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(memory, "_result", None)
    monkeypatch.setenv("GENFORGE_MALLOC", "jemalloc")
    with pytest.raises(GenforgeError, match=r"GENFORGE_MALLOC='jemalloc': use 'default'"):
        memory.tune_allocator()
    assert memory._result is None  # nothing decided, nothing set


@glibc_only
def test_loading_a_model_from_python_tunes_the_allocator():
    # genforge.load is the way in for sampling, evaluation and the server when called from Python, not the CLI
    got = child(f"""
import json, genforge
from genforge import memory
assert memory._result is None  # importing genforge does not touch the allocator
genforge.load({str(FIXTURE_DDPM)!r})
print(json.dumps(memory._result))
""")
    assert got["applied"] == EXPECTED


SAMPLE_THREE_TIMES = f"""
import json, genforge
from genforge.memory import read_counters
model = genforge.load({str(FIXTURE_DDPM)!r})
faults = []
for _ in range(3):
    before = read_counters()
    model.sample(200, seed=0)
    faults.append(read_counters()["minor_faults"] - before["minor_faults"])
print(json.dumps(faults))
"""


@glibc_only
def test_sampling_again_with_the_tuning_reuses_its_memory():
    # issue 20: with glibc's defaults the activations of a sampling batch are fresh mmaps that the kernel
    # zero-fills page by page, on every call; with the tuning the first call maps what it needs and later calls
    # reuse it. Measured on the shared 2-core machine, 200 samples of this fixture per call, 3 children each:
    # defaults 114,382 to 823,600 minor faults per call, every call (the count varies with glibc's sliding mmap
    # threshold, so a bare tuned-against-defaults ratio of whole processes can pass by luck: it did, with the
    # tuning switched off); tuned 15,034 to 18,853 on the first call, then 0 to 918. Repeated calls are the
    # deterministic property: 0.25 leaves a wide margin on both sides. The defaults' later calls are not: once
    # glibc's sliding threshold has risen they may reuse too (2026-12-06, one full-suite run: defaults 75,676,
    # then 2,418 and 0), so the defaults are compared by what a call maps fresh, their first.
    untuned = child(SAMPLE_THREE_TIMES, GENFORGE_MALLOC="default")
    tuned = child(SAMPLE_THREE_TIMES)
    again = (tuned[1] + tuned[2]) / 2
    assert again < 0.25 * tuned[0], (tuned, untuned)  # reused, not mapped again
    assert again < 0.25 * untuned[0], (tuned, untuned)


def fresh_pages(size: int = 64 << 20) -> None:
    """Touch ``size`` bytes of fresh anonymous memory, one write per page: each page a minor fault, whatever
    the allocator kept from earlier tests (malloc'd bytes could reuse a heap the tuning keeps)."""
    import mmap

    with mmap.mmap(-1, size) as m:
        for offset in range(0, size, mmap.PAGESIZE):
            m[offset] = 1


def test_process_counters_see_touched_memory():
    counters = memory.ProcessCounters()
    fresh_pages()  # 64 MiB: 16,384 fresh 4 KiB pages
    got = counters.delta()
    if not got:
        pytest.skip("no /proc/self/stat here")
    assert got["page_faults"] >= 10_000
    assert got["page_faults_per_s"] > 0
    assert 0.0 <= got.get("system_share", 0.0) <= 1.0
    assert counters.delta()["page_faults"] < got["page_faults"]  # a delta, not the running total


def test_counters_for_the_training_log_cover_the_time_since_the_previous_line(monkeypatch):
    monkeypatch.setattr(memory, "_log_counters", None)
    first = memory.counters_since_last_log()  # since the process started: this pytest run has faulted a lot
    if not first:
        pytest.skip("no /proc/self/stat here")
    assert set(first) == {"page_faults_per_s", "system_share"}
    assert first["page_faults_per_s"] > 0
    fresh_pages()
    second = memory.counters_since_last_log()
    assert second["page_faults_per_s"] > 0 and 0.0 <= second["system_share"] <= 1.0
