"""genforge distill: progressive distillation of a diffusion model into a few-step sampler (models/distill.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import genforge
from genforge.cli import main
from genforge.models import diffusion
from genforge.models import distill as D
from genforge.models.files import read_model
from genforge.training import train


def _small_teacher(tmp_path_factory, digits_npz, prediction: str):
    """A small DDPM on 16 x 16 digits, trained long enough that its DDIM steps are not all alike."""
    from genforge.config import from_dict
    from genforge.training import check_config

    cfg = check_config(from_dict({"data": digits_npz, "model": "ddpm", "base_channels": 8, "image_size": 16,
                                  "batch_size": 32, "max_steps": 150, "g_lr": 2e-3, "log_every": 50,
                                  "sample_every": 0, "checkpoint_every": 1000, "tensorboard": False,
                                  "num_threads": 1, "eval_every": 0, "sample_steps": 16,
                                  "prediction": prediction}, "test"), "test")
    run = tmp_path_factory.mktemp(f"teacher-{prediction}") / "run"
    train(cfg, run, quiet=True)
    return run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, digits_npz):
    return _small_teacher(tmp_path_factory, digits_npz, "eps")


@pytest.fixture(scope="module")
def v_teacher(tmp_path_factory, digits_npz):
    return _small_teacher(tmp_path_factory, digits_npz, "v")


def _distill_cli(teacher, out, *extra):
    return main(["distill", str(teacher), "--out", str(out), "--device", "cpu", "--batch-size", "16", *extra])


def test_distilled_model_loads_and_samples_in_4_steps_reproducibly(teacher, tmp_path, capsys):
    out = tmp_path / "fast"
    assert _distill_cli(teacher, out, "--steps", "4", "--teacher-steps", "8", "--iterations", "10") == 0
    assert "8 -> 4 DDIM steps in 1 round(s)" in capsys.readouterr().err
    model = genforge.load(out, device="cpu")
    assert model.sampling_defaults == {"steps": 4, "sampler": "ddim"}
    meta = json.loads((out / "config.json").read_text())
    assert meta["distilled"]["teacher_steps"] == 8 and meta["distilled"]["rounds"] == 1
    assert meta["distilled"]["teacher_weights_sha256"] == genforge.load(teacher, device="cpu").meta["weights_sha256"]
    calls = []
    model.nets["denoiser"].register_forward_hook(lambda *a: calls.append(1))
    first = model.sample(6, seed=3).x
    assert len(calls) == 4  # one network call per step, one batch
    assert np.array_equal(first, model.sample(6, seed=3).x) and first.shape == (6, 16, 16)


@pytest.mark.parametrize("prediction, first", [("eps", 1), ("v", 0)])
def test_distilled_steps_land_closer_to_two_teacher_steps_than_one(teacher, v_teacher, prediction, first):
    """The round's objective, measured on fresh examples and noise: where the student's one DDIM step lands
    against where two teacher steps land, over the steps it learns. An eps student learns all but the first
    (at t = T-1 the noise parameterisation cannot learn, and the student keeps the teacher's step;
    models/distill.py); a v student learns the first too, and must land closer there as well."""
    nets, meta, _ = read_model(teacher if prediction == "eps" else v_teacher)
    assert diffusion.prediction_of(nets["denoiser"]) == prediction
    ab, net = nets["schedule"].alphas_cumprod, nets["denoiser"].eval()
    from genforge.config import from_dict
    from genforge.data.examples import load_examples

    x = load_examples(from_dict(meta["train_config"], "test"), "-1,1").train_x
    student = D.distill_round(net, ab, x, None, 1.0, 8, iterations=150, batch_size=32, lr=1e-4, seed=0,
                              log=lambda line: None)
    grid = torch.tensor(diffusion.ddim_timesteps(8) + [-1])
    g = torch.Generator().manual_seed(99)
    held = x[torch.randperm(len(x), generator=g)[:64]]
    miss_student, miss_teacher = [], []
    for i in range(first, 4):  # the student's steps (first + 1)..4
        t, t1, s = (grid[k].repeat(len(held)) for k in (2 * i, 2 * i + 1, 2 * i + 2))
        a_t, s_t = D._coefficients(ab, t, held.ndim)
        z = (a_t * held.double() + s_t * torch.randn(held.shape, generator=g).double()).float()
        with torch.no_grad():
            two = D.ddim_step(net, ab, D.ddim_step(net, ab, z, t, t1, None, 1.0), t1, s, None, 1.0)
            miss_teacher.append(float((D.ddim_step(net, ab, z, t, s, None, 1.0) - two).abs().mean()))
            miss_student.append(float((D.ddim_step(student, ab, z, t, s, None, 1.0) - two).abs().mean()))
    assert sum(miss_student) < 0.8 * sum(miss_teacher), (miss_student, miss_teacher)
    if prediction == "v":
        assert miss_student[0] < 0.8 * miss_teacher[0], (miss_student, miss_teacher)  # the first step learnt


def test_a_v_teacher_gives_a_v_student_that_says_so(v_teacher, tmp_path):
    out = D.distill(v_teacher, tmp_path / "fast", steps=4, teacher_steps=8, iterations=5, batch_size=16,
                    device="cpu", log=lambda line: None)
    model = genforge.load(out, device="cpu")
    meta = json.loads((out / "config.json").read_text())
    assert meta["distilled"]["prediction"] == "v" and meta["net_options"] == {"prediction": "v"}
    assert diffusion.prediction_of(model.nets["denoiser"]) == "v" and model.sampling_defaults["steps"] == 4
    a = model.sample(4, seed=5).x
    assert np.isfinite(a).all() and np.array_equal(a, model.sample(4, seed=5).x)


def test_series_diffusion_distills_through_the_same_code(tiny_config, tmp_path):
    run = tmp_path / "r"
    train(tiny_config("cddpm-1d", max_steps=4, guidance=2.0), run, quiet=True)
    out = D.distill(run, tmp_path / "fast", steps=2, teacher_steps=4, iterations=3, batch_size=8, device="cpu",
                    log=lambda line: None)
    model = genforge.load(out, device="cpu")
    assert model.modality.name == "series" and model.sampling_defaults["steps"] == 2
    assert model.sampling_defaults["guidance"] == 1.0  # the teacher's guidance 2 is baked into the student
    assert json.loads((out / "config.json").read_text())["distilled"]["guidance"] == 2.0
    a = model.sample(4, seed=1, classes=0)
    assert a.x.shape[0] == 4 and np.isfinite(a.x).all()
    assert np.array_equal(a.x, model.sample(4, seed=1, classes=0).x)


@pytest.mark.parametrize("args, message", [
    (["--steps", "3", "--teacher-steps", "8"], "--steps 3 must be the teacher's 8 steps halved one or more times"),
    (["--steps", "4", "--teacher-steps", "4"], "halved one or more times"),
    (["--steps", "4", "--teacher-steps", "12"], "try --teacher-steps 16"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--iterations", "0"], "--iterations must be a positive integer"),
    (["--lr", "-1"], "--lr must be a positive number"),
])
def test_bad_steps_and_options_are_one_line_errors(teacher, tmp_path, capsys, args, message):
    assert _distill_cli(teacher, tmp_path / "x", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("genforge: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_refuses_a_model_that_is_not_diffusion_and_an_existing_output(tiny_config, teacher, tmp_path, capsys):
    gan = tmp_path / "gan"
    train(tiny_config("dcgan", max_steps=2), gan, quiet=True)
    assert _distill_cli(gan, tmp_path / "out") == 2
    assert "dcgan is a gan model; distill makes a few-step sampler of a diffusion model" in capsys.readouterr().err
    assert _distill_cli(teacher, teacher) == 2
    assert "already holds a model or run: choose another --out" in capsys.readouterr().err


def test_distill_benchmark_quick_smoke_run(capsys):
    """benchmarks/distill.py --quick: the whole row (train, distil, sample, score) on tiny settings; no write."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import distill as bench

    results = Path(bench.ROOT / "benchmarks/RESULTS.md")
    before = results.read_text() if results.exists() else None
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "machine: " in out and "fp32 matmul" in out  # every benchmark prints the machine first
    for label in ("teacher, 20 DDIM steps", "teacher, 4 DDIM steps (not distilled)", "distilled, 4 DDIM steps"):
        assert label in out
    assert "distilled 4-step / teacher 20-step FID: " in out
    assert (results.read_text() if results.exists() else None) == before
