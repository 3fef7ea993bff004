"""Sampling: one seed gives the same images from the CLI and from Python; outputs are well formed."""

import numpy as np
import pytest
from PIL import Image

import genforge
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.generation import make_grid, sample
from genforge.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_npz):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": "dcgan", "base_channels": 4, "batch_size": 16, "max_steps": 2,
                     "checkpoint_every": 2, "sample_every": 0, "tensorboard": False, "grid_n": 4}, "test")
    path = tmp_path_factory.mktemp("gen") / "run"
    train(cfg, path, quiet=True)
    return path


def test_same_seed_same_images_cli_and_python(run, tmp_path):
    assert main(["sample", str(run), "--n", "10", "--seed", "7", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert set(f.files) == {"x"}
        from_cli = f["x"]
    model = genforge.load(run)
    from_api = model.sample(10, seed=7)
    assert from_cli.dtype == np.uint8 and from_cli.shape == (10, 28, 28)
    np.testing.assert_array_equal(from_cli, from_api)
    assert not np.array_equal(from_api, model.sample(10, seed=8))


def test_images_do_not_depend_on_batching(run):
    model = genforge.load(run)
    a = sample(model, 12, seed=3, batch_size=12).x
    b = sample(model, 12, seed=3, batch_size=5).x
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # BatchNorm in eval mode: per-sample


def test_grid_png(run, tmp_path):
    assert main(["sample", str(run), "--n", "6", "--out", str(tmp_path / "g.png")]) == 0
    img = Image.open(tmp_path / "g.png")
    assert img.size == (3 * 30 + 2, 2 * 30 + 2) and img.mode == "L"  # 3 columns, 2 rows, 2-px padding


def test_make_grid_colour():
    x = np.full((4, 5, 5, 3), 200, np.uint8)
    grid = make_grid(x, nrow=2, padding=1)
    assert grid.shape == (13, 13, 3) and grid[1, 1].tolist() == [200, 200, 200] and grid[0, 0].tolist() == [0, 0, 0]


def test_bad_requests(run, tmp_path):
    model = genforge.load(run)
    with pytest.raises(GenforgeError, match="n must be an integer from 1"):
        sample(model, 0)
    with pytest.raises(GenforgeError, match="seed must be a non-negative integer"):
        sample(model, 2, seed=-1)
    with pytest.raises(GenforgeError, match="unconditional"):
        sample(model, 2, classes=[3, 3])
    assert main(["sample", str(run), "--out", str(tmp_path / "x.jpg")]) == 2


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, digits_npz):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": "cvae-conv", "z_dim": 8, "base_channels": 4, "batch_size": 16,
                     "max_steps": 2, "checkpoint_every": 2, "sample_every": 0, "tensorboard": False,
                     "grid_n": 10}, "test")
    path = tmp_path_factory.mktemp("cond") / "run"
    train(cfg, path, quiet=True)
    return path


def test_conditional_classes(conditional_run, tmp_path):
    model = genforge.load(conditional_run)
    assert model.num_classes == 10 and model.class_names[:3] == ["0", "1", "2"]
    s = sample(model, 5, seed=0, classes=7)
    assert s.y.tolist() == [7] * 5
    s = sample(model, 5, seed=0, classes=["1", 2])
    assert s.y.tolist() == [1, 2, 1, 2, 1]
    assert sample(model, 12, seed=0).y.tolist() == list(range(10)) + [0, 1]
    # the class changes the image for the same latent
    assert not np.array_equal(sample(model, 1, seed=0, classes=1).x, sample(model, 1, seed=0, classes=2).x)
    with pytest.raises(GenforgeError, match="out of range: this model has classes 0 to 9"):
        sample(model, 2, classes=10)
    with pytest.raises(GenforgeError, match="'shoe' is not one of this model's classes"):
        sample(model, 2, classes="shoe")


def test_conditional_cli_writes_y(conditional_run, tmp_path):
    assert main(["sample", str(conditional_run), "--n", "4", "--class", "3,4", "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert f["y"].tolist() == [3, 4, 3, 4] and f["x"].shape == (4, 28, 28)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["x"],
                                  genforge.load(conditional_run).sample(4, seed=0, classes=[3, 4]))


def test_grid_scale_ledger_switch_and_xdg(conditional_run, tmp_path, monkeypatch):
    from PIL import Image

    from genforge.generation import write_samples
    from genforge.generation.provenance import default_ledger, verify

    model = genforge.load(conditional_run)
    samples = sample(model, 4, seed=0, classes=[1, 2])
    plain = np.asarray(Image.open(write_samples(samples, tmp_path / "g1.png", model)))
    big = np.asarray(Image.open(write_samples(samples, tmp_path / "g3.png", model, scale=3)))
    assert big.shape == (plain.shape[0] * 3, plain.shape[1] * 3)
    np.testing.assert_array_equal(big[::3, ::3], plain)  # nearest neighbour: every pixel a 3 x 3 block
    with pytest.raises(GenforgeError, match="scale must be an integer from 1 to 16, got 0"):
        write_samples(samples, tmp_path / "g0.png", model, scale=0)
    monkeypatch.setenv("GENFORGE_LEDGER", "off")
    assert default_ledger() is None
    write_samples(samples, tmp_path / "unrecorded.png", model)
    assert "turned off" in verify(tmp_path / "unrecorded.png").reason
    monkeypatch.delenv("GENFORGE_LEDGER")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_ledger() == tmp_path / "xdg" / "genforge" / "ledger.jsonl"
