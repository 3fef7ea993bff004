"""Anomaly detection protocols: every detector, every class, in one run.

    flock /tmp/genforge-cpu.lock python3 benchmarks/inspection.py [--datasets fashion-mnist mnist5k]
        [--protocols one-class one-class-out] [--max-train 2000] [--max-test 2000] [--no-write]

one-class: each class in turn is normal (fit on its training images), the other nine are the anomalies.
one-class-out (GANomaly's MNIST protocol): each class in turn is the anomaly, the other nine are normal.
For every (data set, protocol, class) each detector is fitted on the same normal training images, its
threshold set on the same normal validation images (5% target false-positive rate), and it scores the
same test images: image AUROC, and F1 of the thresholded decisions. The VAE and GANomaly rows after a
colon ("vae:elbo") are the other scores of the same trained network, at no extra training.

To fit the CPU budget the sets are subsampled (seeded): at most --max-train normal training images, at
most --max-val normal validation images, at most --max-test test images (one sample per data set, shared
by every class and detector). Prints the tables and writes them into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, write_section  # noqa: E402
from benchmarks.machine import print_machine  # noqa: E402
from genforge.apps import inspection  # noqa: E402
from genforge.data import load_splits  # noqa: E402

MARK_START, MARK_END = "<!-- inspection:start -->", "<!-- inspection:end -->"
GENERATIVE = ("vae", "ganomaly")
BASELINES = ("pca", "knn")


def _option(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=INT, got {text!r}")
    return key, int(value)


def run_case(splits, spec: str, protocol: str, c: int, args, x_test, y_test) -> dict[str, dict]:
    """Fit every detector for one class of one protocol; {row name: {auroc, f1, ...}}."""
    if protocol == "one-class":
        normal = inspection.load_normal(spec, [c], splits=splits, max_train=args.max_train, seed=args.seed)
        truth = y_test != c
    else:
        normal = inspection.load_normal(spec, anomaly_classes=[c], splits=splits, max_train=args.max_train,
                                        seed=args.seed)
        truth = y_test == c
    val = normal.val
    if len(val) > args.max_val:
        val = val[np.sort(np.random.default_rng(args.seed).permutation(len(val))[:args.max_val])]
    x = inspection.as_tensor(x_test)
    rows = {}
    for name in args.detectors:
        options = {"vae": {"steps": args.vae_steps, **dict(args.vae_option)},
                   "ganomaly": {"steps": args.gan_steps, "base_channels": 16}}.get(name, {})
        t0 = time.perf_counter()
        det = inspection.fit(name, normal.train, val, fpr=args.fpr, seed=args.seed, options=options)
        scored = det.score(x_test)
        seconds = time.perf_counter() - t0
        counts = inspection.detection_counts(scored.anomaly, truth)
        rows[name] = {"auroc": inspection.auroc(scored.score, truth), "f1": counts["f1"],
                      "test_fpr": counts["fpr"], "val_fpr": det.meta["val_fpr"], "seconds": seconds}
        if name in GENERATIVE:  # the other scores of the same network
            comps, _ = det.method.components(x)
            for kind, values in comps.items():
                if kind == det.method.score_kind:
                    continue
                val_scores = det.method.components(inspection.as_tensor(val))[0][kind]
                threshold = inspection.choose_threshold(val_scores, args.fpr)
                counts = inspection.detection_counts(values > threshold, truth)
                rows[f"{name}:{kind}"] = {"auroc": inspection.auroc(values, truth), "f1": counts["f1"],
                                          "test_fpr": counts["fpr"], "seconds": 0.0}
    return rows


def table(results: dict, classes: list[str]) -> str:
    """Markdown: one row per detector, AUROC per class, mean AUROC, mean F1, mean test FPR, fit+score s."""
    names = list(next(iter(results.values())))
    head = "| detector | " + " | ".join(classes) + " | **mean AUROC** | mean F1 | test FPR | s/class |"
    lines = [head, "|" + "---|" * (len(classes) + 5)]
    best = max(names, key=lambda n: np.mean([results[c][n]["auroc"] for c in results]))
    for n in names:
        aurocs = [results[c][n]["auroc"] for c in results]
        mean = f"{np.mean(aurocs):.3f}"
        lines.append(f"| {n} | " + " | ".join(f"{a:.3f}" for a in aurocs)
                     + f" | {'**' + mean + '**' if n == best else mean}"
                     + f" | {np.mean([results[c][n]['f1'] for c in results]):.3f}"
                     + f" | {np.mean([results[c][n]['test_fpr'] for c in results]):.3f}"
                     + f" | {np.mean([results[c][n]['seconds'] for c in results]):.1f} |")
    return "\n".join(lines)


def verdict(results: dict) -> str:
    names = list(next(iter(results.values())))
    mean = {n: float(np.mean([results[c][n]["auroc"] for c in results])) for n in names}
    gen = max((n for n in names if n.split(":")[0] in GENERATIVE), key=mean.get, default=None)
    default_gen = max((n for n in names if n in GENERATIVE), key=mean.get, default=None)
    base = max((n for n in names if n in BASELINES), key=mean.get, default=None)
    if gen is None or base is None:
        return ""
    beats = "beats" if mean[gen] > mean[base] else "does NOT beat"
    line = (f"Best genforge detector: `{gen}` {mean[gen]:.3f}, {beats} the best baseline `{base}` "
            f"{mean[base]:.3f} on mean AUROC")
    if default_gen != gen:
        line += f" (best with its default score: `{default_gen}` {mean[default_gen]:.3f})"
    return line + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist5k"])
    parser.add_argument("--protocols", nargs="+", default=["one-class", "one-class-out"],
                        choices=("one-class", "one-class-out"))
    parser.add_argument("--detectors", nargs="+", default=["vae", "ganomaly", "pca", "knn"])
    parser.add_argument("--classes", type=int, nargs="+", help="class indices (default: all)")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-val", type=int, default=1000)
    parser.add_argument("--max-test", type=int, default=2000)
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-option", type=_option, action="append", default=[], metavar="KEY=INT",
                        help="another VAE detector option, e.g. z_dim=32 or bank_size=5000 (repeatable)")
    parser.add_argument("--gan-steps", type=int, default=300)
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write every number to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="do not touch benchmarks/RESULTS.md")
    args = parser.parse_args()
    print_machine()  # fp32 matmul peak and CPU flags first, so the figures can be read against them
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    all_results, sections = {}, []
    for spec in args.datasets:
        splits = load_splits(spec, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.permutation(len(splits.test))[:args.max_test])
        x_test, y_test = splits.test.x[pick], splits.test.y[pick]
        classes = args.classes if args.classes is not None else list(range(splits.num_classes))
        for protocol in args.protocols:
            results = {}
            for c in classes:
                t0 = time.perf_counter()
                results[c] = run_case(splits, spec, protocol, c, args, x_test, y_test)
                print(f"{spec} {protocol} class {c}: "
                      + ", ".join(f"{n} {r['auroc']:.3f}" for n, r in results[c].items())
                      + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            names = [splits.class_names[c] for c in classes]
            text = table(results, names)
            print(f"\n{spec}, {protocol}\n{text}\n{verdict(results)}\n", flush=True)
            all_results[f"{spec}/{protocol}"] = {splits.class_names[c]: r for c, r in results.items()}
            sections.append(f"### {spec}, {protocol}\n\n"
                            f"{len(splits.test)} test images, {len(x_test)} scored (seeded sample); normal "
                            "training images per class: "
                            f"{'at most' if protocol == 'one-class-out' else 'all, at most'} {args.max_train}.\n\n"
                            f"{text}\n\n{verdict(results)}")
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(all_results, indent=1))
    if args.no_write:
        return
    command = "flock /tmp/genforge-cpu.lock " + command_line("inspection.py")
    section = f"""{MARK_START}
## Inspection (anomaly detection)

Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads.
Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: `{command.strip()}` ({total / 60:.1f} min).

Image AUROC per class (the class named is the normal one in one-class, the anomaly in one-class-out), its
mean, and the mean F1 and test false-positive rate at the threshold chosen on normal validation images for
a {100 * args.fpr:g}% false-positive rate. Subsampled to fit the CPU budget (seeded): at most
{args.max_train} normal training images and {args.max_val} normal validation images per class, at most
{args.max_test} test images per data set; VAE {args.vae_steps} steps, GANomaly {args.gan_steps} steps
(base width 16), batch 64. `vae` is the default VAE score (combined: log residual + latent k-NN distance, each standardized on
held-out normal training images); `vae:residual`, `vae:elbo`, `vae:latent` and `ganomaly:residual` are the other scores
of the same trained networks. s/class: fit + scoring seconds of the row's detector.

""" + "\n\n".join(sections) + f"\n{MARK_END}\n"
    write_section(ROOT / "benchmarks" / "RESULTS.md", section)
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
