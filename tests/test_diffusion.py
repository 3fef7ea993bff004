"""The diffusion family: the UNet, the noise schedules, DDPM training, the DDIM sampler and guidance."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import genforge
from genforge.cli import main
from genforge.config import from_dict
from genforge.errors import ConfigError, GenforgeError, ModelFileError
from genforge.generation import sample
from genforge.controls import SAMPLERS
from genforge.models import MODELS, build_networks, diffusion
from genforge.models.diffusion import (NoiseSchedule, T, Trainer, ddim_timesteps, generate, make_schedule, predict,
                                       step_noise)
from genforge.models.unet import UNet
from genforge.training import train
from genforge.training.checkpoint import load_state


def _metrics_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_npz):
    """One tiny trained ddpm (linear schedule, so loading must restore it) and one cddpm."""
    out = {}
    for model, schedule in (("ddpm", "linear"), ("cddpm", "cosine")):
        cfg = from_dict({"data": digits_npz, "model": model, "base_channels": 4, "batch_size": 16, "max_steps": 3,
                         "checkpoint_every": 3, "sample_every": 0, "tensorboard": False, "grid_n": 4,
                         "num_threads": 1, "noise_schedule": schedule}, "test")
        out[model] = tmp_path_factory.mktemp(model) / "run"
        train(cfg, out[model], quiet=True)
    return out


# --------------------------------------------------------------------------- the network

@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_unet_predicts_noise_of_the_image_shape(shape, num_classes):
    torch.manual_seed(0)
    net = UNet(shape, base_channels=4, num_classes=num_classes)
    for p in net.parameters():  # the output layers start at zero: give every weight a value
        nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, *shape), torch.tensor([0, T - 1])
    y = torch.tensor([0, 2]) if num_classes else None
    eps = net(x, t, y)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert not torch.allclose(eps, net(x, torch.tensor([500, 500]), y))  # the timestep matters
    if num_classes:
        # y=None is the null class (index num_classes): the unconditional prediction of guidance
        assert torch.equal(net(x, t), net(x, t, torch.tensor([3, 3])))
        assert not torch.allclose(net(x, t), eps)


def test_unet_is_cpu_cheap():
    """The recipes' width (16) costs about 80 MFLOP per 28x28 forward: a few hundred training images/s/core."""
    net = UNet((1, 28, 28), base_channels=16, num_classes=10)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 1, 28, 28), torch.tensor([10]), torch.tensor([3]))
    assert 50e6 < counter.get_total_flops() < 100e6


# --------------------------------------------------------------------------- the schedule

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_decreases_inside_0_1(kind):
    ab = make_schedule(kind)
    assert ab.shape == (T,) and ab.dtype == torch.float32
    assert (ab > 0).all() and (ab < 1).all() and (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.999 and ab[-1] < 1e-4  # almost clean at t=0, almost pure noise at t=T-1


def test_schedule_values_from_the_papers():
    linear, cosine = make_schedule("linear"), make_schedule("cosine")
    assert 1 - linear[0] == pytest.approx(1e-4, rel=1e-3)                    # beta_1 = 1e-4
    assert linear[-1] == pytest.approx(math.prod(1 - b for b in np.linspace(1e-4, 0.02, T)), rel=1e-3)
    # cosine: alpha_bar(T/2) = cos((0.5 + s) / (1 + s) * pi/2)^2 / f(0), about one half
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cosine[T // 2 - 1] == pytest.approx(f(0.5) / f(0), rel=1e-4)
    with pytest.raises(GenforgeError, match="noise_schedule must be linear or cosine, got 'quadratic'"):
        make_schedule("quadratic")


def test_schedule_is_a_network_that_takes_and_ignores_the_common_arguments():
    sched = NoiseSchedule((1, 28, 28), z_dim=784, base_channels=16, num_classes=10)
    assert not list(sched.parameters()) and list(sched.state_dict()) == ["alphas_cumprod"]


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("model, schedule", [("ddpm", "linear"), ("cddpm", "cosine")])
def test_one_training_step(tiny_config, model, schedule):
    cfg = tiny_config(model, noise_schedule=schedule)
    torch.manual_seed(0)
    nets = build_networks(model, (1, 28, 28), 784, cfg.base_channels, num_classes=10 if model == "cddpm" else 0)
    trainer = Trainer(cfg, nets)
    assert torch.equal(nets["schedule"].alphas_cumprod, make_schedule(schedule))  # set from the config
    before = {k: v.clone() for k, v in nets["denoiser"].state_dict().items()}
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    y = torch.arange(16) % 10 if model == "cddpm" else None
    losses = trainer.train_step(x, y, torch.Generator().manual_seed(0))
    assert list(losses) == ["loss"] and not losses["loss"].requires_grad
    assert losses["loss"] == pytest.approx(1.0, abs=0.2)  # the zero-initialised output predicts eps = 0: E|eps|^2
    after = nets["denoiser"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(nets["schedule"].alphas_cumprod, make_schedule(schedule))  # never trained


def _seen_labels(tiny_config, model, batch, **overrides):
    """Labels the denoiser receives in one training step on ``batch`` tiny 8x8 images of class 3."""
    cfg = tiny_config(model, **overrides)
    nets = build_networks(model, (1, 8, 8), 64, cfg.base_channels, num_classes=10 if model == "cddpm" else 0)
    seen = []
    nets["denoiser"].register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    y = torch.full((batch,), 3) if model == "cddpm" else None
    Trainer(cfg, nets).train_step(torch.zeros(batch, 1, 8, 8), y, torch.Generator().manual_seed(0))
    return seen[0]


def test_cfg_label_dropout_happens_at_the_configured_rate(tiny_config):
    y = _seen_labels(tiny_config, "cddpm", 4096, cfg_dropout=0.25)
    assert set(y.tolist()) == {3, 10}  # kept, or the null class (index num_classes)
    assert (y == 10).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert (_seen_labels(tiny_config, "cddpm", 256, cfg_dropout=0.0) == 3).all()
    assert _seen_labels(tiny_config, "ddpm", 16) is None


def test_resume_continues_exactly(tmp_path, tiny_config):
    """4 steps, then a resume to 8, gives the same weights as 8 steps in one go (t, eps, labels all resumed)."""
    once = train(tiny_config("cddpm", max_steps=8, checkpoint_every=4), tmp_path / "once", quiet=True)
    train(tiny_config("cddpm", max_steps=4, checkpoint_every=4), tmp_path / "twice", quiet=True)
    again = train(tiny_config("cddpm", max_steps=8, checkpoint_every=4), tmp_path / "twice", resume=True, quiet=True)
    assert again.step == 8
    a, b = load_state(once.checkpoint), load_state(again.checkpoint)
    for part in ("nets", "ema"):
        for role in a[part]:
            for key, tensor in a[part][role].items():
                assert torch.equal(tensor, b[part][role][key]), (part, role, key)
    wa = load_file(once.checkpoint / "model.safetensors")
    wb = load_file(again.checkpoint / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics_steps(tmp_path / "twice") == [2, 4, 6, 8]


# --------------------------------------------------------------------------- model files and sampling

def test_save_load_round_trip_keeps_the_trained_schedule(runs):
    model = genforge.load(runs["ddpm"])
    assert model.family == "diffusion" and model.z_dim == 784 and model.num_classes == 0
    # built with the default (cosine) schedule, then the saved linear one loaded over it
    assert torch.equal(model.nets["schedule"].alphas_cumprod, make_schedule("linear"))
    weights = load_file(runs["ddpm"] / "checkpoints" / "step_00000003" / "model.safetensors")
    assert torch.equal(weights["schedule.alphas_cumprod"], make_schedule("linear"))
    assert model.sample(3, seed=1).x.shape == (3, 28, 28)


def test_sampling_is_reproducible_and_the_same_from_cli_and_python(runs, tmp_path):
    model = genforge.load(runs["cddpm"])
    a = sample(model, 4, seed=5, classes=[1, 2], steps=10)
    assert np.array_equal(a.x, sample(model, 4, seed=5, classes=[1, 2], steps=10).x)
    assert not np.array_equal(a.x, sample(model, 4, seed=6, classes=[1, 2], steps=10).x)
    assert a.y.tolist() == [1, 2, 1, 2] and a.z.shape == (4, 784)
    # the CLI goes through the same function: same seed, same pixels
    assert main(["sample", str(runs["cddpm"]), "--n", "4", "--seed", "5", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert np.array_equal(f["x"], sample(model, 4, seed=5).x)


def _cli(*args) -> int:
    """Exit status of ``genforge ARGS``, whether the CLI returns it or raises SystemExit (usage errors)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


def test_cli_steps_sampler_and_guidance(runs, tmp_path, monkeypatch):
    """genforge sample --steps --sampler --guidance reach the sampler with their values, and the CLI's pixels
    are the Python API's with the same controls. (A 3-step model's images saturate to 0/255 whatever the
    controls, so the values are checked where the sampler receives them, not in the pixels.) A missing flag
    is a failure here, never a skip."""
    model = genforge.load(runs["cddpm"])
    sampler = SAMPLERS[-1]
    received = []
    real_generate = diffusion.generate

    def recording(*args, **kwargs):
        received.append({k: kwargs.get(k) for k in ("steps", "sampler", "guidance")})
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(diffusion, "generate", recording)
    out = tmp_path / "s.npz"
    assert _cli("sample", runs["cddpm"], "--n", 4, "--seed", 5, "--steps", 10, "--sampler", sampler,
                "--guidance", 2, "--out", out) == 0
    assert received and all(r == {"steps": 10, "sampler": sampler, "guidance": 2.0} for r in received)
    with np.load(out, allow_pickle=False) as f:
        assert np.array_equal(f["x"], sample(model, 4, seed=5, steps=10, sampler=sampler, guidance=2.0).x)
    assert _cli("sample", runs["cddpm"], "--n", 2, "--sampler", "no-such-sampler", "--out", tmp_path / "b.npz") == 2
    assert not (tmp_path / "b.npz").exists()


def test_images_do_not_depend_on_batching(runs):
    model = genforge.load(runs["cddpm"])
    whole = sample(model, 6, seed=2, steps=5, guidance=3.0).x
    assert np.array_equal(whole, sample(model, 6, seed=2, steps=5, guidance=3.0, batch_size=4).x)


def test_bad_controls_are_clear_errors(runs):
    ddpm, cddpm = genforge.load(runs["ddpm"]), genforge.load(runs["cddpm"])
    with pytest.raises(GenforgeError, match="guidance needs a class-conditional model; ddpm is unconditional"):
        sample(ddpm, 2, guidance=2.0)
    with pytest.raises(GenforgeError, match="steps must be an integer from 1 to 1000, got 0"):
        sample(cddpm, 2, steps=0)
    with pytest.raises(GenforgeError, match="guidance must be in"):
        sample(cddpm, 2, guidance=-1.0)
    with pytest.raises(GenforgeError, match=r"starting noise image: expected \(n, 784\), got \(2, 8\)"):
        generate(ddpm.nets, torch.randn(2, 8))


def test_the_recipe_sets_how_its_model_samples(tmp_path, digits_npz, monkeypatch):
    """Config sampler / sample_steps / guidance: the training grids, the validation samples and every later
    sample() that gives no control of its own use them; a control given wins over the recipe's."""
    calls = []
    real = diffusion.generate

    def recording(nets, z, y=None, **controls):
        calls.append(controls)
        return real(nets, z, y, **controls)

    monkeypatch.setattr(diffusion, "generate", recording)
    cfg = from_dict({"data": digits_npz, "model": "cddpm", "base_channels": 4, "batch_size": 16, "max_steps": 2,
                     "checkpoint_every": 2, "sample_every": 2, "tensorboard": False, "grid_n": 4, "num_threads": 1,
                     "guidance": 2.5, "sampler": "dpm++2m", "sample_steps": 4}, "test")
    train(cfg, tmp_path / "run", quiet=True)
    recipe = {"sampler": "dpm++2m", "steps": 4, "guidance": 2.5}
    assert calls and all(c == recipe for c in calls)  # the training grid
    model = genforge.load(tmp_path / "run")
    assert model.sampling_defaults == recipe
    calls.clear()
    sample(model, 3, seed=1)
    sample(model, 3, seed=1, steps=7, guidance=0.0)
    assert calls == [recipe, {**recipe, "steps": 7, "guidance": 0.0}]
    # a model file from before these keys samples as genforge always did: 50 DDIM steps, guidance 1
    old = dict(model.meta, train_config={k: v for k, v in model.meta["train_config"].items()
                                         if k not in ("guidance", "sampler", "sample_steps")})
    assert type(model)(model.nets, old).sampling_defaults == {"sampler": "ddim", "steps": 50, "guidance": 1.0}
    # a config.json edited to a value sampling cannot honour is refused at load, naming the field
    copy = tmp_path / "edited"
    shutil.copytree(model.path, copy)
    meta = json.loads((copy / "config.json").read_text())
    meta["train_config"]["sample_steps"] = 0
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"config.json: field 'train_config.sample_steps' has a bad value 0"):
        genforge.load(copy)


@pytest.mark.parametrize("key, value, message", [("sampler", "euler", "'sampler' must be one of ddim, dpm\\+\\+2m"),
                                                 ("sample_steps", 0, "'sample_steps' must be an integer from 1 to 1000"),
                                                 ("guidance", 21.0, "'guidance' must be in \\[0, 20\\]")])
def test_bad_sampling_settings_in_a_recipe(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"model": "cddpm", key: value}, "recipe.yaml")


# --------------------------------------------------------------------------- the sampler's mathematics

class Oracle(nn.Module):
    """A perfect denoiser for one known x0: returns the true eps of x_t (or, with prediction "v", the true
    v = alpha_t eps - sigma_t x0; with "x0", x0 itself), and records what it was asked."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        super().__init__()
        self.x0, self.ab, self.prediction = x0, alphas_cumprod, prediction
        self.image_shape, self.num_classes = tuple(x0.shape[1:]), 0
        self.calls = []

    def forward(self, x, t, y=None):
        self.calls.append((x.clone(), int(t[0])))
        ab = self.ab[t][:, None, None, None]
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return {"eps": eps, "v": ab.sqrt() * eps - (1 - ab).sqrt() * self.x0,
                "x0": self.x0.expand_as(x)}[self.prediction]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 2, 10, 50, T])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddim_with_a_perfect_denoiser_lands_on_the_data(kind, steps, prediction):
    """DDIM with eta=0 keeps the noise of x_T fixed: with the true eps, every visited x_t is exactly
    sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, and the chain ends on x0, whatever the number of steps."""
    # In float64: at t = T-1 the cosine schedule leaves sqrt(alpha_bar) = 5e-5 of signal, below float32's
    # resolution of x_t; the test is of the sampler's algebra, not of rounding.
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64) * 1.8 - 0.9  # inside [-1, 1]: no clipping
    z = torch.randn(3, 64, generator=gen, dtype=torch.float64)
    schedule = NoiseSchedule(kind=kind)
    ab = schedule.alphas_cumprod.double()
    oracle = Oracle(x0, ab, prediction)
    images = generate({"denoiser": oracle, "schedule": schedule}, z, steps=steps)
    assert torch.allclose(images, (x0 + 1) / 2, atol=1e-9)
    assert [t for _, t in oracle.calls] == ddim_timesteps(steps)
    eps = (z.view(3, 1, 8, 8) - ab[T - 1].sqrt() * x0) / (1 - ab[T - 1]).sqrt()
    for x, t in oracle.calls[1:]:
        assert torch.allclose(x, ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps, atol=1e-9), t


@pytest.mark.parametrize("steps", [1, 2, 20])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_dpm_solver_with_a_perfect_denoiser_also_lands_on_the_data(steps, prediction):
    """With the true eps of one known x0, every x0 prediction is x0 itself, so DPM-Solver++'s extrapolation
    D = x0 and the chain ends on the data like DDIM's."""
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    schedule = NoiseSchedule(kind="cosine")
    oracle = Oracle(x0, schedule.alphas_cumprod.double(), prediction)
    images = generate({"denoiser": oracle, "schedule": schedule}, torch.randn(2, 64, generator=gen,
                                                                             dtype=torch.float64),
                      steps=steps, sampler="dpm++2m")
    assert torch.allclose(images, (x0 + 1) / 2, atol=1e-9)
    assert [t for _, t in oracle.calls] == ddim_timesteps(steps)  # one network call per step, same timesteps


class GaussianData(nn.Module):
    """The exact eps predictor for data x0 ~ N(0, s^2 I): E[eps | x_t] = sigma_t x_t / (ab_t s^2 + 1 - ab_t).

    Its probability-flow ODE has a closed form, x_t = x_T sqrt(ab_t s^2 + 1 - ab_t) / sqrt(ab_T s^2 + 1 - ab_T),
    so a sampler's distance from it is its discretisation error alone. Records the x_t of each call by t."""

    image_shape, num_classes = (1, 4, 4), 0

    def __init__(self, s: float, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.s, self.ab, self.seen = s, alphas_cumprod, {}

    def forward(self, x, t, y=None):
        self.seen[int(t[0])] = x.clone()
        ab = self.ab[t][:, None, None, None]
        return (1 - ab).sqrt() * x / (ab * self.s ** 2 + 1 - ab)


def test_dpm_solver_is_second_order_where_ddim_is_first():
    """The error at t = 499, which 10, 20, 40 and 80 steps all visit, against the closed form: it falls with
    the step count like h for DDIM and like h^2 for DPM-Solver++(2M)."""
    schedule = NoiseSchedule(kind="cosine")
    ab = schedule.alphas_cumprod.double()
    s = 0.2  # the data spread: every x0 prediction stays inside the clipping range [-1, 1]
    net = GaussianData(s, ab)
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(steps, sampler):
        generate({"denoiser": net, "schedule": schedule}, z, steps=steps, sampler=sampler)
        x, t = net.seen[499], 499
        exact = z.view(64, 1, 4, 4) * ((ab[t] * s ** 2 + 1 - ab[t]) / (ab[T - 1] * s ** 2 + 1 - ab[T - 1])).sqrt()
        return (x - exact).abs().max().item() / exact.abs().max().item()

    ddim = {n: error(n, "ddim") for n in (10, 20, 40, 80)}
    dpm = {n: error(n, "dpm++2m") for n in (10, 20, 40, 80)}
    assert all(dpm[n] < ddim[n] / 3 for n in (20, 40, 80))
    assert 1.5 < ddim[40] / ddim[80] < 2.5   # first order: twice the steps, half the error
    assert dpm[40] / dpm[80] > 3              # second order: about a quarter


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sde_sampler_with_a_perfect_denoiser_also_lands_on_the_data(prediction):
    """Every x0 prediction of the oracle is x0 itself, so the fresh noise of each step is forgotten again and the
    stochastic chain ends on the data, with one network call per step like the others."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    schedule = NoiseSchedule(kind="cosine")
    oracle = Oracle(x0, schedule.alphas_cumprod.double(), prediction)
    z = torch.randn(2, 64, generator=gen, dtype=torch.float64)
    images = generate({"denoiser": oracle, "schedule": schedule}, z, steps=10, sampler="dpm++2m-sde")
    assert torch.allclose(images, (x0 + 1) / 2, atol=1e-9)
    assert [t for _, t in oracle.calls] == ddim_timesteps(10)


def test_sde_sampler_draws_the_data_distribution_with_the_exact_denoiser():
    """For data N(0, s^2 I) with its exact denoiser, the stochastic chain's samples have the data's spread, as the
    deterministic chain's do; a wrong noise or decay coefficient would widen or narrow them. And it is stochastic:
    from the same starting noise it lands elsewhere than the deterministic chain."""
    schedule = NoiseSchedule(kind="cosine")
    s = 0.2
    net = GaussianData(s, schedule.alphas_cumprod.double())
    z = torch.randn(512, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nets = {"denoiser": net, "schedule": schedule}
    sde = generate(nets, z, steps=50, sampler="dpm++2m-sde") * 2 - 1
    ode = generate(nets, z, steps=50, sampler="dpm++2m") * 2 - 1
    assert abs(sde.std().item() / s - 1) < 0.05 and abs(ode.std().item() / s - 1) < 0.05
    assert abs(sde.mean().item()) < 0.02
    assert (sde - ode).abs().mean().item() > s / 4  # not the ODE's samples with a little noise


def test_sde_step_noise_depends_on_each_latent_alone():
    """The fresh noise of a sample is seeded by its own latent: the same in any batch (the server decodes
    requests together), other for another latent, and not the latent's own numbers."""
    z = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    noise = step_noise(z, 3)
    assert noise.shape == (3, 5, 12)
    for i in range(5):
        assert torch.equal(step_noise(z[i:i + 1], 3)[:, 0], noise[:, i])
    assert not torch.equal(noise[:, 0], noise[:, 1])
    assert not any(torch.equal(noise[k, i], z[i]) for k in range(3) for i in range(5))
    assert torch.equal(step_noise(z.double(), 3).float(), noise)  # the stream follows the values, not the dtype


def test_sde_sampler_same_samples_in_any_batch(runs):
    model = genforge.load(runs["ddpm"])
    whole = sample(model, 5, seed=6, steps=4, sampler="dpm++2m-sde", batch_size=5).x
    assert np.array_equal(whole, sample(model, 5, seed=6, steps=4, sampler="dpm++2m-sde", batch_size=2).x)
    assert np.array_equal(whole[2:3], sample(model, 5, seed=6, steps=4, sampler="dpm++2m-sde").x[2:3])
    assert not np.array_equal(whole, sample(model, 5, seed=6, steps=4, sampler="dpm++2m").x)


def test_interpolation_walks_with_the_deterministic_form_of_a_stochastic_sampler(runs):
    """A latent walk's frames must change smoothly; dpm++2m-sde's noise is seeded by each latent's bytes, so a
    model sampling with it walks with dpm++2m from the same latents, and says so in the walk's controls."""
    from genforge.generation import interpolate
    from genforge.generation.sampling import decode

    model = genforge.load(runs["ddpm"])
    config = {**model.meta["train_config"], "sampler": "dpm++2m-sde", "sample_steps": 4}
    sde = type(model)(model.nets, {**model.meta, "train_config": config})
    assert sde.sampling_defaults["sampler"] == "dpm++2m-sde"
    walk = interpolate(sde, [1, 2], steps=3)
    assert walk.controls["sampler"] == "dpm++2m"
    assert np.array_equal(walk.x, decode(sde, torch.from_numpy(walk.z), None, sampler="dpm++2m"))
    assert not np.array_equal(walk.x, decode(sde, torch.from_numpy(walk.z), None))  # the sde would differ
    assert "sampler" not in interpolate(model, [1, 2], steps=3).controls  # a deterministic default is kept


def test_samplers_benchmark_quick_smoke_run(capsys):
    """benchmarks/samplers.py --quick: train, then every sampler of SAMPLERS sampled and scored; no write."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import samplers as bench

    results = bench.ROOT / "benchmarks/RESULTS.md"
    before = results.read_text() if results.exists() else None
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "machine: " in out and "fp32 matmul" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and " | 2 | " in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(SAMPLERS)  # one row per sampler, class match included
    assert all(len(row.split(" | ")) == 8 for row in rows)
    assert (results.read_text() if results.exists() else None) == before


def test_bad_sampler_is_a_clear_error(runs):
    ddpm = genforge.load(runs["ddpm"])
    with pytest.raises(GenforgeError, match="sampler must be one of ddim, dpm\\+\\+2m, dpm\\+\\+2m-sde, got 'euler'"):
        sample(ddpm, 2, sampler="euler")
    with pytest.raises(GenforgeError, match="sampler must be one of"):
        generate(ddpm.nets, torch.randn(2, 784), sampler="euler")


def test_cli_sampler(runs, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", str(runs["ddpm"]), "--n", "3", "--seed", "4", "--steps", "8", "--sampler", "dpm++2m",
                 "--out", str(out)]) == 0
    model = genforge.load(runs["ddpm"])
    with np.load(out, allow_pickle=False) as f:
        dpm = f["x"]
    assert np.array_equal(dpm, sample(model, 3, seed=4, steps=8, sampler="dpm++2m").x)
    assert not np.array_equal(dpm, sample(model, 3, seed=4, steps=8).x)  # a different sampler, other pixels


def test_ddim_timesteps_are_evenly_spaced_from_the_last():
    assert ddim_timesteps(1) == [999]
    assert ddim_timesteps(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(T) == list(range(T - 1, -1, -1))  # the full chain visits every timestep once
    assert len(set(ddim_timesteps(20))) == 20 and len(set(ddim_timesteps(333))) == 333


class Labelled(nn.Module):
    """A conditional denoiser whose eps is (y + 1) / 10 everywhere (0 for the null class, index 3)."""

    image_shape, num_classes = (1, 4, 4), 3

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, y=None):
        self.batches.append(None if y is None else y.tolist())
        value = ((y + 1) % (self.num_classes + 1)).float() / 10
        return value[:, None, None, None].expand_as(x)


def test_classifier_free_guidance_combines_one_batched_forward():
    net, x, t, y = Labelled(), torch.zeros(2, 1, 4, 4), torch.tensor([9, 9]), torch.tensor([0, 2])
    eps = predict(net, x, t, y, guidance=3.0)
    assert net.batches == [[0, 2, 3, 3]]  # conditional and unconditional (null class) in one forward
    cond, uncond = torch.tensor([0.1, 0.3]), torch.zeros(2)
    assert torch.allclose(eps[:, 0, 0, 0], uncond + 3.0 * (cond - uncond))
    net.batches.clear()
    assert torch.allclose(predict(net, x, t, y, guidance=1.0)[:, 0, 0, 0], cond)  # plain conditional
    assert net.batches == [[0, 2]]                                                   # one forward, no null
    assert torch.allclose(predict(net, x, t, y, guidance=0.0)[:, 0, 0, 0], uncond)


def test_every_diffusion_recipe_is_registered():
    assert MODELS["ddpm"].method is diffusion and not MODELS["ddpm"].conditional
    assert MODELS["cddpm"].method is diffusion and MODELS["cddpm"].conditional
    assert diffusion.latent_dim(100, (3, 32, 32)) == 3 * 32 * 32


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_prediction_train_on_their_target_save_it_and_sample(tiny_config, tmp_path, prediction):
    """prediction: v (or x0). The training target is v = alpha_t eps - sigma_t x0 (or x0 itself): a network
    that outputs the true target of the batch has loss 0, one that outputs the true eps does not; the trained
    model's config.json names it, it loads as such a model and samples reproducibly; an eps model's files
    carry no such option."""
    cfg = tiny_config("ddpm", prediction=prediction)
    nets = build_networks("ddpm", (1, 16, 16), 0, 8, net_options={"prediction": prediction})
    assert nets["denoiser"].prediction == prediction

    class Replay(nn.Module):
        """Outputs what it is told (the true v or eps of the batch), plus a zero-weighted parameter for Adam."""

        def __init__(self, prediction):
            super().__init__()
            self.prediction, self.num_classes, self.w, self.out = prediction, 0, nn.Parameter(torch.zeros(())), None

        def forward(self, x, t, y=None):
            ab = trainer.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            return {"eps": eps, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "x0": x0}[self.out] + 0 * self.w

    x0 = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    replay = Replay(prediction)
    trainer = Trainer(cfg, {"denoiser": replay, "schedule": nets["schedule"]})
    for out, zero in ((prediction, True), ("eps", False)):
        replay.out = out
        loss = float(trainer.train_step(x0, None, torch.Generator().manual_seed(1))["loss"])
        assert (loss < 1e-6) if zero else (loss > 1e-2), (out, loss)

    run = tmp_path / prediction
    train(cfg, run, quiet=True)
    model = genforge.load(run, device="cpu")
    assert model.meta["net_options"] == {"prediction": prediction}
    assert model.nets["denoiser"].prediction == prediction
    a = model.sample(3, seed=2, steps=4).x
    assert np.isfinite(a).all() and np.array_equal(a, model.sample(3, seed=2, steps=4).x)
    eps_run = tmp_path / "eps"
    train(tiny_config("ddpm"), eps_run, quiet=True)
    assert "net_options" not in genforge.load(eps_run, device="cpu").meta


def test_the_linear_path_starts_silent_learns_and_is_saved_with_the_model(tiny_config, tmp_path):
    """linear_path: sum_k w_k(t, y) (W_k * x_t) added to the UNet's output; the mix starts at zero."""
    from genforge.models.unet import LINEAR_BASES, UNet

    x = torch.randn(3, 5, 20, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([0, 500, 999]), torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    plain = UNet((5, 20), base_channels=8, num_classes=3)
    torch.manual_seed(0)
    path = UNet((5, 20), base_channels=8, num_classes=3, linear_path=7)
    assert path.linear.weight.shape == (LINEAR_BASES * 5, 5, 7)
    assert torch.equal(plain(x, t, y), path(x, t, y))  # the same network at the start: the mix is zero
    (path(x, t, y) - x).square().sum().backward()  # the loss of a denoiser whose target is x
    assert path.linear_mix.weight.grad.abs().sum() > 0  # and the path learns from the first step
    with torch.no_grad():  # a mix of one filter: the output moves by exactly that filter of x_t
        path.linear_mix.bias.copy_(torch.tensor([1.0] + [0.0] * (LINEAR_BASES - 1)))
        filtered = torch.nn.functional.conv1d(x, path.linear.weight[:5], padding=3)
        assert torch.allclose(path(x, t, y) - plain(x, t, y), filtered, atol=1e-5)

    for bad in (4, 65, -1, True, 3.0):  # a model file's net_options are input too
        with pytest.raises(ConfigError, match="linear_path is an odd filter length"):
            UNet((5, 20), base_channels=8, linear_path=bad)

    cfg = tiny_config("cddpm-1d", linear_path=3)
    run = tmp_path / "linear"
    train(cfg, run, quiet=True)
    model = genforge.load(run, device="cpu")
    assert model.meta["net_options"] == {"linear_path": 3} and model.nets["denoiser"].linear is not None
    a = model.sample(3, seed=2, steps=4).x
    assert np.isfinite(a).all() and np.array_equal(a, model.sample(3, seed=2, steps=4).x)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "dcgan", "prediction": "v"}, "'prediction' 'v' is for the diffusion models"),
    ({"prediction": "x_0"}, "prediction"),
    ({"model": "vae-1d", "linear_path": 3}, "'linear_path' is a path of the diffusion models"),
    ({"linear_path": 4}, "'linear_path' is an odd filter length from 1 to 63 time steps"),
    ({"linear_path": -3}, "'linear_path' is an odd filter length"),
    ({"linear_path": 65}, "'linear_path' is an odd filter length"),
])
def test_bad_prediction_is_a_config_error(tiny_config, overrides, message):
    model = overrides.pop("model", "ddpm")
    with pytest.raises(ConfigError, match=message):
        tiny_config(model, **overrides)
