"""Sharing the CPU: fewer threads and sleeping OpenMP waits when other processes keep cores busy at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from genforge import devices


@pytest.mark.parametrize("cores, busy, threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1),
                                                  (16, 3.2, 13), (1, 1.0, 1)])
def test_threads_leave_the_cores_others_keep_busy(cores, busy, threads):
    assert devices.threads_for(cores, busy) == threads


def _policy(env_extra: dict, busy: float) -> str:
    """set_wait_policy_if_busy in a fresh interpreter (torch not loaded), with busy_by_others fixed."""
    code = ("import os, genforge.devices as d; d.busy_by_others = lambda: %r; d.set_wait_policy_if_busy(); "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))" % busy)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GENFORGE_CONTENTION")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_wait_policy_is_passive_only_when_busy_and_never_overrides_the_user():
    assert _policy({}, busy=1.0) == "PASSIVE"
    assert _policy({}, busy=0.2) == "unset"                                   # a quiet machine: nothing changes
    assert _policy({"OMP_WAIT_POLICY": "ACTIVE"}, busy=1.0) == "ACTIVE"       # the user's choice
    assert _policy({"GENFORGE_CONTENTION": "off"}, busy=1.0) == "unset"


def test_set_threads_follows_the_measured_load_unless_told(monkeypatch):
    import torch

    from genforge.training.loop import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("GENFORGE_CONTENTION", "auto")
        monkeypatch.setattr(devices, "busy_by_others", lambda: 64.0)
        assert set_threads(0) == 1 == torch.get_num_threads()                  # every core busy: one thread
        assert set_threads(3) == 3                                              # num_threads given: kept
        monkeypatch.setenv("GENFORGE_CONTENTION", "off")
        assert set_threads(0) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_busy_by_others_reads_proc_stat_once_per_process(monkeypatch):
    monkeypatch.setattr(devices, "_busy_others", None)
    ticks = iter([(100.0, 400.0), (250.0, 600.0)])  # 150 busy of 200 ticks on all CPUs
    monkeypatch.setattr(devices, "_cpu_ticks", lambda: next(ticks))
    own = iter([10.0, 60.0])                         # 50 of them ours
    monkeypatch.setattr(devices, "_own_ticks", lambda: next(own))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert devices.busy_by_others(seconds=0.0) == pytest.approx(1.0)  # (150 - 50) / 200 x 2 cores
    assert devices.busy_by_others(seconds=0.0) == pytest.approx(1.0)  # cached: no second reading
