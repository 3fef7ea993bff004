"""Tables through the one core: every table recipe trains through the loop on a tiny CSV, saves a model file that
loads and samples the same rows for the same seed, writes .csv/.parquet/.npz, samples with conditions from the
command line, scores with genforge eval, and trains privately with its epsilon enforced."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
import pytest

import genforge
from genforge.cli import main
from genforge.config import load_config
from genforge.errors import ConfigError, GenforgeError
from genforge.generation.tables import sample_rows
from genforge.training import train
from genforge.training.privacy import check_config as check_dp


@pytest.fixture(scope="module")
def patients(tmp_path_factory) -> str:
    """120 rows: whole numbers, decimals, a category that follows age, a flag, missing cells."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "patients.csv"
    lines = ["age,weight,sex,group,cd4"]
    for i in range(120):
        age = int(rng.integers(20, 80))
        cd4 = "" if i % 6 == 0 else str(int(rng.integers(50, 900)))
        lines.append(f"{age},{rng.normal(70, 10):.1f},{'FM'[i % 2]},{'old' if age > 50 else 'young'},{cd4}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tiny(recipe: str, data: str, *extra: str):
    overrides = [f"data=csv:{data}", "tensorboard=false", "batch_size=20", "max_steps=3", "log_every=1",
                 "checkpoint_every=0", "base_channels=16", "z_dim=8", "table_max_modes=3"]
    if recipe in ("copula", "dp-copula"):
        overrides = [o for o in overrides if not o.startswith(("max_steps", "batch_size"))]
    return load_config(f"table-{recipe}", overrides + list(extra))


@pytest.mark.parametrize("recipe", ["tvae", "ctgan", "tabddpm", "copula"])
def test_each_table_recipe_trains_saves_loads_and_samples_the_same_rows(patients, tmp_path, recipe):
    extra = ("sample_steps=10",) if recipe == "tabddpm" else ()
    result = train(tiny(recipe, patients, *extra), tmp_path / "run", quiet=True)
    assert result.checkpoint is not None
    assert (tmp_path / "run" / "samples").glob("step_*.png")  # the column preview the loop draws
    model = genforge.load(tmp_path / "run")
    assert model.modality.name == "table" and model.meta["transform"]["kind"] == "table"
    a, b = model.sample(40, seed=3), model.sample(40, seed=3)
    assert a.x.dtype.names == ("age", "weight", "sex", "group", "cd4")
    assert a.x.tobytes() == b.x.tobytes()  # the same seed, the same rows (NaN for missing included)
    table = model.output.table(a.x)
    assert set(table.values["sex"]) <= {"F", "M"}
    assert np.nanmin(table.values["age"]) >= 20 and np.nanmax(table.values["age"]) <= 79
    assert np.all(np.isnan(table.values["age"]) | (table.values["age"] == np.round(table.values["age"])))


def test_rows_are_written_as_csv_parquet_and_npz_from_the_command_line(patients, tmp_path, capsys):
    train(tiny("ctgan", patients), tmp_path / "run", quiet=True)
    for suffix in (".csv", ".parquet", ".npz"):
        assert main(["sample", str(tmp_path / "run"), "--n", "30", "--out", str(tmp_path / f"rows{suffix}")]) == 0
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and list(rows[0]) == ["age", "weight", "sex", "group", "cd4"]
    assert all(r["age"].isdigit() for r in rows) and all(len(r["weight"].split(".")[1]) == 1 for r in rows)
    with np.load(tmp_path / "rows.npz") as f:
        assert f["x"].dtype.names[0] == "age" and len(f["x"]) == 30
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(tmp_path / "rows.parquet").num_rows == 30


def test_conditions_hold_and_say_how_they_were_met(patients, tmp_path, capsys):
    train(tiny("ctgan", patients), tmp_path / "gan", quiet=True)
    train(tiny("copula", patients), tmp_path / "copula", quiet=True)
    out = tmp_path / "rows.csv"
    assert main(["sample", str(tmp_path / "gan"), "--n", "25", "--where", "sex=F,age>30", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "sex=F by the conditional vector" in said and "age>30 by rejection" in said
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == 25 and {r["sex"] for r in rows} == {"F"} and all(int(r["age"]) > 30 for r in rows)
    table, how = sample_rows(genforge.load(tmp_path / "copula"), 20, seed=1, where="group=old")
    assert set(table.values["group"]) == {"old"} and how.startswith("group=old by rejection")
    # a category the model never saw: one line, nothing written
    assert main(["sample", str(tmp_path / "gan"), "--n", "5", "--where", "sex=X", "--out", str(tmp_path / "x.csv")]) == 2
    assert "'X' is not a category the model saw in column 'sex'" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_asking_for_more_rows_than_memory_allows_keeps_the_earlier_file(patients, tmp_path, capsys, monkeypatch):
    train(tiny("copula", patients), tmp_path / "run", quiet=True)
    out = tmp_path / "rows.csv"
    out.write_text("earlier rows\n")
    monkeypatch.setenv("GENFORGE_MAX_DATA_BYTES", str(2**20))
    assert main(["sample", str(tmp_path / "run"), "--n", "1000000", "--where", "age>1", "--out", str(out)]) == 2
    assert "data budget" in capsys.readouterr().err
    assert out.read_text() == "earlier rows\n"  # nothing already written is lost


def test_eval_scores_a_table_model_and_writes_the_report(patients, tmp_path, capsys):
    train(tiny("copula", patients), tmp_path / "run", quiet=True)
    out, page = tmp_path / "scores.json", tmp_path / "report.html"
    assert main(["eval", str(tmp_path / "run"), "--n", "200", "--out", str(out), "--report", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "quality" in printed and "detection AUROC" in printed and "median DCR" in printed
    scores = json.loads(out.read_text())
    assert 0.5 < scores["column_shapes"] <= 1 and scores["memorization"]["exact_copies"] >= 0
    assert page.read_text().count("<figure>") == 5


def test_data_check_prints_the_schema_and_writes_it(patients, tmp_path, capsys):
    assert main(["data", "check", f"csv:{patients}", "--schema-out", str(tmp_path / "s.yaml")]) == 0
    said = capsys.readouterr().out
    assert "age: integer [20, 79]" in said and "cd4: integer" in said and "% missing" in said
    assert "sex: {kind: categorical, categories: [F, M]}" in (tmp_path / "s.yaml").read_text()


def test_private_tvae_spends_no_more_than_its_epsilon(patients, tmp_path):
    pytest.importorskip("opacus")
    cfg = tiny("dp-tvae", patients, "max_steps=4", "dp_epsilon=5", "dp_delta=1e-3")
    train(cfg, tmp_path / "run", quiet=True)
    privacy = genforge.load(tmp_path / "run").meta["privacy"]
    assert 0 < privacy["epsilon"] <= 5 and privacy["private_networks"] == ["encoder", "decoder"]


def test_private_ctgan_trains_its_discriminator_without_the_conditional_vector(patients, tmp_path):
    pytest.importorskip("opacus")
    with pytest.raises(ConfigError, match="table_cond_vector: false"):
        check_dp(tiny("ctgan", patients, "dp_epsilon=5", "dp_delta=1e-3"))
    cfg = tiny("ctgan", patients, "dp_epsilon=5", "dp_delta=1e-3", "table_cond_vector=false", "table_pac=1",
               "gan_loss=ns", "table_transform=quantile")
    train(cfg, tmp_path / "run", quiet=True)
    model = genforge.load(tmp_path / "run")
    assert model.meta["privacy"]["private_networks"] == ["discriminator"] and model.meta["privacy"]["epsilon"] <= 5
    assert len(model.sample(10, seed=0).x) == 10


def test_under_dp_a_table_transform_is_drawn_from_noisy_histograms_and_counted(patients, tmp_path):
    """The quantile transform's quantiles come from noisy histograms over the schema's ranges (never the rows'
    own), the mixture transform is refused, and the accountant counts the histograms before DP-SGD."""
    pytest.importorskip("opacus")
    from genforge.training.privacy import epsilon_spent

    with pytest.raises(ConfigError, match="table_transform is 'vgm'.*set table_transform: quantile"):
        check_dp(tiny("tvae", patients, "dp_epsilon=5", "dp_delta=1e-3"))
    cfg = tiny("dp-tvae", patients, "max_steps=4", "dp_epsilon=5", "dp_delta=1e-3")
    train(cfg, tmp_path / "run", quiet=True)
    model = genforge.load(tmp_path / "run")
    transform, privacy = model.meta["transform"], model.meta["privacy"]
    sigma_m = transform["private"]["noise_multiplier"]
    assert privacy["prior_noise_multipliers"] == [sigma_m] and sigma_m > 0
    age = transform["params"]["age"]
    assert age["values"][0] == 20 and age["values"][-1] == 79 and len(age["values"]) == 65  # the range, 64 bins
    assert all(b > a for a, b in zip(age["levels"], age["levels"][1:]))                   # a rising CDF
    # the epsilon recorded is the histograms' and DP-SGD's together, within the target
    dp_sgd = (privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])
    total = epsilon_spent([(sigma_m, 1.0, 1), dp_sgd], 1e-3)
    assert privacy["epsilon"] == pytest.approx(total, abs=1e-3) and total <= 5
    assert total > epsilon_spent([dp_sgd], 1e-3)


def test_private_copula_adds_noise_to_its_statistics_and_spends_its_epsilon(patients, tmp_path):
    pytest.importorskip("opacus")
    cfg = tiny("dp-copula", patients, "dp_epsilon=5", "dp_delta=1e-3")
    train(cfg, tmp_path / "run", quiet=True)
    model = genforge.load(tmp_path / "run")
    privacy = model.meta["privacy"]
    assert privacy["private_networks"] == ["copula"] and privacy["steps"] == 2
    assert 4.5 < privacy["epsilon"] <= 5 and privacy["prior_noise_multipliers"]
    rows = model.output.table(model.sample(200, seed=0).x)
    assert set(rows.values["sex"]) <= {"F", "M", None} and np.nanmin(rows.values["age"]) >= 20
    assert np.nanmax(rows.values["age"]) <= 79
    # two runs draw different noise (from the OS, not from the seed): the fitted correlation differs
    train(cfg, tmp_path / "again", quiet=True)
    again = genforge.load(tmp_path / "again")
    assert not torch.equal(model.nets["copula"].chol, again.nets["copula"].chol)


def test_the_private_copula_fit_converges_to_the_plain_fit_as_the_noise_vanishes():
    from genforge.models import copula

    rng = np.random.default_rng(0)
    n = 4000
    a = rng.standard_normal(n)
    b = 0.6 * a + 0.8 * rng.standard_normal(n)
    k = (a > 0.3).astype(int)
    x = torch.zeros(n, 4)
    x[:, 0], x[:, 1] = torch.from_numpy(a), torch.from_numpy(b)
    x[torch.arange(n), 2 + torch.from_numpy(k)] = 1.0
    plain = copula.GaussianCopula(layout=[("gaussian", 1), ("gaussian", 1), ("softmax", 2)])
    plain.fit(x, torch.Generator().manual_seed(0))
    private = copula.GaussianCopula(layout=[("gaussian", 1), ("gaussian", 1), ("softmax", 2)])
    assert private.fit_private(x, 1e-6, np.random.default_rng(1)) == copula.MECHANISMS
    corr = lambda m: (m.chol @ m.chol.T).numpy()  # noqa: E731
    assert np.abs(corr(private) - corr(plain)).max() < 0.05
    assert torch.allclose(private.cdf, plain.cdf, atol=0.01)
    noisy = copula.GaussianCopula(layout=[("gaussian", 1), ("gaussian", 1), ("softmax", 2)])
    noisy.fit_private(x, 5.0, np.random.default_rng(1))
    assert np.abs(corr(noisy) - corr(plain)).max() > 0.01                  # the noise shows at a larger sigma
    assert np.allclose(np.diag(corr(noisy)), 1.0, atol=1e-4)             # still a correlation matrix


def test_the_histograms_noise_is_sized_by_zcdp_and_counted_exactly_by_rdp():
    pytest.importorskip("opacus")
    from genforge.data.table.transforms import marginal_noise_multiplier
    from genforge.training.privacy import epsilon_spent, noise_multiplier_for

    for eps in (1.0, 10.0):
        whole = marginal_noise_multiplier(eps, 1e-5, share=1.0)
        assert epsilon_spent([(whole, 1.0, 1)], 1e-5) <= eps                # zCDP's conversion is the looser one
        assert marginal_noise_multiplier(eps, 1e-5) > whole                  # a share: more noise
        prior = ((marginal_noise_multiplier(eps, 1e-5), 1.0, 1),)
        rest = noise_multiplier_for(eps, 1e-5, 1.0, 2, prior)
        assert epsilon_spent([*prior, (rest, 1.0, 2)], 1e-5) <= eps < epsilon_spent([*prior, (rest - 0.02, 1.0, 2)], 1e-5)


def test_a_resumed_private_table_run_keeps_the_noisy_transform_it_drew(patients, tmp_path):
    """Drawing the histograms again on resume would spend privacy the accountant does not count and encode the
    rows differently from what the checkpoint learned: the resumed run reads the transform it drew."""
    pytest.importorskip("opacus")
    import shutil

    run = tmp_path / "run"
    cfg = tiny("dp-tvae", patients, "max_steps=4", "checkpoint_every=2", "keep_checkpoints=2", "dp_epsilon=5",
               "dp_delta=1e-3")
    train(cfg, run, quiet=True)
    first = genforge.load(run).meta["transform"]
    # as if the run had stopped after step 2: its last checkpoint is step 2's
    steps = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert [p.name[-1] for p in steps] == ["2", "4"]
    shutil.rmtree(steps[-1])
    (run / "checkpoints" / "last.json").write_text(json.dumps({"dir": steps[0].name, "step": 2}))
    train(cfg, run, resume=True, quiet=True)
    model = genforge.load(run)
    assert model.meta["step"] == 4 and model.meta["transform"] == first
    assert model.meta["privacy"]["prior_noise_multipliers"] == [first["private"]["noise_multiplier"]]


def test_a_tabddpm_run_resumes_as_the_networks_it_saved_and_a_refused_resume_writes_nothing(patients, tmp_path):
    """table_cond_target is off unless set (the table-tabddpm recipe sets it), so a run whose config.yaml predates
    the field resumes as the unconditional model it is; resuming with the other setting is refused, naming the
    mismatch, before the run's config.yaml is touched."""
    run = tmp_path / "run"
    base = ("table_target=group", "sample_steps=5", "max_steps=2", "checkpoint_every=2")
    train(tiny("tabddpm", patients, *base, "table_cond_target=false"), run, quiet=True)
    config = run / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(True)
                              if not line.startswith("table_cond_target")))  # as written before the field existed
    assert main(["train", "--resume", str(run), "--set", "max_steps=4", "--quiet"]) == 0
    model = genforge.load(run)
    assert model.meta["step"] == 4 and model.nets["denoiser"].target == ()
    before = config.read_text()
    with pytest.raises(GenforgeError, match="target_freq"):
        train(tiny("tabddpm", patients, *base[:2], "max_steps=6", "table_cond_target=true"), run, resume=True,
              quiet=True)
    assert config.read_text() == before
