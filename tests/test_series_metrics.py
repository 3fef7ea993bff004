"""Scores of generated series (discriminative, predictive, evaluator FD / precision / recall, TSTR), the
degradation ladder, the VAR baseline and the scarce-fault diagnosis experiment, on small synthetic sets.

Two classes of 2-channel series stand in for a data set: noisy sines of two frequencies, the second channel
a lagged copy of the first (so there is cross-channel structure for the ladder to break).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genforge.apps import diagnosis
from genforge.errors import DataError, ModelFileError
from genforge.metrics import series as ms
from genforge.models.var import VARBaseline, var_generator

T = 32


def toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(T + 3)
    freq = np.where(y == 0, 0.15, 0.35)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = np.sin(freq * t + phase) + 0.15 * rng.standard_normal((n, T + 3))
    x = np.stack([wave[:, 3:], wave[:, :-3]], axis=1)  # channel 1 lags channel 0 by 3 steps
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def data():
    return {"train": toy(96, 0), "val": toy(96, 1), "test": toy(96, 2)}


@pytest.fixture(scope="module")
def evaluator(data):
    (x, y), (tx, ty) = data["train"], data["test"]
    return ms.train_series_evaluator(x, y, 2, name="toy", test_x=tx, test_y=ty, recipe=ms.SeriesRecipe(steps=150))


def test_discriminative_score_tells_noise_from_data_but_not_data_from_data(data):
    real, other = data["train"][0], data["val"][0]
    noise = np.random.default_rng(3).standard_normal(real.shape).astype(np.float32) * real.std()
    same = ms.discriminative_score(real, other, seeds=2, steps=300)
    apart = ms.discriminative_score(real, noise, seeds=2, steps=300)
    assert apart["mean"] > 0.35 and same["mean"] < 0.15
    assert len(apart["scores"]) == 2 and apart["std"] == pytest.approx(np.std(apart["scores"]))
    # 96 + 96 windows, 20% held out: a coin flip on 38 test windows scores 0.064 on average (the floor)
    assert same["chance"] == apart["chance"] == pytest.approx(ms.chance_score(38))


def test_chance_score_is_the_mean_distance_of_a_coin_flip_accuracy_from_one_half():
    """E|k/n - 1/2| for k ~ Binomial(n, 1/2): worked by hand for n = 1, 2, 3; by simulation for the sizes the
    benchmark meets (14 test windows on BasicMotions, where the floor lies above the issue's 0.10 target)."""
    assert ms.chance_score(1) == pytest.approx(0.5)
    assert ms.chance_score(2) == pytest.approx(0.25)             # k = 0, 2 (1/4 each) at 1/2; k = 1 at 0
    assert ms.chance_score(3) == pytest.approx(2 * (1 / 8 * 0.5 + 3 / 8 * 1 / 6))
    rng = np.random.default_rng(0)
    for n in (14, 300):
        k = rng.binomial(n, 0.5, size=200_000)
        assert ms.chance_score(n) == pytest.approx(np.abs(k / n - 0.5).mean(), rel=0.01)
    assert ms.chance_score(14) > 0.10 > ms.chance_score(72)


def test_predictive_score_is_lower_for_a_faithful_generator(data):
    real, other = data["test"][0], data["val"][0]
    noise = np.random.default_rng(4).standard_normal(real.shape).astype(np.float32)
    faithful = ms.predictive_score(real, other, steps=200)["mean"]
    unfaithful = ms.predictive_score(real, noise, steps=200)["mean"]
    assert faithful < 0.8 * unfaithful


def test_evaluator_classifies_and_its_file_reloads_with_its_hash(evaluator, data, tmp_path):
    assert evaluator.meta["test_accuracy"] > 0.9  # the two frequencies are easy to tell apart
    path = ms.save_series_evaluator(evaluator, tmp_path / "toy")
    again = ms.load_series_evaluator(path)
    x = data["test"][0]
    assert np.array_equal(again.features(x), evaluator.features(x)) and again.sha256 == evaluator.sha256
    blob = bytearray(path.with_suffix(".safetensors").read_bytes())
    blob[-1] ^= 1
    path.with_suffix(".safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        ms.load_series_evaluator(path)


def test_classifier_input_map_is_fitted_on_its_windows_and_ignores_each_channels_units(evaluator, data):
    x = data["train"][0]
    assert np.allclose(evaluator.net.input.shift.numpy(), np.median(x, axis=(0, 2)), atol=1e-6)  # fitted on x
    mapped = evaluator.net.input(torch.from_numpy(x))
    assert mapped.abs().max() == pytest.approx(1.0, abs=1e-6)  # the training windows span [-1, 1]
    # a heavy-tailed channel in other units: a rescale and shift per channel, one rare excursion 1,000x out
    tailed = x.copy()
    tailed[0, 0, 5] = 1000.0
    units = tailed * np.array([300.0, 0.1], np.float32)[:, None] + np.array([-7.0, 4.0], np.float32)[:, None]
    a, b = ms.InputMap(2).fit(tailed), ms.InputMap(2).fit(units)
    assert torch.allclose(a(torch.from_numpy(tailed)), b(torch.from_numpy(units)), atol=1e-3)
    assert np.percentile(np.abs(a(torch.from_numpy(tailed)).numpy()), 99) > 0.1  # the spike does not flatten it


def test_an_older_cached_evaluator_is_trained_again_and_an_older_shipped_one_is_refused(data, tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    (x, y), recipe = data["train"], ms.SeriesRecipe(steps=20)
    first = ms.get_series_evaluator("toy:old", x, y, 2, recipe=recipe)
    meta_path = tmp_path / "evaluators" / "series-toy_old-2x32.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 1}))
    said = []
    again = ms.get_series_evaluator("toy:old", x, y, 2, recipe=recipe, log=said.append)
    assert "format version 1; this genforge reads version 2" in said[0] and again.sha256 == first.sha256
    assert json.loads(meta_path.read_text())["format_version"] == ms.FORMAT_VERSION  # the cache is mended
    from genforge.cli import main

    assert main(["evaluator", "list"]) == 0  # each cached series evaluator listed, an older one said so
    listed = capsys.readouterr().out
    assert "series-toy_old-2x32 " in listed and "older format" not in listed
    meta_path.write_text(json.dumps({**meta, "format_version": 1}))
    assert main(["evaluator", "list"]) == 0
    assert "series-toy_old-2x32.json (an older format: trained again on first use)" in capsys.readouterr().out
    monkeypatch.setattr(ms, "SHIPPED_DIR", tmp_path / "evaluators")
    meta_path.write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ModelFileError, match="series-toy_old-2x32.json: a series evaluator of format version 1"):
        ms.get_series_evaluator("toy:old", x, y, 2, recipe=recipe)


def test_reference_row_beats_a_broken_generator_on_every_score(evaluator, data):
    (x, y), (vx, vy), (tx, ty) = data["train"], data["val"], data["test"]
    # the discriminative score has its own tests; one short seed here keeps the file fast
    kw = dict(test_x=tx, test_y=ty, seeds=1, posthoc_steps=150, recipe=ms.SeriesRecipe(steps=150))
    ref = ms.reference_row(evaluator, x, y, vx, vy, **kw)
    broken = ms.evaluate_series(evaluator, x, ms.degrade(vx, 1.0), real_y=y, fake_y=vy, **kw)
    assert ref["fd"] < broken["fd"] and ref["predictive"] < broken["predictive"] and ref["tstr"] > broken["tstr"]
    assert ref["precision"] > broken["precision"] and ref["tstr"] > 0.9  # TRTR on the toy: near perfect
    # TRTR trains on the training windows (what a generator learns from), not on the held-out ones
    # (held-out labels swapped: the TRTR entry does not move, where a classifier trained on them scores < 0.1)
    assert ms.reference_row(evaluator, x, y, vx, 1 - vy, **kw)["tstr"] == ref["tstr"]
    assert "tstr" not in ms.reference_row(evaluator, x, y, vx, None, **kw)  # no labels, no TRTR
    assert {"discriminative", "discriminative_std", "recall", "evaluator_sha256"} <= set(ref)
    flipped = ms.tstr(vx, 1 - vy, tx, ty, 2, ms.SeriesRecipe(steps=150))
    assert flipped < 0.1  # labels swapped: train-on-synthetic learns the wrong classes
    # the real windows' features computed once by the caller give the same scores as computed inside
    again = ms.evaluate_series(evaluator, x, ms.degrade(vx, 1.0), real_features=evaluator.features(x), **kw)
    assert (again["fd"], again["precision"], again["recall"]) == (broken["fd"], broken["precision"], broken["recall"])
    with pytest.raises(ValueError, match="real_features has 3 rows"):
        ms.evaluate_series(evaluator, x, vx, real_features=evaluator.features(x[:3]), **kw)


def test_tstr_over_several_classifier_seeds_is_their_mean_and_spread(evaluator, data):
    (x, y), (vx, vy), (tx, ty) = data["train"], data["val"], data["test"]
    recipe = ms.SeriesRecipe(steps=10)  # short: the seeds must disagree for the spread to be tested
    one = ms.tstr_scores(vx, vy, tx, ty, 2, recipe)
    assert one == {"tstr": ms.tstr(vx, vy, tx, ty, 2, recipe)}  # one seed: the plain TSTR, no spread
    three = ms.tstr_scores(vx, vy, tx, ty, 2, recipe, seeds=3)
    each = [ms.tstr(vx, vy, tx, ty, 2, ms.SeriesRecipe(steps=10, seed=i)) for i in range(3)]
    assert three["tstr_each"] == each and each[0] == one["tstr"] and len(set(each)) > 1
    assert three["tstr"] == pytest.approx(np.mean(each)) and three["tstr_std"] == pytest.approx(np.std(each))
    kw = dict(test_x=tx, test_y=ty, seeds=1, posthoc_steps=20, recipe=recipe, tstr_seeds=3)
    row = ms.evaluate_series(evaluator, x, vx, real_y=y, fake_y=vy, **kw)
    assert row["tstr_each"] == each and "+- " in ms.summary_line(row).split("TSTR ")[1]
    ref = ms.reference_row(evaluator, x, y, vx, vy, **kw)  # TRTR: the same seeds, trained on the training windows
    assert ref["tstr_each"] == [ms.tstr(x, y, tx, ty, 2, ms.SeriesRecipe(steps=10, seed=i)) for i in range(3)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="TSTR seeds must be a positive whole number"):
            ms.tstr_scores(vx, vy, tx, ty, 2, recipe, seeds=bad)


@pytest.mark.parametrize("score", ["fd", "discriminative"])
def test_degradation_ladder_is_ranked_monotonically(score, evaluator, data):
    real, other = data["train"][0], data["val"][0]
    if score == "fd":
        def fn(a, b):
            return ms.frechet_series_distance(evaluator.features(a), evaluator.features(b))
    else:
        def fn(a, b):
            return ms.discriminative_score(a, b, seeds=2, steps=300)["mean"]
    ladder = ms.degradation_ladder(real, other, levels=(0.0, 0.3, 1.0), score=fn)
    values = [v for _, v in ladder]
    assert ms.is_monotone(values) and values[-1] > values[0]
    assert not ms.is_monotone(values[::-1])  # the check itself can fail


def test_each_degradation_changes_what_it_should(data):
    x = data["train"][0]
    j = ms.jitter(x, 0.5)
    assert abs(j.std() / x.std() - np.sqrt(1.25)) < 0.05  # noise at half the spread adds a quarter of the variance
    w = ms.time_warp(x, 0.2)
    assert np.array_equal(w[:, :, 0], x[:, :, 0]) and np.array_equal(w[:, :, -1], x[:, :, -1])  # ends stay
    assert not np.allclose(w, x)
    s = ms.channel_shuffle(x, 1.0)
    np.testing.assert_allclose(np.sort(s[:, 0].ravel()).mean(), np.sort(x[:, 0].ravel()).mean(), atol=0.05)
    lag = np.corrcoef(x[:, 0, :-3].ravel(), x[:, 1, 3:].ravel())[0, 1]  # channel 1 is channel 0, 3 steps later
    lag_shuffled = np.corrcoef(s[:, 0, :-3].ravel(), s[:, 1, 3:].ravel())[0, 1]
    assert lag > 0.9 and abs(lag_shuffled) < 0.1


def test_bad_series_are_refused_naming_the_value(data):
    x = data["train"][0].copy()
    x[3, 1, 7] = np.inf
    with pytest.raises(DataError, match=r"generated series: series 3, channel 1, sample 7 is inf"):
        ms.discriminative_score(data["val"][0], x)
    with pytest.raises(DataError, match=r"2 channel\(s\) x 16 samples, but 2 channel\(s\) x 32 samples were expected"):
        ms.predictive_score(data["val"][0], data["val"][0][:, :, :16])


def test_var_baseline_recovers_an_ar_process_and_samples_its_classes():
    rng = np.random.default_rng(0)
    n, t = 40, 200
    x = np.zeros((n, 1, t))
    for s in range(1, t):  # x_t = 0.8 x_{t-1} + e_t
        x[:, 0, s] = 0.8 * x[:, 0, s - 1] + rng.standard_normal(n)
    var = VARBaseline(order=1).fit(x, np.zeros(n, np.int64))
    assert abs(var.classes[0].coef[1, 0] - 0.8) < 0.03
    a, ya = var.sample(30, seed=1)
    b, _ = var.sample(30, seed=1)
    assert a.shape == (30, 1, t) and a.dtype == np.float32 and np.array_equal(a, b) and (ya == 0).all()
    assert abs(a.std() / x.std() - 1) < 0.15  # the stationary spread 1 / sqrt(1 - 0.8^2) is reproduced
    with pytest.raises(DataError, match="class 4 was not in the training windows"):
        var.sample(2, y=np.array([0, 4]))
    with pytest.raises(DataError, match="too short for order 3"):
        VARBaseline(order=3).fit(x[:, :, :3])


def test_var_beats_noise_as_a_generator(evaluator, data):
    (x, y), (tx, ty) = data["train"], data["test"]
    fx, fy = VARBaseline(order=3).fit(x, y).sample(96, seed=0)
    assert ms.tstr(fx, fy, tx, ty, 2, ms.SeriesRecipe(steps=150)) > 0.8  # a per-class VAR keeps each frequency
    noise = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    fd_var = ms.frechet_series_distance(evaluator.features(tx), evaluator.features(fx))
    assert fd_var < ms.frechet_series_distance(evaluator.features(tx), evaluator.features(noise))


def test_diagnosis_with_scarce_runs_real_and_real_plus_synthetic():
    rng = np.random.default_rng(0)
    runs, cls = [], []
    for c in range(3):  # 3 faults, 3 training runs each: windows of a per-fault AR(1) with its own mean
        for _ in range(3):
            w = np.zeros((12, 2, 16), np.float32)
            for s in range(1, 16):
                w[:, :, s] = 0.6 * w[:, :, s - 1] + rng.standard_normal((12, 2)) + c
            runs.append(w)
            cls.append(c)
    test_y = np.repeat(np.arange(3), 20)
    test_x = np.stack([runs[3 * c][i % 12] for i, c in enumerate(test_y)])  # drawn like the training runs
    data = diagnosis.DiagnosisData(runs, np.array(cls), test_x, test_y, ["IDV01", "IDV02", "IDV03"])
    out = diagnosis.experiment(data, 1, generator=var_generator(1), seeds=(0, 1),
                               recipe=ms.SeriesRecipe(steps=80))
    assert out["real"]["mean"] > 0.8 and len(out["real"]["accuracies"]) == 2
    assert 0 <= out["real+synthetic"]["mean"] <= 1 and isinstance(out["synthetic_helps"], bool)
    with pytest.raises(DataError, match="IDV01 has 3 training run"):
        diagnosis.experiment(data, 4)


def test_series_evaluator_is_cached_and_only_reused_for_the_same_training_windows(data, tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))
    (x, y), recipe = data["train"], ms.SeriesRecipe(steps=20)
    first = ms.get_series_evaluator("toy:sines", x, y, 2, recipe=recipe)
    assert (tmp_path / "evaluators" / "series-toy_sines-2x32.json").is_file()
    real_train = ms.train_series_evaluator
    monkeypatch.setattr(ms, "train_series_evaluator", lambda *a, **k: pytest.fail("trained again"))
    again = ms.get_series_evaluator("toy:sines", x, y, 2, recipe=recipe)
    assert again.sha256 == first.sha256
    monkeypatch.setattr(ms, "train_series_evaluator", real_train)
    said = []
    other = ms.get_series_evaluator("toy:sines", x[:50], y[:50], 2, recipe=recipe, log=said.append)
    assert other.meta["n_train"] == 50 and "trained on other windows" in said[0]


def test_shipped_basicmotions_evaluator_matches_the_data_and_classifies_it(monkeypatch, tmp_path):
    pytest.importorskip("sktime")
    from genforge.data.series import load_series

    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path))  # nothing cached: it must come from the package
    s = load_series("ucr:BasicMotions")
    monkeypatch.setattr(ms, "train_series_evaluator", lambda *a, **k: pytest.fail("trained instead of shipped"))
    ev = ms.get_series_evaluator("ucr:BasicMotions", s.train.x, s.train.y, s.num_classes)
    assert ev.meta["command"].startswith("python3 -c 'from genforge.metrics.series import ship_evaluator")
    assert ev.accuracy(s.test.x, s.test.y) == ev.meta["test_accuracy"] >= 0.95
