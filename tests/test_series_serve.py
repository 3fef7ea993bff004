"""Series through the HTTP service: the same values as model.sample for the same seed, in each format."""

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import genforge  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.training import train  # noqa: E402


@pytest.fixture(scope="module")
def series_client(tmp_path_factory, series_csv):
    from genforge.config import from_dict

    cfg = from_dict({"data": series_csv, "series_window": 32, "series_stride": 16, "series_time_column": "t",
                     "series_label_column": "state", "model": "cgan-1d", "z_dim": 8, "base_channels": 4,
                     "batch_size": 16, "max_steps": 2, "checkpoint_every": 2, "sample_every": 0,
                     "tensorboard": False}, "test")
    run = tmp_path_factory.mktemp("series-serve") / "run"
    train(cfg, run, quiet=True)
    model = genforge.load(run)
    app = create_app({"sensors": Served("sensors", model, lambda: genforge.load(run))}, ServeConfig(rate=0, auth=False))
    with TestClient(app) as c:
        yield c, model


def test_models_list_the_modality_and_shape(series_client):
    c, _ = series_client
    info = c.get("/v1/models").json()["models"][0]
    assert info["modality"] == "series" and info["example_shape"] == [2, 32] and info["image_shape"] is None
    assert info["classes"] == ["fault", "ok"]


def test_json_returns_the_values_model_sample_gives(series_client):
    c, model = series_client
    r = c.post("/v1/generate", json={"model": "sensors", "n": 3, "seed": 5, "class": "ok"})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.sample(3, seed=5, classes="ok").x
    np.testing.assert_array_equal(np.asarray(body["series"], dtype=np.float32), expected)
    assert body["channel_names"] == ["a", "b"] and body["classes"] == [1, 1, 1] and "images" not in body
    assert len(body["values_sha256"]) == 3


def test_npz_and_png_formats(series_client):
    c, model = series_client
    r = c.post("/v1/generate", json={"model": "sensors", "n": 2, "seed": 1, "format": "npz"})
    with np.load(io.BytesIO(r.content)) as f:
        np.testing.assert_array_equal(f["x"], model.sample(2, seed=1).x)
    r = c.post("/v1/generate", json={"model": "sensors", "n": 2, "seed": 1, "format": "png"})
    assert r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert "genforge" in im.text and im.size[0] > 200


def test_size_is_an_image_control(series_client):
    c, _ = series_client
    r = c.post("/v1/generate", json={"model": "sensors", "n": 1, "size": 64})
    assert r.status_code == 422 and "size" in r.json()["error"]["message"]
