"""Scores of generated sensor series: numpy (N, C, T) in, numbers out.

    d = discriminative_score(real, fake)            # TimeGAN's: |accuracy - 0.5| of a post-hoc real/fake GRU
    p = predictive_score(real, fake)                # TimeGAN's: MAE on real of a next-step GRU fitted on fake
    ev = train_series_evaluator(train_x, train_y)   # a 1-D CNN per data set; its features are the metric space
    row = evaluate_series(ev, real_x, fake_x, fake_y=fake_y, test_x=test_x, test_y=test_y)  # one dict
    ref = reference_row(ev, train_x, train_y, val_x, val_y, test_x=test_x, test_y=test_y)    # real vs real
    ladder = degradation_ladder(real, levels=(0.1, 0.3, 1.0))                  # jitter, time warp, shuffle

Conventions: every array is float (N, channels, time), already normalized the way the generator sees its
data (so a score does not depend on a channel's units). Every post-hoc network is trained here, on the CPU,
seeded; the discriminative score is noisy (a public PyTorch TimeGAN reports 0.156 on Stocks where the paper
has 0.102), so it is reported as the mean and standard deviation over `seeds` classifiers.

The post-hoc networks follow TimeGAN's metrics code (Yoon et al. 2019, metrics/discriminative_metrics.py
and predictive_metrics.py): a one-layer GRU with a hidden size of half the channel count (at least 4 here,
so univariate data has a usable state), Adam, batches of 128, 80/20 train/test. Two deliberate differences:
the predictor forecasts every channel's next step from all channels (TimeGAN's predicts the last channel
from the others, which is undefined for one channel), and the step counts are set by the caller (TimeGAN
trains 2,000 / 5,000 steps; the defaults here are smaller so a score costs seconds on two cores).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.io import read_json
from genforge.metrics.evaluator_net import SHIPPED_DIR, cache_dir
from genforge.metrics.scores import frechet_distance, mean_cov, one_blas_thread, precision_recall
from genforge.models.files import read_weights, weights_blob, write_weights

FORMAT = "genforge-series-evaluator"
FORMAT_VERSION = 2  # 2: the network maps its input by asinh (InputMap); version 1 files are retrained
FEATURE_DIM = 64
POSTHOC_BATCH = 128


def check_series_array(x, where: str, shape: tuple[int, int] | None = None, at_least: int = 1) -> np.ndarray:
    """float32 (N, C, T) from any float/int array; NaN, infinities, another (C, T) than `shape` are errors."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or not (np.issubdtype(x.dtype, np.floating)
                                                            or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: expected a numeric array (N, channels, time), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if len(x) < at_least:
        raise DataError(f"{where}: {len(x)} series, at least {at_least} needed")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise DataError(f"{where}: series of {x.shape[1]} channel(s) x {x.shape[2]} samples, but "
                        f"{shape[0]} channel(s) x {shape[1]} samples were expected")
    bad = ~np.isfinite(x)
    if bad.any():
        n, c, t = np.argwhere(bad)[0]
        raise DataError(f"{where}: series {n}, channel {c}, sample {t} is {x[n, c, t]} (not a finite number)")
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------ post-hoc GRU networks


class PostHocGRU(nn.Module):
    """TimeGAN's post-hoc network: GRU over time, a linear read-out. out_dim 1: a real/fake logit from the
    last state; out_dim C: a next-step forecast at every step."""

    def __init__(self, channels: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        self.hidden = hidden or max(4, channels // 2)
        self.gru = nn.GRU(channels, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, last = self.gru(x.transpose(1, 2))  # x (b, c, t) -> h (b, t, hidden), last (1, b, hidden)
        return self.out(h), self.out(last[0])  # (b, t, out), (b, out)


def _fit(net: nn.Module, loss_fn, n: int, steps: int, gen: torch.Generator, lr: float = 1e-3) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(POSTHOC_BATCH, n),), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()


def _split(n: int, rng: np.random.Generator, test_share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    k = max(1, int(round(n * test_share)))
    return perm[k:], perm[:k]


def chance_score(n_test: int) -> float:
    """The discriminative score a classifier that cannot tell real from fake gets on average: E|k/n - 1/2| for
    k ~ Binomial(n, 1/2) correct answers of n = `n_test`. The score's floor: on a small set, windows drawn from
    the real distribution itself score about this much (0.105 on 14 test windows, 0.023 on 300)."""
    log_pmf = [math.lgamma(n_test + 1) - math.lgamma(k + 1) - math.lgamma(n_test - k + 1) - n_test * math.log(2)
               for k in range(n_test + 1)]
    return float(sum(math.exp(lp) * abs(k / n_test - 0.5) for k, lp in enumerate(log_pmf)))


def discriminative_score(real: np.ndarray, fake: np.ndarray, *, seeds: int = 5, steps: int = 500) -> dict:
    """|accuracy - 0.5| of a GRU telling real from fake windows on a held-out 20%; 0 is indistinguishable.

    Real and fake are balanced (the larger set subsampled) so that 0.5 is chance. Returns mean, std (over
    `seeds` classifiers, each on its own split), the per-seed scores, and ``chance``: what a classifier that
    cannot tell them apart scores on average on that many test windows (``chance_score``), the floor.
    """
    real = check_series_array(real, "real series", at_least=5)
    fake = check_series_array(fake, "generated series", real.shape[1:], at_least=5)
    scores = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n = min(len(real), len(fake))
        x = np.concatenate([real[rng.permutation(len(real))[:n]], fake[rng.permutation(len(fake))[:n]]])
        y = np.r_[np.ones(n), np.zeros(n)].astype(np.float32)
        train, test = _split(2 * n, rng)
        torch.manual_seed(seed)
        net = PostHocGRU(x.shape[1], 1)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(seed)
        tr = torch.from_numpy(train)
        _fit(net, lambda i: F.binary_cross_entropy_with_logits(net(xt[tr[i]])[1][:, 0], yt[tr[i]]), len(train),
             steps, gen)
        with torch.no_grad():
            pred = (net(xt[test])[1][:, 0] > 0).float()
        scores.append(abs(float((pred == yt[test]).float().mean()) - 0.5))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "scores": scores,
            "chance": chance_score(len(test))}


def predictive_score(real: np.ndarray, fake: np.ndarray, *, seeds: int = 1, steps: int = 500) -> dict:
    """Mean absolute error on real series of a GRU trained on fake series to forecast the next step
    (train on synthetic, test on real); lower is better, and real-on-real is the floor."""
    real = check_series_array(real, "real series", at_least=1)
    fake = check_series_array(fake, "generated series", real.shape[1:], at_least=1)
    if real.shape[2] < 2:
        raise DataError(f"predictive score: series of {real.shape[2]} sample(s); a next-step forecast needs 2")
    maes = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        c = real.shape[1]
        net = PostHocGRU(c, c)
        xf = torch.from_numpy(fake)
        gen = torch.Generator().manual_seed(seed)
        _fit(net, lambda i: F.l1_loss(net(xf[i, :, :-1])[0], xf[i, :, 1:].transpose(1, 2)), len(fake), steps, gen)
        with torch.no_grad():
            xr = torch.from_numpy(real)
            err = [F.l1_loss(net(xr[s:s + 512, :, :-1])[0], xr[s:s + 512, :, 1:].transpose(1, 2),
                             reduction="sum") for s in range(0, len(real), 512)]
        maes.append(float(sum(err)) / (len(real) * c * (real.shape[2] - 1)))
    return {"mean": float(np.mean(maes)), "std": float(np.std(maes)), "scores": maes}


# --------------------------------------------------------------------------- the per-data-set evaluator


class InputMap(nn.Module):
    """A classifier's first step, fitted on the windows it is trained on: per channel asinh((x - shift) / scale)
    / limit, the "asinh" normalization of `data.series.base.fit_normalization` (median, robust spread, then
    the training windows span [-1, 1]). The windows arrive z-scored, but a heavy-tailed set keeps its tails
    there: on PLAID (a quarter of the values below 0.001, the largest 449) the evaluator classified 0.43 of
    the test windows right on z-scored input and 0.55 with this map; tep gains about 0.02, ACSF1 and
    BasicMotions stay level (RESULTS.md, stop 36). A positive rescale or a shift of a channel does not change
    what the classifier sees."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("limit", torch.ones(channels))

    def fit(self, x: np.ndarray) -> InputMap:
        from genforge.data.series.base import fit_normalization  # the metrics stay importable without the loaders

        norm = fit_normalization(x, "asinh")
        for name in ("shift", "scale", "limit"):
            getattr(self, name).copy_(torch.from_numpy(getattr(norm, name)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.asinh((x - self.shift[:, None]) / self.scale[:, None]) / self.limit[:, None]


class SeriesCNN(nn.Module):
    """The InputMap, conv1d(k=5)-BN-ReLU-maxpool stages (widths 32, 64, 64), global average over time, a 64-d
    embedding (the feature space of FD and precision/recall), then the class head. Pooling only while the
    series is longer than 8 samples, so short series (ItalyPowerDemand, 24) keep some time resolution."""

    def __init__(self, channels: int, length: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 64),
                 feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.input = InputMap(channels)
        layers: list[nn.Module] = []
        c_in, t = channels, length
        for width in widths:
            layers += [nn.Conv1d(c_in, width, kernel_size=5, padding=2, bias=False), nn.BatchNorm1d(width),
                       nn.ReLU(inplace=True)]
            if t > 8:
                layers.append(nn.MaxPool1d(kernel_size=2))
                t //= 2
            c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten())  # (b, widths[-1])
        self.embed = nn.Sequential(nn.Linear(c_in, feature_dim), nn.ReLU(inplace=True))  # (b, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)  # (b, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(self.input(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class SeriesRecipe:
    """How the evaluator and every TSTR / diagnosis classifier is trained (the same recipe for all, so a
    train-on-synthetic accuracy is comparable with the train-on-real one)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3  # Adam, cosine decay to 0
    weight_decay: float = 1e-4
    seed: int = 0


def train_series_classifier(x: np.ndarray, y: np.ndarray, num_classes: int,
                            recipe: SeriesRecipe = SeriesRecipe()) -> SeriesCNN:
    """A SeriesCNN fitted on (x, y); deterministic for a seed on one thread count."""
    x = check_series_array(x, "classifier training series", at_least=2)
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"classifier labels: need {len(x)} class indices in 0..{num_classes - 1}")
    torch.manual_seed(recipe.seed)
    net = SeriesCNN(x.shape[1], x.shape[2], num_classes)
    net.input.fit(x)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(recipe.seed)
    batch = min(recipe.batch_size, len(x))
    net.train()
    for _ in range(recipe.steps):
        i = torch.randint(0, len(x), (batch,), generator=gen)
        if batch < 2:  # BatchNorm needs two examples in a batch
            i = torch.cat([i, i])
        loss = F.cross_entropy(net(xt[i]), yt[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def _forward(net: SeriesCNN, x: np.ndarray, what: str = "logits") -> np.ndarray:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    outs = []
    for s in range(0, len(xt), 512):
        f = net.features(xt[s:s + 512])
        outs.append(f if what == "features" else net.head(f))
    return torch.cat(outs).double().numpy()


def classifier_accuracy(net: SeriesCNN, x: np.ndarray, y: np.ndarray) -> float:
    return float((_forward(net, x).argmax(1) == np.asarray(y)).mean())


class SeriesEvaluator:
    """A frozen per-data-set classifier: `features(x)` (N, 64) float64 and `accuracy(x, y)`; `meta` says what
    it was trained on (data set, sizes, test accuracy) and `sha256` which weights every score used."""

    def __init__(self, net: SeriesCNN, meta: dict, sha256: str):
        self.net, self.meta, self.sha256 = net.eval(), meta, sha256

    @property
    def example_shape(self) -> tuple[int, int]:
        return tuple(self.meta["example_shape"])

    def features(self, x: np.ndarray) -> np.ndarray:
        x = check_series_array(x, "series to embed", self.example_shape)
        return _forward(self.net, x, "features")

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return classifier_accuracy(self.net, check_series_array(x, "series to classify", self.example_shape), y)


def train_series_evaluator(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, *, name: str = "",
                           test_x: np.ndarray | None = None, test_y: np.ndarray | None = None,
                           recipe: SeriesRecipe = SeriesRecipe(), command: str = "") -> SeriesEvaluator:
    """Train the evaluator of a data set on its train split (never on generated data). `command`: how it was
    trained, recorded in its JSON (for a shipped one)."""
    t0 = time.perf_counter()
    net = train_series_classifier(train_x, train_y, num_classes, recipe)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "data": name, "split": "train",
            "example_shape": list(train_x.shape[1:]), "num_classes": int(num_classes), "n_train": len(train_x),
            "recipe": recipe.__dict__, "train_seconds": round(time.perf_counter() - t0, 2),
            "train_sha256": hashlib.sha256(np.ascontiguousarray(train_x, np.float32).tobytes()).hexdigest(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            **({"command": command} if command else {})}
    if test_x is not None and test_y is not None:
        meta["test_accuracy"] = classifier_accuracy(net, check_series_array(test_x, "test series"), test_y)
    return SeriesEvaluator(net, meta, weights_blob(net.state_dict(), FORMAT)[1])


def save_series_evaluator(ev: SeriesEvaluator, path: str | Path) -> Path:
    """NAME.safetensors + NAME.json (the JSON holds the weights' SHA-256), written atomically."""
    path = Path(path).with_suffix("")
    written = write_weights(path.with_suffix(".safetensors"), path.with_suffix(".json"), ev.net.state_dict(), ev.meta,
                            FORMAT)
    ev.sha256 = written["weights_sha256"]
    return path


def load_series_evaluator(path: str | Path) -> SeriesEvaluator:
    """Load and check (format, shapes, SHA-256) an evaluator written by save_series_evaluator."""
    path = Path(path).with_suffix("")
    meta = read_json(path.with_suffix(".json"), ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path.with_suffix('.json')}: not a genforge series evaluator")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path.with_suffix('.json')}: a series evaluator of format version "
                             f"{meta.get('format_version')!r}; this genforge reads version {FORMAT_VERSION}")
    tensors = read_weights(path.with_suffix(".safetensors"), path.with_suffix(".json"), meta)
    c, t = meta["example_shape"]
    net = SeriesCNN(c, t, meta["num_classes"])
    net.load_state_dict(tensors)
    return SeriesEvaluator(net, meta, meta["weights_sha256"])


def evaluator_key(spec: str, shape: tuple[int, int]) -> str:
    """``series-ucr_BasicMotions-6x100``: the data spec (how it was shaped included, e.g. "ucr:PLAID
    resample 256") and the example shape; a spec with a path gets a short hash so two files never collide."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.strip()).strip("_.")[:60]
    if "/" in spec or "\\" in spec:
        slug += "-" + hashlib.sha256(spec.encode()).hexdigest()[:10]
    return f"series-{slug}-{shape[0]}x{shape[1]}"


def get_series_evaluator(spec: str, train_x: np.ndarray, train_y: np.ndarray, num_classes: int, *,
                         test_x: np.ndarray | None = None, test_y: np.ndarray | None = None,
                         recipe: SeriesRecipe = SeriesRecipe(), log=None) -> SeriesEvaluator:
    """The evaluator of data `spec`: shipped (genforge/metrics/evaluators/), cached, or trained now on `train_x`
    and cached. A shipped or cached one is used only if it was trained on exactly these training windows
    (their SHA-256 is in its JSON); otherwise a new one is trained, so a score never silently uses an evaluator
    of other data."""
    key = evaluator_key(spec, train_x.shape[1:])
    digest = hashlib.sha256(np.ascontiguousarray(train_x, np.float32).tobytes()).hexdigest()
    for directory in (SHIPPED_DIR, cache_dir()):
        path = directory / f"{key}.json"
        if path.is_file():
            try:
                ev = load_series_evaluator(path)
            except ModelFileError as e:
                if directory == SHIPPED_DIR:
                    raise
                if log:  # the cache holds only what can be trained again, e.g. an older format's evaluator
                    log(f"{e}; training a new evaluator")
                continue
            if ev.meta.get("train_sha256") == digest:
                return ev
            if log:
                log(f"{path}: trained on other windows than {spec}'s train split; training a new evaluator")
    if log:
        log(f"no evaluator for {spec} yet: training one on {len(train_x)} windows ({recipe.steps} steps; cached in "
            f"{cache_dir()})")
    ev = train_series_evaluator(train_x, train_y, num_classes, name=spec, test_x=test_x, test_y=test_y,
                                recipe=recipe)
    save_series_evaluator(ev, cache_dir() / key)
    return ev


def ship_evaluator(spec: str, **shape) -> SeriesEvaluator:
    """Train the evaluator of UCR set `spec` on one thread with the default recipe and write it into the package
    (genforge/metrics/evaluators/), its command in its JSON. `shape`: load_series' length options."""
    from genforge.data.series import load_series  # the data layer is only needed to make a shipped file

    torch.set_num_threads(1)
    s = load_series(spec, **shape)
    args = "".join(f", {k}={json.dumps(v)}" for k, v in shape.items())  # double quotes: the shell line uses single
    command = f"python3 -c 'from genforge.metrics.series import ship_evaluator; ship_evaluator(\"{spec}\"{args})'"
    ev = train_series_evaluator(s.train.x, s.train.y, s.num_classes, name=spec, test_x=s.test.x, test_y=s.test.y,
                                command=command)
    save_series_evaluator(ev, SHIPPED_DIR / evaluator_key(spec, s.example_shape))
    return ev


def frechet_series_distance(real_f: np.ndarray, fake_f: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to evaluator features (FID's formula, a 1-D CNN's space)."""
    with one_blas_thread():
        return frechet_distance(*mean_cov(real_f), *mean_cov(fake_f))


def tstr(fake_x: np.ndarray, fake_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
         recipe: SeriesRecipe = SeriesRecipe()) -> float:
    """Train on synthetic, test on real: accuracy on the real test split of a classifier trained on the
    generated examples with the evaluator's recipe (compare with the same on real training data: TRTR)."""
    net = train_series_classifier(fake_x, fake_y, num_classes, recipe)
    return classifier_accuracy(net, check_series_array(test_x, "real test series", fake_x.shape[1:]), test_y)


def tstr_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                recipe: SeriesRecipe = SeriesRecipe(), seeds: int = 1) -> dict:
    """`tstr` over `seeds` classifiers (recipe seeds recipe.seed, recipe.seed + 1, ...): {"tstr": mean} and, for
    more than one seed, "tstr_std" and "tstr_each". One classifier's accuracy moves by a few points with its seed
    on small, hard sets (PLAID, ACSF1), so a TSTR / TRTR ratio read from one seed carries that noise."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"TSTR seeds must be a positive whole number, got {seeds!r}")
    each = [tstr(train_x, train_y, test_x, test_y, num_classes, replace(recipe, seed=recipe.seed + i))
            for i in range(seeds)]
    if seeds == 1:
        return {"tstr": each[0]}
    return {"tstr": float(np.mean(each)), "tstr_std": float(np.std(each)), "tstr_each": each}


def evaluate_series(ev: SeriesEvaluator | None, real_x: np.ndarray, fake_x: np.ndarray, *,
                    real_y: np.ndarray | None = None, fake_y: np.ndarray | None = None,
                    test_x: np.ndarray | None = None, test_y: np.ndarray | None = None, seeds: int = 5,
                    posthoc_steps: int = 500, recipe: SeriesRecipe = SeriesRecipe(),
                    real_features: np.ndarray | None = None, tstr_seeds: int = 1) -> dict:
    """Every score of `fake_x` against `real_x`: discriminative (mean, std), predictive, and with an
    evaluator FD and precision/recall on its features; with labels and a real test split, TSTR accuracy.

    `real_features`: `ev.features(real_x)`, computed once by a caller that scores many generators against the
    same real windows. `tstr_seeds`: TSTR's mean (and spread) over that many classifier seeds (`tstr_scores`).

    `real_y` (the labels of `real_x`) is accepted so a labelled set can be passed whole, but no score reads it:
    TSTR trains on `fake_y` and tests on `test_y`, and the other scores are label-free."""
    real_x = check_series_array(real_x, "real series", at_least=5)
    fake_x = check_series_array(fake_x, "generated series", real_x.shape[1:], at_least=5)
    if real_features is not None and len(real_features) != len(real_x):
        raise ValueError(f"real_features has {len(real_features)} rows for {len(real_x)} real series")
    t0 = time.perf_counter()
    d = discriminative_score(real_x, fake_x, seeds=seeds, steps=posthoc_steps)
    p = predictive_score(real_x, fake_x, steps=posthoc_steps)
    row = {"n_real": len(real_x), "n_fake": len(fake_x), "discriminative": d["mean"], "discriminative_std": d["std"],
           "discriminative_chance": d["chance"], "predictive": p["mean"]}
    if ev is not None:
        rf = ev.features(real_x) if real_features is None else real_features
        ff = ev.features(fake_x)
        row["fd"] = frechet_series_distance(rf, ff)
        with one_blas_thread():
            row["precision"], row["recall"] = precision_recall(rf, ff)
        row["evaluator_sha256"] = ev.sha256
    if fake_y is not None and test_x is not None and test_y is not None and ev is not None:
        row.update(tstr_scores(fake_x, fake_y, test_x, test_y, ev.meta["num_classes"], recipe, tstr_seeds))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def reference_row(ev: SeriesEvaluator | None, train_x: np.ndarray, train_y: np.ndarray | None,
                  other_x: np.ndarray, other_y: np.ndarray | None, *, test_x: np.ndarray | None = None,
                  test_y: np.ndarray | None = None, recipe: SeriesRecipe = SeriesRecipe(), tstr_seeds: int = 1,
                  **kwargs) -> dict:
    """Real against real: held-out real windows (`other_x`, e.g. the val split) scored as if generated
    against the training windows. No generator can be expected to beat it. Its TSTR entry is
    train-on-real-test-on-real (TRTR): the same classifier recipe trained on the training windows, the ones a
    generator learns from, not on the held-out ones (a val split is a tenth of their size, and where the
    held-out windows are the test split itself, training on them would test on what was trained on)."""
    row = evaluate_series(ev, train_x, other_x, real_y=train_y, recipe=recipe, **kwargs)
    if other_y is not None and train_y is not None and test_x is not None and test_y is not None and ev is not None:
        row.update(tstr_scores(train_x, train_y, test_x, test_y, ev.meta["num_classes"], recipe, tstr_seeds))
    return row


# ----------------------------------------------------------------------------- the degradation ladder


def jitter(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """Add Gaussian noise of standard deviation `level` times each channel's spread."""
    rng = np.random.default_rng(seed)
    spread = x.std(axis=(0, 2), keepdims=True) + 1e-8
    return (x + level * spread * rng.standard_normal(x.shape)).astype(np.float32)


def time_warp(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """Resample each series along a random smooth monotone time map; `level` is how far (as a share of the
    length) time may be pushed at the middle of the series (a sine bump, so both ends stay fixed)."""
    rng = np.random.default_rng(seed)
    n, c, t = x.shape
    base = np.arange(t, dtype=np.float64)
    bump = np.sin(np.pi * base / max(t - 1, 1))  # 0 at both ends, 1 in the middle
    out = np.empty_like(x, dtype=np.float32)
    # |shift| < t / pi keeps the map monotone (its slope 1 + shift * pi / t * cos(.) stays positive)
    shifts = rng.uniform(-1, 1, n) * min(level * t, 0.9 * t / np.pi)
    for i in range(n):
        pos = np.clip(base + shifts[i] * bump, 0, t - 1)
        for ch in range(c):
            out[i, ch] = np.interp(pos, base, x[i, ch])
    return out


def channel_shuffle(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """Replace a share `level` of each series' time steps, channel by channel, with the same channel's value
    at a random other step of another series: the marginals stay, the dynamics and cross-channel structure
    break. (For univariate data a permutation of channels would change nothing, so time steps are what is
    shuffled.)"""
    rng = np.random.default_rng(seed)
    n, c, t = x.shape
    out = x.astype(np.float32, copy=True)
    hit = rng.random((n, c, t)) < level
    src_n, src_t = rng.integers(0, n, (n, c, t)), rng.integers(0, t, (n, c, t))
    ch = np.broadcast_to(np.arange(c)[None, :, None], (n, c, t))
    out[hit] = x[src_n[hit], ch[hit], src_t[hit]]
    return out


DEGRADATIONS = {"jitter": jitter, "time-warp": time_warp, "channel-shuffle": channel_shuffle}


def degrade(x: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """All three degradations at strength `level` in turn (jitter, then time warp, then shuffle): one rung."""
    out = x
    for k, fn in enumerate(DEGRADATIONS.values()):
        out = fn(out, level, seed + k)
    return out


def degradation_ladder(real: np.ndarray, reference: np.ndarray, levels: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0),
                       score=None, seed: int = 0) -> list[tuple[float, float]]:
    """[(level, score)] for `reference` degraded at each level and scored against `real` with `score(real,
    fake) -> float` (default: the discriminative score's mean over 3 seeds). A sound score rises with the level."""
    if score is None:
        def score(a, b):
            return discriminative_score(a, b, seeds=3, steps=300)["mean"]
    return [(level, float(score(real, degrade(reference, level, seed) if level else reference)))
            for level in levels]


def is_monotone(values: list[float], tolerance: float = 0.0) -> bool:
    """True when each value is at least the previous one less `tolerance`."""
    return all(b >= a - tolerance for a, b in zip(values, values[1:]))


def summary_line(row: dict) -> str:
    """One line of the scores a row has, for printing."""
    chance = f" (chance {row['discriminative_chance']:.3f})" if "discriminative_chance" in row else ""
    parts = [f"discriminative {row['discriminative']:.3f} +- {row['discriminative_std']:.3f}{chance}",
             f"predictive {row['predictive']:.4f}"]
    if "fd" in row:
        parts += [f"FD {row['fd']:.3g}", f"precision {row['precision']:.3f}", f"recall {row['recall']:.3f}"]
    if "tstr" in row:
        spread = f" +- {row['tstr_std']:.3f} ({len(row['tstr_each'])} seeds)" if "tstr_std" in row else ""
        parts.append(f"TSTR {row['tstr']:.3f}{spread}")
    return ", ".join(parts)



# ---------------------------------------------------------------------------------- genforge eval on series

EVAL_FORMAT = "genforge-eval-series"


def _shaping(train_config: dict, x_length: int | None = None) -> dict:
    """load_series options from a model's training config (how its data was cut and shaped)."""
    c = train_config
    out = {"length_policy": c.get("series_length_policy", "equal"), "length": c.get("series_length") or None,
           "missing": c.get("series_missing", "refuse"), "window": c.get("series_window") or x_length,
           "stride": c.get("series_stride") or None, "time_column": c.get("series_time_column") or None,
           "label_column": c.get("series_label_column") or None, "val_fraction": c.get("val_fraction", 0.1),
           "test_fraction": c.get("test_fraction", 0.1), "seed": c.get("split_seed", 0)}
    return out


def evaluate_series_model(model, data: str | None, n: int, seed: int = 0, *, x: np.ndarray | None = None,
                          y: np.ndarray | None = None, source: str = "", say=None, seeds: int = 5,
                          posthoc_steps: int = 500) -> dict:
    """`genforge eval` for sensor series: sample `n` windows from `model` (or score the given `x`, `y` in the
    data's units) against `data` shaped as the model's training data was, and return the JSON-ready result:
    a row for the samples and the real-vs-real reference row (the val split, else the test split, as if
    generated), each with the discriminative score (mean, std over `seeds`), the predictive score, FD,
    precision/recall on the data set's evaluator and TSTR (TRTR in the real row). Windows are compared after the
    z-score of the training split, so no score depends on a channel's units."""
    from genforge.data.series import load_series  # the data layer: only the series path of eval needs it here

    say = say or (lambda text: None)
    train_config = (model.meta.get("train_config") or {}) if model is not None else {}
    data = data or (model.meta.get("data") if model is not None else None)
    if not data:
        raise GenforgeError(f"{source}: give --data SPEC, the real series these samples should be scored against")
    shaping = _shaping(train_config, None if x is None else x.shape[2])
    splits = load_series(data, normalize="zscore", **shaping)
    train, test = splits.train, splits.test
    if model is not None:
        say(f"sampling {n} series from {model.path} (seed {seed})")
        samples = model.sample(n, seed=seed)
        x, y = samples.x, samples.y
        source = str(model.path)
    x = check_series_array(np.asarray(x), f"{source} samples", splits.example_shape, at_least=5)
    fake = splits.normalization.apply(x)
    if y is not None and splits.num_classes:
        y = np.asarray(y, np.int64)
        if y.shape != (len(x),) or y.min() < 0 or y.max() >= splits.num_classes:
            raise GenforgeError(f"{source}: y must hold {len(x)} class indices in 0..{splits.num_classes - 1}")
    key = data + "".join(f" {k}={v}" for k, v in shaping.items() if v is not None and k in
                         ("length_policy", "length", "window", "stride"))
    ev = None
    if train.y is not None and splits.num_classes >= 2:
        ev = get_series_evaluator(key, train.x, train.y, splits.num_classes, test_x=test.x, test_y=test.y,
                                  log=lambda m: say(m))
    other = splits.val if len(splits.val) >= 5 else test
    say(f"scoring {len(x)} samples against {len(train)} training windows of {data} (discriminative score over "
        f"{seeds} seeds)")
    with_labels = y is not None and ev is not None
    kw = dict(test_x=test.x if with_labels else None, test_y=test.y if with_labels else None, seeds=seeds,
              posthoc_steps=posthoc_steps, real_features=None if ev is None else ev.features(train.x))
    rows = {"samples": evaluate_series(ev, train.x, fake, real_y=train.y, fake_y=y if with_labels else None, **kw),
            "real": reference_row(ev, train.x, train.y, other.x, other.y if with_labels else None, **kw)}
    result = {"format": EVAL_FORMAT, "format_version": 1, "source": source, "data": data, "shaping": shaping,
              "n": len(x), "seed": seed, "rows": rows, "reference": {"split": "val" if other is splits.val
                                                                     else "test", "size": len(other)},
              "evaluator": None if ev is None else {"name": key, "weights_sha256": ev.sha256,
                                                    "test_accuracy": ev.meta.get("test_accuracy")},
              "notes": [] if ev is not None else [f"{data} has no class labels: no evaluator, so no FD, "
                                                  "precision/recall or TSTR"]}
    if model is not None:
        result["model"] = {"name": model.name, "step": model.meta.get("step"),
                           "weights_sha256": model.meta.get("weights_sha256")}
    return result


def format_series_table(result: dict) -> str:
    """The printable table of evaluate_series_model's result."""
    what = result["source"] + (f" ({result['model']['name']}, step {result['model'].get('step')})"
                               if result.get("model") else "")
    ev = result["evaluator"]
    lines = [f"{what} against {result['data']} (reference: the {result['reference']['split']} split, "
             f"{result['reference']['size']} windows)"]
    if ev:
        lines.append(f"evaluator {ev['name']}  sha256 {ev['weights_sha256'][:16]}  test accuracy "
                     f"{100 * (ev['test_accuracy'] or 0):.2f}%")
    cols = [("discriminative", "discr.", "{:.3f}"), ("discriminative_std", "+-", "{:.3f}"),
            ("predictive", "pred. MAE", "{:.4f}"), ("fd", "FD", "{:.3g}"), ("precision", "prec", "{:.3f}"),
            ("recall", "recall", "{:.3f}"), ("tstr", "TSTR", "{:.3f}")]
    lines += ["", f"{'':<26} {'n':>6} " + " ".join(f"{h:>9}" for _, h, _ in cols)]
    for label, row in ((f"samples (seed {result['seed']})", result["rows"]["samples"]),
                       ("real (held out vs train)", result["rows"]["real"])):
        cells = [f"{fmt.format(row[k]) if isinstance(row.get(k), (int, float)) else '-':>9}" for k, _, fmt in cols]
        lines.append(f"{label:<26} {row['n_fake']:>6} " + " ".join(cells))
    lines += ["", "discriminative: |accuracy - 0.5| of a post-hoc GRU telling real from generated (0 is best); "
                  "predictive: MAE on real of a next-step GRU trained on the samples; TSTR: accuracy on the real "
                  "test split of a classifier trained on the samples (in the real row TRTR: trained on the training "
                  "windows)."]
    chance = result["rows"]["samples"].get("discriminative_chance")
    if chance is not None:
        lines.append(f"discriminative floor: a classifier that cannot tell real from generated scores {chance:.3f} "
                     f"on average on this many test windows; scores near it are indistinguishable.")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"
