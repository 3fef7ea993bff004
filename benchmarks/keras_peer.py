"""The reference design's MLP GAN in TF/Keras against genforge's ``mnist5k-gan-mlp``, measured in one script.

    python benchmarks/keras_peer.py [--threads 2] [--windows 5] [--venv DIR] [--no-write]

Issue 20 asks genforge's MLP GAN to train at least 1.5x the images/s of the same network in TF/Keras, fp32,
on the same machine in the same run. TensorFlow lives in the benchmark's own virtual environment (created at
the first run: ``pip install tensorflow-cpu``), never in genforge's.

The same network on both sides: G z (100) -> 128 -> 256 -> 512 -> 1024 -> 784 tanh, BatchNorm (Keras momentum
0.8) after the three wider layers, LeakyReLU 0.2; D 784 -> 1024 -> 512 -> 256 -> 1 logit, LeakyReLU 0.2; batch
128, Adam 2e-4 (0.5, 0.999), the non-saturating loss, fp32, the same 5,000 digits in [-1, 1] and the same
thread count. The Keras loop is TensorFlow's DCGAN tutorial's step: one compiled graph (``tf.function``)
with two gradient tapes, G run once and both losses against the same D, the fastest idiomatic Keras (a little
less work per step than genforge's, which scores the fakes again against the just-updated D). The reference
design's own loop (Keras-GAN's ``train_on_batch`` with ``D.trainable = False`` in a combined model) is not
timed: Keras 3 reads ``trainable`` when it trains, not when it compiles, so that loop would not train D at all.

A third row runs the Keras loop's step in plain PyTorch (written here, fused Adam), so the table separates
what genforge's loop costs from what the frameworks' kernels give. genforge's figure is the throughput
benchmark's: the real training loop (``genforge.training.train``), median images/s over windows after a
warm-up window (``throughput.measure``). Keras' and plain PyTorch's are the median over the same number of
windows of about the same length, after 5 warm-up steps and a sizing window (tracing, the first kernels).
Writes its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import print_machine  # noqa: E402
from benchmarks.throughput import _cpu_name, measure, write_section  # noqa: E402
from genforge.io import user_dir  # noqa: E402

MARKS = ("<!-- keras:start -->", "<!-- keras:end -->")
RECIPE = ROOT / "genforge/recipes/mnist5k-gan-mlp.yaml"
WINDOW_SECONDS = 1.5

KERAS = r'''
import json, os, statistics, sys, time
job = json.loads(sys.argv[1])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
tf.config.threading.set_inter_op_parallelism_threads(job["threads"])
tf.keras.utils.set_random_seed(0)
keras, L = tf.keras, tf.keras.layers
x = np.load(job["data"])
B, Z = job["batch"], 100

def generator():
    z = keras.Input((Z,))
    h = L.LeakyReLU(0.2)(L.Dense(128)(z))
    for w in (256, 512, 1024):
        h = L.LeakyReLU(0.2)(L.BatchNormalization(momentum=0.8)(L.Dense(w)(h)))
    return keras.Model(z, L.Dense(x.shape[1], activation="tanh")(h))

def discriminator():
    i = keras.Input((x.shape[1],))
    h = i
    for w in (1024, 512, 256):
        h = L.LeakyReLU(0.2)(L.Dense(w)(h))
    return keras.Model(i, L.Dense(1)(h))  # a logit

def batches():
    while True:
        for i in range(0, len(x) - B + 1, B):
            yield x[i:i + B]

def timed(step, seconds, windows):
    """Images/s per window of about ``seconds``, after 5 warm-up steps (tracing, the first kernels) and a
    sizing window of ``seconds``."""
    it = batches()
    for _ in range(5):
        step(next(it))
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(next(it))
        k += 1
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(k):
            step(next(it))
        rates.append(k * B / (time.perf_counter() - t0))
    return {"images_per_sec": statistics.median(rates), "spread": [min(rates), max(rates)], "steps": k}

out = {"tensorflow": tf.__version__, "keras_version": getattr(keras, "__version__", "")}

# TensorFlow's DCGAN tutorial step: one compiled graph, two tapes, G run once
G, D = generator(), discriminator()
g_opt, d_opt = keras.optimizers.Adam(2e-4, 0.5, 0.999), keras.optimizers.Adam(2e-4, 0.5, 0.999)
bce = keras.losses.BinaryCrossentropy(from_logits=True)

@tf.function
def compiled_step(real):
    z = tf.random.normal((B, Z))
    with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
        fake = G(z, training=True)
        real_logits, fake_logits = D(real, training=True), D(fake, training=True)
        g_loss = bce(tf.ones_like(fake_logits), fake_logits)
        d_loss = bce(tf.ones_like(real_logits), real_logits) + bce(tf.zeros_like(fake_logits), fake_logits)
    g_opt.apply_gradients(zip(g_tape.gradient(g_loss, G.trainable_variables), G.trainable_variables))
    d_opt.apply_gradients(zip(d_tape.gradient(d_loss, D.trainable_variables), D.trainable_variables))
    return d_loss

out["step"] = timed(lambda real: compiled_step(tf.constant(real)), job["seconds"], job["windows"])
print("RESULT " + json.dumps(out))
'''


def plain_torch(x: np.ndarray, batch: int, windows: int) -> dict:
    """The Keras loop's step written in plain PyTorch (G once, both losses against the same D, fused Adam), timed
    as the Keras one is: what the framework's kernels give without genforge's loop around them."""
    from torch import nn
    from torch.nn.functional import binary_cross_entropy_with_logits as bce

    torch.manual_seed(0)
    layers = [nn.Linear(100, 128), nn.LeakyReLU(0.2)]
    for a, b in ((128, 256), (256, 512), (512, 1024)):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b, momentum=0.2), nn.LeakyReLU(0.2)]
    g = nn.Sequential(*layers, nn.Linear(1024, x.shape[1]), nn.Tanh())
    layers = []
    for a, b in ((x.shape[1], 1024), (1024, 512), (512, 256)):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
    d = nn.Sequential(*layers, nn.Linear(256, 1))
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999), fused=True)
    data, at = torch.from_numpy(x), 0

    def step():
        nonlocal at
        real = data[at:at + batch]
        at = (at + batch) % (len(data) - batch)
        fake = g(torch.randn(batch, 100))
        real_logits, fake_logits = d(real), d(fake)
        d_loss = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
        g_loss = bce(fake_logits, torch.ones_like(fake_logits))
        for p, grad in zip(d.parameters(), torch.autograd.grad(d_loss, list(d.parameters()), retain_graph=True)):
            p.grad = grad
        for p, grad in zip(g.parameters(), torch.autograd.grad(g_loss, list(g.parameters()))):
            p.grad = grad
        opt_d.step()
        opt_g.step()

    for _ in range(5):
        step()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < WINDOW_SECONDS:
        step()
        k += 1
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        rates.append(k * batch / (time.perf_counter() - t0))
    rates.sort()
    return {"images_per_sec": rates[len(rates) // 2], "spread": [rates[0], rates[-1]], "steps": k}


def keras_python(venv: Path) -> Path:
    """The benchmark's own TensorFlow environment, created at the first run."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} (pip install tensorflow-cpu; once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu"], check=True)
    return python


def digits(path: Path) -> int:
    """The recipe's training images, flattened to (N, 784) float32 in [-1, 1], as genforge trains on them."""
    from genforge.config import load_config
    from genforge.data import load_splits, to_tensor

    cfg = load_config(RECIPE, [])
    splits = load_splits(cfg.data, image_size=cfg.image_size, channels=cfg.channels)
    x = to_tensor(splits.train.x, "-1,1").flatten(1).numpy()  # as the loop feeds G and D (gan.VALUE_RANGE)
    np.save(path, x)
    return cfg.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--venv", type=Path, default=user_dir("cache") / "keras-venv")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    facts = print_machine()
    python = keras_python(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits.npy"
        batch = digits(data)
        ours = measure(RECIPE, "fp32", args.windows, (f"num_threads={args.threads}",))  # not the busy-core guess
        torch.set_num_threads(args.threads)  # the loop sets its own count; the plain step gets the same
        print(f"genforge mnist5k-gan-mlp: {ours['images_per_sec']:.0f} images/s", flush=True)
        plain = plain_torch(np.load(data), batch, args.windows)
        print(f"plain PyTorch, the Keras step: {plain['images_per_sec']:.0f} images/s", flush=True)
        job = {"data": str(data), "batch": batch, "threads": args.threads, "windows": args.windows,
               "seconds": WINDOW_SECONDS}
        r = subprocess.run([str(python), "-c", KERAS, json.dumps(job)], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
        if r.returncode or line is None:
            raise SystemExit(f"the Keras run failed:\n{r.stderr[-3000:]}")
        keras = json.loads(line[len("RESULT "):])
    rows = [("genforge `mnist5k-gan-mlp` (its training loop)", ours),
            ("plain PyTorch, the Keras loop's step (a reference written here)", plain),
            ("TF/Keras, `tf.function` step (TensorFlow's DCGAN tutorial)", keras["step"])]
    for name, row in rows:
        print(f"{name}: {row['images_per_sec']:.0f} images/s", flush=True)
    ratio = ours["images_per_sec"] / keras["step"]["images_per_sec"]
    print(f"genforge / Keras: {ratio:.2f}x (target >= 1.5x)")
    lines = [MARKS[0], "## The MLP GAN against TF/Keras (`benchmarks/keras_peer.py`)", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores ({_cpu_name()}), fp32 matmul "
             f"{facts['fp32_matmul_gflops']:.0f} GFLOP/s measured at the start; {args.threads} threads for both",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `python benchmarks/keras_peer.py{''.join(' ' + a for a in sys.argv[1:])}`",
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
              f"{keras['step']['images_per_sec'] * mflop / 1e3:.0f} GFLOP/s against the "
              f"{facts['fp32_matmul_gflops']:.0f} GFLOP/s of the 1024 x 1024 fp32 matrix product measured at the "
              "start.", "", MARKS[1]]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(ROOT / "benchmarks/RESULTS.md", section, MARKS)
        print(f"wrote {ROOT / 'benchmarks/RESULTS.md'}")


if __name__ == "__main__":
    main()
