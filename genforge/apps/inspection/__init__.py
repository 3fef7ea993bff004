"""Quality inspection by anomaly detection (``genforge inspect``): learn what normal images look like, flag
what does not fit.

``inspector.py`` fits, saves, loads and scores detectors and picks thresholds; ``detectors.py`` holds the
detectors (VAE and diffusion reconstruction, the classical baselines); ``report.py`` writes the HTML report;
``cli.py`` the ``genforge inspect`` commands.
"""

from genforge.apps.inspection.inspector import (CONFIG, DEFAULT_FPR, FORMAT, FORMAT_VERSION, WEIGHTS, Detector,
                                                NormalData, Scored, as_tensor, auroc, choose_threshold,
                                                detection_counts, fit, load, load_normal, resolve_classes,
                                                roc_curve, save, score_stats)

__all__ = ["CONFIG", "DEFAULT_FPR", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "Detector", "NormalData", "Scored",
           "as_tensor", "auroc", "choose_threshold", "detection_counts", "fit", "load", "load_normal",
           "resolve_classes", "roc_curve", "save", "score_stats"]
