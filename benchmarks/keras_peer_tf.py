"""The Keras side of ``benchmarks/keras_peer.py``: TensorFlow's DCGAN tutorial step on the reference MLP GAN.

    <keras-venv>/bin/python benchmarks/keras_peer_tf.py '{"data": "digits.npy", "batch": 128, "threads": 2,
                                                         "windows": 5, "seconds": 1.5}'

Run by the benchmark's own TensorFlow environment, never genforge's; prints one ``RESULT {json}`` line. Only
:func:`main` imports TensorFlow and numpy, so keras_peer.py imports :func:`timed` from here without them and
times its plain PyTorch step exactly as this times Keras'.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Callable


def timed(step: Callable[[], object], batch: int, seconds: float, windows: int) -> dict:
    """Images/s per window of about ``seconds``: 5 warm-up steps (tracing, the first kernels), a sizing window of
    ``seconds`` that counts the steps k it holds, then ``windows`` windows of k steps each.
    {"images_per_sec": median, "spread": [min, max], "steps": k}."""
    for _ in range(5):
        step()
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        k += 1
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        rates.append(k * batch / (time.perf_counter() - t0))
    return {"images_per_sec": statistics.median(rates), "spread": [min(rates), max(rates)], "steps": k}


def main() -> None:
    job = json.loads(sys.argv[1])
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(job["threads"])
    tf.keras.utils.set_random_seed(0)
    keras, L = tf.keras, tf.keras.layers
    x = np.load(job["data"])  # (N, 784) float32 in [-1, 1]
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

    it = batches()
    out = {"tensorflow": tf.__version__, "keras_version": getattr(keras, "__version__", "")}
    out.update(timed(lambda: compiled_step(tf.constant(next(it))), B, job["seconds"], job["windows"]))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
