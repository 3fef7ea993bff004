"""``genforge inspect fit|score|report``: anomaly detection from the command line; docstrings are the help.

``genforge.cli.build_parser`` calls :func:`add_inspect_commands`; errors raised as
:class:`~genforge.errors.GenforgeError` become one-line messages with exit status 2 there.
"""

from __future__ import annotations

import inspect as _inspect
from pathlib import Path

from genforge.errors import GenforgeError


def _split_list(text: str | None) -> list[str] | None:
    return [t for t in text.split(",") if t.strip()] if text else None


def parse_options(detector: str, items: list[str] | None) -> dict:
    """``--set key=value`` detector options (values read as YAML); unknown keys are an error naming them."""
    from genforge.apps.inspection.detectors import DETECTORS
    from genforge.config import parse_override

    if detector not in DETECTORS:
        raise GenforgeError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    params = _inspect.signature(DETECTORS[detector]).parameters
    allowed = [p for p in params if p not in ("image_shape", "n_components", "n_bank", "stats")]
    options = {}
    for item in items or []:
        key, value = parse_override(item)
        if key not in allowed:
            raise GenforgeError(f"--set {key}: not an option of the {detector} detector; it takes "
                                f"{', '.join(allowed)}")
        default = params[key].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
                    (isinstance(default, int) and not isinstance(value, int)):
                raise GenforgeError(f"--set {key}: must be a positive {type(default).__name__}, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise GenforgeError(f"--set {key}: must be a string, got {value!r}")
        options[key] = value
    return options


def cmd_inspect_fit(args) -> int:
    """Fit an anomaly detector on normal images: genforge inspect fit DATA --normal-class 3 --out DET.

    DATA is any data spec (mnist5k, fashion-mnist, idx:DIR, npz:FILE, folder:DIR). Labelled data: pick the
    normal images with --normal-class (indices or names, comma-separated) or --anomaly-class (every other
    class is normal); unlabelled data: every image is normal. The detector trains on the train split's
    normal images and sets its threshold on the validation split's normal images, so that --fpr of normal
    images are flagged (never on test images). Writes DET/detector.safetensors and DET/detector.json.
    """
    from genforge.apps import inspection

    options = parse_options(args.detector, args.set)
    normal = inspection.load_normal(args.data, _split_list(args.normal_class), _split_list(args.anomaly_class),
                                    image_size=args.image_size, channels=args.channels, max_train=args.max_train,
                                    seed=args.split_seed)
    print(f"genforge: fitting {args.detector} on {len(normal.train)} normal images of {args.data}"
          + (f" (classes {', '.join(_names(normal))})" if normal.normal_classes is not None else "")
          + f"; threshold from {len(normal.val)} normal validation images")
    data = {"spec": args.data, "image_size": args.image_size, "channels": args.channels,
            "split_seed": args.split_seed, "normal_classes": normal.normal_classes,
            "class_names": normal.class_names, "max_train": args.max_train}
    log = None if args.quiet else (lambda msg: print(f"  {msg}", flush=True))
    det = inspection.fit(args.detector, normal.train, normal.val, fpr=args.fpr, seed=args.seed, options=options,
                         log=log, data=data)
    inspection.save(det, args.out)
    print(f"genforge: threshold {det.threshold:.6g} flags {100 * det.meta['val_fpr']:.1f}% of the normal "
          f"validation images (target {100 * args.fpr:g}%); fit in {det.meta['fit_seconds']:.1f} s; "
          f"wrote {args.out}")
    return 0


def _names(normal) -> list[str]:
    return [normal.class_names[c] if normal.class_names else str(c) for c in normal.normal_classes]


def cmd_inspect_score(args) -> int:
    """Score images with a fitted detector: genforge inspect score DET DATA --out RESULTS.

    Writes RESULTS/scores.csv (score and normal/anomaly label per image), RESULTS/summary.json and a residual
    heat map per image (RESULTS/heatmaps/NNNNN.png: the image beside where it differs from normal). --split
    picks test (default), val, train or all (every image of the source in file order; duplicates kept).
    When DATA has labels and the detector was fit on some of its classes, the images of the other classes
    count as true anomalies: AUROC, F1 and the confusion counts are printed and saved.
    """
    from genforge.apps import inspection
    from genforge.apps.inspection.report import write_results
    from genforge.data import load_splits

    det = inspection.load(args.detector)
    _, h, _ = det.image_shape
    if args.split == "all":
        splits = load_splits(args.data, image_size=h, val_fraction=0.0, test_fraction=0.0, dedup=False)
        parts = [splits.train] + ([splits.test] if len(splits.test) else [])
    else:
        fit_data = det.meta.get("data") or {}
        splits = load_splits(args.data, image_size=h, seed=fit_data.get("split_seed", 0))
        parts = [getattr(splits, args.split)]
    resized = [n for n in splits.report.notes if n.startswith("resized from")]
    if resized and not args.resize:
        raise GenforgeError(f"{args.data}: images are not {h}x{h} like those the detector was fit on "
                            f"({resized[0]}); pass --resize to score them resized")
    import numpy as np

    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts]) if parts[0].y is not None else None
    scored = det.score(x)  # refuses another channel count, naming both shapes
    truth = None
    normal_classes = (det.meta.get("data") or {}).get("normal_classes")
    same_classes = (det.meta.get("data") or {}).get("class_names") == splits.class_names
    if y is not None and normal_classes is not None and same_classes:
        truth = ~np.isin(y, normal_classes)
    about = {"detector": str(Path(args.detector)), "data": args.data, "split": args.split}
    summary = write_results(args.out, det, scored, x, classes=y, class_names=splits.class_names, truth=truth,
                            heatmaps=not args.no_heatmaps, about=about)
    line = f"genforge: {summary['flagged']} of {summary['n']} images flagged as anomalies"
    if "auroc" in summary:
        line += f"; AUROC {summary['auroc']:.4f}, F1 {summary['f1']:.4f} at the threshold"
    print(f"{line}; wrote {args.out}")
    return 0


def cmd_inspect_report(args) -> int:
    """Write an HTML report of scored images: genforge inspect report RESULTS [--out report.html].

    One offline page: the ROC curve (when the truth is known), score histograms with the threshold, the
    images with the highest scores, the false alarms and the missed anomalies, each beside its heat map.
    """
    from genforge.apps.inspection.report import write_report

    path = write_report(args.results, args.out)
    print(f"genforge: wrote {path}")
    return 0


def add_inspect_commands(sub) -> None:
    """Register ``genforge inspect fit|score|report`` on the top-level subparsers."""
    from genforge.apps.inspection.inspector import DEFAULT_FPR
    from genforge.apps.inspection.detectors import DETECTORS

    def doc(fn):
        return fn.__doc__.strip().splitlines()[0], fn.__doc__.strip()

    p = sub.add_parser("inspect", help="anomaly detection: genforge inspect fit|score|report")
    actions = p.add_subparsers(dest="inspect_command", required=True, metavar="ACTION")

    short, long = doc(cmd_inspect_fit)
    q = actions.add_parser("fit", help=short, description=long)
    q.add_argument("data", help="mnist5k | fashion-mnist[:DIR] | idx:DIR | npz:FILE | folder:DIR")
    q.add_argument("--detector", default="vae", help=f"{' | '.join(DETECTORS)} (default vae)")
    q.add_argument("--normal-class", metavar="CLASS[,CLASS...]", help="the normal classes (index or name)")
    q.add_argument("--anomaly-class", metavar="CLASS[,CLASS...]", help="every class but these is normal")
    q.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                   help=f"target false-positive rate on normal validation images (default {DEFAULT_FPR})")
    q.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="detector options, e.g. steps=1200 z_dim=32 (vae, ganomaly), k=5 (knn), variance=0.9 (pca)")
    q.add_argument("--max-train", type=int, default=0, help="fit on at most this many normal images (0: all)")
    q.add_argument("--image-size", type=int, default=28, help="resize images to this side (default 28)")
    q.add_argument("--channels", type=int, default=0, choices=(0, 1, 3), help="0: as the source has")
    q.add_argument("--split-seed", type=int, default=0, help="seed of the train / val / test split")
    q.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    q.add_argument("--out", required=True, help="detector directory")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.set_defaults(func=cmd_inspect_fit)

    short, long = doc(cmd_inspect_score)
    q = actions.add_parser("score", help=short, description=long)
    q.add_argument("detector", help="detector directory written by genforge inspect fit")
    q.add_argument("data", help="data spec of the images to score")
    q.add_argument("--split", default="test", choices=("test", "val", "train", "all"), help="default test")
    q.add_argument("--resize", action="store_true", help="resize images of another size to the detector's")
    q.add_argument("--no-heatmaps", action="store_true", help="write scores only")
    q.add_argument("--out", required=True, help="results directory")
    q.set_defaults(func=cmd_inspect_score)

    short, long = doc(cmd_inspect_report)
    q = actions.add_parser("report", help=short, description=long)
    q.add_argument("results", help="results directory written by genforge inspect score")
    q.add_argument("--out", help="HTML file (default RESULTS/report.html)")
    q.set_defaults(func=cmd_inspect_report)
