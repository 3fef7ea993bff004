"""Cluster guidance: k-means pseudo-labels, a cddpm trained on them without labels, sampled as unconditional."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import genforge
from genforge.cli import main
from genforge.config import from_dict
from genforge.training import check_config
from genforge.data.clusters import cluster_labels
from genforge.errors import ConfigError, ModelFileError
from genforge.generation import sample
from genforge.generation.sampling import prior_classes
from genforge.metrics.evaluate import _sample_model
from genforge.training import train


def test_kmeans_finds_obvious_groups_largest_first_and_reproducibly():
    rng = np.random.default_rng(0)
    x = np.zeros((90, 8, 8), dtype=np.uint8)
    x[:60, :4] = 200   # 60 images bright on top
    x[60:, 4:] = 200   # 30 bright at the bottom
    x = np.clip(x + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    labels, prior = cluster_labels(x, 2, seed=3)
    assert labels.tolist() == [0] * 60 + [1] * 30  # the larger cluster is cluster 0
    assert prior.tolist() == pytest.approx([60 / 90, 30 / 90])
    again, _ = cluster_labels(x, 2, seed=3)
    assert np.array_equal(labels, again)
    with pytest.raises(ValueError, match="cannot make 91 clusters of 90 images"):
        cluster_labels(x, 91)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, digits_npz):
    """The tiny digits without their labels."""
    with np.load(digits_npz.removeprefix("npz:")) as f:
        x = f["x"]
    path = tmp_path_factory.mktemp("unlabeled") / "x.npz"
    np.savez(path, x=x)
    return f"npz:{path}"


def _config(data, **extra):
    return check_config(from_dict({"data": data, "model": "cddpm", "clusters": 3, "base_channels": 4, "batch_size": 16,
                                   "max_steps": 2, "checkpoint_every": 2, "sample_every": 2, "tensorboard": False,
                                   "grid_n": 6, "num_threads": 1, "sample_steps": 3, **extra}, "test"), "test")


@pytest.fixture(scope="module")
def run(tmp_path_factory, unlabeled):
    path = tmp_path_factory.mktemp("clusters") / "run"
    train(_config(unlabeled), path, quiet=True)
    return path


def test_a_cddpm_trains_on_clusters_of_unlabeled_images(run, unlabeled):
    model = genforge.load(run)
    assert model.num_classes == 3 and model.class_names == ["cluster 0", "cluster 1", "cluster 2"]
    assert len(model.cluster_prior) == 3 and sum(model.cluster_prior) == pytest.approx(1)
    assert model.cluster_prior == sorted(model.cluster_prior, reverse=True)
    # without clusters the same unlabeled data is refused, with a hint
    with pytest.raises(ConfigError, match="has no labels \\(set clusters: K"):
        train(_config(unlabeled, clusters=0), run.parent / "refused", quiet=True)


def test_it_samples_like_an_unconditional_model(run, tmp_path):
    model = genforge.load(run)
    s = sample(model, 12, seed=4)
    assert s.y.tolist() == prior_classes(model.cluster_prior, 12, 4).tolist()  # clusters drawn by size
    assert np.array_equal(s.x, sample(model, 12, seed=4).x)
    assert sample(model, 2, seed=4, classes=2).y.tolist() == [2, 2]              # a cluster can still be asked for
    x, y = _sample_model(model, 12, 4)
    assert y is None and np.array_equal(x, s.x)  # scored as unconditional: clusters are not classes
    # the CLI grid and the served one are square, not one column per cluster (3)
    assert main(["sample", str(run), "--n", "4", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    side = json.loads((tmp_path / "g.png.json").read_text())
    assert side["nrow"] == 2
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genforge.serve.app import Served, ServeConfig, create_app

    with TestClient(create_app({"c": Served("c", model, lambda: model)}, ServeConfig(auth=False, rate=0))) as c:
        r = c.post("/v1/generate", json={"model": "c", "n": 4, "steps": 2, "format": "png"})
        assert r.status_code == 200, r.text
        assert json.loads(Image.open(io.BytesIO(r.content)).text["genforge"])["nrow"] == 2


def test_bad_cluster_settings(unlabeled, run, tmp_path):
    with pytest.raises(ConfigError, match="'clusters' .* needs the class-conditional diffusion model cddpm, got "
                                          "model 'ddpm'"):
        _config(unlabeled, model="ddpm")
    with pytest.raises(ConfigError, match="takes 2 to 1000 clusters, got 1"):
        _config(unlabeled, clusters=1)
    copy = tmp_path / "edited"
    shutil.copytree(genforge.load(run).path, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["clusters"]["prior"] = [0.5, 0.5]
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="field 'clusters' must hold 'prior', one share per class \\(3\\)"):
        genforge.load(copy)


def test_resume_trains_on_the_same_clusters_or_refuses(unlabeled, tmp_path):
    """k-means is computed again on resume; the labels' hash recorded with the model proves it is the same
    clustering, and a run whose checkpoint cannot prove it (an older genforge's k-means) is refused."""
    path = tmp_path / "run"
    train(_config(unlabeled), path, quiet=True)
    meta_file = genforge.load(path).path + "/config.json"
    meta = json.loads(open(meta_file).read())
    assert len(meta["clusters"]["labels_sha256"]) == 64
    assert train(_config(unlabeled, max_steps=4), path, resume=True, quiet=True).step == 4
    for edit, message in ((lambda c: c.pop("labels_sha256"), "records no hash of its cluster labels"),
                          (lambda c: c.update(labels_sha256="0" * 64), "differ from the ones it trained on")):
        meta_file = genforge.load(path).path + "/config.json"
        meta = json.loads(open(meta_file).read())
        edit(meta["clusters"])
        open(meta_file, "w").write(json.dumps(meta))
        with pytest.raises(ConfigError, match=message):
            train(_config(unlabeled, max_steps=6), path, resume=True, quiet=True)
