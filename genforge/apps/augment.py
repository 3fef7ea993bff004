"""Synthetic data for small data sets: does a conditional model trained on K images per class help a classifier
trained on the same K?

For each seed the experiment is:

1. draw K real images per class from the train split (the seed picks them);
2. train a class-conditional generative model (a recipe such as genforge/recipes/mnist5k-cvae-conv.yaml) on those
   K * classes images only, for a fixed number of steps;
3. generate ``synthetic_per_class`` images of every class;
4. train the same classifier (genforge's evaluator network and recipe, ``train_classifier``) twice, with the
   same seed and number of steps: on the real images only, and on real + synthetic;
5. score both on the whole test split.

Nothing but the K real images per class ever reaches the generator or the classifiers, so the comparison
is the one a user with K labelled images faces.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genforge.config import load_config
from genforge.data import ImageSet, load_splits
from genforge.errors import GenforgeError
from genforge.generation import sample
from genforge.generation.model import load as load_model
from genforge.generation.writers import save_npz
from genforge.io import atomic_write
from genforge.metrics.evaluator_net import TrainRecipe, accuracy, train_classifier
from genforge.models import MODELS
from genforge.training import train


@dataclass(frozen=True)
class AugmentOptions:
    gen_steps: int = 600            # training steps of the conditional model
    gen_batch: int = 128            # its batch (at most the K * classes real images)
    synthetic_per_class: int = 100  # generated images of each class added to the real ones
    classifier_steps: int = 500     # steps of each classifier, the same for real-only and real + synthetic
    classifier_batch: int = 64
    num_threads: int = 0            # torch threads while training the generator (0: one per core)


def few_shot(train: ImageSet, k: int, seed: int, class_names: list[str] | None = None) -> ImageSet:
    """K images of every class, drawn without replacement by ``seed``; an error names a class with fewer."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GenforgeError(f"K (images per class) must be a positive integer, got {k!r}")
    if train.y is None:
        raise GenforgeError("synthetic data for small data sets needs labelled data; this source has no labels")
    counts = np.bincount(train.y)
    short = [c for c in range(len(counts)) if counts[c] < k]
    if short:
        c = short[0]
        name = class_names[c] if class_names else str(c)
        raise GenforgeError(f"K={k} images per class is more than the train split holds: class {name!r} has "
                            f"{counts[c]} (the smallest class has {counts.min()})")
    rng = np.random.default_rng(seed)
    pick = np.sort(np.concatenate([rng.choice(np.flatnonzero(train.y == c), k, replace=False)
                                   for c in range(len(counts))]))
    return ImageSet(train.x[pick], train.y[pick])


def train_generator(recipe: str | Path, real: ImageSet, seed: int, options: AugmentOptions, workdir: Path,
                    device: str = "cpu"):
    """Train the conditional recipe on ``real`` only (no val or test split taken from it); returns the model."""
    data = save_npz(workdir / "real.npz", real.x[..., 0] if real.x.shape[-1] == 1 else real.x, real.y)
    overrides = [f"data=npz:{data}", "val_fraction=0", "test_fraction=0", "dedup=false", f"seed={seed}",
                 f"max_steps={options.gen_steps}", "max_seconds=0", f"batch_size={min(options.gen_batch, len(real))}",
                 "eval_every=0", "sample_every=0", f"checkpoint_every={options.gen_steps}", "tensorboard=false",
                 f"device={device}", f"image_size={real.x.shape[1]}", f"num_threads={options.num_threads}"]
    cfg = load_config(recipe, overrides)
    if not MODELS[cfg.model].conditional:
        raise GenforgeError(f"{recipe}: model {cfg.model!r} is unconditional; synthetic training data needs a "
                            "class-conditional recipe (cvae-conv, cdcgan, acgan or cddpm)")
    run = workdir / "generator"
    threads = torch.get_num_threads()
    try:
        train(cfg, run, quiet=True)
    finally:
        torch.set_num_threads(threads)  # the loop sets its own count; the classifiers run with the caller's
    return load_model(run, device=device)


def synthesize(model, per_class: int, seed: int) -> ImageSet:
    """``per_class`` generated images of every class, as (n, h, w, c) uint8 with their labels."""
    s = sample(model, per_class * model.num_classes, seed=seed)  # classes cycle 0..k-1
    x = s.x[..., None] if s.x.ndim == 3 else s.x
    return ImageSet(x, s.y)


STAGES = ("generator", "classifier on real", "classifier on real + synthetic")


def run_seed(splits, recipe: str | Path, k: int, seed: int, options: AugmentOptions = AugmentOptions(),
             device: str = "cpu", keep: Path | None = None, stage=None) -> dict:
    """One seed of the experiment; returns the test accuracies (real only, real + synthetic) and timings.

    ``keep``: write the real + synthetic training set there as an npz (x, y, and ``synthetic``, a bool per image).
    ``stage``: called with a short name as each of the STAGES begins (for a progress bar).
    """
    stage = stage or (lambda name: None)
    real = few_shot(splits.train, k, seed, splits.class_names)
    stage(STAGES[0])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genforge-augment-") as tmp:
        model = train_generator(recipe, real, seed, options, Path(tmp), device)
    fake = synthesize(model, options.synthetic_per_class, seed)
    t_gen = time.perf_counter() - t0
    mixed = ImageSet(np.concatenate([real.x, fake.x]), np.concatenate([real.y, fake.y]))
    if keep is not None:
        synthetic = np.arange(len(mixed)) >= len(real)
        atomic_write(keep, lambda f: np.savez_compressed(f, x=mixed.x, y=mixed.y, synthetic=synthetic))
    classifier = TrainRecipe(steps=options.classifier_steps, batch_size=options.classifier_batch, seed=seed)
    n_classes = splits.num_classes
    result = {"k": k, "seed": seed, "real": len(real), "synthetic": len(fake), "generator": model.name,
              "generator_seconds": round(t_gen, 1)}
    for name, part, what in (("real_only", real, STAGES[1]), ("real_plus_synthetic", mixed, STAGES[2])):
        stage(what)
        t1 = time.perf_counter()
        net = train_classifier(part.x, part.y, n_classes, classifier, device=device)
        result[name] = accuracy(net, splits.test.x, splits.test.y)
        result[f"{name}_seconds"] = round(time.perf_counter() - t1, 1)
    return result


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation) of each K's accuracies over its seeds."""
    out = []
    for k in sorted({r["k"] for r in rows}):
        mine = [r for r in rows if r["k"] == k]
        entry = {"k": k, "seeds": [r["seed"] for r in mine]}
        for name in ("real_only", "real_plus_synthetic"):
            acc = [r[name] for r in mine]
            entry[name] = statistics.mean(acc)
            entry[f"{name}_std"] = statistics.stdev(acc) if len(acc) > 1 else 0.0
        gain = [r["real_plus_synthetic"] - r["real_only"] for r in mine]
        entry["gain"] = statistics.mean(gain)
        entry["gain_std"] = statistics.stdev(gain) if len(gain) > 1 else 0.0
        out.append(entry)
    return out


def format_table(summary: list[dict]) -> str:
    lines = ["| K per class | real only | real + synthetic | gain (points) | seeds |", "|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['k']} | {100 * e['real_only']:.1f} ± {100 * e['real_only_std']:.1f}% "
                     f"| {100 * e['real_plus_synthetic']:.1f} ± {100 * e['real_plus_synthetic_std']:.1f}% "
                     f"| {100 * e['gain']:+.1f} ± {100 * e['gain_std']:.1f} | {len(e['seeds'])} |")
    return "\n".join(lines) + "\n"


def run(data: str, recipe: str | Path, ks: list[int], seeds: list[int], options: AugmentOptions = AugmentOptions(),
        device: str = "cpu", progress=None, bars: bool = False, keep: Path | None = None) -> dict:
    """The whole experiment for every K and seed; returns {"rows": per seed, "summary": per K, "options"}.

    ``keep``: write the real + synthetic training set of the first K and seed there (see :func:`run_seed`).

    ``progress``: called with each seed's row as it is done; ``bars``: a bar on stderr over every K, seed and
    stage (generator, two classifiers), whose estimate comes from the stages done so far."""
    if not seeds:
        raise GenforgeError("give at least one seed")
    splits = load_splits(data)
    if splits.num_classes < 2:
        raise GenforgeError(f"{data}: synthetic data for small data sets needs a labelled source with classes")
    for k in ks:  # fail before any training when a K is impossible
        few_shot(splits.train, k, seeds[0], splits.class_names)
    rows = []
    with tqdm(total=len(ks) * len(seeds) * len(STAGES), desc="augment", unit="stage", disable=not bars,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for k in ks:
            for seed in seeds:
                def stage(name, k=k, seed=seed):
                    if name != STAGES[0]:
                        bar.update(1)  # the stage before this one is done
                    bar.set_postfix_str(f"K={k} seed {seed}: {name}")

                first = k == ks[0] and seed == seeds[0]
                rows.append(run_seed(splits, recipe, k, seed, options, device, keep=keep if first else None,
                                     stage=stage))
                bar.update(1)
                if progress:
                    progress(rows[-1])
    return {"data": data, "recipe": str(recipe), "test_size": len(splits.test), "options": asdict(options),
            "rows": rows, "summary": summarize(rows)}
