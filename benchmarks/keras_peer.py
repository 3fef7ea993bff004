"""The reference design's MLP GAN in TF/Keras against genforge's ``mnist5k-gan-mlp``, measured in one script.

    python benchmarks/keras_peer.py [--threads 2] [--windows 5] [--venv DIR] [--no-write]

Issue 20 asks genforge's MLP GAN to train at least 1.5x the images/s of the same network in TF/Keras, fp32,
on the same machine in the same run. TensorFlow lives in the benchmark's own virtual environment (created at
the first run: ``pip install tensorflow-cpu``), never in genforge's.

The same network on both sides: G z (100) -> 128 -> 256 -> 512 -> 1024 -> 784 tanh, BatchNorm (Keras momentum
0.8) after the three wider layers, LeakyReLU 0.2; D 784 -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU 0.2; batch
128, Adam 2e-4 (0.5, 0.999), the non-saturating loss, fp32, the same 5,000 digits in [-1, 1] and the same
thread count. The Keras loop (``keras_peer_tf.py``, run by that environment's python) is TensorFlow's DCGAN
tutorial's step: one compiled graph (``tf.function``) with two gradient tapes, G run once and both losses
against the same D, the fastest idiomatic Keras (a little less work per step than genforge's, which scores the
fakes again against the just-updated D). The reference
design's own loop (Keras-GAN's ``train_on_batch`` with ``D.trainable = False`` in a combined model) is not
timed: Keras 3 reads ``trainable`` when it trains, not when it compiles, so that loop would not train D at all.

A third row runs the Keras loop's step in plain PyTorch (written here on genforge's own ``MLPGenerator`` and
``MLPDiscriminator``, fused Adam), so the table separates what genforge's loop costs from what the frameworks'
kernels give. genforge's figure is the throughput
benchmark's: the real training loop (``genforge.training.train``), median images/s over windows after a
warm-up window (``throughput.measure``). Keras' and plain PyTorch's are the median over the same number of
windows of about the same length, after 5 warm-up steps and a sizing window (tracing, the first kernels).
Writes its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, section_marks, write_section  # noqa: E402
from benchmarks.keras_peer_tf import timed  # noqa: E402
from benchmarks.machine import describe, mm_seconds, print_machine  # noqa: E402
from benchmarks.throughput import measure  # noqa: E402
from genforge.io import user_dir  # noqa: E402

RECIPE = ROOT / "genforge/recipes/mnist5k-gan-mlp.yaml"
WINDOW_SECONDS = 1.5

def plain_torch(x: np.ndarray, batch: int, windows: int, threads: int) -> dict:
    """The Keras loop's step written in plain PyTorch on genforge's own MLP G and D (G once, both losses against
    the same D, fused Adam), timed as the Keras one is: what the framework's kernels give without genforge's loop
    around them."""
    from torch.nn.functional import binary_cross_entropy_with_logits as bce

    from genforge.models.networks import MLPDiscriminator, MLPGenerator

    torch.set_num_threads(threads)  # genforge's loop set the same count (set_threads); stated here, not assumed
    torch.manual_seed(0)
    g, d = MLPGenerator((1, 28, 28), z_dim=100), MLPDiscriminator((1, 28, 28))
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    data, at = torch.from_numpy(x), 0  # (N, 784); D flattens what it gets, so G's (b, 1, 28, 28) and these mix
    ones, zeros = torch.ones(batch), torch.zeros(batch)  # targets for D's (b,) logits

    def step():
        nonlocal at
        real = data[at:at + batch]
        at = (at + batch) % (len(data) - batch)
        fake = g(torch.randn(batch, 100))  # (b, 1, 28, 28)
        real_logits, fake_logits = d(real), d(fake)  # (b,), (b,)
        d_loss = bce(real_logits, ones) + bce(fake_logits, zeros)
        g_loss = bce(fake_logits, ones)
        for p, grad in zip(d.parameters(), torch.autograd.grad(d_loss, list(d.parameters()), retain_graph=True)):
            p.grad = grad
        for p, grad in zip(g.parameters(), torch.autograd.grad(g_loss, list(g.parameters()))):
            p.grad = grad
        opt_d.step()
        opt_g.step()

    return timed(step, batch, WINDOW_SECONDS, windows)


def layer_products(batch: int, seconds: float = 0.3) -> float:
    """fp32 GFLOP/s of the step's own matrix products timed alone: for every ``nn.Linear`` of genforge's MLP G and
    D, the forward product and the two of its backward (input and weight gradients) at the recipe's batch, each
    the best of repeated ``torch.mm`` over about ``seconds`` (``machine.mm_seconds``); all their FLOPs over the
    sum of their best times. What the arithmetic of this network allows on this machine, before any framework's
    loop around it."""
    from genforge.models.networks import MLPDiscriminator, MLPGenerator

    flops, best_total = 0.0, 0.0
    for net in (MLPGenerator((1, 28, 28), z_dim=100), MLPDiscriminator((1, 28, 28))):
        for layer in (m for m in net.modules() if isinstance(m, torch.nn.Linear)):
            n_in, n_out = layer.in_features, layer.out_features
            for m, k, n in ((batch, n_in, n_out), (batch, n_out, n_in), (n_out, batch, n_in)):
                flops += 2 * m * k * n
                best_total += mm_seconds(m, k, n, seconds)
    return flops / best_total / 1e9


def keras_python(venv: Path) -> Path:
    """The benchmark's own TensorFlow environment, created at the first run."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import tensorflow"], capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} (pip install tensorflow-cpu; once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu"], check=True)
    return python


def digits() -> tuple[np.ndarray, int]:
    """The recipe's training images, flattened to (N, 784) float32 in [-1, 1], as genforge trains on them, and its
    batch size."""
    from genforge.config import load_config
    from genforge.data import load_splits, to_tensor

    cfg = load_config(RECIPE, [])
    splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels)
    x = to_tensor(splits.train.x, "-1,1").flatten(1).numpy()  # as the loop feeds G and D (gan.VALUE_RANGE)
    return x, cfg.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--venv", type=Path, default=user_dir("cache") / "keras-venv")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default="keras",
                    help="the RESULTS.md section to write (one per kind of machine keeps each one's rows)")
    args = ap.parse_args()
    marks, suffix = section_marks(args.section, "keras")
    torch.set_num_threads(args.threads)
    facts = print_machine()
    python = keras_python(args.venv)
    x, batch = digits()
    ours = measure(RECIPE, "fp32", args.windows, (f"num_threads={args.threads}",))  # not the busy-core guess
    plain = plain_torch(x, batch, args.windows, args.threads)
    products = layer_products(batch)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits.npy"  # the Keras process reads the same digits
        np.save(data, x)
        job = {"data": str(data), "batch": batch, "threads": args.threads, "windows": args.windows,
               "seconds": WINDOW_SECONDS}
        r = subprocess.run([str(python), str(Path(__file__).with_name("keras_peer_tf.py")), json.dumps(job)],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode or line is None:
        raise SystemExit(f"the Keras run failed:\n{r.stderr[-3000:]}")
    keras = json.loads(line[len("RESULT "):])
    rows = [("genforge `mnist5k-gan-mlp` (its training loop)", ours),
            ("plain PyTorch, the Keras loop's step (a reference written here)", plain),
            ("TF/Keras, `tf.function` step (TensorFlow's DCGAN tutorial)", keras)]
    for name, row in rows:
        print(f"{name}: {row['images_per_sec']:.0f} images/s", flush=True)
    ratio = ours["images_per_sec"] / keras["images_per_sec"]
    print(f"genforge / Keras: {ratio:.2f}x (target >= 1.5x)")
    lines = [marks[0], "## The MLP GAN against TF/Keras (`benchmarks/keras_peer.py`)" + suffix, "",
             f"- machine: {describe(facts)}; {args.threads} threads for both",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `{command_line('keras_peer.py')}`",
             f"- versions: torch {torch.__version__}, TensorFlow {keras['tensorflow']} "
             f"(Keras {keras['keras_version']}) in the benchmark's own virtual environment",
             "- the same network, batch, optimizer, loss, data and threads; images/s: median of "
             f"{args.windows} windows after a warm-up window, range in brackets", "",
             f"genforge against Keras: **{ratio:.2f}x** (target >= 1.5x)", "",
             "| trainer | images/s | vs genforge |", "|---|---:|---:|"]
    for name, row in rows:
        lo, hi = row["spread"]
        lines.append(f"| {name} | {row['images_per_sec']:.0f} ({lo:.0f}-{hi:.0f}) | "
                     f"{row['images_per_sec'] / ours['images_per_sec']:.2f} |")
    mflop = ours["mflop_per_image"]  # FlopCounterMode's count of genforge's step, per image
    lines += ["", f"FLOPs per image of genforge's step: {mflop:.1f} M (torch's FlopCounterMode; the Keras step does "
              "one discriminator pass fewer); at the Keras rate that is "
              f"{keras['images_per_sec'] * mflop / 1e3:.0f} GFLOP/s against the "
              f"{facts['fp32_matmul_gflops']:.0f} GFLOP/s of the 1024 x 1024 fp32 matrix product measured at the "
              f"start, and genforge's rate is {ours['images_per_sec'] * mflop / 1e3:.0f} GFLOP/s. The step's own "
              f"matrix products (every layer's forward and backward products at batch {batch}), each timed alone "
              f"with `torch.mm`, run at {products:.0f} GFLOP/s together: the most this network's arithmetic gives "
              "here in fp32 before any loop around it.", "", marks[1]]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, marks)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


if __name__ == "__main__":
    main()
