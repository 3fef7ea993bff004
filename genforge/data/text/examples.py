"""Training examples from text: token windows for the GPT, padded sentences for the sentence VAE.

Both are int64 tensors of one fixed shape, so the training loop indexes them per batch like images:

- ``windows``: (N, context + 1), cut from the split's token stream every ``stride`` tokens; a window trains
  the GPT to predict its last ``context`` tokens from the ones before each;
- ``sentences``: (N, max_len + 2), each a line of the text as ``<bos>`` tokens ``<eos>`` then ``<pad>``;
  lines that are a speaker's name alone, empty, or longer than ``max_len`` tokens are left out.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge.data.text import load_text
from genforge.data.text.tokenizer import BOS, EOS, PAD, train_tokenizer
from genforge.errors import DataError


def windows(ids: list[int] | np.ndarray, context: int, stride: int, where: str = "the training split") -> torch.Tensor:
    """Windows (N, context + 1) int64 of ``ids`` every ``stride`` tokens (the last one ending at the end)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < context + 1:
        raise DataError(f"{where} has {len(ids)} tokens, fewer than one window of context + 1 = {context + 1}: "
                        "use more text or a smaller context")
    starts = np.arange(0, len(ids) - context, stride)
    if starts[-1] != len(ids) - context - 1:
        starts = np.append(starts, len(ids) - context - 1)
    view = np.lib.stride_tricks.sliding_window_view(ids, context + 1)   # (len - context, context + 1), no copy
    return torch.from_numpy(np.ascontiguousarray(view[starts]))


def sentence_lines(text: str) -> list[str]:
    """The lines of ``text`` a sentence VAE learns: not blank, not a ``SPEAKER:`` / ``PROMPT:`` header."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or (s.endswith(":") and s[:-1].replace(" ", "").replace("'", "").isupper()):
            continue
        out.append(s)
    return out


def sentences(text: str, tokenizer, max_len: int, where: str = "the training split") -> torch.Tensor:
    """(N, max_len + 2) int64: <bos> tokens <eos> <pad>..., one row per line of at most ``max_len`` tokens."""
    rows = []
    for line in sentence_lines(text):
        ids = tokenizer.encode(line, strict=False)
        if 0 < len(ids) <= max_len:
            rows.append([BOS, *ids, EOS])
    if not rows:
        raise DataError(f"{where} has no line of 1 to {max_len} tokens to train a sentence VAE on")
    x = torch.full((len(rows), max_len + 2), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
    return x


def text_examples(cfg) -> tuple[torch.Tensor, dict, object, list[str]]:
    """The training examples of a text config (``genforge.data.examples.LOADERS["text"]``): the data read and
    split by document, a tokenizer trained on the training split, and its windows (``text_unit: window``) or
    lines (``line``). Returns (x int64, transform, splits, notes); the transform carries the tokenizer, which
    the model file keeps beside the weights as tokenizer.json."""
    splits = load_text(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       seed=cfg.split_seed, on_bad_utf8=cfg.text_on_bad_utf8)
    train = splits.text("train")
    where = f"{cfg.data}: the training split"
    tok = train_tokenizer(cfg.text_tokenizer, train, cfg.text_vocab_size)
    context = cfg.text_context
    if cfg.text_unit == "window":
        x = windows(tok.encode(train, strict=False), context, cfg.text_stride or max(1, context // 2), where)
    else:
        x = sentences(train, tok, context, where)
    transform = {"kind": "text", "unit": cfg.text_unit, "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
                 "context": context, "tokenizer_json": tok.to_json()}
    notes = [*splits.notes, f"{tok.kind} tokenizer of {tok.vocab_size} tokens trained on the training split; "
             f"{len(x)} training {'windows' if cfg.text_unit == 'window' else 'lines'} of shape {tuple(x.shape[1:])}"]
    return x, transform, splits, notes
