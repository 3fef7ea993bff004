"""Files written before the core was reshaped (tests/fixtures/legacy, made by its make.py with the code of
commit e174c47) still load, sample the same pixels, and resume to the same weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import genforge

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = np.load(LEGACY / "expected.npz")
FAMILIES = ["dcgan", "vae-conv", "cvae-conv", "ddpm", "cddpm"]


def close_pixels(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding across CPUs: no pixel more than 1 apart, at most 1% of them apart at all."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("name", FAMILIES)
def test_legacy_model_samples_the_same_pixels(name):
    model = genforge.load(LEGACY / "models" / name)
    samples = model.sample(6, seed=3)
    close_pixels(np.asarray(samples.x if hasattr(samples, "x") else samples), EXPECTED[f"{name}.x"])
    if f"{name}.y" in EXPECTED:
        from genforge.generation import sample

        np.testing.assert_array_equal(sample(model, 6, seed=3).y, EXPECTED[f"{name}.y"])


def test_legacy_run_resumes_to_the_same_weights(tmp_path):
    from genforge.config import load_config
    from genforge.training import train

    run = tmp_path / "run"
    shutil.copytree(LEGACY / "resume-run", run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("npz:/tmp/legacy/digits.npz", f"npz:{LEGACY / 'digits.npz'}"))
    train(load_config(run / "config.yaml", ["max_steps=4"]), run, resume=True, quiet=True)
    weights = load_file(Path(genforge.load(run).path) / "model.safetensors")
    expected = {k[len("resume."):]: EXPECTED[k] for k in EXPECTED.files if k.startswith("resume.")}
    assert sorted(weights) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(weights[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
