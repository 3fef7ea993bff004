"""Shared fixtures: tiny data and tiny configs so every test runs on the CPU in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genforge.config import from_dict
from genforge.training import check_config

torch.set_num_threads(1)  # tests compare exact numbers; one thread keeps them cheap and stable


@pytest.fixture(autouse=True)
def private_ledger(tmp_path, monkeypatch):
    """Each test writes its provenance ledger into its own folder, never into the user's home."""
    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.delenv("GENFORGE_PROVENANCE_KEY", raising=False)
    monkeypatch.delenv("GENFORGE_PROVENANCE_KEY_FILE", raising=False)
    return tmp_path / "ledger.jsonl"


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> str:
    """256 real MNIST digits (and labels) from the embedded mnist5k, as an npz spec."""
    from genforge.data import load_splits

    splits = load_splits("mnist5k", seed=0)
    pick = np.random.default_rng(0).permutation(len(splits.train))[:256]  # the source is sorted by class
    x, y = splits.train.x[pick, ..., 0], splits.train.y[pick]
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


TINY = {
    "gan-mlp": {},
    "dcgan": {"base_channels": 4},
    "vae-mlp": {"z_dim": 8},
    "vae-conv": {"z_dim": 8, "base_channels": 4},
    "cdcgan": {"base_channels": 4},
    "acgan": {"base_channels": 4},
    "cvae-conv": {"z_dim": 8, "base_channels": 4},
    "ddpm": {"base_channels": 4},
    "cddpm": {"base_channels": 4},
}


@pytest.fixture
def tiny_config(digits_npz):
    """A factory: tiny_config("dcgan", max_steps=4) -> a validated Config on the tiny digits."""

    def make(model: str, **overrides):
        values = {"data": digits_npz, "model": model, "batch_size": 16, "max_steps": 4, "log_every": 2,
                  "sample_every": 0, "checkpoint_every": 2, "grid_n": 4, "tensorboard": False,
                  "num_threads": 1, **TINY[model], **overrides}
        return check_config(from_dict(values, "test"), "test")

    return make
