"""Evaluation you can trust: frozen, hashed evaluators, sample metrics with a real-data reference, reports.

    from genforge.metrics import evaluate, format_table
    result = evaluate("runs/dc", n=10000)          # or an npz of samples from any tool, with data="mnist5k"
    print(format_table(result))                    # samples row beside the real-data row

    val = TrainingEvaluator("mnist5k", splits.val.x, splits.image_shape, n=2000)
    val(images_uint8)                              # {"val_fid": ..., "val_precision": ..., ...}

Files: ``evaluator.py`` (the small CNN classifiers, their files, training and cache), ``scores.py`` (FID,
KID, precision/recall, density/coverage, classifier IS, class entropy, class match: numpy functions of
features), ``evaluate.py`` (what ``genforge eval`` runs: checks, the reference row, CAS, tables,
comparisons), ``validation.py`` (the cheap evaluation during training), ``inception.py`` (Inception-v3
FID from a local pytorch-fid weights file), ``report.py`` (``genforge report``), ``cli.py``.
"""

from genforge.metrics.evaluate import check_images, compare, evaluate, format_table, load_result, read_samples
from genforge.metrics.evaluator_net import (Evaluator, EvaluatorUnavailable, TrainRecipe, get_evaluator,
                                           load_evaluator, save_evaluator, train_evaluator)
from genforge.metrics.scores import (class_entropy, class_match, density_coverage, fid, frechet_distance,
                                     inception_score, kid, precision_recall)
from genforge.metrics.validation import TrainingEvaluator

__all__ = [
    "Evaluator", "EvaluatorUnavailable", "TrainRecipe", "TrainingEvaluator", "check_images", "class_entropy",
    "class_match", "compare",
    "density_coverage", "evaluate", "fid", "format_table", "frechet_distance", "get_evaluator",
    "inception_score", "kid", "load_evaluator", "load_result", "precision_recall", "read_samples",
    "save_evaluator", "train_evaluator",
]
