"""Sensor series through the one core: training, model files, sampling in the data's units, the series writers,
and the refusals of a model that does not fit the data."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import genforge
from genforge.cli import main
from genforge.config import from_dict
from genforge.data.examples import load_examples
from genforge.errors import ConfigError, GenforgeError, ModelFileError
from genforge.generation import writers
from genforge.models import build_networks
from genforge.models.networks1d import length_plan
from genforge.training import check_config, train

SERIES_TINY = {"series_window": 32, "series_stride": 16, "series_time_column": "t", "series_label_column": "state"}


@pytest.fixture(scope="module")
def series_run(tmp_path_factory, series_csv):
    """A conditional 1-D VAE trained for 30 steps on the tiny sensor log."""
    cfg = check_config(from_dict({"data": series_csv, **SERIES_TINY, "model": "cvae-1d", "z_dim": 8,
                                  "base_channels": 8, "batch_size": 16, "max_steps": 30, "g_lr": 3e-3,
                                  "log_every": 10, "sample_every": 0, "checkpoint_every": 30, "tensorboard": False,
                                  "num_threads": 1}, "test"), "test")
    run = tmp_path_factory.mktemp("runs") / "cvae"
    train(cfg, run, quiet=True)
    return run, cfg


def test_length_plan_pads_any_length_to_a_power_of_two_times_a_small_start():
    assert length_plan((1, 100)) == (4, 7)    # 112
    assert length_plan((1, 150)) == (5, 5)    # 160
    assert length_plan((1, 8)) == (1, 4)
    with pytest.raises(ConfigError, match="too short"):
        length_plan((1, 5))


def test_the_model_file_records_the_modality_shape_and_the_map_to_units(series_run):
    run, _ = series_run
    model = genforge.load(run)
    assert model.modality.name == "series" and model.example_shape == (2, 32)
    assert model.class_names == ["fault", "ok"] and model.num_classes == 2
    assert model.meta["transform"]["channel_names"] == ["a", "b"]


def test_samples_come_back_in_the_data_s_units(series_run, series_csv):
    """Channel b lives around 100 (+-3) in the log: a trained model's samples do too, and channel a around 0."""
    run, _ = series_run
    x = genforge.load(run).sample(64, seed=0).x
    assert x.dtype == np.float32 and x.shape == (64, 2, 32)
    assert 95 < x[:, 1].mean() < 105 and abs(x[:, 0].mean()) < 1.0
    again = genforge.load(run).sample(64, seed=0).x
    assert np.array_equal(x, again)  # same seed, same series


def test_series_writers_npz_csv_and_plot(series_run, tmp_path):
    run, _ = series_run
    model = genforge.load(run)
    samples = model.sample(3, seed=1, classes="ok")
    npz = writers.write_samples(samples, tmp_path / "s.npz", model)
    with np.load(npz) as f:
        assert f["x"].shape == (3, 2, 32) and f["x"].dtype == np.float32 and f["y"].tolist() == [1, 1, 1]
    with writers.write_samples(samples, tmp_path / "s.csv", model).open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sample", "class", "t", "a", "b"] and len(rows) == 1 + 3 * 32
    assert rows[1][:3] == ["0", "ok", "0"] and float(rows[1][4]) == pytest.approx(samples.x[0, 1, 0], rel=1e-6)
    png = writers.write_samples(samples, tmp_path / "s.png", model)
    with Image.open(png) as im:
        meta = json.loads(im.text["genforge"])
        assert im.size[0] > 400 and meta["kind"] == "series-plot" and "note" not in meta  # real series drawn


def test_cli_samples_a_series_model_to_each_writer(series_run, tmp_path):
    run, _ = series_run
    for suffix in (".npz", ".csv", ".png"):
        assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / f"x{suffix}")]) == 0
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.gif")]) == 2


def test_the_plot_says_so_when_the_real_data_is_gone(series_run, tmp_path):
    run, _ = series_run
    model = genforge.load(run)
    model.meta = {**model.meta, "train_config": {**model.meta["train_config"], "data": "series-csv:/nowhere.csv"}}
    png = writers.write_samples(model.sample(2, seed=0), tmp_path / "p.png", model)
    with Image.open(png) as im:
        assert "real series not drawn" in json.loads(im.text["genforge"])["note"]


def test_an_image_model_on_series_data_is_refused_naming_the_models_that_fit(tiny_config, series_csv):
    with pytest.raises(ConfigError, match=r"'dcgan' makes examples of axes \(c, h, w\).*series data.*cvae-1d"):
        tiny_config("dcgan", data=series_csv)


def test_a_series_model_on_images_is_refused(tiny_config, digits_npz):
    with pytest.raises(ConfigError, match="'gan-1d' makes examples of axes \\(c, t\\).*image data"):
        tiny_config("gan-1d", data=digits_npz)


@pytest.mark.parametrize("model", ["ddpm-1d", "gan-1d", "vae-1d"])
def test_networks_narrower_than_the_channels_are_refused_before_anything_is_written(model, tiny_config, tmp_path):
    """1-D networks with fewer features per time step than the data has channels make every window in a fixed
    subspace (tep's 53 sensors under base_channels 32 did): training refuses, naming both numbers."""
    with pytest.raises(ConfigError, match=r"base_channels 1 is fewer than the 2 channels of series-csv:.*log\.csv.*"
                                          r"set base_channels to at least 2"):
        train(tiny_config(model, base_channels=1), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_image_augmentation_on_series_is_refused(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="image augmentations"):
        train(tiny_config("vae-1d", augment_flip=True), tmp_path / "r", quiet=True)


def test_loaded_examples_fill_the_method_range_per_channel(tiny_config):
    ex = load_examples(tiny_config("gan-1d"), "-1,1")
    per_channel = ex.train_x.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(per_channel.min(1).values, torch.tensor([-1.0, -1.0]))
    assert torch.allclose(per_channel.max(1).values, torch.tensor([1.0, 1.0]))
    ex01 = load_examples(tiny_config("vae-1d"), "0,1")
    assert float(ex01.train_x.min()) == 0.0 and float(ex01.train_x.max()) == 1.0


def test_asinh_scaling_fills_the_range_and_is_stored_for_sampling(tiny_config, tmp_path):
    cfg = tiny_config("gan-1d")
    ex = load_examples(from_dict({**cfg.__dict__, "series_scaling": "asinh"}, "test"), "-1,1")
    per_channel = ex.train_x.transpose(0, 1).reshape(2, -1)
    assert float(per_channel.abs().max()) == pytest.approx(1.0, abs=1e-6)  # the farthest sample at +-1
    norm = ex.transform["normalization"]
    assert norm["method"] == "asinh" and len(norm["limit"]) == 2
    with pytest.raises(ConfigError, match="series_scaling"):
        from_dict({**cfg.__dict__, "series_scaling": "log"}, "test")


def test_a_channel_constant_in_training_comes_out_constant():
    """A held-shut valve: any network jitter on it would mark a window as generated, so it is pinned."""
    from genforge.generation.sampling import SeriesOutput

    norm = {"method": "minmax", "shift": [10.0, 5.0], "scale": [2.0, 1.0], "constant": [1]}
    out = SeriesOutput({"transform": {"normalization": norm, "channel_names": ["flow", "valve"]},
                        "example_shape": [2, 4]})
    x = torch.tensor([[[0.0, 0.25, 0.5, 1.0], [0.49, 0.5, 0.52, 0.47]]])  # [0, 1], as a family returns them
    got = out(x)
    np.testing.assert_allclose(got[0, 0], [8.0, 9.0, 10.0, 12.0])
    assert got.dtype == np.float32 and np.array_equal(got[0, 1], np.full(4, 5.0, np.float32))
    with pytest.raises(GenforgeError, match="constant channel outside 0..1"):
        SeriesOutput({"transform": {"normalization": {**norm, "constant": [2]}, "channel_names": ["a", "b"]},
                      "example_shape": [2, 4]})


def _series_model_dir(tmp_path, transform):
    from genforge.models.files import save_model

    nets = build_networks("vae-1d", (2, 16), z_dim=4, base_channels=4)
    return save_model(tmp_path / "m", nets, {"model": "vae-1d", "modality": "series", "example_shape": [2, 16],
                                             "z_dim": 4, "base_channels": 4, "num_classes": 0,
                                             "transform": transform})


@pytest.mark.parametrize("transform, message", [
    (None, "needs field 'transform'"),
    ({"normalization": {"method": "minmax", "shift": [0.0], "scale": [1.0]}, "channel_names": ["a"]},
     "must describe 2 channel"),
    ({"normalization": {"method": "minmax", "shift": [0.0, 1.0], "scale": [1.0, -1.0]}, "channel_names": ["a", "b"]},
     "positive scale"),
    ({"normalization": {"method": "asinh", "shift": [0.0, 1.0], "scale": [1.0, 1.0]}, "channel_names": ["a", "b"]},
     "malformed"),
    ({"normalization": {"method": "asinh", "shift": [0.0, 1.0], "scale": [1.0, 1.0], "limit": [2.0, 0.0]},
      "channel_names": ["a", "b"]}, "positive finite 'limit'"),
])
def test_a_damaged_transform_is_refused_on_load(tmp_path, transform, message):
    with pytest.raises(GenforgeError, match=message):
        genforge.load(_series_model_dir(tmp_path, transform))


def test_a_shape_of_the_wrong_rank_is_refused_on_load(tmp_path):
    path = _series_model_dir(tmp_path, {"normalization": {"method": "minmax", "shift": [0.0, 1.0],
                                                          "scale": [1.0, 1.0]}, "channel_names": ["a", "b"]})
    meta = json.loads((path / "config.json").read_text())
    meta["example_shape"] = [2, 16, 16]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"'example_shape' must be \[c, t\]"):
        genforge.load(path)
    meta.update(example_shape=[2, 16], modality="image")
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="makes examples of axes"):
        genforge.load(path)


@pytest.mark.parametrize("args", [["interpolate", "{run}", "--seeds", "1,2", "--out", "{tmp}/i.png"],
                                  ["memorization", "{run}"],
                                  ["sample", "{run}", "--n", "4", "--out", "{tmp}/f.npz", "--filter", "drs"],
                                  ["transfer", "{run}", "{tmp}", "--to", "ok", "--out", "{tmp}/t.png"]])
def test_image_only_commands_refuse_a_series_model_in_one_line(series_run, tmp_path, capsys, args):
    run, _ = series_run
    assert main([a.format(run=run, tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "works on image models" in err[0] and "is a series model" in err[0]
