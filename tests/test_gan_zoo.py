"""The GAN zoo: losses, penalties and mode-collapse defences train, save, load and resume."""

import pytest
import torch
from safetensors.torch import load_file

import genforge

from genforge.errors import ConfigError
from genforge.models import build_networks, d_options, gan
from genforge.models.networks import minibatch_std
from genforge.training import train
from genforge.training.checkpoint import load_state

VARIANTS = {
    "hinge-sn": {"gan_loss": "hinge", "spectral_norm": True, "d_norm": "none"},
    "wgan-gp": {"gan_loss": "wgan-gp", "d_norm": "none", "d_steps": 2},
    "r1": {"r1_weight": 1.0},
    "mbstd": {"mbstd": True},
    "instance-noise": {"instance_noise": 0.1, "instance_noise_steps": 3},
    "diffaugment": {"diffaugment": "color,translation,cutout", "d_norm": "none"},
    "ada": {"ada_target": 0.6, "ada_interval": 1},
    "channels-last": {"channels_last": True},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_and_round_trips(tmp_path, tiny_config, name):
    cfg = tiny_config("dcgan", **VARIANTS[name])
    result = train(cfg, tmp_path / "r", quiet=True)
    model = genforge.load(tmp_path / "r")
    assert model.meta["d_options"]["spectral_norm"] == cfg.spectral_norm
    assert model.sample(2, seed=0).x.shape == (2, 28, 28)
    weights = load_file(result.checkpoint / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_acgan_trains_and_generates_classes(tmp_path, tiny_config):
    train(tiny_config("acgan"), tmp_path / "r", quiet=True)
    model = genforge.load(tmp_path / "r")
    assert model.nets["discriminator"].classifier.out_features == 10  # the auxiliary classifier head
    s = genforge.generation.sample(model, 4, seed=0, classes=[1, 2])
    assert s.y.tolist() == [1, 2, 1, 2]


@pytest.mark.parametrize("name", ["ada", "wgan-gp"])
def test_variant_resumes_exactly(tmp_path, tiny_config, name):
    once = train(tiny_config("dcgan", **VARIANTS[name], max_steps=6, checkpoint_every=3), tmp_path / "a", quiet=True)
    train(tiny_config("dcgan", **VARIANTS[name], max_steps=3, checkpoint_every=3), tmp_path / "b", quiet=True)
    again = train(tiny_config("dcgan", **VARIANTS[name], max_steps=6, checkpoint_every=3), tmp_path / "b",
                  resume=True, quiet=True)
    a, b = load_state(once.checkpoint), load_state(again.checkpoint)
    for role in a["nets"]:
        for key, value in a["nets"][role].items():
            assert torch.equal(value, b["nets"][role][key]), (role, key)
    assert torch.equal(a["trainer"]["ada_p"], b["trainer"]["ada_p"])


def test_ada_probability_rises_when_d_overfits(tmp_path, tiny_config):
    # target 0.01: D(real) > 0 for most images, so r_t > target and p must climb by the same step each time
    cfg = tiny_config("dcgan", ada_target=0.01, ada_interval=1, ada_kimg=1.0, max_steps=5, checkpoint_every=5)
    result = train(cfg, tmp_path / "r", quiet=True)
    p = float(load_state(result.checkpoint)["trainer"]["ada_p"])
    assert 0 < p <= 5 * 16 / 1000 + 1e-6


def test_wgan_gp_needs_no_batchnorm(tiny_config):
    with pytest.raises(ConfigError, match="wgan-gp .* set d_norm: none"):
        tiny_config("dcgan", gan_loss="wgan-gp")


def test_reference_mlp_discriminator_takes_no_options(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="takes no discriminator options"):
        train(tiny_config("gan-mlp", spectral_norm=True), tmp_path / "r", quiet=True)


def test_gradient_penalty_is_zero_for_unit_gradient_critic():
    class Linear1(torch.nn.Module):  # D(x) = <w, x> with ||w|| = 1 has gradient norm 1 everywhere
        def forward(self, x, y=None):
            w = torch.ones_like(x[0]).flatten() / x[0].numel() ** 0.5
            return x.flatten(1) @ w

    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    gp = gan.gradient_penalty(Linear1(), real, fake, None, torch.Generator().manual_seed(0))
    assert float(gp) == pytest.approx(0.0, abs=1e-10)


def test_minibatch_std_sees_collapse():
    varied = torch.randn(8, 3, 4, 4)
    collapsed = torch.randn(1, 3, 4, 4).expand(8, -1, -1, -1)
    assert minibatch_std(varied)[:, -1].min() > 0.5
    assert minibatch_std(collapsed)[:, -1].max() < 1e-3
    assert minibatch_std(varied).shape == (8, 4, 4, 4)


def test_diffaugment_is_reproducible_and_differentiable():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    a = gan.diffaugment(x, ["color", "translation", "cutout"], torch.Generator().manual_seed(1))
    b = gan.diffaugment(x, ["color", "translation", "cutout"], torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    cut = gan.diffaugment(torch.ones(4, 1, 16, 16), ["cutout"], torch.Generator().manual_seed(0))
    assert ((cut == 0).flatten(1).sum(1) == 64).all()  # an 8x8 hole in each image


def test_ada_augment_off_at_p_zero():
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(gan.ada_augment(x, torch.tensor(0.0), torch.Generator().manual_seed(0)), x)
    assert not torch.equal(gan.ada_augment(x, torch.tensor(1.0), torch.Generator().manual_seed(0)), x)


def _trainer(tiny_config, **options):
    """A GAN trainer built from a config the way the loop builds it (d_options from the config)."""
    cfg = tiny_config("dcgan", **options)
    torch.manual_seed(0)
    nets = build_networks("dcgan", (1, 28, 28), cfg.z_dim, cfg.base_channels, d_opts=d_options(cfg))
    return cfg, nets, gan.Trainer(cfg, nets)


def _d_inputs(trainer, real, step=0):
    """Every batch the discriminator is given during one training step (real half first where joint)."""
    seen = []
    hook = trainer.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        trainer.train_step(real, None, torch.Generator().manual_seed(0), step)
    finally:
        hook.remove()
    return seen


def test_instance_noise_is_the_configured_std_at_step_0_and_anneals_to_zero(tiny_config):
    sigma, steps = 0.5, 10
    _, _, trainer = _trainer(tiny_config, instance_noise=sigma, instance_noise_steps=steps)
    x = torch.zeros(64, 1, 28, 28)
    noise = torch.Generator().manual_seed(0)
    assert float(trainer.d_input(x, noise, step=0).std()) == pytest.approx(sigma, rel=0.02)
    assert float(trainer.d_input(x, noise, step=steps // 2).std()) == pytest.approx(sigma / 2, rel=0.02)  # linear
    assert torch.equal(trainer.d_input(x, noise, step=steps), x)
    assert torch.equal(trainer.d_input(x, noise, step=10 * steps), x)
    # and a training step really gives D the noisy batch: the real images it sees carry noise of std sigma
    real = torch.rand(16, 1, 28, 28) * 2 - 1
    first = _d_inputs(trainer, real, step=0)[0][:16]
    assert float((first - real).std()) == pytest.approx(sigma, rel=0.1)
    assert torch.equal(_d_inputs(trainer, real, step=steps)[0][:16], real)


def test_diffaugment_changes_what_d_sees_and_off_it_sees_the_raw_batch(tiny_config):
    real = torch.rand(16, 1, 28, 28) * 2 - 1
    _, _, on = _trainer(tiny_config, diffaugment="color,translation,cutout", d_norm="none")
    _, _, off = _trainer(tiny_config, d_norm="none")
    seen_on, seen_off = _d_inputs(on, real)[0][:16], _d_inputs(off, real)[0][:16]
    assert torch.equal(seen_off, real)
    assert not torch.allclose(seen_on, real, atol=1e-3)
    # cutout: each real image D sees has an 14x14 (half-side) hole of zeros that the raw batch does not have
    assert ((seen_on == 0).flatten(1).sum(1) >= 14 * 14).all() and not (real == 0).any()


def test_mbstd_gives_d_its_extra_feature_map_and_couples_the_batch(tmp_path, tiny_config):
    # the trained and saved discriminator has the extra channel: its head reads (ch + 1) feature maps
    with_mbstd = train(tiny_config("dcgan", mbstd=True), tmp_path / "on", quiet=True)
    without = train(tiny_config("dcgan"), tmp_path / "off", quiet=True)
    head_on = load_state(with_mbstd.checkpoint)["nets"]["discriminator"]["head.weight"].shape[1]
    head_off = load_state(without.checkpoint)["nets"]["discriminator"]["head.weight"].shape[1]
    side = 7  # 28 -> 14 -> 7 with base_channels 4 -> 8 channels
    assert head_off == 8 * side * side and head_on == (8 + 1) * side * side
    # and the statistic is live: in eval mode (BatchNorm on its running stats) image 0's score depends on the
    # other images of the batch with mbstd, and not at all without it
    x = torch.randn(8, 1, 28, 28)
    changed = x.clone()
    changed[4] = torch.randn(1, 28, 28) * 3  # groups of 4 in a batch of 8: image 0 is pooled with 2, 4 and 6
    for mbstd, coupled in ((True, True), (False, False)):
        _, nets, _ = _trainer(tiny_config, mbstd=mbstd)
        d = nets["discriminator"].eval()
        with torch.no_grad():
            delta = (d(x)[0] - d(changed)[0]).abs()
        assert (float(delta) > 1e-4) == coupled, (mbstd, float(delta))


def test_iwae_nll_is_tighter_than_the_elbo(tmp_path, tiny_config):
    from genforge.data import load_splits, to_tensor
    from genforge.models import vae

    train(tiny_config("vae-mlp", max_steps=30, g_lr=1e-3, checkpoint_every=30), tmp_path / "r", quiet=True)
    model = genforge.load(tmp_path / "r")
    x = to_tensor(load_splits(tiny_config("vae-mlp").data).test.x[:16], "0,1")
    g = torch.Generator().manual_seed(0)
    nll_1 = vae.iwae_nll(model.nets, x, k=1, noise=g).mean()    # k=1 is the (negative) ELBO
    nll_50 = vae.iwae_nll(model.nets, x, k=50, noise=torch.Generator().manual_seed(0)).mean()
    assert nll_50 < nll_1 and 0 < nll_50
    bpd = vae.bits_per_dim(nll_50, (1, 28, 28))
    assert 0 < bpd < 2
    with pytest.raises(ValueError, match="Bernoulli"):
        vae.iwae_nll(model.nets, x, recon="mse")


def test_conditional_generator_takes_the_class_in_its_norms():
    """z is the conditional G's only input; the class sets every BatchNorm's gain and bias (Miyato and Koyama)."""
    torch.manual_seed(0)
    nets = build_networks("cdcgan", (1, 28, 28), z_dim=8, base_channels=4, num_classes=3)
    g = nets["generator"]
    assert g.project.in_features == 8  # no class embedding beside z
    with torch.no_grad():
        for norm in g.norms:  # away from the identity init, so the class visibly changes the output
            norm.gain.weight.normal_(1.0, 0.5)
            norm.bias.weight.normal_(0.0, 0.5)
    g.eval()
    z = torch.randn(4, 8)
    same_class = torch.zeros(4, dtype=torch.long)
    out = g(z, same_class)
    assert out.shape == (4, 1, 28, 28)
    assert (out[0] - out[1]).abs().mean() > 1e-3                       # another z, another image
    assert (g(z, same_class + 2) - out).abs().mean() > 1e-3            # another class, another image
    with pytest.raises(ValueError, match="pass the classes"):
        g(z)


def test_projection_discriminator_uses_pooled_features():
    torch.manual_seed(0)
    d = build_networks("cdcgan", (1, 28, 28), z_dim=8, base_channels=4, num_classes=3)["discriminator"]
    assert d.embed.weight.shape == (3, 8)  # one embedding per class over the 8 pooled channels
    x = torch.randn(2, 1, 28, 28)
    y0, y1 = torch.tensor([0, 0]), torch.tensor([1, 1])
    d.eval()
    with torch.no_grad():
        # the logits differ by exactly the projection term <embed(y0) - embed(y1), sum-pooled features>
        pooled = d.features(x).sum([2, 3])
        expected = ((d.embed.weight[0] - d.embed.weight[1]) * pooled).sum(1)
        assert torch.allclose(d(x, y0) - d(x, y1), expected, atol=1e-5)
