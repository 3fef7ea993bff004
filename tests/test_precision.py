"""Machine-aware precision: auto picks fp32 on a CPU; bf16 asked where the CPU lacks native bfloat16 is a
warning that quotes the slowdown measured on this CPU, measured once and cached."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genforge import devices
from genforge.config import from_dict
from genforge.training.loop import resolve_precision


def test_bf16_slowdown_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    ratio = devices.bf16_slowdown(n=64)
    assert math.isfinite(ratio) and ratio > 0
    cached = json.loads((tmp_path / "machine" / "bf16.json").read_text())
    assert list(cached.values()) == [ratio]
    assert f"torch {torch.__version__}" in next(iter(cached)) and devices.cpu_name() in next(iter(cached))

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the cache holds this machine's ratio")

    monkeypatch.setattr(torch, "mm", no_measuring)
    assert devices.bf16_slowdown(n=64) == ratio
    with pytest.raises(AssertionError, match="measured again"):
        devices.bf16_slowdown(n=32)  # another size is another measurement


@pytest.mark.parametrize("text", ["not json{", "[1, 2]", '{"x": "y"}'])
def test_a_damaged_cache_is_measured_again_and_rewritten(tmp_path, monkeypatch, text):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    (tmp_path / "machine").mkdir()
    (tmp_path / "machine" / "bf16.json").write_text(text)
    ratio = devices.bf16_slowdown(n=64)
    assert ratio > 0
    assert ratio in json.loads((tmp_path / "machine" / "bf16.json").read_text()).values()


def _resolve(precision: str, native: bool, monkeypatch) -> tuple[str, list[str]]:
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    monkeypatch.setattr(devices, "bf16_slowdown", lambda: 312.4)
    said: list[str] = []
    got = resolve_precision(from_dict({"model": "dcgan", "precision": precision}), torch.device("cpu"), said.append)
    return got, said


def test_bf16_without_native_support_warns_with_the_measured_ratio(monkeypatch):
    got, said = _resolve("bf16", native=False, monkeypatch=monkeypatch)
    assert got == "bf16"  # the user's explicit choice is kept
    assert len(said) == 1 and "no native bfloat16" in said[0] and "312x slower than fp32" in said[0]
    assert "auto picks fp32" in said[0]


@pytest.mark.parametrize("precision, native, expected", [("auto", False, "fp32"), ("auto", True, "fp32"),
                                                          ("bf16", True, "bf16"), ("fp32", False, "fp32")])
def test_no_warning_where_the_choice_is_sound(monkeypatch, precision, native, expected):
    got, said = _resolve(precision, native, monkeypatch)
    assert (got, said) == (expected, [])
