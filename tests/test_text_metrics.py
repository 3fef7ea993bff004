"""Text evaluation: held-out nats per token and per character, distinct-n, the longest substring shared with
the training text (flagged at 50 characters), and the Kneser-Ney character n-gram reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from genforge.data.text.tokenizer import CharTokenizer
from genforge.metrics.text import COPY_FLAG, KneserNey, ShingleIndex, distinct_n, heldout_nll
from genforge.models.lm import lm_loss
from genforge.models.transformer import GPT

TRAIN = ("shall i compare thee to a summers day thou art more lovely and more temperate rough winds do shake "
         "the darling buds of may and summers lease hath all too short a date\n") * 3 + (
         "when in disgrace with fortune and mens eyes i all alone beweep my outcast state\n")


def brute_longest(a: str, b: str) -> int:
    best = 0
    for i in range(len(a)):
        while i + best < len(a) and a[i:i + best + 1] in b:
            best += 1
    return best


def test_longest_shared_substring_is_exact_and_flags_copies():
    index = ShingleIndex(TRAIN, k=8)
    rng = random.Random(0)
    for _ in range(30):  # random mixtures of copied and invented text
        i = rng.randrange(len(TRAIN) - 80)
        sample = "".join(rng.choice("abcdefgh ") for _ in range(rng.randrange(0, 20))) + TRAIN[i:i + rng.randrange(1, 80)]
        sample += "".join(rng.choice("xyz q") for _ in range(rng.randrange(0, 20)))
        n, shared = index.longest_shared(sample)
        assert n == brute_longest(sample, TRAIN) and shared in TRAIN and shared in sample
    copied = "zz" + TRAIN[10:10 + COPY_FLAG] + "zz"
    assert index.longest_shared(copied)[0] >= COPY_FLAG
    assert index.longest_shared("qqqq")[0] == 0 and index.longest_shared("")[0] == 0


def test_distinct_n_counts_unique_word_ngrams():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0


def test_kneser_ney_is_a_distribution_and_beats_a_unigram_model():
    kn = KneserNey(TRAIN, order=5)
    for history in ("", "s", "summe", "qqqqq", "the d"):
        total = sum(kn.prob(history, c) for c in kn.vocab) + kn.prob(history, "\u2603")  # + an unseen character
        assert total == pytest.approx(1.0, abs=1e-9)
    held = "shall i compare thee to a winters night\n"
    counts = {c: TRAIN.count(c) for c in kn.vocab}
    unigram = -sum(math.log(counts.get(c, 0.5) / len(TRAIN)) for c in held) / len(held)
    assert kn.nats_per_char(held) < 0.6 * unigram


def test_heldout_nll_matches_the_training_loss_and_converts_to_characters():
    torch.manual_seed(0)
    tok = CharTokenizer.train(TRAIN)
    net = GPT((17,), vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16).eval()
    text = TRAIN[:16 * 5 + 1]                                            # exactly five windows of 16
    out = heldout_nll(net, tok, text, batch_size=2)
    ids = torch.tensor(tok.encode(text))
    windows = torch.stack([ids[i * 16:i * 16 + 17] for i in range(5)])
    with torch.inference_mode():
        expected = float(lm_loss(net, windows))
    assert out["tokens"] == 80 and out["chars"] == 80
    assert out["nats_per_token"] == pytest.approx(expected, rel=1e-5)
    assert out["bits_per_char"] == pytest.approx(out["nats_per_char"] / math.log(2))
