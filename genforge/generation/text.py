"""The text generation plan: (model, n, seed, controls) -> texts, the one path from a seed to text.

``text_plan`` checks the controls against the model's declarations (:mod:`genforge.controls`), encodes the
prompt, applies the long-prompt policy and gives every sample its own random stream; ``run`` decodes any
number of rows together (one request's samples, or the server's batch of several requests) with the family's
``Decoder``, ending each row at its token budget, a stop string or ``<eos>``, and streaming each row's text
as it grows. ``generate_text`` is the two in a row. The CLI, the Python API, the evaluator and the HTTP
service all come through here, so a seed gives the same text everywhere.

Streams: sample ``i`` of a request with seed ``s`` draws from ``torch.Generator`` seeded with the i-th child of
``numpy.random.SeedSequence(s)``: independent of the other samples and of the batch the row runs in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from genforge.controls import MAX_NEW_TOKENS_LIMIT, resolve
from genforge.data.text.tokenizer import BOS, load_tokenizer
from genforge.errors import GenforgeError, ModelFileError
from genforge.models import FAMILY_CONTROLS

MAX_TEXT_SAMPLES = 1000


@dataclass
class TextSample:
    text: str                    # the generated text (the prompt not included; a stop string cut off)
    prompt: str
    tokens: list[int]            # the generated token ids
    finish_reason: str           # "length", "stop" (a stop string), "end" (<eos>) or "cancelled"
    prompt_tokens: int           # tokens of the prompt the model saw (after any truncation)


@dataclass
class TextSamples:
    """A text model's samples: ``texts`` (``x`` as a numpy array of str objects, as the writers read samples),
    and each sample's prompt, tokens and why it ended."""
    samples: list[TextSample]
    seed: int
    controls: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. the prompt was truncated
    y = None                                         # text models are unconditional

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]

    @property
    def x(self) -> np.ndarray:
        out = np.empty(len(self.samples), dtype=object)
        out[:] = self.texts
        return out

    @property
    def z(self) -> np.ndarray:  # no latents: a text's randomness is its token draws, fixed by the seed
        return np.zeros((len(self.samples), 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class Row:
    """One sample to decode: its prompt ids, random stream, controls, and what ends it."""
    prompt_ids: list[int]
    generator: torch.Generator
    controls: dict               # temperature, top_k, top_p, repetition_penalty (sampling, row-wise)
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # called with each new piece of text (streaming)
    cancelled: threading.Event | None = None      # set by the caller (a client hung up): the row ends
    prompt: str = ""
    prompt_tokens: int = 0
    on_done: Callable[["TextSample"], None] | None = None  # called with the finished sample (the server)
    latent: torch.Tensor | None = None  # sentence VAE: decode from this z instead of one drawn from the stream


@dataclass
class TextPlan:
    rows: list[Row]
    seed: int
    controls: dict               # as given (the record written beside outputs)
    notes: list[str]


def row_generators(seed: int, n: int) -> list[torch.Generator]:
    """Sample i's random stream: the i-th child of SeedSequence(seed), so no two samples share a stream."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0] >> np.uint64(1))) for c in children]


def text_plan(model, n: int = 1, seed: int = 0, max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
              **controls) -> TextPlan:
    """Check a text request and fix everything random about it (one stream per sample)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TEXT_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_TEXT_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise GenforgeError(f"seed must be a non-negative integer, got {seed!r}")
    checked = resolve(model, controls, FAMILY_CONTROLS)
    takes = {c.name: c for c in model.controls}
    full = {name: checked.get(name, c.default) for name, c in takes.items()}
    if full["max_new_tokens"] > max_new_tokens_limit:
        raise GenforgeError(f"max_new_tokens {full['max_new_tokens']} is above the limit of {max_new_tokens_limit}")
    notes = []
    prompt = full.get("prompt", "")
    tok, context = model.output.tokenizer, model.output.context
    prompt_ids = tok.encode(prompt, strict=True) if prompt else []
    if len(prompt_ids) > context:
        if full.get("long_prompt", "truncate") == "refuse":
            raise GenforgeError(f"the prompt is {len(prompt_ids)} tokens, longer than the model's context of "
                                f"{context}; shorten it, or set long_prompt=truncate to keep its last {context}")
        notes.append(f"the prompt was {len(prompt_ids)} tokens, longer than the context of {context}: only its "
                     f"last {context} tokens were used")
        prompt_ids = prompt_ids[-context:]
    if "prompt" in takes and not prompt_ids:
        prompt_ids = model.output.start_ids  # no prompt: start where a document starts
    sampling = {k: full[k] for k in ("temperature", "top_k", "top_p")}
    sampling["repetition_penalty"] = full.get("repetition_penalty", 1.0)
    rows = [Row(list(prompt_ids), g, sampling, full["max_new_tokens"], tuple(full.get("stop", ())), prompt=prompt,
                prompt_tokens=len(prompt_ids) if prompt else 0) for g in row_generators(seed, n)]
    return TextPlan(rows, seed, checked, notes)


class _Tracker:
    """One row's generated ids and text: stop strings, and the text streamed so far (held back while it might
    still become a stop string, or while its last bytes are not yet a whole character)."""

    def __init__(self, row: Row, tokenizer):
        self.row, self.tok = row, tokenizer
        self.ids: list[int] = []
        self.text, self.sent, self.reason = "", 0, None
        self.hold = max((len(s) for s in row.stop), default=1) - 1
        # decoded incrementally: the text of ids[:done] is final (it ended on a whole character), and each step
        # decodes only the ids after it, so a long generation costs no O(n^2) decoding
        self.done, self.done_text = 0, ""

    def add(self, token: int, is_end) -> bool:
        """Append a token; returns True when the row is done."""
        if is_end(token):
            self.reason = "end"
            return True
        self.ids.append(token)
        stable = len(self.done_text)  # no stop string ends inside the text that was final before this token
        tail = self.tok.decode(self.ids[self.done:])
        self.text = self.done_text + tail
        if not tail.endswith("\ufffd"):  # a byte-level token can end inside a multi-byte character: wait for it
            self.done, self.done_text = len(self.ids), self.text
        for s in self.row.stop:
            at = self.text.find(s, max(0, stable - len(s) + 1))
            if at >= 0:
                self.text, self.reason = self.text[:at], "stop"
                return True
        if len(self.ids) >= self.row.max_new_tokens:
            self.reason = "length"
            return True
        return False

    def sample(self) -> TextSample:
        return TextSample(self.text, self.row.prompt, self.ids, self.reason, self.row.prompt_tokens)

    def stream(self, final: bool = False) -> None:
        if self.row.on_text is None:
            return
        end = len(self.text) if final else len(self.text) - self.hold
        if not final and self.text.endswith("\ufffd"):  # a multi-byte character split across tokens
            end = min(end, len(self.text.rstrip("\ufffd")))
        if end > self.sent:
            self.row.on_text(self.text[self.sent:end])
            self.sent = end


def run(model, rows: list[Row], use_cache: bool = True,
        more: Callable[[int], list[Row]] | None = None, keep: bool = True) -> list[TextSample]:
    """Decode ``rows`` together with the model's family decoder; returns one TextSample per row, in order.

    ``more(active)``: asked before every step with the number of rows decoding; the rows it returns join the
    batch (the server's continuous batching) and are returned after the others. The run ends when no row is
    left and ``more`` returns none. Each row's ``on_done`` is called with its sample as soon as it ends.
    ``keep=False``: return nothing and forget each row when it ends (a server's run lasts as long as the
    server; its rows' samples go to their ``on_done`` only)."""
    live: dict[int, Row] = {}             # the decoder's row index -> the row, while it decodes
    trackers: dict[int, _Tracker] = {}
    kept: dict[int, TextSample] = {}      # finished samples, by index (keep=True)
    decoder = model.method.Decoder(model.nets, use_cache=use_cache)
    is_end = getattr(model.method, "is_end", lambda token: False)

    def join(new: list[Row]) -> list[int]:
        given = {"z": torch.stack([r.latent for r in new])} if new and new[0].latent is not None else {}
        index = decoder.add([r.prompt_ids for r in new], [r.generator for r in new], [r.controls for r in new],
                            **given)
        for i, r in zip(index, new):
            live[i], trackers[i] = r, _Tracker(r, model.output.tokenizer)
        return index

    def end(i: int) -> None:
        decoder.finish(i)
        row, sample = live.pop(i), trackers.pop(i).sample()
        if keep:
            kept[i] = sample
        if row.on_done is not None:
            row.on_done(sample)

    join(list(rows))
    while True:
        if more is not None:
            join(more(decoder.active))
        for i in list(decoder.rows):  # a hung-up client's row ends before its next token is computed
            if live[i].cancelled is not None and live[i].cancelled.is_set():
                trackers[i].reason = "cancelled"
                end(i)
        if not decoder.active:
            break  # (a server's more() blocks while nothing decodes, until a request arrives)
        tokens = decoder.step()
        for i, token in zip(list(decoder.rows), tokens):
            done = trackers[i].add(token, is_end)
            trackers[i].stream(final=done)
            if done:
                end(i)
    return [kept[i] for i in sorted(kept)]


def generate_text(model, n: int = 1, seed: int = 0, use_cache: bool = True, on_text=None,
                  **controls) -> TextSamples:
    """Generate ``n`` texts from a loaded text model, reproducibly from ``seed``.

    controls: those the model declares (``model.controls``): prompt, max_new_tokens, temperature, top_k,
    top_p, repetition_penalty, stop (a string or a list), long_prompt ("truncate" or "refuse").
    on_text: called as ``on_text(i, piece)`` with each new piece of sample i's text (streaming).
    """
    p = text_plan(model, n, seed, **controls)
    if on_text is not None:
        for i, row in enumerate(p.rows):
            row.on_text = (lambda i: lambda piece: on_text(i, piece))(i)
    return TextSamples(run(model, p.rows, use_cache), seed, p.controls, p.notes)


# ------------------------------------------------------------------------------------------ the modality hooks
class TextOutput:
    """A text model's tokenizer and context (``OUTPUTS["text"]``, built once per loaded model): the tokenizer
    comes from config.json's transform (read from tokenizer.json, its SHA-256 checked), and ``load_tokenizer``
    refuses it unless its vocabulary is the network's. Called on token ids (b, t), it gives their text."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        transform = meta.get("transform")
        if not isinstance(transform, dict) or not isinstance(transform.get("tokenizer_json"), str):
            raise ModelFileError(f"{origin}: a text model needs field 'transform' with its tokenizer (tokenizer.json)")
        vocab = (meta.get("net_options") or {}).get("vocab_size")
        self.tokenizer = load_tokenizer(f"{origin}: tokenizer.json", vocab, text=transform["tokenizer_json"])
        context = transform.get("context")
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ModelFileError(f"{origin}: field 'transform.context' must be a positive integer")
        self.context = context
        # no prompt: start where a document starts (documents are separated by blank lines)
        newline = self.tokenizer.encode("\n", strict=False)
        self.start_ids = newline if newline and BOS not in newline and 3 not in newline else [BOS]

    def __call__(self, ids) -> np.ndarray:
        out = np.empty(len(ids), dtype=object)
        out[:] = [self.tokenizer.decode(list(map(int, row))) for row in ids]
        return out


def sample_text(model, n: int, seed: int = 0, classes=None, batch_size: int = 500, progress: bool = False,
                **controls) -> TextSamples:
    """``genforge.generation.sample`` for text models (``SAMPLERS["text"]``): ``generate_text``. A text model
    takes no classes; ``batch_size``: the most samples decoded together."""
    if classes is not None:
        raise GenforgeError(f"model {model.name} is unconditional: it cannot generate a requested class")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TEXT_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_TEXT_SAMPLES}, got {n!r}")
    p = text_plan(model, n, seed, **controls)
    out = []
    for start in range(0, n, batch_size):
        out += run(model, p.rows[start:start + batch_size])
    return TextSamples(out, seed, p.controls, p.notes)


def interpolate_text(model, frames: int = 8, seeds: list[int] = (),
                     texts: list[str] = ()) -> list[tuple[int, float, str]]:
    """A homotopy (Bowman et al. 2016, section 5.2): sentences decoded greedily from evenly spaced points on the
    straight lines between the latents of ``texts`` (their posterior means) or of ``seeds`` (drawn from the
    prior), ``frames`` points per leg. Returns (leg, t, sentence) triples; a model without a latent space (a
    GPT) is refused."""
    method = model.method
    if not hasattr(method, "homotopy"):
        raise GenforgeError(f"model {model.name} is a {model.family}: it has no latent space to interpolate in "
                            "(train a sentence-vae)")
    points = list(texts) if texts else list(seeds)
    if len(points) < 2:
        raise GenforgeError("interpolation needs at least two sentences (--text) or two seeds (--seeds)")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 2 <= frames <= 100:
        raise GenforgeError(f"--frames must be an integer from 2 to 100, got {frames!r}")
    tok, context = model.output.tokenizer, model.output.context
    device = next(model.nets["decoder"].parameters()).device
    if texts:
        ids = [tok.encode(t, strict=True) for t in texts]
        too_long = [i for i, x in enumerate(ids) if not 1 <= len(x) <= context]
        if too_long:
            raise GenforgeError(f"sentence {too_long[0] + 1} is {len(ids[too_long[0]])} tokens; this model reads "
                                f"1 to {context}")
        x = torch.zeros(len(ids), context + 2, dtype=torch.int64)
        for i, row in enumerate(ids):
            x[i, :len(row) + 2] = torch.tensor([BOS, *row, 2])
        z = method.encode_mean(model.nets, x.to(device)).cpu()
    else:
        z_dim = model.nets["decoder"].init_h.in_features
        z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    legs = [method.homotopy(z[i], z[i + 1], frames) for i in range(len(z) - 1)]
    greedy = {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "repetition_penalty": 1.0}
    rows, where = [], []
    for leg, path in enumerate(legs):
        for k, point in enumerate(path):
            if leg and k == 0:
                continue  # the previous leg ended here
            rows.append(Row([], torch.Generator().manual_seed(0), greedy, context, latent=point))
            where.append((leg, k / (frames - 1)))
    return [(leg, t, s.text) for (leg, t), s in zip(where, run(model, rows))]
