"""Shared fixtures: tiny data and tiny configs so every test runs on the CPU in seconds."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from genforge.config import from_dict
from genforge.training import check_config

torch.set_num_threads(1)  # tests compare exact numbers; one thread keeps them cheap and stable
# the thread count must not follow how busy the test machine happens to be (genforge.devices.threads_for);
# subprocesses inherit this. tests/test_contention.py sets it back where it tests the choice.
os.environ.setdefault("GENFORGE_CONTENTION", "off")


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


@pytest.fixture(scope="session")
def series_csv(tmp_path_factory) -> str:
    """A two-channel sensor log of 1,200 rows with a time column and two alternating states, as a series spec
    (windows of 32 rows every 16: tiny_config sets series_window / series_stride for 1-D models)."""
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    a = np.sin(t / 6) + 0.1 * rng.normal(size=t.size)
    b = 100 + 3 * np.cos(t / 11) + 0.1 * rng.normal(size=t.size)
    state = np.where((t // 150) % 2 == 0, "ok", "fault")
    path = tmp_path_factory.mktemp("series") / "log.csv"
    path.write_text("t,a,b,state\n" + "".join(f"{i},{a[i]:.5f},{b[i]:.5f},{state[i]}\n" for i in t))
    return f"series-csv:{path}"


SERIES_TINY = {"series_window": 32, "series_stride": 16, "series_time_column": "t", "series_label_column": "state"}
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
    "gan-1d": {"z_dim": 8, "base_channels": 4},
    "cgan-1d": {"z_dim": 8, "base_channels": 4},
    "vae-1d": {"z_dim": 8, "base_channels": 4},
    "cvae-1d": {"z_dim": 8, "base_channels": 4},
    "ddpm-1d": {"base_channels": 4},
    "cddpm-1d": {"base_channels": 4},
    "ar-1d": {"base_channels": 4},
    "car-1d": {"base_channels": 4},
    # tables: the bundled diabetes table (scikit-learn, always installed), small networks
    "tvae": {"z_dim": 8, "base_channels": 8, "data": "table:diabetes"},
    "ctgan": {"z_dim": 8, "base_channels": 8, "data": "table:diabetes", "gan_loss": "ns", "d_norm": "none"},
    "tabddpm": {"base_channels": 8, "data": "table:diabetes", "sample_steps": 5},
    "copula": {"data": "table:diabetes", "table_transform": "quantile"},
    "wavegan": {"z_dim": 8, "base_channels": 4},
    "cwavegan": {"z_dim": 8, "base_channels": 4},
}


def example_shape_of(model: str) -> tuple[int, ...]:
    """The shape of one tiny example for a model: the digits (1, 28, 28), or the sensor log's windows (2, 32)."""
    from genforge.models import MODELS

    return (1, 28, 28) if MODELS[model].axes == ("c", "h", "w") else (2, 32)


@pytest.fixture
def tiny_config(digits_npz, series_csv):
    """A factory: tiny_config("dcgan", max_steps=4) -> a validated Config on the tiny digits (image models) or
    the tiny sensor log (1-D models)."""
    from genforge.models import MODELS

    def make(model: str, **overrides):
        data = {"data": digits_npz} if MODELS[model].axes == ("c", "h", "w") else {"data": series_csv, **SERIES_TINY}
        values = {**data, "model": model, "batch_size": 16, "max_steps": 4, "log_every": 2,
                  "sample_every": 0, "checkpoint_every": 2, "grid_n": 4, "tensorboard": False,
                  "num_threads": 1, **TINY[model], **overrides}
        return check_config(from_dict(values, "test"), "test")

    return make
