"""Scoring text models: held-out cross-entropy, sample diversity, copying of training text, and an n-gram
reference.

- ``heldout_nll``: the model's cross-entropy on held-out text in nats per token and per character, and bits
  per character (the per-character figures compare models with different tokenizers);
- ``distinct_n``: distinct-1 and distinct-2 of samples (Li et al. 2016): unique word n-grams over all word
  n-grams; low values mean repetitive, generic text;
- ``ShingleIndex.longest_shared``: the longest substring a sample shares with the training text, the text
  form of the memorization check; ``COPY_FLAG`` characters or more is flagged as copied;
- ``KneserNey``: an interpolated Kneser-Ney character n-gram model (5-gram by default; Chen and Goodman
  1999), the in-house reference row: what counting alone gets on the same split.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import torch

from genforge.data.text.examples import sentences
from genforge.models.lm import lm_loss
from genforge.models.sentence_vae import COLLAPSED_KL, elbo_terms

COPY_FLAG = 50  # characters: a sample sharing this long a substring with the training text is flagged


# ------------------------------------------------------------------------------------------ held-out NLL
@torch.inference_mode()
def heldout_nll(net, tokenizer, text: str, batch_size: int = 16, max_tokens: int = 0) -> dict:
    """Cross-entropy of a GPT on ``text``, cut into windows of the context: every token but the first is
    predicted once, from the tokens before it in its window (``lm_loss``, the training loss, so the two cannot
    disagree). ``max_tokens`` (0: all) evaluates a prefix."""
    ids = tokenizer.encode(text, strict=False)
    if max_tokens:
        ids = ids[:max_tokens + 1]
        text = tokenizer.decode(ids) if tokenizer.kind == "bpe" else text[:len(ids)]
    if len(ids) < 2:
        raise ValueError("held-out text of fewer than 2 tokens")
    unknown = sum(1 for i in ids if i == 3)
    ctx = net.context
    device = next(net.parameters()).device
    starts = list(range(0, len(ids) - 1, ctx))
    total, count = 0.0, 0
    for b in range(0, len(starts), batch_size):
        chunk = [ids[s:s + ctx + 1] for s in starts[b:b + batch_size]]
        width = max(len(c) for c in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.int64)
        mask = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for r, c in enumerate(chunk):
            x[r, :len(c)] = torch.tensor(c)
            mask[r, :len(c) - 1] = True
        x, mask = x.to(device), mask.to(device)
        nll = lm_loss(net, x, reduction="none")  # (b, width - 1): the training loss, token by token
        total += float(nll[mask].sum())
        count += int(mask.sum())
    chars = len(text) - len(tokenizer.decode(ids[:1]))
    return {"nats_per_token": total / count, "nats_per_char": total / chars,
            "bits_per_char": total / chars / math.log(2), "tokens": count, "chars": chars,
            "unknown_tokens": unknown}


# ------------------------------------------------------------------------------------------ diversity
def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams over all word n-grams of ``texts`` (0 when there are none)."""
    grams = Counter()
    for t in texts:
        words = t.split()
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# ------------------------------------------------------------------------------------------ copying
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(1000003)  # odd, so it has an inverse modulo 2**64


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def _shingle_hashes(codes: np.ndarray, k: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every k-character window of ``codes``: (len - k + 1,) uint64."""
    n = len(codes)
    if n < k:
        return np.zeros(0, dtype=np.uint64)
    inv = np.uint64(pow(int(_BASE), -1, 2**64))
    with np.errstate(over="ignore"):
        inv_pow = np.cumprod(np.full(n, inv, dtype=np.uint64)) * np.uint64(pow(int(_BASE), 1, 2**64))  # B^-j
        base_pow = np.cumprod(np.full(n, _BASE, dtype=np.uint64)) * inv                               # B^j
        q = np.concatenate([[np.uint64(0)], np.cumsum(codes * inv_pow, dtype=np.uint64)])
        # sum_{j=i}^{i+k-1} c_j B^-j, times B^i: the same number for the same k characters wherever they are
        return (q[k:] - q[:-k]) * base_pow[:n - k + 1]


class ShingleIndex:
    """The training text with a sorted index of its k-character shingles, for :meth:`longest_shared`.

    The longest common substring of a sample and 4 million characters of training text, found exactly: a
    run of shared k-shingles starting at position i bounds the match from i from above, and only positions
    whose bound beats the best match so far are checked with a substring search of the training text.
    """

    def __init__(self, train_text: str, k: int = 8):
        self.text, self.k = train_text, k
        self.hashes = np.sort(_shingle_hashes(_codes(train_text), k))

    def longest_shared(self, sample: str) -> tuple[int, str]:
        """The length of the longest substring of ``sample`` found in the training text, and the substring."""
        k, text = self.k, self.text
        best, where = 0, 0
        h = _shingle_hashes(_codes(sample), k)
        found = np.zeros(len(h), dtype=bool)
        if len(h) and len(self.hashes):
            pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
            found = self.hashes[pos] == h
        run = np.zeros(len(h) + 1, dtype=np.int64)  # consecutive shared shingles starting at i
        for i in range(len(h) - 1, -1, -1):
            run[i] = run[i + 1] + 1 if found[i] else 0
        for i in range(len(sample)):
            bound = run[i] + k - 1 if i < len(h) and run[i] else min(k - 1, len(sample) - i)
            if bound <= best:
                continue
            while i + best < len(sample) and best < bound and sample[i:i + best + 1] in text:
                best, where = best + 1, i
        return best, sample[where:where + best]


# ------------------------------------------------------------------------------------------ n-gram reference
class KneserNey:
    """Interpolated Kneser-Ney character n-gram model (Chen and Goodman 1999, eq. 17 with one discount per
    order, D = n1 / (n1 + 2 n2)). The highest order uses counts; lower orders use continuation counts (how
    many different characters precede an n-gram), and the unigram level interpolates with a uniform
    distribution over the training characters plus one unknown symbol, so no held-out character gets
    probability 0."""

    def __init__(self, text: str, order: int = 5):
        if order < 1 or len(text) < order:
            raise ValueError(f"a {order}-gram model needs at least {order} characters of text")
        self.order = order
        self.vocab = sorted(set(text))
        self.counts: list[dict[str, int]] = [dict() for _ in range(order + 1)]  # counts[n]: n-gram -> count
        top = Counter(text[i:i + order] for i in range(len(text) - order + 1))
        self.counts[order] = dict(top)
        grams = top
        for n in range(order - 1, 0, -1):  # continuation counts from the distinct (n+1)-grams
            cont = Counter()
            for g in grams:
                cont[g[1:]] += 1
            # the text's first n-gram has no left context: count it once so it is not lost
            cont[text[:n]] += 0 if text[:n] in cont else 1
            self.counts[n] = dict(cont)
            grams = cont
        # per order: each context's total count, number of distinct followers, and the discount
        self.totals: list[dict[str, int]] = [dict() for _ in range(order + 1)]
        self.followers: list[dict[str, int]] = [dict() for _ in range(order + 1)]
        self.discount = [0.0] * (order + 1)
        for n in range(1, order + 1):
            tot, fol = defaultdict(int), defaultdict(int)
            n1 = n2 = 0
            for g, c in self.counts[n].items():
                tot[g[:-1]] += c
                fol[g[:-1]] += 1
                n1 += c == 1
                n2 += c == 2
            self.totals[n], self.followers[n] = dict(tot), dict(fol)
            self.discount[n] = n1 / (n1 + 2 * n2) if n1 + n2 else 0.75

    def prob(self, history: str, ch: str) -> float:
        """P(ch | the last order - 1 characters of history)."""
        p = 1.0 / (len(self.vocab) + 1)  # uniform, with one slot for a character never seen in training
        for n in range(1, self.order + 1):
            h = history[len(history) - (n - 1):] if n > 1 else ""
            if n > 1 and len(history) < n - 1:
                break
            total = self.totals[n].get(h)
            if not total:
                break  # unseen context: the lower order's estimate stands
            d = self.discount[n]
            c = self.counts[n].get(h + ch, 0)
            p = max(c - d, 0.0) / total + d * self.followers[n][h] / total * p
        return p

    def nats_per_char(self, text: str) -> float:
        """Cross-entropy on ``text`` in nats per character (each character predicted from the ones before it)."""
        total = 0.0
        for i, ch in enumerate(text):
            total -= math.log(self.prob(text[max(0, i - self.order + 1):i], ch))
        return total / len(text)


# ------------------------------------------------------------------------------------------ genforge eval
@torch.inference_mode()
def sentence_vae_heldout(nets, tokenizer, text: str, max_len: int, batch_size: int = 256,
                         seed: int = 0) -> dict:
    """The sentence VAE on held-out lines: the negative ELBO (one posterior sample per sentence) in nats per
    sentence and per character (an upper bound on the true NLL), the KL term, and whether it collapsed."""
    x = sentences(text, tokenizer, max_len, "the held-out split")
    device = next(nets["decoder"].parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rec = kl = chars = 0.0
    for b in range(0, len(x), batch_size):
        part = x[b:b + batch_size].to(device)
        terms = elbo_terms(nets, part, gen)
        rec += float(terms["rec"].sum())
        kl += float(terms["kl_dims"].sum())
        chars += sum(len(tokenizer.decode(row.tolist())) + 1 for row in part.cpu())  # + the line's end (<eos>)
    n = len(x)
    return {"neg_elbo_per_sentence": (rec + kl) / n, "kl_per_sentence": kl / n,
            "nats_per_char": (rec + kl) / chars, "bits_per_char": (rec + kl) / chars / math.log(2),
            "sentences": n, "collapsed": kl / n < COLLAPSED_KL}


def sample_scores(texts: list[str], index: ShingleIndex) -> dict:
    """distinct-1/2 and the copying check of samples against the training text."""
    shared = [index.longest_shared(t) for t in texts]
    lengths = [n for n, _ in shared]
    worst = max(range(len(texts)), key=lambda i: lengths[i]) if texts else None
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "longest_shared_max": max(lengths, default=0),
            "longest_shared_median": float(np.median(lengths)) if lengths else 0.0,
            "copied": sum(n >= COPY_FLAG for n in lengths),
            "worst_copy": shared[worst][1] if worst is not None else ""}


def format_text_table(rows: list[dict]) -> str:
    """The eval table: one row per model (and the n-gram reference), the columns each row has."""
    cols = [("nats_per_token", "nats/token", "{:.3f}"), ("nats_per_char", "nats/char", "{:.3f}"),
            ("bits_per_char", "bits/char", "{:.3f}"), ("kl_per_sentence", "KL/sent", "{:.2f}"),
            ("distinct_1", "distinct-1", "{:.3f}"), ("distinct_2", "distinct-2", "{:.3f}"),
            ("longest_shared_max", "longest shared", "{:d}"), ("copied", f"copied >={COPY_FLAG}", "{:d}")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    head = "| row | " + " | ".join(h for _, h, _ in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[k]) if k in r else "" for k, _, fmt in cols]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_text(source: str, data: str | None = None, n: int = 32, seed: int = 0, device: str = "auto",
                  max_new_tokens: int = 512, max_eval_tokens: int = 0) -> dict:
    """``genforge eval`` for a text model: held-out cross-entropy on the test split (GPT: nats per token and
    per character; sentence VAE: the negative ELBO per character and its KL, a collapsed KL named as such),
    ``n`` samples of ``max_new_tokens`` at the model's defaults scored for diversity and copying, and the
    Kneser-Ney character 5-gram trained on the same training split as the reference row."""
    # late: generation imports the model registry and torch's networks; the metric functions above need neither
    from genforge.data.text import load_text
    from genforge.generation.model import load
    from genforge.generation.text import generate_text

    model = load(source, device=device)
    cfg = model.meta.get("train_config") or {}
    spec = data or model.meta["data"]
    splits = load_text(spec, val_fraction=cfg.get("val_fraction", 0.05), test_fraction=cfg.get("test_fraction", 0.05),
                       seed=cfg.get("split_seed", 0), on_bad_utf8=cfg.get("text_on_bad_utf8", "refuse"))
    part = "test" if splits.test else "val"
    held = splits.text(part)
    if not held:
        raise ValueError(f"{spec}: no held-out documents (val_fraction and test_fraction are 0)")
    train = splits.text("train")
    tok = model.output.tokenizer
    row = {"row": f"{model.name} ({model.family}, {tok.kind} tokenizer, step {model.meta.get('step')})"}
    if model.family == "lm":
        row.update(heldout_nll(model.nets["gpt"], tok, held, max_tokens=max_eval_tokens))
        sampled = generate_text(model, n, seed=seed, max_new_tokens=max_new_tokens)
    else:
        row.update(sentence_vae_heldout(model.nets, tok, held, model.output.context, seed=seed))
        sampled = generate_text(model, n, seed=seed, max_new_tokens=model.output.context)
    row.update(sample_scores(sampled.texts, ShingleIndex(train)))
    kn = KneserNey(train, order=5)
    reference = {"row": "Kneser-Ney character 5-gram (reference)", "nats_per_char": kn.nats_per_char(held)}
    reference["bits_per_char"] = reference["nats_per_char"] / math.log(2)
    notes = [f"held-out: the {part} split of {spec} ({', '.join(d.name for d in getattr(splits, part)[:6])}"
             f"{', ...' if len(getattr(splits, part)) > 6 else ''}; {len(held):,} characters)",
             f"{n} samples, seed {seed}; copied: sharing >= {COPY_FLAG} characters with the training text"]
    if row.get("collapsed"):
        notes.append(f"the posterior has collapsed: KL {row['kl_per_sentence']:.3f} nats per sentence, under "
                     "0.5: the decoder ignores z (raise kl_anneal_steps, text_word_dropout or free_bits)")
    if row.get("copied"):
        notes.append(f"{row['copied']} sample(s) copy training text; the longest: {row['worst_copy'][:120]!r}")
    return {"format": "genforge-eval-text", "format_version": 1, "model": str(model.path), "data": spec,
            "held_out": part, "n": n, "seed": seed, "rows": [row, reference], "notes": notes}


def format_text_result(result: dict) -> str:
    return format_text_table(result["rows"]) + "\n" + "".join(f"note: {n}\n" for n in result["notes"])
