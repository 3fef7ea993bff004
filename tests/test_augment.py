"""Synthetic data for small data sets: K per class drawn right, the experiment end to end, the clear errors."""

import json

import numpy as np
import pytest
import yaml

from genforge.apps.augment import AugmentOptions, few_shot, run
from genforge.cli import main
from genforge.data import load_splits
from genforge.errors import GenforgeError

TINY = AugmentOptions(gen_steps=6, gen_batch=16, synthetic_per_class=3, classifier_steps=4, classifier_batch=16,
                      num_threads=1)


@pytest.fixture
def recipe(tmp_path, digits_npz):
    path = tmp_path / "tiny-cvae.yaml"
    path.write_text(yaml.safe_dump({"data": digits_npz, "model": "cvae-conv", "z_dim": 8, "base_channels": 4,
                                    "log_every": 2, "grid_n": 4}))
    return path


def test_few_shot_draws_k_per_class(digits_npz):
    train = load_splits(digits_npz).train
    part = few_shot(train, 5, seed=0)
    assert np.bincount(part.y).tolist() == [5] * 10
    assert not np.array_equal(part.x, few_shot(train, 5, seed=1).x)
    np.testing.assert_array_equal(part.x, few_shot(train, 5, seed=0).x)


def test_k_larger_than_the_smallest_class(digits_npz, recipe, capsys):
    train = load_splits(digits_npz).train
    smallest = int(np.bincount(train.y).min())
    with pytest.raises(GenforgeError, match=f"K={smallest + 1} images per class is more than the train split holds: "
                                            f"class '\\d' has {smallest}"):
        few_shot(train, smallest + 1, seed=0)
    with pytest.raises(GenforgeError, match="K \\(images per class\\) must be a positive integer, got 0"):
        few_shot(train, 0, seed=0)
    # refused before anything is trained
    assert main(["augment", str(recipe), "--k", f"2,{smallest + 1}", "--seeds", "0"]) == 2
    assert f"K={smallest + 1} images per class is more than" in capsys.readouterr().err


def test_end_to_end(digits_npz, recipe):
    result = run(digits_npz, recipe, [2], [0, 1], TINY)
    assert [(r["k"], r["seed"], r["real"], r["synthetic"]) for r in result["rows"]] == [(2, 0, 20, 30), (2, 1, 20, 30)]
    for r in result["rows"]:
        assert 0 <= r["real_only"] <= 1 and 0 <= r["real_plus_synthetic"] <= 1
    (summary,) = result["summary"]
    assert summary["k"] == 2 and summary["seeds"] == [0, 1]
    accs = [r["real_only"] for r in result["rows"]]
    assert summary["real_only"] == pytest.approx(np.mean(accs))
    assert summary["real_only_std"] == pytest.approx(np.std(accs, ddof=1))
    assert result["test_size"] == len(load_splits(digits_npz).test)


def test_cli_augment_writes_json_and_the_training_set(recipe, tmp_path, capsys):
    out, keep = tmp_path / "aug.json", tmp_path / "set.npz"
    assert main(["augment", str(recipe), "--k", "2", "--seeds", "0", "--gen-steps", "4", "--synthetic-per-class",
                 "3", "--classifier-steps", "3", "--out", str(out), "--keep", str(keep)]) == 0
    printed = capsys.readouterr().out
    assert "| 2 |" in printed and "real + synthetic" in printed
    result = json.loads(out.read_text())
    assert result["summary"][0]["k"] == 2
    with np.load(keep, allow_pickle=False) as f:
        assert f["x"].shape == (50, 28, 28, 1) and f["synthetic"].sum() == 30
        assert np.bincount(f["y"][f["synthetic"]]).tolist() == [3] * 10


def test_unconditional_recipe_refused(tmp_path, digits_npz):
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump({"data": digits_npz, "model": "vae-conv", "z_dim": 8, "base_channels": 4}))
    with pytest.raises(GenforgeError, match="model 'vae-conv' is unconditional; synthetic training data needs"):
        run(digits_npz, path, [2], [0], TINY)
