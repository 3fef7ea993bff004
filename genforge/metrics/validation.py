"""The cheap evaluation the training loop runs every K steps on the validation split.

The loop generates ``n`` images from the EMA model with a fixed seed and calls the evaluator:

    val = TrainingEvaluator.for_run(cfg.data, splits.val.x, splits.image_shape, n=cfg.eval_n, seed=cfg.seed,
                                    max_steps=cfg.max_steps, max_seconds=cfg.max_seconds, log=logger.message)
    if val is not None:                  # None: no evaluator, and the run is too short to train one (noted)
        logger.log(step, val(images))    # {"val_fid": ..., "val_precision": ..., ...}

The real validation features, their mean and covariance and their k-NN radii are computed once, here;
each call then costs one forward pass of the evaluator over ``n`` images plus the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genforge.data import load_splits
from genforge.errors import GenforgeError
from genforge.metrics import scores
from genforge.metrics.evaluate import check_images
from genforge.metrics.evaluator_net import EvaluatorUnavailable, TrainRecipe, find_evaluator, get_evaluator

KID_SUBSETS = 20  # the full eval uses 100; 20 keeps a call under a second and the std is logged anyway

# The validation budget (config eval_share). Fewer generated images than MIN_N give an FID too noisy to pick a
# best checkpoint by; below MIN_STEPS sampler steps a DDIM sample is mostly blur (a model that samples in fewer
# by default, a distilled one, keeps its own). PROBE_N images time the first validation before it is sized.
MIN_N = 128
MIN_STEPS = 10
PROBE_N = 32
clock = time.perf_counter  # the budget's clock (tests put a fake one here)


class TrainingEvaluator:
    """Scores generated images against the validation split in the shipped (or cached) evaluator's features.

    ``data_spec``: the run's data (picks the evaluator; trained on first use for data without a shipped or
    cached one). ``val_x``: uint8 (N, H, W) or (N, H, W, C) validation images. ``image_shape``: (c, h, w).
    ``n``: how many generated images each call expects. ``seed``: fixes the subsets KID and the
    precision/recall subsample draw, so two calls on the same images agree exactly.
    ``ref_x``: optional real images (a random train subset of size n; data sets are often sorted by class)
    scored once as ``self.reference``: the value real data reaches on each metric, to log beside the curves.

    ``max_seconds``: the longest this may spend training a missing evaluator (None: no limit);
    :class:`~genforge.metrics.evaluator_net.EvaluatorUnavailable` when it would take longer.

    ``evaluator_sha256`` names the ruler: log it with the scores (the best-by-FID choice is only meaningful
    within one evaluator).
    """

    def __init__(self, data_spec: str, val_x: np.ndarray, image_shape: tuple[int, int, int], n: int = 2000,
                 seed: int = 0, ref_x: np.ndarray | None = None, max_seconds: float | None = None):
        self.evaluator = get_evaluator(data_spec, tuple(image_shape), max_seconds=max_seconds)
        self.evaluator_sha256 = self.evaluator.sha256
        self.evaluator_name = self.evaluator.name
        self.image_shape = tuple(image_shape)
        self.n, self.seed = n, seed
        val = check_images(val_x, f"{data_spec} validation split", self.image_shape)
        scores.need(len(val), scores.DC_K + 1, "validation scoring")
        self.real_f = self.evaluator.features(val)  # (N_val, d)
        # precision/recall and density/coverage compare equal-sized sets (see evaluate.score_features)
        self.m = min(len(val), n)
        rng = np.random.default_rng(seed)
        self.real_m = self.real_f[np.sort(rng.choice(len(val), self.m, replace=False))]
        with scores.one_blas_thread():
            self.real_stats = scores.mean_cov(self.real_f)
            self.radii_pr = scores.knn_radii(self.real_m, scores.PR_K)
            self.radii_dc = scores.knn_radii(self.real_m, scores.DC_K)
        self.reference = self(ref_x) if ref_x is not None else None

    def __call__(self, images_uint8: np.ndarray) -> dict[str, float]:
        x = check_images(images_uint8, "generated validation images", self.image_shape)
        if len(x) <= scores.DC_K:
            raise GenforgeError(f"validation scoring needs more than {scores.DC_K} images, got {len(x)}")
        fake_f, fake_p = self.evaluator.features_and_probs(x)
        with scores.one_blas_thread():
            return self._score(fake_f, fake_p)

    def _score(self, fake_f: np.ndarray, fake_p: np.ndarray) -> dict[str, float]:
        rng = np.random.default_rng(self.seed + 1)
        m = min(self.m, len(fake_f))
        fake_m = fake_f[np.sort(rng.choice(len(fake_f), m, replace=False))]
        real_m, radii_pr, radii_dc = self.real_m, self.radii_pr, self.radii_dc
        if m < self.m:  # fewer images than expected: shrink the real side to match, radii recomputed
            real_m = real_m[np.sort(rng.choice(self.m, m, replace=False))]
            radii_pr, radii_dc = scores.knn_radii(real_m, scores.PR_K), scores.knn_radii(real_m, scores.DC_K)
        kid, kid_std = scores.kid(self.real_f, fake_f, subsets=KID_SUBSETS, subset_size=1000, seed=self.seed)
        precision, recall = scores.precision_recall(real_m, fake_m, scores.PR_K, radii_pr)
        density, coverage = scores.density_coverage(real_m, fake_m, scores.DC_K, radii_dc)
        return {"val_fid": scores.frechet_distance(*self.real_stats, *scores.mean_cov(fake_f)),
                "val_kid": kid, "val_kid_std": kid_std, "val_precision": precision, "val_recall": recall,
                "val_density": density, "val_coverage": coverage,
                "val_is": scores.inception_score(fake_p)[0], "val_class_entropy": scores.class_entropy(fake_p)}

    @classmethod
    def for_run(cls, data_spec: str, val_x: np.ndarray, image_shape: tuple[int, int, int], n: int = 2000,
                seed: int = 0, *, max_steps: int = 0, max_seconds: float = 0.0,
                log: Callable[[str], None] = print) -> TrainingEvaluator | None:
        """The run's validation scorer, or None (with a note through ``log``) when the run is too short for it.

        A shipped or cached evaluator is always used. A missing one is trained first only when the run is
        long enough that this is not most of what it does: ``max_steps`` at least the evaluator's own
        training steps (a step-count rule, so the same recipe decides the same on every machine), and, under
        a ``max_seconds`` budget, the measured estimate of the training within it. Otherwise validation is
        skipped, and the note says how to train the evaluator ahead of time so the next run validates.
        """
        shape = tuple(int(s) for s in image_shape)
        budget = float(max_seconds) if max_seconds else None
        if find_evaluator(data_spec, shape) is None:
            n_train = len(load_splits(data_spec, image_size=shape[1], channels=shape[0]).train)
            needs = TrainRecipe().steps_for(n_train)
            if max_steps and max_steps < needs:
                log(f"validation skipped: no evaluator for {data_spec} yet, and training one ({needs} steps) "
                    f"would be longer than this {max_steps}-step run; train it once with: genforge evaluator "
                    f"train --data {data_spec} --image-size {shape[1]}")
                return None
        try:
            return cls(data_spec, val_x, shape, n=n, seed=seed, max_seconds=budget)
        except EvaluatorUnavailable as e:
            log(f"validation skipped: {e}")
            return None


def _image_validator(data_spec: str, splits, **kwargs) -> TrainingEvaluator | None:
    return TrainingEvaluator.for_run(data_spec, splits.val.x, splits.image_shape, **kwargs)


# modality -> (data spec, the modality's own splits, n=, seed=, max_steps=, max_seconds=, log=) -> scorer or None
VALIDATORS: dict[str, Callable] = {"image": _image_validator}


def validator_for_run(data_spec: str, modality: str, splits, *, n: int, seed: int, max_steps: int,
                      max_seconds: float, log: Callable[[str], None]):
    """The training loop's validation scorer for data of any modality, or None with a note through ``log``."""
    make = VALIDATORS.get(modality)
    if make is None:
        log(f"validation skipped: genforge has no training-time validator for {modality} data yet (eval_every is "
            "ignored); score the finished model with genforge eval")
        return None
    return make(data_spec, splits, n=n, seed=seed, max_steps=max_steps, max_seconds=max_seconds, log=log)


# --------------------------------------------------------------------------- the validation budget

@dataclass(frozen=True)
class ValidationPlan:
    n: int                 # generated images per validation
    steps: int | None      # sampler steps (diffusion), None for families without steps
    seconds: float         # predicted seconds of one validation (sampling + scoring)


class ValidationBudget:
    """Keeps validation to at most ``share`` of the run's time: (validation seconds) <= share x (training
    seconds + validation seconds), counted from the start of this process.

    Cost model, measured rather than guessed: one validation of n images at s sampler steps costs
    n x (a x s + b) seconds, a the sampling cost per image and step, b the scoring cost per image (the
    evaluator's forward pass and the metrics). Both come from timing the first validation: ``PROBE_N`` images
    sampled and scored before it is sized, then every validation refines them. The first validation that
    fits fixes ``plan`` (n, steps) for the rest of the run, so every logged FID is measured the same way and
    best.json compares like with like: eval_n at the model's sampler steps when that fits, else fewer steps
    (down to ``min_steps``), then fewer images (down to ``min_n``), else the validation is skipped with a note.
    A later validation whose predicted cost exceeds what the share allows by then is skipped too.
    """

    def __init__(self, share: float, eval_n: int, steps: int | None, min_n: int = MIN_N, min_steps: int = MIN_STEPS):
        if not 0 < share <= 1:
            raise GenforgeError(f"eval_share must be in (0, 1], got {share!r}")
        self.share, self.eval_n, self.steps = float(share), int(eval_n), steps
        self.min_n = min(min_n, self.eval_n)
        self.min_steps = None if steps is None else min(min_steps, steps)
        self.spent = 0.0                  # seconds spent validating so far, probes included
        self.sample_cost: float | None = None  # a: seconds per image and sampler step
        self.score_cost: float | None = None   # b: seconds per image scored
        self.plan: ValidationPlan | None = None

    def allowance(self, train_seconds: float) -> float:
        """Seconds the next validation may take: v_total <= share x (train + v_total) <=> v_total <= share /
        (1 - share) x train."""
        if self.share >= 1:
            return math.inf
        return self.share / (1 - self.share) * max(train_seconds, 0.0) - self.spent

    def cost(self, n: int, steps: int | None) -> float:
        return n * (self.sample_cost * (steps or 1) + self.score_cost)

    def measure(self, n: int, steps: int | None, sample_seconds: float, score_seconds: float) -> None:
        """Record one timed validation (or probe) of ``n`` images at ``steps``."""
        self.spent += sample_seconds + score_seconds
        self.sample_cost = max(sample_seconds, 0.0) / (n * (steps or 1))
        self.score_cost = max(score_seconds, 0.0) / n

    def fit(self, seconds: float) -> ValidationPlan | None:
        """The largest validation that takes at most ``seconds``: eval_n at full steps, else fewer steps, else
        fewer images; None when not even min_n images at min_steps fit."""
        a, b, n, steps = self.sample_cost, self.score_cost, self.eval_n, self.steps
        if self.cost(n, steps) <= seconds:
            return ValidationPlan(n, steps, self.cost(n, steps))
        if steps is not None and a > 0:
            fewer = math.floor((seconds / n - b) / a + 1e-9)  # the most steps at which n images fit
            if fewer >= self.min_steps:
                return ValidationPlan(n, fewer, self.cost(n, fewer))
            steps = self.min_steps
        per_image = (a * (steps or 1) + b)
        n = math.floor(seconds / per_image + 1e-9) if per_image > 0 else self.eval_n
        if n >= self.min_n:
            return ValidationPlan(n, steps, self.cost(n, steps))
        return None

    def end_cap(self, max_seconds: float) -> float:
        """The most a validation may cost now so that the last validation of a ``max_seconds`` run, at the same
        cost, still fits the share after it: with k = share / (1 - share) and s seconds spent so far, c + c <=
        k (M - s - 2c) - s, i.e. c <= (k M - s (1 + k)) / (2 (1 + k)). Unbounded without ``max_seconds``."""
        if not max_seconds or self.share >= 1:
            return math.inf
        k = self.share / (1 - self.share)
        return (k * max_seconds - self.spent * (1 + k)) / (2 * (1 + k))

    def room(self, train_seconds: float, max_seconds: float = 0.0, last: bool = False) -> float:
        """Seconds the validation due now may take: what the share allows, and before the ``last`` validation
        of a ``max_seconds`` run, no more than leaves the last one its room (:meth:`end_cap`)."""
        allowed = self.allowance(train_seconds)
        return allowed if last else min(allowed, self.end_cap(max_seconds))

    def choose(self, train_seconds: float, max_seconds: float = 0.0, last: bool = False) -> ValidationPlan | None:
        """The plan for the validation due now, or None to skip it (the share would be exceeded). In a
        ``max_seconds`` run, a validation before the ``last`` one also leaves the share room for the last: that
        one scores the weights the run ends with, which best.json must be able to compare."""
        if self.sample_cost is None:
            raise GenforgeError("ValidationBudget.choose before any validation was timed (call measure first)")
        allowed = self.room(train_seconds, max_seconds, last)
        if self.plan is None:
            self.plan = self.fit(allowed)
            return self.plan
        return self.plan if self.cost(self.plan.n, self.plan.steps) <= allowed else None

    def reserve(self, max_seconds: float) -> float:
        """Seconds to keep free at the end of a ``max_seconds`` run for the last validation: the predicted cost
        of the fixed plan, when the share will allow that validation then; else 0 (0 until a plan is fixed too).
        Keeping time for a validation that :meth:`choose` would then skip wastes it: a 600 s fashion-cddpm run
        stopped training early that way and exited at 570 s."""
        if self.plan is None:
            return 0.0
        cost = self.cost(self.plan.n, self.plan.steps)
        train_at_end = max_seconds - self.spent - cost  # training seconds when training stops to leave ``cost``
        return cost if cost <= self.allowance(train_at_end) else 0.0

    def describe(self) -> str:
        p = self.plan
        steps = "" if p.steps is None else f" at {p.steps} sampler steps"
        full = "" if p.steps is None else f" at {self.steps} steps"
        return (f"validation budget: eval_share {self.share:g} of the run's time; measured {self.sample_cost * 1e3:.3g} "
                f"ms per image{'' if p.steps is None else ' and sampler step'} sampling and "
                f"{self.score_cost * 1e3:.3g} ms per image scoring; chose {p.n} images{steps} (about {p.seconds:.3g} s "
                f"per validation; eval_n {self.eval_n}{full} would take {self.cost(self.eval_n, self.steps):.3g} s)")

    def run(self, validator: Callable[[np.ndarray], dict], draw: Callable[[int, int | None], np.ndarray],
            train_seconds: float, log: Callable[[str], None], max_seconds: float = 0.0,
            last: bool = False) -> dict[str, float]:
        """One budgeted validation: probe first if nothing was timed yet, choose the plan, sample
        ``draw(n, steps)`` and score it with ``validator``. Returns the scores plus val_n, val_steps and
        val_seconds (the validation's own time), or {} when skipped (with a note through ``log``).
        ``max_seconds`` and ``last``: see :meth:`choose`."""
        if self.sample_cost is None:  # the probe: PROBE_N images at the full steps, sampled and scored
            n = min(PROBE_N, self.eval_n)
            t0 = clock()
            images = draw(n, self.steps)
            t1 = clock()
            validator(images)
            self.measure(n, self.steps, t1 - t0, clock() - t1)
        planned_before = self.plan is not None
        plan = self.choose(train_seconds, max_seconds, last)
        if plan is None:
            need = (self.cost(self.plan.n, self.plan.steps) if self.plan is not None
                    else self.cost(self.min_n, self.min_steps))
            room = self.room(train_seconds, max_seconds, last)
            log(f"genforge: validation skipped: it would take about {need:.3g} s, and eval_share {self.share:g} "
                f"allows {max(room, 0.0):.3g} s now ({self.spent:.3g} s spent validating, {train_seconds:.3g} s "
                f"training{'' if last else ', room kept for the last validation'})")
            return {}
        if not planned_before:
            log(f"genforge: {self.describe()}")
        t0 = clock()
        images = draw(plan.n, plan.steps)
        t1 = clock()
        scores = validator(images)
        t2 = clock()
        self.measure(plan.n, plan.steps, t1 - t0, t2 - t1)
        return {**scores, "val_n": plan.n, **({"val_steps": plan.steps} if plan.steps is not None else {}),
                "val_seconds": t2 - t0}
