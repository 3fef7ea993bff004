"""Class transfer with a conditional VAE: shapes, classes, the source class inferred, and the clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import genforge
from genforge.apps.transfer import infer_classes, transfer
from genforge.cli import main
from genforge.config import from_dict
from genforge.data import load_splits
from genforge.errors import GenforgeError
from genforge.models import vae as vae_method
from genforge.training import train


def _train(tmp_path_factory, data, model, steps, **extra):
    cfg = from_dict({"data": data, "model": model, "batch_size": 32, "max_steps": steps, "checkpoint_every": steps,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "num_threads": 1, "z_dim": 8,
                     "base_channels": 4, **extra}, "test")
    path = tmp_path_factory.mktemp(model) / "run"
    train(cfg, path, quiet=True)
    return genforge.load(path)


@pytest.fixture(scope="module")
def cvae(tmp_path_factory, digits_npz):
    return _train(tmp_path_factory, digits_npz, "cvae-conv", 200, g_lr=3e-3)


@pytest.fixture(scope="module")
def test_split(digits_npz):
    return load_splits(digits_npz).test


def test_transfer_shapes_and_classes(cvae, test_split):
    x = test_split.x[:8]
    out, src = transfer(cvae, x, list(range(10)))
    assert out.shape == (8, 10, 28, 28) and out.dtype == np.uint8
    # each column is drawn as its class: the model itself reads it back as that class
    read_back = infer_classes(cvae, out.reshape(-1, 28, 28)).reshape(8, 10)
    assert (read_back == np.arange(10)).mean() > 0.8
    # drawn as its own class, an image is the VAE's reconstruction of it
    own = out[np.arange(8), src]
    t = torch.from_numpy(x).float().div(255).permute(0, 3, 1, 2)  # (8, 1, 28, 28)
    with torch.no_grad():
        expected = vae_method.reconstruct(cvae.nets, t, torch.from_numpy(src))
    np.testing.assert_array_equal(own, (expected * 255).round().byte()[:, 0].numpy())


def test_source_class_inferred_from_the_model(cvae, test_split):
    pred = infer_classes(cvae, test_split.x)
    assert (pred == test_split.y).mean() > 0.5  # chance is 0.1: the conditional VAE is its own classifier


def test_source_class_given(cvae, test_split):
    out_given, src = transfer(cvae, test_split.x[:3], 7, source=[1, 2, 3])
    assert src.tolist() == [1, 2, 3] and out_given.shape == (3, 1, 28, 28)
    with pytest.raises(GenforgeError, match="one for all images or one per image \\(3\\), got 2"):
        transfer(cvae, test_split.x[:3], 7, source=[1, 2])
    with pytest.raises(GenforgeError, match="class 12 is out of range"):
        transfer(cvae, test_split.x[:3], 12)


def test_cli_transfer_grid(cvae, test_split, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(test_split.x[i, ..., 0]).save(folder / f"d{i}.png")
    assert main(["transfer", cvae.path, str(folder), "--to", "3,8", "--out", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 3 * 30, 2 + 3 * 30)  # rows: images; columns: the image, as 3, as 8
    np.testing.assert_array_equal(grid[2:30, 2:30], test_split.x[0, ..., 0])


def test_unconditional_model_refused(tmp_path_factory, digits_npz, test_split, tmp_path, capsys):
    plain = _train(tmp_path_factory, digits_npz, "vae-conv", 2)
    with pytest.raises(GenforgeError, match="class transfer needs a conditional VAE .* is an unconditional vae"):
        transfer(plain, test_split.x[:2], 3)
    gan = _train(tmp_path_factory, digits_npz, "cdcgan", 2)
    with pytest.raises(GenforgeError, match="class transfer needs a conditional VAE .* is a conditional gan"):
        transfer(gan, test_split.x[:2], 3)
    np.savez(tmp_path / "x.npz", x=test_split.x[:2, ..., 0])
    assert main(["transfer", plain.path, str(tmp_path / "x.npz"), "--to", "3", "--out", str(tmp_path / "g.png")]) == 2
    assert "class transfer needs a conditional VAE" in capsys.readouterr().err


def test_images_of_the_wrong_size_refused(cvae):
    with pytest.raises(GenforgeError, match="takes 28x28 images, got 14x14"):
        transfer(cvae, np.zeros((2, 14, 14), dtype=np.uint8), 3)
    with pytest.raises(GenforgeError, match="takes 1-channel images, got 3 channels"):
        transfer(cvae, np.zeros((2, 28, 28, 3), dtype=np.uint8), 3)
