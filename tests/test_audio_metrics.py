"""The audio evaluator on known cases: it tells tones from noise, its file is hashed and checked, and the
scores move the way a listener would expect (real against real is close; one class repeated has low IS)."""

from __future__ import annotations

import numpy as np
import pytest

from genforge.data.audio import AudioSet, AudioSplits
from genforge.errors import GenforgeError, ModelFileError
from genforge.metrics.audio import (AudioRecipe, format_audio_table, load_audio_evaluator, real_rows,
                                    save_audio_evaluator, score_audio, train_audio_evaluator)

RATE, LENGTH = 16000, 4000
CLASSES = ["low", "high", "noise"]


def clips(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Quarter-second clips: a 250-500 Hz tone, a 2-3 kHz tone, or a burst of noise, at random levels and places."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    t = np.arange(LENGTH) / RATE
    for k in range(3):
        for _ in range(n_per_class):
            if k < 2:
                f = rng.uniform(250, 500) if k == 0 else rng.uniform(2000, 3000)
                x = np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
            else:
                x = rng.standard_normal(LENGTH) * 0.5
            env = np.zeros(LENGTH)
            start = int(rng.integers(0, LENGTH // 2))
            env[start:start + LENGTH // 2] = 1.0
            xs.append((x * env * rng.uniform(0.2, 0.9)).astype(np.float32))
            ys.append(k)
    return np.stack(xs), np.array(ys)


@pytest.fixture(scope="module")
def evaluator():
    (xa, ya), (xb, yb), (xc, yc) = clips(40, 0), clips(10, 1), clips(10, 2)
    splits = AudioSplits("audio:/tones", AudioSet(xa, ya, []), AudioSet(xb, yb, []), AudioSet(xc, yc, []),
                         CLASSES, RATE, LENGTH)
    return train_audio_evaluator("audio:/tones", AudioRecipe(steps=80, batch_size=32), splits=splits,
                                 progress=False), splits


def test_the_evaluator_hears_tones_and_noise_apart(evaluator):
    ev, splits = evaluator
    assert ev.meta["test_accuracy"] >= 0.9
    x, y = clips(10, 7)                           # clips it never saw
    assert (ev.classify(x) == y).mean() >= 0.9


def test_scores_on_known_cases(evaluator):
    ev, splits = evaluator
    real = score_audio(ev, splits.test.x, splits.test.y, reference=splits.val.x)
    low_only = splits.test.x[splits.test.y == 0]
    collapsed = score_audio(ev, np.repeat(low_only, 3, axis=0), reference=splits.val.x)
    assert real["is"] > 2.0 and collapsed["is"] < 1.5           # three balanced classes vs one
    assert real["fd"] < collapsed["fd"]                          # one class is far from all three
    assert real["class_match"] >= 0.9
    wrong = score_audio(ev, splits.test.x, (splits.test.y + 1) % 3)
    assert wrong["class_match"] <= 0.1                           # asked for another class: no match
    table = format_audio_table([("samples", collapsed), *real_rows(ev, splits)], ev)
    assert "real: train split vs test" in table and ev.sha256[:12] in table


def test_the_evaluator_file_round_trips_and_refuses_alteration(evaluator, tmp_path):
    ev, splits = evaluator
    path = save_audio_evaluator(ev, tmp_path)
    again = load_audio_evaluator(path)
    assert again.sha256 == ev.sha256
    np.testing.assert_allclose(again.features_and_probs(splits.test.x)[0], ev.features_and_probs(splits.test.x)[0],
                               atol=1e-6)
    weights = path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        load_audio_evaluator(path)


def test_bad_waveforms_are_named(evaluator):
    ev, _ = evaluator
    with pytest.raises(GenforgeError, match="samples: waveforms of 100 samples; the evaluator takes 4000"):
        ev.features_and_probs(np.zeros((2, 100), np.float32))
    x = np.zeros((2, LENGTH), np.float32)
    x[1, 5] = np.nan
    with pytest.raises(GenforgeError, match="1 waveform\\(s\\) hold NaN"):
        ev.features_and_probs(x)
    with pytest.raises(GenforgeError, match="must be floats"):
        ev.features_and_probs(np.zeros((2, LENGTH), np.int16))
