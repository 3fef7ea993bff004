"""``genforge inspect fit|score|report``: anomaly detection from the command line; docstrings are the help.

Registered in :data:`genforge.cli.COMMANDS`; errors raised as :class:`~genforge.errors.GenforgeError` become
one-line messages with exit status 2 there.
"""

from __future__ import annotations

import inspect as _inspect
from pathlib import Path

import click

from genforge.cli.options import (CONTEXT, Group, LazyHelpOption, comma_list, device_option, image_options,
                                  out_option, progress_option, quiet_option, seed_option)
from genforge.errors import GenforgeError


def parse_options(detector: str, items: list[str] | tuple[str, ...] | None) -> dict:
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


@click.group(cls=Group, context_settings=CONTEXT)
def inspect() -> None:
    """Anomaly detection: genforge inspect fit|score|report."""


def _detector_help() -> str:
    from genforge.apps.inspection.detectors import DETECTORS

    from genforge.apps.inspection.series import DETECTORS as SERIES

    return (f"images: {' | '.join(DETECTORS)} (default vae); series: {' | '.join(SERIES)} (default pca-spe)")


def _fpr_help() -> str:
    from genforge.apps.inspection.inspector import DEFAULT_FPR

    return f"target false-positive rate on normal validation images (default {DEFAULT_FPR})"


@inspect.command("fit", context_settings=CONTEXT)
@click.argument("data", metavar="DATA")
@click.option("--detector", default=None, cls=LazyHelpOption, help_from=_detector_help)
@click.option("--normal-class", metavar="CLASS[,CLASS...]", help="the normal classes (index or name)")
@click.option("--anomaly-class", metavar="CLASS[,CLASS...]", help="every class but these is normal")
@click.option("--fpr", type=float, cls=LazyHelpOption, help_from=_fpr_help)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="one detector option per --set, e.g. "
              "steps=1200 or z_dim=32 (vae, ganomaly), k=5 (knn), variance=0.9 (pca)")
@click.option("--max-train", type=int, default=0, show_default=True, help="fit on at most this many normal images "
              "(0: all)")
@image_options
@click.option("--split-seed", type=int, default=0, show_default=True, help="seed of the train / val / test split")
@click.option("--window", type=int, default=1, show_default=True, help="series: samples per scored window (1: "
              "the classical static monitor; more: a dynamic one)")
@click.option("--time-column", metavar="NAME", help="series-csv: the column of time stamps (not a channel)")
@click.option("--label-column", metavar="NAME", help="series-csv: the column of labels (not a channel)")
@click.option("--val-data", metavar="DATA", help="series: another source of normal operation whose windows set the "
              "threshold (e.g. tep:faults=1;seeds=3-5, runs of other seeds); DATA then trains on all of its runs")
@seed_option("training seed")
@out_option("detector directory", metavar="DET")
@quiet_option
@progress_option
@device_option()
def fit(data: str, detector: str | None, normal_class: str | None, anomaly_class: str | None, fpr: float | None,
        sets: tuple[str, ...], max_train: int, image_size: int, channels: int, split_seed: int, window: int,
        time_column: str | None, label_column: str | None, val_data: str | None, seed: int, out: str, quiet: bool,
        progress: bool, device: str) -> int:
    """Fit an anomaly detector on normal images: genforge inspect fit DATA --normal-class 3 --out DET.

    DATA is any data spec (mnist5k, fashion-mnist, idx:DIR, npz:FILE, folder:DIR). Labelled data: pick the
    normal images with --normal-class (indices or names, comma-separated) or --anomaly-class (every other
    class is normal); unlabelled data: every image is normal. The detector trains on the train split's
    normal images and sets its threshold on the validation split's normal images, so that --fpr of normal
    images are flagged (never on test images). Writes DET/detector.safetensors and DET/detector.json.

    Sensor series (tep:[OPTIONS], series-csv:FILE, series-npz:FILE): the detector (pca-spe by default, pca-t2,
    iforest, recon) fits on normal operation only (tep: the normal training runs; a log: the whole log), on
    windows of --window samples, and sets its threshold on the last fifth of each run so that --fpr (default
    1%) of normal windows alarm; with --val-data, on the normal runs of that other source instead.
    """
    from genforge.apps import inspection
    from genforge.apps.inspection import series as fd

    if fd.is_series_spec(data):
        return _fit_series(data, detector or "pca-spe", fpr, sets, window, time_column, label_column, val_data,
                           seed, out, quiet)
    if val_data is not None:
        raise GenforgeError(f"--val-data is for sensor series; {data} is images (their validation split sets the "
                            "threshold)")
    detector = detector or "vae"
    fpr = inspection.DEFAULT_FPR if fpr is None else fpr

    options = parse_options(detector, sets)
    normal = inspection.load_normal(data, comma_list(normal_class), comma_list(anomaly_class),
                                    image_size=image_size, channels=channels, max_train=max_train,
                                    seed=split_seed)
    print(f"genforge: fitting {detector} on {len(normal.train)} normal images of {data}"
          + (f" (classes {', '.join(_names(normal))})" if normal.normal_classes is not None else "")
          + f"; threshold from {len(normal.val)} normal validation images")
    about = {"spec": data, "image_size": image_size, "channels": channels,
            "split_seed": split_seed, "normal_classes": normal.normal_classes,
            "class_names": normal.class_names, "max_train": max_train}
    log = None if quiet else (lambda msg: print(f"  {msg}", flush=True))
    det = inspection.fit(detector, normal.train, normal.val, fpr=fpr, seed=seed, options=options,
                         log=log, data=about, device=device, progress=progress and not quiet)
    inspection.save(det, out)
    print(f"genforge: threshold {det.threshold:.6g} flags {100 * det.meta['val_fpr']:.1f}% of the normal "
          f"validation images (target {100 * fpr:g}%); fit in {det.meta['fit_seconds']:.1f} s; "
          f"wrote {out}")
    return 0


def _series_options(detector: str, items) -> dict:
    """``--set key=value`` for a series detector; unknown keys are an error naming them."""
    from genforge.apps.inspection import series as fd
    from genforge.config import parse_override

    if detector not in fd.DETECTORS:
        raise GenforgeError(f"unknown series detector {detector!r}; choose one of {', '.join(fd.DETECTORS)}")
    options = {}
    for item in items or []:
        key, value = parse_override(item)
        if key not in fd.OPTIONS[detector]:
            raise GenforgeError(f"--set {key}: not an option of the {detector} detector; it takes "
                                f"{', '.join(fd.OPTIONS[detector])}")
        options[key] = value
    return options


def _fit_series(data, detector, fpr, sets, window, time_column, label_column, val_data, seed, out, quiet) -> int:
    from genforge.apps.inspection import series as fd

    options = _series_options(detector, sets)
    log = None if quiet else (lambda msg: print(f"  {msg}", flush=True))
    det = fd.fit_spec(detector, data, window, fpr=fd.DEFAULT_FPR if fpr is None else fpr, seed=seed,
                      options=options, val_spec=val_data, time_column=time_column, label_column=label_column,
                      log=log)
    fd.save_series(det, out)
    c, w = det.shape
    where = f" of {val_data}" if val_data else ""
    print(f"genforge: fit {detector} on {det.meta['train_windows']} normal windows of {c} channels x {w} "
          f"sample(s) of {data}; threshold {det.threshold:.6g} alarms on {100 * det.meta['val_fpr']:.1f}% of "
          f"{det.meta['val_windows']} normal validation windows{where} (target {100 * det.meta['target_fpr']:g}%); "
          f"wrote {out}")
    return 0


def _names(normal) -> list[str]:
    return [normal.class_names[c] if normal.class_names else str(c) for c in normal.normal_classes]


def _heatmaps(value: str) -> int | None:
    """--heatmaps: a count (0 or more), or "all" (None)."""
    text = str(value).strip().lower()
    if text == "all":
        return None
    if not text.isdigit():
        raise GenforgeError(f"--heatmaps {value!r}: give a number of images (0 or more) or 'all'")
    return int(text)


@inspect.command("score", context_settings=CONTEXT)
@click.argument("detector", metavar="DET")
@click.argument("data", metavar="DATA")
@click.option("--split", type=click.Choice(["test", "val", "train", "all"]), default="test", show_default=True,
              help="which split of DATA to score")
@click.option("--resize", is_flag=True, help="resize images of another size to the detector's")
@click.option("--heatmaps", "heatmaps", default="32", show_default=True, metavar="K|all",
              callback=lambda ctx, param, value: _heatmaps(value),
              help="heat maps of the K highest scores (and of the cases the report shows); all: every image")
@click.option("--no-heatmaps", is_flag=True, help="write scores only (as --heatmaps 0)")
@click.option("--onset", type=int, help="series log: the sample where a known fault starts (for the delay)")
@out_option("results directory", metavar="RESULTS")
@device_option()
def score(detector: str, data: str, split: str, resize: bool, heatmaps: int | None, no_heatmaps: bool,
          onset: int | None, out: str, device: str) -> int:
    """Score images with a fitted detector: genforge inspect score DET DATA --out RESULTS.

    Writes RESULTS/scores.csv (score and normal/anomaly label per image), RESULTS/summary.json and residual
    heat maps (RESULTS/heatmaps/NNNNN.png, NNNNN the image's index: the image beside where it differs from
    normal) for the --heatmaps K highest scores, and when the truth is known for the false alarms and
    missed anomalies the report shows; --heatmaps all writes one per image. --split
    picks test (default), val, train or all (every image of the source in file order; duplicates kept).
    When DATA has labels and the detector was fit on some of its classes, the images of the other classes
    count as true anomalies: AUROC, F1 and the confusion counts are printed and saved.

    A series detector scores runs: every test run of tep: (the fault introduced at the protocol's onset), or a
    whole series-csv / series-npz log (--onset: where a known fault starts). Writes RESULTS/summary.json
    (per run: alarms, detection delay, detection and false-alarm rates, the sensors the alarms point at; per
    fault: the same averaged), RESULTS/runs.csv and RESULTS/runs.npz (score and alarm per window position).
    """
    from genforge.apps import inspection
    from genforge.apps.inspection import series as fd

    if fd.is_series_detector(detector):
        return _score_series(detector, data, onset, out)
    from genforge.apps.inspection.report import write_results
    from genforge.data import load_splits

    det = inspection.load(detector, device=device)
    _, h, _ = det.image_shape
    if split == "all":
        splits = load_splits(data, image_size=h, val_fraction=0.0, test_fraction=0.0, dedup=False)
        parts = [splits.train] + ([splits.test] if len(splits.test) else [])
    else:
        fit_data = det.meta.get("data") or {}
        splits = load_splits(data, image_size=h, seed=fit_data.get("split_seed", 0))
        parts = [getattr(splits, split)]
    resized = [n for n in splits.report.notes if n.startswith("resized from")]
    if resized and not resize:
        raise GenforgeError(f"{data}: images are not {h}x{h} like those the detector was fit on "
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
    about = {"detector": str(Path(detector)), "data": data, "split": split}
    summary = write_results(out, det, scored, x, classes=y, class_names=splits.class_names, truth=truth,
                            heatmaps=0 if no_heatmaps else heatmaps, about=about)
    line = f"genforge: {summary['flagged']} of {summary['n']} images flagged as anomalies"
    if "auroc" in summary:
        line += f"; AUROC {summary['auroc']:.4f}, F1 {summary['f1']:.4f} at the threshold"
    print(f"{line}; wrote {out}")
    return 0


def _score_series(detector: str, data: str, onset: int | None, out: str) -> int:
    from genforge.apps.inspection import series as fd
    from genforge.apps.inspection.series_report import write_series_results

    det = fd.load_series_detector(detector)
    if not fd.is_series_spec(data):
        raise GenforgeError(f"{detector} is a series detector; {data!r} is not a series source (tep:, series-csv:, "
                            "series-npz:)")
    runs, about = fd.score_spec(det, data, onset=onset)
    summary = write_series_results(out, det, runs, {"detector": str(Path(detector)), **about})
    for fault, row in summary["faults"].items():
        delay = "never" if row["median_delay"] is None else f"{row['median_delay']:g} samples"
        rate = "" if row["detection_rate"] is None else f", detection rate {row['detection_rate']:.3f}"
        far = "" if row["false_alarm_rate"] is None else f", false alarms {row['false_alarm_rate']:.3f}"
        print(f"  {fault}: {row['detected']} of {row['runs']} run(s) alarmed after the onset{rate}{far}; "
              f"median delay {delay}")
    print(f"genforge: scored {len(runs)} run(s) with {det.name}; wrote {out}")
    return 0


@inspect.command("report", context_settings=CONTEXT)
@click.argument("results", metavar="RESULTS")
@out_option("HTML file (default RESULTS/report.html)", required=False, metavar="FILE.html")
def report(results: str, out: str | None) -> int:
    """Write an HTML report of scored images: genforge inspect report RESULTS [--out report.html].

    One offline page: the ROC curve (when the truth is known), score histograms with the threshold, the
    images with the highest scores, the false alarms and the missed anomalies, each beside its heat map.
    """
    from genforge.apps.inspection.report import write_report
    from genforge.apps.inspection.series_report import is_series_results, write_series_report

    path = write_series_report(results, out) if is_series_results(results) else write_report(results, out)
    print(f"genforge: wrote {path}")
    return 0
