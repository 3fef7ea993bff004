"""The autoregressive series family (models/autoregressive.py): its likelihood and its sampler are one map, its
linear path is the least-squares VAR, it sees only the past, and it trains, resumes and samples through the
one loop."""

import numpy as np
import pytest
import torch

import genforge
from genforge.errors import ConfigError
from genforge.models import autoregressive as ar
from genforge.models.var import VARBaseline
from genforge.training import train


def _var_windows(n=40, c=3, t=50, seed=0):
    """Two classes of VAR(1) windows with known coefficients and noise 0.1."""
    rng = np.random.default_rng(seed)
    a = [np.array([[0.9, 0.0, 0.0], [0.2, 0.5, 0.0], [0.0, 0.0, 0.2]]), np.diag([-0.3, 0.7, 0.1])]
    y = np.repeat([0, 1], n // 2)
    x = np.zeros((n, c, t))
    for i in range(n):
        x[i, :, 0] = 0.3 * rng.normal(size=c)
        for s in range(1, t):
            x[i, :, s] = a[y[i]] @ x[i, :, s - 1] + 0.1 * rng.normal(size=c)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y), a


def _perturbed(c=3, t=80, classes=2):
    torch.manual_seed(0)
    net = ar.SeriesAR((c, t), base_channels=8, num_classes=classes)
    with torch.no_grad():
        for p in (net.var_weight, net.var_bias, net.out.weight, net.chol_lower, net.chol_log_diag,
                  net.chol0_lower):
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_sampling_is_the_likelihood_s_map_run_forwards(monkeypatch):
    """generate(z) then the likelihood's whitening of the result gives z back, every step and channel: the
    sampler draws from exactly the density that training fits."""
    monkeypatch.setattr(ar, "CLIP", 1e9)  # no step clamped, so the map is exact
    net = _perturbed()
    z, y = torch.randn(5, 3 * 80), torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        x = 2 * ar.generate({"ar": net}, z, y) - 1          # back from [0, 1] to the model's units
        mean, log_scale = net(x, y)
    r = x - mean
    z0 = torch.linalg.solve_triangular(net.chol0(y, 5), r[..., :1], upper=False)
    z1 = torch.linalg.solve_triangular(net.chol(y, 5), r[..., 1:] * torch.exp(-log_scale[..., 1:]), upper=False)
    assert torch.allclose(torch.cat([z0, z1], -1), z.view(5, 3, 80), atol=1e-4)
    # and the likelihood of those windows is the Gaussian density of z, change of variables included
    nll = ar.nll(net, x, y).sum(1)
    log_det = (torch.diagonal(net.chol0(y, 5), dim1=-2, dim2=-1).log().sum(-1)
               + 79 * torch.diagonal(net.chol(y, 5), dim1=-2, dim2=-1).log().sum(-1) + log_scale[..., 1:].sum((1, 2)))
    expected = 0.5 * z.square().sum(1) + log_det + 0.5 * 3 * 80 * np.log(2 * np.pi)
    assert torch.allclose(nll, expected, rtol=1e-4)


def test_a_step_depends_on_the_steps_before_it_only():
    net = _perturbed()
    x, y = torch.randn(2, 3, 80) * 0.3, torch.tensor([0, 1])
    with torch.no_grad():
        mean, scale = net(x, y)
        x2 = x.clone()
        x2[..., 40] += 1.0
        mean2, scale2 = net(x2, y)
    assert torch.equal(mean[..., :41], mean2[..., :41]) and torch.equal(scale[..., :41], scale2[..., :41])
    assert (mean2[..., 41] - mean[..., 41]).abs().max() > 1e-3  # the next step sees it


def test_the_linear_path_starts_as_the_least_squares_var_of_each_class():
    x, y, a = _var_windows()
    net = ar.SeriesAR((3, 50), base_channels=8, num_classes=2)
    before = ar.nll(net, x, y).mean().item()
    net.fit_linear(x, y)
    assert bool(net.fitted)
    var = VARBaseline(order=1).fit(x.double().numpy(), y.numpy())
    with torch.no_grad():
        mean, log_scale = net(x, y)
    for k in (0, 1):
        m = var.classes[k]
        xs = x[y == k].double().numpy()
        predicted = np.einsum("ij,njt->nit", m.coef[1:].T, xs[:, :, :-1]) + m.coef[0][None, :, None]
        assert np.allclose(mean[y == k][..., 1:].numpy(), predicted, atol=1e-5)  # the VAR's own prediction
        assert np.allclose(net.chol(torch.tensor([k]), 1)[0].detach().numpy(), m.chol, atol=1e-5)
        assert np.abs(m.coef[1:].T - a[k]).max() < 0.1  # and that is the true process, near enough
    assert torch.equal(log_scale, torch.zeros_like(log_scale))  # the network adds nothing yet
    after = ar.nll(net, x, y).mean().item()
    assert after < before - 3.0  # per step, summed over 3 channels: noise 0.1 instead of 1
    # the first step: each class's start mean
    assert torch.allclose(mean[..., 0], net.var_bias[y], atol=1e-6)


@pytest.mark.parametrize("model", ["ar-1d", "car-1d"])
def test_training_learns_resumes_exactly_and_samples_in_units(tmp_path, tiny_config, model):
    """Through the loop: the VAR start is in the first logged loss already (far below an unfitted model's), the
    loss falls, a resumed run equals the straight one, and samples come back in the data's units."""
    cfg = tiny_config(model, max_steps=20, log_every=5, checkpoint_every=10, base_channels=8)
    straight = train(cfg, tmp_path / "a", quiet=True)
    first = train(tiny_config(model, max_steps=10, log_every=5, checkpoint_every=10, base_channels=8), tmp_path / "b",
                  quiet=True)
    assert first.step == 10
    resumed = train(cfg, tmp_path / "b", resume=True, quiet=True)
    assert resumed.step == 20
    a, b = genforge.load(tmp_path / "a"), genforge.load(tmp_path / "b")
    for name, t in a.nets["ar"].state_dict().items():
        assert torch.equal(t, b.nets["ar"].state_dict()[name]), name
    s = a.sample(6, seed=3)
    assert s.x.shape == (6, 2, 32) and np.isfinite(s.x).all()
    assert np.array_equal(s.x, b.sample(6, seed=3).x)
    # the sensor log's second channel is 100 + 3 cos(t / 11): its samples are there, not in [-1, 1]
    assert 90 < float(np.median(s.x[:, 1])) < 110
    assert bool(a.nets["ar"].fitted)


def test_the_autoregressive_family_refuses_what_it_does_not_have(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"differential privacy is implemented for"):
        tiny_config("car-1d", dp_epsilon=3.0)
    with pytest.raises(ConfigError, match=r"'linear_path' is a path of the diffusion models"):
        tiny_config("car-1d", linear_path=3)
