"""One generation plan: the same model, seed and controls give the same outputs through every caller.

Callers: genforge.generation.sample, model.sample (the Python API), `genforge sample --out x.npz` (the CLI),
POST /v1/generate (the HTTP service, batched), genforge eval's sampling, the training loop's grids, and
feedback rounds (steering.feedback and POST /v1/feedback). For every family, on the model directories of
tests/fixtures/legacy (tiny models written before the core was reshaped).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genforge
from genforge.generation import make_grid, sample, save_grid
from genforge.generation.steering import feedback

LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "models"

# family -> (model directory, the controls it is sampled with, classes)
CASES = {
    "gan": ("dcgan", {"truncation": 0.7}, None),
    "vae": ("vae-conv", {"temperature": 0.8}, None),
    "conditional-vae": ("cvae-conv", {"temperature": 1.2}, [3, 1]),
    "diffusion": ("ddpm", {"steps": 4, "sampler": "dpm++2m"}, None),
    "conditional-diffusion": ("cddpm", {"steps": 3, "guidance": 2.0}, [2, 5]),
    "stochastic-diffusion": ("cddpm", {"steps": 3, "guidance": 2.0, "sampler": "dpm++2m-sde"}, [2, 5]),
}
N, SEED = 5, 11


@pytest.fixture(scope="module")
def models():
    return {case: genforge.load(LEGACY / name) for case, (name, _, _) in CASES.items()}


def reference(model, controls, classes):
    return sample(model, N, seed=SEED, classes=classes, **controls)


@pytest.mark.parametrize("case", CASES)
def test_python_api_and_function_agree(models, case):
    _, controls, classes = CASES[case]
    ref = reference(models[case], controls, classes)
    api = models[case].sample(N, seed=SEED, classes=classes, **controls)
    np.testing.assert_array_equal(api.x, ref.x)
    np.testing.assert_array_equal(api.z, ref.z)
    assert api.images[0].size == ref.x.shape[1:3][::-1]
    assert not np.array_equal(sample(models[case], N, seed=SEED + 1, classes=classes, **controls).x, ref.x)


@pytest.mark.parametrize("case", CASES)
def test_cli_writes_the_same_samples(models, case, tmp_path):
    name, controls, classes = CASES[case]
    ref = reference(models[case], controls, classes)
    out = tmp_path / "x.npz"
    args = [sys.executable, "-m", "genforge", "sample", str(LEGACY / name), "--n", str(N), "--seed", str(SEED),
            "--out", str(out), "--device", "cpu"]
    for key, value in controls.items():
        args += [f"--{key}", str(value)]
    if classes is not None:
        args += ["--class", ",".join(map(str, classes))]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with np.load(out) as f:
        np.testing.assert_array_equal(f["x"], ref.x)
        if classes is not None:
            np.testing.assert_array_equal(f["y"], ref.y)


@pytest.fixture(scope="module")
def client(models):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[test]'")
    from fastapi.testclient import TestClient

    from genforge.serve.app import Served, ServeConfig, create_app

    served = {case: Served(case, model, lambda: model) for case, model in models.items()}
    with TestClient(create_app(served, ServeConfig(auth=False, rate=0))) as c:
        yield c


@pytest.mark.parametrize("case", CASES)
def test_http_service_returns_the_same_samples(models, client, case):
    _, controls, classes = CASES[case]
    ref = reference(models[case], controls, classes)
    body = {"model": case, "n": N, "seed": SEED, "format": "npz", **controls}
    if classes is not None:
        body["class"] = classes
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    with np.load(io.BytesIO(r.content)) as f:
        np.testing.assert_array_equal(f["x"], ref.x)
        np.testing.assert_array_equal(f["z"], ref.z)


@pytest.mark.parametrize("case", CASES)
def test_eval_samples_the_model_with_its_defaults(models, case):
    from genforge.metrics.evaluate import _sample_model

    x, y = _sample_model(models[case], N, SEED)
    ref = sample(models[case], N, seed=SEED)
    np.testing.assert_array_equal(x, ref.x)
    if models[case].num_classes:
        np.testing.assert_array_equal(y, ref.y)


@pytest.mark.parametrize("case", ["gan", "conditional-vae", "conditional-diffusion"])
def test_feedback_from_cli_and_http_agree(models, client, case, tmp_path):
    model = models[case]
    _, controls, classes = CASES[case]
    grid = tmp_path / "grid.png"
    from genforge.generation import write_samples

    write_samples(reference(model, controls, classes), grid, model)
    local, _ = feedback(model, grid, [0, 3], n=4, radius=0.4, seed=9)
    side = json.loads(grid.with_name("grid.png.json").read_text())
    liked = [{"z": side["latents"][i], **({"class": side["classes"][i]} if model.num_classes else {})}
             for i in (0, 3)]
    r = client.post("/v1/feedback", json={"model": case, "liked": liked, "n": 4, "radius": 0.4, "seed": 9,
                                          "format": "npz"})
    assert r.status_code == 200, r.text
    with np.load(io.BytesIO(r.content)) as f:
        np.testing.assert_array_equal(f["x"], local.x)


@pytest.mark.parametrize("model_name", ["dcgan", "vae-conv", "cddpm"])
def test_training_grid_is_the_plan_of_the_finished_model(tiny_config, tmp_path, model_name):
    from genforge.training import train

    cfg = tiny_config(model_name, max_steps=2, sample_every=2, checkpoint_every=2, grid_n=6, sample_steps=3)
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    model = genforge.load(run)
    grid = np.asarray(Image.open(run / "samples" / "step_00000002.png"))
    expected = sample(model, cfg.grid_n, seed=cfg.seed + 3)
    nrow = model.num_classes or None
    path = save_grid(expected.x, tmp_path / "expected.png", nrow=nrow)
    np.testing.assert_array_equal(grid, np.asarray(Image.open(path)))
    assert make_grid(expected.x, nrow).shape[:2] == grid.shape[:2]
