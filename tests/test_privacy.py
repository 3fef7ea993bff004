"""Differential privacy (DP-SGD with Opacus): private training of a tiny VAE and GAN, the accountant's epsilon in
metrics.jsonl, config.json and `genforge info`, the budget stop, exact resume, per-pair gradients of the GAN
discriminator, and every refused setting with its clear error."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("opacus")

from opacus.accountants import RDPAccountant  # noqa: E402

import genforge  # noqa: E402
from genforge.cli import main  # noqa: E402
from genforge.errors import ConfigError  # noqa: E402
from genforge.training import privacy  # noqa: E402
from genforge.training import train  # noqa: E402
from genforge.training.checkpoint import last_checkpoint, load_state  # noqa: E402

DP = {"dp_epsilon": 5.0, "dp_delta": 1e-3}  # the tiny training split has 205 images: delta must be below 1/205


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def fixed_secrets(monkeypatch):
    """The noise and the Poisson batches come from OS entropy; tests that compare two runs pin them."""
    monkeypatch.setattr(privacy.secrets, "randbits", lambda bits: 12345)


def test_dp_vae_logs_stores_and_shows_epsilon(tmp_path, tiny_config, capsys):
    run = tmp_path / "vae"
    result = train(tiny_config("vae-conv", max_steps=4, checkpoint_every=4, log_every=1, **DP), run, quiet=True)
    assert result.step == 4
    eps = [m["epsilon"] for m in _metrics(run)]
    assert len(eps) == 4 and 0 < eps[0] < eps[1] < eps[2] < eps[3] <= 5.0  # spent as it goes, never past the target
    meta = genforge.load(run).meta["privacy"]
    assert meta["epsilon"] == pytest.approx(eps[-1], abs=1e-4) and meta["delta"] == 1e-3 and meta["steps"] == 4
    assert meta["private_networks"] == ["encoder", "decoder"] and meta["sampling"] == "poisson"
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"differential privacy: epsilon {meta['epsilon']:g} at delta 0.001 for the encoder and decoder" in out


def test_dp_gan_privatizes_the_discriminator_only(tmp_path, tiny_config):
    cfg = tiny_config("dcgan", d_norm="group", max_steps=4, checkpoint_every=4, **DP)
    result = train(cfg, tmp_path / "gan", quiet=True)
    state = load_state(result.checkpoint)
    model = genforge.load(tmp_path / "gan")
    assert model.meta["privacy"]["private_networks"] == ["discriminator"]
    assert sum(n for _, _, n in state["privacy"]["history"]) == 4  # one accounted DP step per D update
    assert state["optimizers"]["generator"]["state"]  # G trained too, by post-processing D's outputs
    assert model.sample(2, seed=0).x.shape == (2, 28, 28)


def test_gan_pairs_real_and_fake_per_sample(tiny_config):
    """The D step runs real and fake in separate passes; Opacus adds their per-sample gradients row by row, so
    the clipped unit is the pair (x_i, G(z_i)): one sample of private data, charged once (Opacus issue #418)."""
    from genforge.models import build_networks, gan

    torch.manual_seed(0)
    D = build_networks("dcgan", (1, 28, 28), 8, 4, 0, {"norm": "group"})["discriminator"]
    hooks = privacy.attach_grad_sampler(D)
    real, fake = torch.randn(3, 1, 28, 28), torch.randn(3, 1, 28, 28)
    gan.d_loss("ns", D(real), D(fake)).backward()
    params = list(D.parameters())
    per_sample = [p.grad_sample for p in params]  # (3, *p.shape) each
    hooks.disable_hooks()
    for i in range(3):
        pair = gan.d_loss("ns", D(real[i:i + 1]), D(fake[i:i + 1]))
        for g_i, g in zip(per_sample, torch.autograd.grad(pair, params)):
            torch.testing.assert_close(g_i[i], g, rtol=1e-4, atol=1e-6)


def test_training_stops_when_the_budget_is_spent(tmp_path, tiny_config):
    run = tmp_path / "r"
    train(tiny_config("vae-mlp", max_steps=4, **DP), run, quiet=True)
    # the noise was sized for 4 steps: asking for 40 more continues only while epsilon stays within 5
    result = train(tiny_config("vae-mlp", max_steps=44, **DP), run, resume=True, quiet=True)
    state = load_state(result.checkpoint)
    history = [tuple(h) for h in state["privacy"]["history"]]
    spent = RDPAccountant()
    spent.history = history
    sigma, q, _ = history[-1]
    one_more = RDPAccountant()
    one_more.history = history + [(sigma, q, 1)]
    assert 4 <= result.step < 44 and sum(h[2] for h in history) == result.step
    assert spent.get_epsilon(1e-3) <= 5.0 < one_more.get_epsilon(1e-3)
    assert genforge.load(run).meta["privacy"]["epsilon"] <= 5.0


def test_resume_keeps_the_accountant_and_continues_exactly(tmp_path, tiny_config, fixed_secrets, monkeypatch):
    once = train(tiny_config("dcgan", d_norm="group", max_steps=4, checkpoint_every=2, **DP), tmp_path / "once",
                 quiet=True)
    allows = privacy.PrivateTraining.allows_step
    monkeypatch.setattr(privacy.PrivateTraining, "allows_step", lambda self: allows(self) and self.steps() < 2)
    half = train(tiny_config("dcgan", d_norm="group", max_steps=4, checkpoint_every=2, **DP), tmp_path / "twice",
                 quiet=True)  # stops after 2 steps, as an interrupted run would
    assert half.step == 2
    monkeypatch.setattr(privacy.PrivateTraining, "allows_step", allows)
    again = train(tiny_config("dcgan", d_norm="group", max_steps=4, checkpoint_every=2, **DP), tmp_path / "twice",
                  resume=True, quiet=True)
    assert again.step == 4
    a, b = load_state(once.checkpoint), load_state(again.checkpoint)
    assert a["privacy"]["history"] == b["privacy"]["history"] and sum(n for *_, n in b["privacy"]["history"]) == 4
    for role in a["nets"]:
        for key, tensor in a["nets"][role].items():
            assert torch.equal(tensor, b["nets"][role][key]), (role, key)
    assert genforge.load(tmp_path / "once").meta["privacy"] == genforge.load(tmp_path / "twice").meta["privacy"]


def test_noise_does_not_come_from_the_config_seed(tmp_path, tiny_config):
    """config.json carries the seed; noise derived from it could be subtracted again."""
    runs = [train(tiny_config("vae-mlp", max_steps=4, checkpoint_every=4, **DP), tmp_path / str(i), quiet=True)
            for i in range(2)]
    a, b = (load_state(r.checkpoint)["nets"]["decoder"] for r in runs)
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_an_empty_poisson_batch_is_a_noise_only_step(tmp_path, tiny_config, monkeypatch):
    draw = privacy.PrivateTraining.batch
    monkeypatch.setattr(privacy.PrivateTraining, "batch",
                        lambda self, step: draw(self, step)[:0] if step == 1 else draw(self, step))
    result = train(tiny_config("gan-mlp", max_steps=4, log_every=1, **DP), tmp_path / "r", quiet=True)
    assert result.step == 4
    assert [m.get("dp_empty_batch") for m in _metrics(tmp_path / "r")] == [None, 1.0, None, None]
    assert genforge.load(tmp_path / "r").meta["privacy"]["steps"] == 4  # the empty step is charged too


@pytest.mark.parametrize("model, setting, message", [
    ("dcgan", {}, "BatchNorm.*d_norm: group"),
    ("dcgan", {"d_norm": "group", "gan_loss": "wgan-gp"}, "gradient penalty"),
    ("gan-mlp", {"r1_weight": 1.0}, "R1 gradient penalty"),
    ("gan-mlp", {"d_steps": 2}, "d_steps"),
    ("dcgan", {"d_norm": "group", "mbstd": True}, "mbstd"),
    ("dcgan", {"d_norm": "group", "spectral_norm": True}, "spectral_norm"),
    ("gan-mlp", {"ada_target": 0.6}, "ada_target"),
    ("cdcgan", {"d_norm": "group"}, "conditional GAN"),
    ("ddpm", {}, "diffusion model"),
    ("vae-mlp", {"nan_policy": "rollback"}, "rollback"),
    ("vae-mlp", {"eval_every": 10}, "eval_every"),
    ("vae-mlp", {"precision": "bf16"}, "bf16"),
])
def test_settings_dp_cannot_honour_are_refused(tiny_config, model, setting, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(model, **setting, **DP)
    tiny_config(model, **setting)  # fine without DP


@pytest.mark.parametrize("setting, field", [
    ({"dp_epsilon": -1.0}, "dp_epsilon"),
    ({"dp_epsilon": 5.0, "dp_delta": 0.0}, "dp_delta"),
    ({"dp_epsilon": 5.0, "dp_delta": 1.0}, "dp_delta"),
    ({"dp_epsilon": 5.0, "dp_max_grad_norm": 0.0}, "dp_max_grad_norm"),
    ({"dp_epsilon": 5.0, "dp_max_grad_norm": -1.0}, "dp_max_grad_norm"),
    ({"dp_delta": 1e-6}, "dp_epsilon"),  # a DP setting without a budget: DP would silently be off
])
def test_bad_values_name_the_field(tiny_config, setting, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config("vae-mlp", **setting)


def test_delta_must_be_below_one_over_n(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match=r"'dp_delta' must be below 1 / N = 0.00488 for the 205 training images"):
        train(tiny_config("vae-mlp", dp_epsilon=5.0, dp_delta=0.01), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_cli_flags(tmp_path, tiny_config, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(json.dumps(tiny_config("vae-mlp", max_steps=4).to_dict()))  # JSON is YAML
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "r"), "--quiet", "--dp-epsilon", "5",
                 "--dp-delta", "1e-3", "--dp-max-grad-norm", "0.5"]) == 0
    meta = genforge.load(tmp_path / "r").meta["privacy"]
    assert (meta["target_epsilon"], meta["delta"], meta["max_grad_norm"]) == (5.0, 1e-3, 0.5)
    for flag, value in (("--dp-epsilon", "0"), ("--dp-delta", "-1"), ("--dp-max-grad-norm", "0")):
        capsys.readouterr()
        assert main(["train", str(cfg_path), "--out", str(tmp_path / "x"), flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_resume_cannot_switch_privacy_on_or_off(tmp_path, tiny_config):
    train(tiny_config("vae-mlp", max_steps=4, **DP), tmp_path / "dp", quiet=True)
    with pytest.raises(ConfigError, match="void the guarantee"):
        train(tiny_config("vae-mlp", max_steps=8), tmp_path / "dp", resume=True, quiet=True)
    train(tiny_config("vae-mlp", max_steps=2), tmp_path / "plain", quiet=True)
    with pytest.raises(ConfigError, match="cannot be turned on half-way"):
        train(tiny_config("vae-mlp", max_steps=4, **DP), tmp_path / "plain", resume=True, quiet=True)
    assert last_checkpoint(tmp_path / "plain").name == "step_00000002"
    assert "dp_epsilon: 0.0" in (tmp_path / "plain" / "config.yaml").read_text()  # refused before any write


def test_resume_guard_reads_the_state_s_own_record(tmp_path, tiny_config):
    """config.json unreadable: the resume state's own privacy record still refuses resuming without DP."""
    train(tiny_config("vae-mlp", max_steps=2, **DP), tmp_path / "dp", quiet=True)
    (last_checkpoint(tmp_path / "dp") / "config.json").write_text("{damaged")
    with pytest.raises(ConfigError, match="void the guarantee"):
        train(tiny_config("vae-mlp", max_steps=4), tmp_path / "dp", resume=True, quiet=True)
    assert last_checkpoint(tmp_path / "dp").name == "step_00000002"


def test_the_trainer_is_given_dp_when_it_is_built(tiny_config):
    """DP-SGD reaches the trainer through its constructor: the discriminator's optimizer is Opacus' from the
    start, the generator's a plain Adam; nothing swaps them afterwards."""
    from opacus.optimizers import DPOptimizer

    from genforge.models import build_networks, gan

    cfg = tiny_config("dcgan", d_norm="group", **DP)
    torch.manual_seed(0)
    nets = build_networks("dcgan", (1, 28, 28), cfg.z_dim, cfg.base_channels, 0, {"norm": "group"})
    dp = privacy.PrivateTraining(cfg, nets, n_train=205, batch=cfg.batch_size, device=torch.device("cpu"))
    trainer = gan.Trainer(cfg, nets, private=dp)
    assert isinstance(trainer.optimizers["discriminator"], DPOptimizer)
    assert trainer.optimizers["discriminator"] is dp.optimizer
    assert type(trainer.optimizers["generator"]) is torch.optim.Adam
    assert not trainer.joint_d  # real and fake pass D apart, so Opacus clips the (x_i, G(z_i)) pair
