"""Serving a table model: /v1/generate returns the rows of genforge sample as JSON or CSV, with conditions said and
kept, a column plot on request, and the models list naming the columns; bad conditions are 422."""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
from fastapi.testclient import TestClient  # noqa: E402

import genforge  # noqa: E402
from genforge.config import load_config  # noqa: E402
from genforge.generation.tables import sample_rows  # noqa: E402
from genforge.serve.app import Served, ServeConfig, create_app  # noqa: E402
from genforge.training import train  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("data") / "t.csv"
    data.write_text("age,sex,cd4\n" + "".join(f"{int(rng.integers(20, 80))},{'FM'[i % 2]},"
                                             f"{'' if i % 5 == 0 else int(rng.integers(50, 900))}\n"
                                             for i in range(80)))
    run = tmp_path_factory.mktemp("run") / "gan"
    cfg = load_config("table-ctgan", [f"data=csv:{data}", "tensorboard=false", "batch_size=20", "max_steps=3",
                                      "base_channels=16", "z_dim=8", "table_max_modes=3"])
    train(cfg, run, quiet=True)
    model = genforge.load(run)
    app = create_app({"rows": Served("rows", model, lambda: genforge.load(run))}, ServeConfig(rate=0, auth=False))
    with TestClient(app) as c:
        yield c, model


def test_rows_as_json_are_the_rows_of_genforge_sample(client):
    c, model = client
    r = c.post("/v1/generate", json={"model": "rows", "n": 12, "seed": 4, "format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["age", "sex", "cd4"] and body["n"] == 12 and body["conditions"] == "no condition"
    same, _ = sample_rows(model, 12, seed=4)
    assert [row["age"] for row in body["rows"]] == [int(v) for v in same.values["age"]]
    assert [row["sex"] for row in body["rows"]] == list(same.values["sex"])
    assert all(row["cd4"] is None or isinstance(row["cd4"], int) for row in body["rows"])


def test_rows_as_csv_with_conditions_meet_them_and_say_how(client):
    c, _ = client
    r = c.post("/v1/generate", json={"model": "rows", "n": 10, "seed": 1, "format": "csv", "where": ["sex=F", "age>30"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "sex=F by the conditional vector" in r.headers["x-genforge-conditions"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 10 and {row["sex"] for row in rows} == {"F"} and all(int(row["age"]) > 30 for row in rows)


def test_a_plot_of_the_columns_and_the_models_list_for_the_page(client):
    c, _ = client
    r = c.post("/v1/generate", json={"model": "rows", "n": 50, "seed": 0, "plot": True})  # default format: json
    assert r.status_code == 200 and base64.b64decode(r.json()["plot"]).startswith(b"\x89PNG")
    info = c.get("/v1/models").json()["models"][0]
    assert info["modality"] == "table"
    assert {"name": "sex", "kind": "categorical", "categories": ["F", "M"]} in info["columns"]


def test_bad_conditions_and_formats_are_422_naming_them(client):
    c, _ = client
    r = c.post("/v1/generate", json={"model": "rows", "n": 5, "where": ["sex=X"]})
    assert r.status_code == 422 and "'X' is not a category the model saw" in r.json()["error"]["message"]
    r = c.post("/v1/generate", json={"model": "rows", "n": 5, "format": "png"})
    assert r.status_code == 422 and "json or csv" in r.json()["error"]["message"]
