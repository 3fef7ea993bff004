"""Repair: inpainting keeps the known pixels exactly, denoising and super-resolution reduce the error of the
corrupted input, every family's path runs, and each bad input is a clear error."""

import numpy as np
import pytest
from PIL import Image

import genforge
from genforge.apps.repair import RepairOptions, estimate_noise_std, rect_mask, repair
from genforge.cli import main
from genforge.config import from_dict
from genforge.data import load_splits
from genforge.errors import GenforgeError
from genforge.training import train

FAST = RepairOptions(steps=40, restarts=2, diffusion_steps=4)


def _train(tmp_path_factory, data, model, steps, **extra):
    cfg = from_dict({"data": data, "model": model, "batch_size": 32, "max_steps": steps, "checkpoint_every": steps,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "num_threads": 1, **extra}, "test")
    path = tmp_path_factory.mktemp(model) / "run"
    train(cfg, path, quiet=True)
    return genforge.load(path)


@pytest.fixture(scope="module")
def vae(tmp_path_factory, digits_npz):
    # 200 steps of a tiny VAE: blurry digits, enough to beat a corrupted input clearly
    return _train(tmp_path_factory, digits_npz, "vae-conv", 200, z_dim=8, base_channels=4, g_lr=3e-3)


@pytest.fixture(scope="module")
def digits(digits_npz):
    """16 digits the models never saw (the test split of the tiny data), (16, 28, 28) uint8."""
    return load_splits(digits_npz).test.x[:16, ..., 0]


def _mse(a, b):
    return float((((a.astype(float) - b.astype(float)) / 255) ** 2).mean())


@pytest.mark.parametrize("family", ["vae-conv", "dcgan", "ddpm"])
def test_inpaint_keeps_known_pixels_exactly(tmp_path_factory, digits_npz, digits, family, vae):
    model = vae if family == "vae-conv" else _train(tmp_path_factory, digits_npz, family, 2, base_channels=4)
    mask = rect_mask("8,8,12,12", (28, 28))
    out = repair(model, digits, "inpaint", mask, options=FAST)
    assert out.shape == digits.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, ~mask], digits[:, ~mask])
    if family == "vae-conv":  # the hole is filled better than by leaving it black
        hole = digits.copy()
        hole[:, mask] = 0
        assert _mse(out, digits) < 0.6 * _mse(hole, digits)


def test_diffusion_super_resolution_and_denoising(tmp_path_factory, digits_npz, digits):
    model = _train(tmp_path_factory, digits_npz, "ddpm", 2, base_channels=4)
    low = digits[:4].reshape(-1, 14, 2, 14, 2).mean((2, 4)).round().astype(np.uint8)
    out = repair(model, low, "sr2x", options=FAST)
    assert out.shape == (4, 28, 28)
    assert np.abs(out.reshape(-1, 14, 2, 14, 2).mean((2, 4)) - low).mean() < 1.0  # 2x2 means put back
    assert repair(model, digits[:4], "denoise", noise_std=0.2, options=FAST).shape == (4, 28, 28)


def test_inpaint_per_image_masks(vae, digits):
    masks = np.zeros((len(digits), 28, 28), dtype=bool)
    for i in range(len(digits)):
        masks[i, i:i + 6, 4:20] = True
    out = repair(vae, digits, "inpaint", masks, options=FAST)
    np.testing.assert_array_equal(out[~masks], digits[~masks])


def test_denoise_reduces_error(vae, digits):
    rng = np.random.default_rng(0)
    noisy = np.clip(digits + rng.normal(0, 0.5 * 255, digits.shape), 0, 255).round().astype(np.uint8)
    out = repair(vae, noisy, "denoise", noise_std=0.5, options=FAST)
    assert _mse(out, digits) < 0.6 * _mse(noisy, digits)


def test_sr2x_keeps_the_low_resolution_image_and_beats_nearest(vae, digits):
    low = digits.reshape(-1, 14, 2, 14, 2).mean((2, 4)).round().astype(np.uint8)  # 2x2 means (Pillow's BOX)
    out = repair(vae, low, "sr2x", options=FAST)
    assert out.shape == digits.shape
    means = out.reshape(-1, 14, 2, 14, 2).mean((2, 4))
    assert np.abs(means - low).mean() < 1.0  # the measurement is put back (up to rounding and clipping)
    nearest = np.repeat(np.repeat(low, 2, 1), 2, 2)
    assert _mse(out, digits) < _mse(nearest, digits)


def test_repair_is_reproducible(vae, digits):
    mask = rect_mask("0,10,28,8", (28, 28))
    a = repair(vae, digits[:4], "inpaint", mask, options=FAST)
    b = repair(vae, digits[:4], "inpaint", mask, options=FAST)
    c = repair(vae, digits[:4], "inpaint", mask, options=FAST, batch_size=3)  # batching does not matter
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.astype(int), c.astype(int), atol=1)


def test_noise_estimate():
    rng = np.random.default_rng(0)
    flat = np.clip(128 + rng.normal(0, 0.1 * 255, (4, 28, 28)), 0, 255).astype(np.uint8)
    assert abs(estimate_noise_std(flat) - 0.1) < 0.01


def test_cli_repair_folder_and_npz(vae, digits, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(digits[i]).save(folder / f"d{i}.png")
    Image.fromarray(np.where(rect_mask("4,4,10,10", (28, 28)), 255, 0).astype(np.uint8)).save(tmp_path / "m.png")
    assert main(["repair", vae.path, str(folder), "--task", "inpaint", "--mask", str(tmp_path / "m.png"),
                 "--latent-steps", "5", "--out", str(tmp_path / "out")]) == 0
    back = np.asarray(Image.open(tmp_path / "out" / "d1.png"))
    known = ~rect_mask("4,4,10,10", (28, 28))
    np.testing.assert_array_equal(back[known], digits[1][known])
    low = digits[:2].reshape(-1, 14, 2, 14, 2).mean((2, 4)).astype(np.uint8)
    np.savez(tmp_path / "low.npz", x=low)
    assert main(["repair", vae.path, str(tmp_path / "low.npz"), "--task", "sr2x", "--latent-steps", "5", "--compare",
                 "--out", str(tmp_path / "sr.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "sr.png"))
    assert grid.shape == (2 + 30, 2 + 4 * 30)  # one row: input, repair, input, repair


# ------------------------------------------------------------------------------------------- bad input

def test_mask_of_the_wrong_size(vae, digits, tmp_path, capsys):
    with pytest.raises(GenforgeError, match="mask: has shape 20x20; it must be 28x28"):
        repair(vae, digits, "inpaint", np.ones((20, 20), dtype=bool))
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "small.png")
    np.savez(tmp_path / "x.npz", x=digits[:2])
    assert main(["repair", vae.path, str(tmp_path / "x.npz"), "--task", "inpaint", "--mask",
                 str(tmp_path / "small.png"), "--out", str(tmp_path / "o.png")]) == 2
    assert "small.png: 20x20 pixels, but the images are 28x28" in capsys.readouterr().err
    with pytest.raises(GenforgeError, match="'20,20,10,10': the rectangle must .* lie inside the 28x28 image"):
        rect_mask("20,20,10,10", (28, 28))
    with pytest.raises(GenforgeError, match="x,y,w,h in whole pixels"):
        rect_mask("a,b", (28, 28))
    with pytest.raises(GenforgeError, match="masks every pixel"):
        repair(vae, digits, "inpaint", np.ones((28, 28), dtype=bool))
    with pytest.raises(GenforgeError, match="inpainting needs a mask"):
        repair(vae, digits, "inpaint")
    with pytest.raises(GenforgeError, match="a mask is for inpainting; task denoise"):
        repair(vae, digits, "denoise", np.zeros((28, 28), dtype=bool))


def test_super_resolution_input_not_14x14(vae, digits, tmp_path, capsys):
    with pytest.raises(GenforgeError, match=r"input must be 14x14 \(half the model's 28x28\), got 28x28"):
        repair(vae, digits, "sr2x")
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 10, 10), dtype=np.uint8))
    assert main(["repair", vae.path, str(tmp_path / "x.npz"), "--task", "sr2x", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "must be 14x14" in err and "got 10x10" in err


def test_images_of_the_wrong_size_or_channels(vae, digits, tmp_path, capsys):
    with pytest.raises(GenforgeError, match="takes 28x28 images, got 32x32"):
        repair(vae, np.zeros((2, 32, 32), dtype=np.uint8), "denoise", noise_std=0.1)
    with pytest.raises(GenforgeError, match="takes 1-channel images, got 3 channels"):
        repair(vae, np.zeros((2, 28, 28, 3), dtype=np.uint8), "denoise", noise_std=0.1)
    with pytest.raises(GenforgeError, match="expected uint8 images"):
        repair(vae, digits.astype(np.float32), "denoise", noise_std=0.1)
    with pytest.raises(GenforgeError, match="task must be one of inpaint, denoise, sr2x, got 'deblur'"):
        repair(vae, digits, "deblur")
    with pytest.raises(GenforgeError, match=r"noise_std must be in \(0, 1\)"):
        repair(vae, digits, "denoise", noise_std=3.0)
    colour = np.zeros((28, 28, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "red.png")
    assert main(["repair", vae.path, str(tmp_path / "red.png"), "--task", "denoise", "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "takes 1-channel images, got 3 channels" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["repair", vae.path, str(tmp_path / "bad.png"), "--task", "denoise", "--out",
                 str(tmp_path / "o.png")]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err
