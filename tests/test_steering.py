"""Generation controls, interpolation, feedback rounds and provenance."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import genforge
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.generation import feedback, interpolate, latents, read_sidecar, sample, slerp, truncated_latents
from genforge.generation.sampling import truncation_threshold
from genforge.generation.provenance import verify
from genforge.training import train


def _run(tmp_path_factory, digits_npz, model, **extra):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": model, "batch_size": 16, "max_steps": 2, "checkpoint_every": 2,
                     "sample_every": 0, "tensorboard": False, "grid_n": 4, "base_channels": 4, **extra}, "test")
    path = tmp_path_factory.mktemp(model) / "run"
    train(cfg, path, quiet=True)
    return path


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, digits_npz):
    return _run(tmp_path_factory, digits_npz, "dcgan")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, digits_npz):
    return _run(tmp_path_factory, digits_npz, "vae-conv", z_dim=8)


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory, digits_npz):
    return _run(tmp_path_factory, digits_npz, "cdcgan")


# ---------------------------------------------------------------- noise controls

def test_truncation_bounds_latents_by_resampling():
    z = truncated_latents(2000, 16, seed=0, truncation=0.5)
    bound = truncation_threshold(0.5)
    assert bound == pytest.approx(0.6745, abs=1e-3)
    assert z.abs().max() <= bound
    # resampled, not clipped: almost no values sit exactly at the bound
    assert (z.abs() > 0.99 * bound).float().mean() < 0.05
    torch.testing.assert_close(truncated_latents(5, 16, seed=3, truncation=1.0), latents(5, 16, seed=3))


def test_truncation_changes_gan_output_and_is_reproducible(gan_run):
    model = genforge.load(gan_run)
    a = sample(model, 6, seed=1, truncation=0.5)
    np.testing.assert_array_equal(a.x, sample(model, 6, seed=1, truncation=0.5).x)
    assert not np.array_equal(a.x, sample(model, 6, seed=1).x)
    assert a.controls == {"truncation": 0.5}


def test_temperature_scales_vae_latents(vae_run):
    model = genforge.load(vae_run)
    s = sample(model, 4, seed=2, temperature=0.5)
    np.testing.assert_allclose(s.z, 0.5 * latents(4, model.z_dim, 2).numpy(), rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"truncation": 0.0}, r"truncation must be in \(0, 1\]"),
    ({"truncation": 1.5}, r"truncation must be in \(0, 1\]"),
    ({"temperature": 0.5}, "temperature is a VAE control"),
    ({"size": 0}, "size must be an integer from 1"),
    ({"resample": "cubic"}, "resample must be one of"),
    ({"n": -3}, "n must be an integer from 1"),
    ({"n": 10**9}, "n must be an integer from 1"),
])
def test_gan_control_errors(gan_run, kwargs, message):
    model = genforge.load(gan_run)
    with pytest.raises(GenforgeError, match=message):
        sample(model, **{"n": 2, **kwargs})


def test_truncation_refused_on_vae(vae_run):
    with pytest.raises(GenforgeError, match="truncation is a GAN control"):
        sample(genforge.load(vae_run), 2, truncation=0.5)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "lanczos"])
def test_resize(gan_run, resample):
    s = sample(genforge.load(gan_run), 3, seed=0, size=56, resample=resample)
    assert s.x.shape == (3, 56, 56) and s.x.dtype == np.uint8


def test_individual_pngs_and_cli_controls(gan_run, tmp_path):
    out = tmp_path / "pngs"
    assert main(["sample", str(gan_run), "--n", "3", "--truncation", "0.7", "--size", "32", "--out", str(out)]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    first = np.asarray(Image.open(files[0]))
    np.testing.assert_array_equal(first, sample(genforge.load(gan_run), 3, seed=0, truncation=0.7, size=32).x[0])
    assert main(["sample", str(gan_run), "--temperature", "0.5", "--out", str(tmp_path / "x.png")]) == 2


# ---------------------------------------------------------------- interpolation

def test_slerp_stays_on_the_sphere():
    a, b = latents(2, 512, 0)
    path = slerp(a, b, torch.linspace(0, 1, 9))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    mid_line = ((a + b) / 2).norm()
    assert path[4].norm() > 1.3 * mid_line  # the straight line sags to ~0.71 of the radius; slerp does not


def test_interpolation_gif(gan_run, tmp_path):
    model = genforge.load(gan_run)
    walk = interpolate(model, [1, 2, 3], steps=4)
    assert walk.x.shape == (9, 28, 28)
    # starts at seed 1's image and passes through seed 2's, to a grey level: the walk runs 9 latents in one
    # batch, the sample 1, and a batch's size can change a convolution's rounding (one pixel of 784, 103
    # against 102, with torch 2.14.1 on an AMX CPU)
    for frame, seed in ((0, 1), (4, 2)):
        apart = np.abs(walk.x[frame].astype(int) - sample(model, 1, seed=seed).x[0].astype(int))
        assert apart.max() <= 1 and (apart > 0).mean() < 0.01, (frame, seed)
    assert main(["interpolate", str(gan_run), "--seeds", "1,2,3", "--frames", "4", "--out",
                 str(tmp_path / "walk.gif")]) == 0
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames == 9 and gif.size == (56, 56)
    with pytest.raises(GenforgeError, match="at least two seeds"):
        interpolate(model, [1], steps=4)
    assert main(["interpolate", str(gan_run), "--seeds", "1,x", "--out", str(tmp_path / "w.gif")]) == 2


def test_class_sweep(cond_run, gan_run, tmp_path):
    assert main(["interpolate", str(cond_run), "--seeds", "1,2", "--class-sweep", "--out",
                 str(tmp_path / "sweep.png")]) == 0
    assert Image.open(tmp_path / "sweep.png").size == (10 * 30 + 2, 2 * 30 + 2)
    assert main(["interpolate", str(gan_run), "--seeds", "1,2", "--class-sweep", "--out",
                 str(tmp_path / "s.png")]) == 2


# ---------------------------------------------------------------- feedback

def test_feedback_round_replays_exactly(gan_run, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["sample", str(gan_run), "--n", "16", "--seed", "4", "--out", str(grid)]) == 0
    side = read_sidecar(grid)
    assert len(side["latents"]) == 16 and side["seed"] == 4
    model = genforge.load(gan_run)
    # radius 0 reproduces the liked samples themselves
    same, _ = feedback(model, grid, [3, 7], n=4, radius=0.0, seed=0)
    original = sample(model, 16, seed=4).x
    np.testing.assert_array_equal(same.x, original[[3, 7, 3, 7]])
    # a round, through the CLI, twice: identical pixels; the sidecar records the choices
    for name in ("r1.png", "r1-again.png"):
        assert main(["sample", str(gan_run), "--from", str(grid), "--like", "3,7,12", "--radius", "0.4",
                     "--n", "9", "--seed", "5", "--out", str(tmp_path / name)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r1.png")),
                                  np.asarray(Image.open(tmp_path / "r1-again.png")))
    r1 = read_sidecar(tmp_path / "r1.png")
    assert r1["feedback"]["like"] == [3, 7, 12] and r1["feedback"]["radius"] == 0.4
    # a second round from the first keeps the whole history
    assert main(["sample", str(gan_run), "--from", str(tmp_path / "r1.png"), "--like", "0", "--n", "4",
                 "--out", str(tmp_path / "r2.png")]) == 0
    assert [h["grid"] for h in read_sidecar(tmp_path / "r2.png")["feedback_history"]] == [str(grid),
                                                                                         str(tmp_path / "r1.png")]


def test_feedback_bad_input(gan_run, vae_run, tmp_path):
    grid = tmp_path / "grid.png"
    main(["sample", str(gan_run), "--n", "4", "--out", str(grid)])
    model = genforge.load(gan_run)
    with pytest.raises(GenforgeError, match="--like 9: the grid .* has samples 0 to 3"):
        feedback(model, grid, [9], n=2, radius=0.3, seed=0)
    with pytest.raises(GenforgeError, match="made by another model"):
        feedback(genforge.load(vae_run), grid, [1], n=2, radius=0.3, seed=0)
    with pytest.raises(GenforgeError, match="radius must be in"):
        feedback(model, grid, [1], n=2, radius=2.0, seed=0)
    side = tmp_path / "grid.png.json"
    data = json.loads(side.read_text())
    data["latents"][0][0] = "x"
    side.write_text(json.dumps(data))
    with pytest.raises(GenforgeError, match="'latents' is malformed"):
        feedback(model, grid, [1], n=2, radius=0.3, seed=0)
    side.unlink()
    with pytest.raises(GenforgeError, match="missing: feedback needs the sidecar"):
        feedback(model, grid, [1], n=2, radius=0.3, seed=0)
    assert main(["sample", str(gan_run), "--like", "1", "--out", str(tmp_path / "x.png")]) == 2


# ---------------------------------------------------------------- provenance

def test_png_metadata_and_verify(gan_run, tmp_path, capsys):
    grid = tmp_path / "g.png"
    main(["sample", str(gan_run), "--n", "4", "--seed", "9", "--truncation", "0.8", "--out", str(grid)])
    meta = json.loads(Image.open(grid).text["genforge"])
    model = genforge.load(gan_run)
    assert meta["seed"] == 9 and meta["controls"] == {"truncation": 0.8}
    assert meta["weights_sha256"] == model.meta["weights_sha256"] and meta["genforge_version"]
    assert verify(grid).verified
    capsys.readouterr()
    assert main(["verify", str(grid)]) == 0 and "verified: generated by genforge" in capsys.readouterr().out

    # pixels altered (metadata kept): not verified
    pixels = np.asarray(Image.open(grid)).copy()
    pixels[5, 5] ^= 0xFF
    altered = Image.fromarray(pixels)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("genforge", json.dumps(meta))
    altered.save(tmp_path / "altered.png", pnginfo=info)
    v = verify(tmp_path / "altered.png")
    assert not v.verified and "altered" in v.reason
    assert main(["verify", str(tmp_path / "altered.png")]) == 1

    # metadata stripped by a pixel-exact re-encode: recognised by its pixels, and said so
    Image.open(grid).save(tmp_path / "stripped.png")
    v = verify(tmp_path / "stripped.png")
    assert v.verified and "re-encoded" in v.reason

    # not a PNG, not an image
    Image.open(grid).convert("RGB").save(tmp_path / "g.jpg")
    assert "not a PNG" in verify(tmp_path / "g.jpg").reason
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert "not a readable image" in verify(tmp_path / "junk.png").reason


def test_signed_ledger_detects_tampering(gan_run, tmp_path, monkeypatch, private_ledger):
    monkeypatch.setenv("GENFORGE_PROVENANCE_KEY", "00" * 32)
    grid = tmp_path / "g.png"
    main(["sample", str(gan_run), "--n", "4", "--out", str(grid)])
    line = json.loads(private_ledger.read_text().splitlines()[-1])
    assert line["signature"].startswith("hmac-sha256:")
    assert verify(grid).verified
    monkeypatch.setenv("GENFORGE_PROVENANCE_KEY", "11" * 32)
    assert "fails its signature" in verify(grid).reason
    monkeypatch.setenv("GENFORGE_PROVENANCE_KEY", "00" * 32)
    line["metadata"]["seed"] = 12345  # someone rewrites the settings in the ledger
    private_ledger.write_text(json.dumps(line) + "\n")
    assert "fails its signature" in verify(grid).reason
