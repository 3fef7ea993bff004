"""Post-processing: quality filtering, de-duplication and the memorization check."""

import numpy as np
import pytest

import genforge
from genforge.cli import main
from genforge.errors import GenforgeError
from genforge.generation import sample
from genforge.postprocess import filtering, memorization
from genforge.training import train


class PixelEvaluator:
    """A stand-in evaluator: features are 4x4-pooled pixels, class probabilities from brightness."""

    def features(self, x):
        x = x.reshape(len(x), 7, 4, 7, 4).astype(np.float64).mean((2, 4)) / 255
        return x.reshape(len(x), -1)

    def features_and_probs(self, x):
        bright = x.reshape(len(x), -1).mean(1) / 255
        probs = np.stack([bright, 1 - bright], axis=1)
        return self.features(x), probs


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory, digits_npz):
    from genforge.config import from_dict

    cfg = from_dict({"data": digits_npz, "model": "dcgan", "base_channels": 4, "batch_size": 16, "max_steps": 2,
                     "checkpoint_every": 2, "sample_every": 0, "tensorboard": False, "grid_n": 4}, "test")
    path = tmp_path_factory.mktemp("pp") / "run"
    train(cfg, path, quiet=True)
    return path


def test_drs_prefers_high_logits_and_hits_the_target_share():
    logits = np.linspace(-5, 5, 10000)
    keep = filtering.drs_keep(logits, keep=0.5, seed=0)
    assert 0.4 < keep.mean() < 0.6
    assert keep[5000:].mean() > 0.8 and keep[9000:].mean() > 0.95 and keep[:2000].mean() < 0.1
    np.testing.assert_array_equal(keep, filtering.drs_keep(logits, keep=0.5, seed=0))


def test_discriminator_filter_on_a_gan_and_refused_on_a_vae(gan_run, tmp_path):
    model = genforge.load(gan_run)
    s = sample(model, 50, seed=0)
    logits = filtering.discriminator_logits(model, s.x)
    assert logits.shape == (50,) and np.isfinite(logits).all()
    mask = filtering.filter_samples(model, s, "drs", keep=0.5, seed=1)
    assert 10 < mask.sum() < 40

    class VAE:
        family, name, nets = "vae", "vae-conv", {}

    with pytest.raises(GenforgeError, match="needs a GAN"):
        filtering.discriminator_logits(VAE(), s.x)
    with pytest.raises(GenforgeError, match="keep-top must be in"):
        filtering.filter_samples(model, s, "drs", keep=1.5)


def test_confidence_keeps_the_most_confident():
    x = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 120, 128, 255, 10)])
    scores = filtering.confidence_scores(PixelEvaluator(), x)
    mask = filtering.keep_top(scores, 0.6)
    assert mask.tolist() == [True, False, False, True, True]
    # conditional: the probability of the requested class
    y = np.array([1, 1, 1, 1, 1])
    assert filtering.confidence_scores(PixelEvaluator(), x, y)[0] == pytest.approx(1.0)


def test_near_duplicates():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 255, (2, 28, 28), dtype=np.uint8)
    a2 = np.clip(a.astype(int) + 1, 0, 255).astype(np.uint8)  # a, one grey level brighter
    drop = filtering.near_duplicates(np.stack([a, b, a2, a]), threshold=2.0)
    assert drop.tolist() == [False, False, True, True]


def test_sample_cli_filter_and_dedup(gan_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(gan_run), "--n", "40", "--filter", "drs", "--keep-top", "0.5", "--out", str(out)]) == 0
    n = len(np.load(out)["x"])
    assert 10 < n < 35 and f"kept {n} of 40" in capsys.readouterr().out
    assert main(["sample", str(gan_run), "--n", "10", "--dedup", "300", "--out", str(out)]) == 2


def test_memorization_flags_copies_not_novel_images(digits_npz):
    from genforge.data import load_splits

    splits = load_splits(digits_npz)
    train_x, test_x = splits.train.x[..., 0], splits.test.x[..., 0]
    rng = np.random.default_rng(0)
    copies = train_x[:10]
    noise = rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)
    report = memorization.check(np.concatenate([copies, noise]), splits.train.x, splits.test.x, PixelEvaluator())
    assert report.flagged[:10].all() and not report.flagged[10:].any()
    assert report.exact_copies == 10 and report.either_share == pytest.approx(0.5)
    assert "exact copies of a training image: 10" in report.format()
    pairs = memorization.worst_pairs(np.concatenate([copies, noise]), splits.train.x, report, k=3)
    assert pairs.shape == (6, 28, 28)
    np.testing.assert_array_equal(pairs[0], pairs[1])  # a copy sits beside its original
    assert len(test_x) > 0


def test_nearest_is_exact():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(50, 16)), rng.normal(size=(300, 16))
    dist, idx = memorization.nearest(q, r, chunk=7)
    brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(idx, brute.argmin(1))
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-4)
