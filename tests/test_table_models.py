"""Table models on a tiny table: a training step of each, sampling within the constraints, the same latent giving the
same rows, the diffusion and copula mathematics on known cases, and conditional sampling both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genforge.config import Config
from genforge.data.table import TableTransformer, load_table
from genforge.data.table.conditions import parse_conditions, sample_conditioned
from genforge.models import build_networks, copula, ctgan, network_options, tabddpm, tabular, vae

METHODS = {"tvae": vae, "ctgan": ctgan, "tabddpm": tabddpm, "copula": copula}


@pytest.fixture(scope="module")
def gbsg2():
    splits = load_table("table:gbsg2")
    return splits, {m: TableTransformer.fit(splits.train, m) for m in ("vgm", "quantile")}


def make(model: str, tf: TableTransformer, width: int = 32, pac: int = 1, cond_target: bool = False):
    """A table model's networks through the registry (as training builds them), and its trainer."""
    torch.manual_seed(0)
    config = {"z_dim": 16, "table_pac": pac, "table_cond_vector": True, "table_cond_target": cond_target}
    transform = {"kind": "table", **tf.to_json()}
    latent = METHODS[model].latent_dim(16, (tf.dim,))
    nets = build_networks(model, (tf.dim,), latent, width, 0, None, network_options(model, config, transform))
    cfg = Config()
    cfg.gan_loss = "wgan-gp" if model == "ctgan" else cfg.gan_loss
    cfg.g_lr = cfg.d_lr = 1e-3
    trainer = METHODS[model].Trainer(cfg, nets)
    return nets, trainer


def rows(model, nets, tf, n=200, seed=0, y=None):
    for net in nets.values():
        net.eval()
    z = torch.randn(n, METHODS[model].latent_dim(16, (tf.dim,)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return METHODS[model].generate(nets, z, y)


@pytest.mark.parametrize("model, method", [("tvae", "vgm"), ("ctgan", "vgm"), ("tabddpm", "quantile"),
                                           ("tabddpm", "vgm"), ("copula", "quantile")])
def test_each_model_trains_a_step_and_samples_rows_within_the_constraints(gbsg2, model, method):
    splits, tfs = gbsg2
    tf = tfs[method]
    x = torch.from_numpy(tf.encode(splits.train))
    nets, trainer = make(model, tf, pac=10 if model == "ctgan" else 1)
    if hasattr(trainer, "bind"):
        trainer.bind(x)
    before = {k: v.clone() for net in nets.values() for k, v in net.state_dict().items()}
    losses = trainer.train_step(x[:100], None, torch.Generator().manual_seed(0), 0)
    assert all(torch.isfinite(v) for v in losses.values())
    after = {k: v for net in nets.values() for k, v in net.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step changed the model
    if model == "tabddpm":  # the full 1000-step chain is the real sampler; a short schedule keeps the test quick
        nets["schedule"].alphas_cumprod = nets["schedule"].alphas_cumprod[::50].clone()
    out = rows(model, nets, tf)
    assert out.shape == (200, tf.dim) and torch.isfinite(out).all()
    table = tf.decode(out.numpy())
    for col in splits.schema.modelled:
        v = table.values[col.name]
        if col.kind in ("categorical", "boolean"):
            assert set(v) <= set(col.categories)
        else:
            assert np.nanmin(v) >= col.min and np.nanmax(v) <= col.max
            assert col.kind != "integer" or np.all(v == np.round(v))
    again = rows(model, nets, tf)
    assert torch.equal(out, again)  # the same latents give the same rows


def test_ctgan_packs_rows_and_its_discriminator_sees_groups(gbsg2):
    splits, tfs = gbsg2
    nets, _ = make("ctgan", tfs["vgm"], pac=10)
    d = nets["discriminator"]
    x = torch.from_numpy(tfs["vgm"].encode(splits.train))[:50]
    cond = torch.zeros(50, d.cond_dim)
    assert d(x, cond).shape == (5,)


def test_ctgan_training_by_sampling_shows_rare_categories_by_log_frequency():
    sampler = ctgan.CondSampler([(0, 3)])
    x = torch.zeros(1000, 3)
    x[:900, 0], x[900:990, 1], x[990:, 2] = 1, 1, 1                     # 90%, 9%, 1%
    freq = sampler.bind(x)
    assert torch.allclose(freq, torch.tensor([0.9, 0.09, 0.01]))
    cond, col, cat = sampler.draw(20000, torch.Generator().manual_seed(0), "cpu")
    share = torch.bincount(cat, minlength=3).float() / len(cat)
    logf = torch.log(torch.tensor([901.0, 91.0, 11.0]))
    assert torch.allclose(share, logf / logf.sum(), atol=0.01)           # the 1% category is drawn about 20%
    rows_ = sampler.real_rows(col, cat, torch.Generator().manual_seed(1))
    assert torch.equal(x[rows_].argmax(1), cat)                          # each real row has its drawn category


def test_multinomial_diffusion_forgets_towards_uniform_and_its_posterior_is_a_distribution():
    abar = tabddpm.make_schedule("cosine", 1000)
    grp = tabddpm.Groups([("softmax", 3), ("tanh", 1), ("softmax", 2)])
    x0 = torch.tensor([[1, 0, 0, 0.5, 0, 1], [0, 1, 0, 0.1, 1, 0], [0, 0, 1, -0.3, 0, 1]])
    t = torch.tensor([0, 500, 999])
    a_t, alpha_t, a_prev = tabddpm._coefficients(abar, t)
    q = torch.exp(grp.log_mix(grp.gather(x0), a_t[:, :, None]))           # (3 rows, 2 groups, 3)
    assert q[0, 0, 0] > 0.99 and q[0, 1, 1] > 0.99                         # t = 0: almost the data
    assert torch.allclose(q[2, 0], torch.full((3,), 1 / 3), atol=1e-3)    # t = T: uniform over 3
    assert torch.allclose(q[2, 1], torch.tensor([0.5, 0.5, 0.0]), atol=1e-3)  # ... and over 2 (padding 0)
    post = grp.posterior_log(grp.gather(x0), torch.full((3, 2, 3), 1 / 3), alpha_t[:, :, None], a_prev[:, :, None]).exp()
    assert torch.allclose(post.sum(2), torch.ones(3, 2))
    assert torch.equal(grp.scatter(torch.zeros(3, 6), grp.gather(x0))[:, [0, 1, 2, 4, 5]], x0[:, [0, 1, 2, 4, 5]])


def test_tabddpm_multinomial_loss_is_zero_only_for_a_perfect_prediction():
    layout = [("softmax", 3)]

    class Oracle(torch.nn.Module):  # predicts x_0 exactly (huge logits on the true category)
        def __init__(self, x0):
            super().__init__()
            self.layout, self.x0, self.target = layout, x0, ()

        def forward(self, x, t):
            return self.x0 * 50

    x0 = torch.nn.functional.one_hot(torch.randint(0, 3, (256,), generator=torch.Generator().manual_seed(0)), 3).float()
    abar = tabddpm.make_schedule("cosine", 1000)
    _, perfect = tabddpm.losses(Oracle(x0), abar, x0, torch.Generator().manual_seed(1))
    _, wrong = tabddpm.losses(Oracle(x0.roll(1, dims=1)), abar, x0, torch.Generator().manual_seed(1))
    assert perfect < 1e-3 < wrong


def test_tabddpm_sampling_clips_predicted_numbers_to_the_encoded_range():
    """A denoiser whose noise predictions are wildly off (an undertrained or overfitted one) must still leave
    numbers the transform can decode: x_0 is clipped at every step (+-1 tanh, +-3.72 gaussian), and a perfect
    denoiser of a single row still lands on it."""
    layout = [("gaussian", 2), ("tanh", 1), ("softmax", 2)]

    class Wild(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layout, self.target = layout, ()

        def forward(self, x, t):
            return torch.full_like(x, -40.0)  # eps far below any real noise: x_0 far above the range

    class Exact(torch.nn.Module):  # the true noise of rows that are all x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        def __init__(self, abar, x0):
            super().__init__()
            self.layout, self.abar, self.x0, self.target = layout, abar, x0, ()

        def forward(self, x, t):
            a = self.abar[t][:, None]
            return torch.where(torch.arange(5) < 3, (x - a.sqrt() * self.x0) / (1 - a).sqrt(), self.x0 * 50)

    abar = tabddpm.make_schedule("cosine", 1000)
    nets = {"denoiser": Wild(), "schedule": type("S", (), {"alphas_cumprod": abar})()}
    z = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    out = tabddpm.generate(nets, z, steps=50)
    assert out[:, :2].abs().max() <= tabddpm.X0_BOUND["gaussian"] + 1e-5 and out[:, 2].abs().max() <= 1 + 1e-6
    x0 = torch.tensor([[0.5, -2.0, 0.25, 0.0, 1.0]])
    nets["denoiser"] = Exact(abar, x0)
    out = tabddpm.generate(nets, z[:4], steps=50)
    assert torch.allclose(out[:, :3], x0[:, :3].expand(4, 3), atol=1e-3) and (out[:, 4] == 1).all()


def test_tabddpm_class_condition_is_read_clean_and_drawn_at_the_training_frequencies(gbsg2):
    """The target's group is TabDDPM's class (table_cond_target): never noised in training, its frequencies bound
    from the data, each sampled row's class drawn at them and held through the chain; off, or for a number
    target, the model is unconditional."""
    splits, tfs = gbsg2
    tf = tfs["quantile"]
    transform = {"kind": "table", **tf.to_json()}
    span = next(s for s in tf.discrete_spans() if s.column == tf.schema.target)
    on = {"table_cond_target": True}
    assert network_options("tabddpm", on, transform)["target_span"] == [span.start, span.width]
    assert network_options("tabddpm", {}, transform)["target_span"] == []  # off unless asked (the recipe asks)
    diabetes = load_table("table:diabetes")  # a number target (regression): nothing to condition on
    tf_d = TableTransformer.fit(diabetes.train, "quantile")
    assert network_options("tabddpm", on, {"kind": "table", **tf_d.to_json()})["target_span"] == []
    with pytest.raises(ValueError, match=r"target_span \[1, 2\] is not the \(start, width\) of a category group"):
        tabular.TableDenoiser(layout=[("gaussian", 1), ("gaussian", 1), ("softmax", 2)], target_span=[1, 2])

    x = torch.from_numpy(tf.encode(splits.train))
    nets, trainer = make("tabddpm", tf, cond_target=True)
    lo, hi = span.start, span.start + span.width
    trainer.bind(x)
    assert torch.equal(nets["denoiser"].target_freq, x[:, lo:hi].sum(0))
    seen = []
    forward = nets["denoiser"].forward
    nets["denoiser"].forward = lambda x_t, t: (seen.append(x_t.detach().clone()), forward(x_t, t))[1]
    trainer.train_step(x[:64], None, torch.Generator().manual_seed(0), 0)
    assert torch.equal(seen[0][:, lo:hi], x[:64, lo:hi])  # the class is read clean at every timestep
    nets["denoiser"].forward = forward

    freq = torch.zeros(span.width)
    freq[1] = 3.0
    freq[0] = 1.0
    nets["denoiser"].target_freq.copy_(freq)
    nets["schedule"].alphas_cumprod.copy_(tabddpm.make_schedule("cosine", 1000))
    z = torch.randn(2000, tf.dim, generator=torch.Generator().manual_seed(0))
    out = tabddpm.generate(nets, z, steps=2)
    classes = out[:, lo:hi]
    assert torch.equal(classes.sum(1), torch.ones(2000))  # one class per row, one-hot
    assert abs(float(classes[:, 1].mean()) - 0.75) < 0.03
    nets["denoiser"].target_freq.copy_(torch.nn.functional.one_hot(torch.tensor(1), span.width).float())
    assert bool((tabddpm.generate(nets, z[:500], steps=2)[:, lo + 1] == 1).all())  # a class never seen: never drawn


def test_copula_recovers_a_known_correlation_and_category_shares():
    rng = np.random.default_rng(0)
    n = 4000
    z = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], n)
    cat = (rng.random(n) < 0.3).astype(int)
    x = torch.zeros(n, 4)
    x[:, 0], x[:, 1] = torch.from_numpy(z[:, 0]).float(), torch.from_numpy(z[:, 1]).float()
    x[torch.arange(n), 2 + torch.from_numpy(cat)] = 1.0
    model = copula.GaussianCopula((4,), layout=[("gaussian", 1), ("gaussian", 1), ("softmax", 2)])
    model.fit(x, torch.Generator().manual_seed(0))
    out = model(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)))
    assert np.corrcoef(out[:, 0].numpy(), out[:, 1].numpy())[0, 1] == pytest.approx(0.8, abs=0.03)
    assert out[:, 3].mean().item() == pytest.approx(0.3, abs=0.03)


def test_tvae_decoder_likelihood_is_the_vaes_reconstruction_term(gbsg2):
    splits, tfs = gbsg2
    tf = tfs["vgm"]
    nets, trainer = make("tvae", tf)
    x = torch.from_numpy(tf.encode(splits.train))[:64]
    first = trainer.train_step(x, None, torch.Generator().manual_seed(0), 0)
    for step in range(1, 150):
        last = trainer.train_step(x, None, torch.Generator().manual_seed(step), step)
    assert last["recon"] < first["recon"] - 5  # the mixed-type likelihood is what it learns


def test_conditional_sampling_by_vector_and_by_rejection_always_meets_the_conditions(gbsg2):
    splits, tfs = gbsg2
    tf = tfs["vgm"]
    x = torch.from_numpy(tf.encode(splits.train))
    nets, trainer = make("ctgan", tf, width=64, pac=1)
    trainer.bind(x)
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        trainer.train_step(x[torch.randint(0, len(x), (128,), generator=g)], None, g, step)
    G = nets["generator"]
    sampler = ctgan.CondSampler([tuple(s) for s in G.cond_spans.tolist()])
    sampler.bind(x)
    col = [c.name for c in splits.schema.modelled].index("tgrade")
    spans = [s.column for s in tf.discrete_spans()]

    def draw(k, seed, vec):
        y = None
        if vec is not None:
            j = spans.index(vec.column)
            cat = splits.schema.column(vec.column).categories.index(vec.value)
            y = sampler.one_hot(torch.full((k,), j), torch.full((k,), cat), "cpu")
        return tf.decode(rows("ctgan", nets, tf, k, seed, y).numpy())

    conds = parse_conditions(["tgrade=I", "age>50"], splits.schema)
    by_vector, how = sample_conditioned(draw, splits.schema, 300, conds, seed=0, cond_vector=True)
    assert "tgrade=I by the conditional vector" in how and "age>50 by rejection" in how
    assert set(by_vector.values["tgrade"]) == {"I"} and (by_vector.values["age"] > 50).all()
    assert len(by_vector) == 300
    kept_vec = int(how.split("(300 of ")[1].split()[0])
    by_rejection, how2 = sample_conditioned(draw, splits.schema, 300, conds, seed=0, cond_vector=False)
    assert "by the conditional vector" not in how2 and set(by_rejection.values["tgrade"]) == {"I"}
    kept_rej = int(how2.split("(300 of ")[1].split()[0])
    assert col >= 0 and kept_vec < kept_rej  # asking the generator for grade I wastes fewer rows than filtering
