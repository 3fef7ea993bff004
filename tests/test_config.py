"""Configs: every recipe loads; bad keys, types and values are one clear error naming them."""

from pathlib import Path

import pytest

from genforge.config import Config, load_config
from genforge.training import check_config
from genforge.errors import ConfigError
from genforge.models import MODELS

RECIPES = sorted(Path(__file__).parent.parent.glob("genforge/recipes/*.yaml"))


def test_required_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"mnist5k-gan-mlp", "mnist5k-dcgan", "mnist5k-vae-mlp", "mnist5k-vae-conv", "fashion-dcgan",
            "fashion-vae-conv"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipes_load(path):
    cfg = load_config(path)
    assert cfg.model in MODELS


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_named_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'bach_size' \(did you mean 'batch_size'\?\)"):
        load_config(_write(tmp_path, "model: dcgan\nbach_size: 3\n"))


def test_wrong_type_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'batch_size' must be an integer, got 'big'"):
        load_config(_write(tmp_path, "batch_size: big\n"))
    with pytest.raises(ConfigError, match=r"'g_betas' must be a list of two numbers"):
        load_config(_write(tmp_path, "g_betas: 0.5\n"))
    with pytest.raises(ConfigError, match=r"'tensorboard' must be true or false"):
        load_config(_write(tmp_path, "tensorboard: 3\n"))


def test_negative_learning_rate(tmp_path):
    with pytest.raises(ConfigError, match=r"'g_lr' must be positive, got -0.001"):
        load_config(_write(tmp_path, "g_lr: -1.0e-3\n"))


def test_bad_choice_and_model(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'stylegan9'"):
        check_config(load_config(_write(tmp_path, "model: stylegan9\n")))
    with pytest.raises(ConfigError, match=r"'recon_loss' must be one of bce, mse"):
        load_config(_write(tmp_path, "recon_loss: l1\n"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_config(_write(tmp_path, "model: dcgan\n  - : [\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(_write(tmp_path, "model: dcgan\n"), ["g_lr=1e-4", "g_betas=[0.0, 0.99]", "data=npz:a.npz",
                                                           "tensorboard=false"])
    assert cfg.g_lr == 1e-4 and cfg.g_betas == [0.0, 0.99] and cfg.data == "npz:a.npz"
    assert cfg.tensorboard is False
    with pytest.raises(ConfigError, match=r"--set: unknown key 'lr'"):
        load_config(None, ["lr=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["lr"])


def test_defaults_are_valid():
    assert load_config(None) == Config()


def test_huge_numbers_for_sampling_fields_are_a_clear_error():
    """Found by fuzzing: an integer too large for a float once raised OverflowError inside the range check."""
    with pytest.raises(ConfigError, match=r"'sample_steps' must be an integer from 1 to 1000, got 1000000"):
        load_config(None, ["sample_steps=1" + "0" * 400])
    with pytest.raises(ConfigError, match="'guidance' must be"):
        load_config(None, ["guidance=1" + "0" * 400])
