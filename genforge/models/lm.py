"""The GPT method: next-token cross-entropy, the training step, and the sampler with a KV cache.

The network is ``transformer.GPT``; examples are token windows (N, context + 1) int64 cut from the training
text, and a window ``w`` trains the network to predict ``w[1:]`` from ``w[:-1]`` (every position at once,
through the causal mask). The loss is in nats per token; ``genforge eval`` also reports it per character, so
models with different tokenizers compare.

Sampling (``Decoder``) is a pure function of (network, prompt ids, one random stream per row, controls):
each step takes the last position's logits, applies the repetition penalty, the temperature, top-k and top-p,
and draws each row's token from its own ``torch.Generator``. A batch of rows (the server batches requests)
therefore draws the same tokens as each row alone with the same seed: the random streams are per row and
every logit operation is row-wise.

Windows: the network sees at most ``context`` tokens. When a row's text outgrows it, its window jumps to its
last ``context // 2`` tokens (and the cache is filled again from them), so a long generation costs one
refill every ``context // 2`` tokens. Recomputing (``use_cache=False``) runs the same windows from scratch at
every step, which is what the cache is tested equal to.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from genforge.models.transformer import KVCache
from genforge.controls import LONG_PROMPT, MAX_NEW_TOKENS, PROMPT, REPETITION_PENALTY, STOP, TEMPERATURE, TOP_K, TOP_P

VALUE_RANGE = "0,1"  # the loader's argument; token ids are integers and are not scaled
TEXT_UNIT = "window"  # trains on windows of running text (config text_unit)
NETWORKS = ("gpt",)
EMA_NETWORKS = ("gpt",)
LATENT = "gpt"
CONTROLS = (PROMPT, MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P, REPETITION_PENALTY, STOP, LONG_PROMPT)


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    """A GPT has no latent: its randomness is the token draws. z_dim is recorded as configured and unused."""
    return z_dim


def network_options(cfg, transform: dict) -> dict:
    """The GPT's size: vocabulary from the data's tokenizer, depth, heads and width from the config."""
    return {"vocab_size": transform["vocab_size"], "n_layer": cfg.text_n_layer, "n_head": cfg.text_n_head,
            "n_embd": cfg.text_n_embd, "dropout": cfg.text_dropout}


def lm_loss(net: nn.Module, x: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Windows (b, t + 1) int64 -> cross-entropy of predicting x[:, 1:] from x[:, :-1], nats per token
    (``reduction="none"``: (b, t))."""
    logits = net(x[:, :-1])                                                # (b, t, vocab)
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction=reduction)
    return loss.view(x[:, 1:].shape) if reduction == "none" else loss


def lr_at(step: int, base: float, warmup: int, decay_steps: int, min_lr: float, time_ratio: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr`` at ``decay_steps`` (0: constant)
    (nanoGPT's schedule; Loshchilov and Hutter 2017).

    ``time_ratio`` (0 to 1): the share of the time budget spent after the warm-up, when the decay runs over
    time (``lr_decay_over: time``): the cosine is at whichever is further along, the steps or the time, so a
    run stopped by ``max_seconds`` ends annealed (Li et al. 2020, "Budgeted training")."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if not decay_steps and not time_ratio:
        return base
    ratio = (step - warmup) / max(1, decay_steps - warmup) if decay_steps else 0.0
    ratio = min(1.0, max(ratio, time_ratio))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (base - min_lr)


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear layers, embeddings) only, not on LayerNorm gains and biases (nanoGPT)."""
    params = [p for p in net.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


class Trainer:
    """AdamW over the GPT with warm-up and cosine decay and gradient clipping; one step is one batch.

    With ``lr_decay_over: time`` the trainer counts wall-clock seconds from its first step, validation and
    checkpoints included (as ``max_seconds`` does), and the cosine ends when ``max_seconds`` is spent: a run
    stopped by its time budget ends annealed, whatever the machine's speed. The seconds are kept in its state,
    so a resumed run goes on along the same curve (and holds ``min_lr`` once it is spent); the learning rate
    then depends on the machine's speed, so such a run is not bit-exact across machines."""

    def __init__(self, cfg, nets: dict[str, nn.Module], private=None):
        if private is not None:
            raise ValueError("differential privacy is not implemented for the GPT")
        self.net, self.cfg = nets["gpt"], cfg
        opt = torch.optim.AdamW(param_groups(self.net, cfg.weight_decay), lr=cfg.g_lr, betas=tuple(cfg.g_betas))
        self.optimizers = {"gpt": opt}
        self.last_lr = cfg.g_lr
        self.by_time = cfg.lr_decay_over == "time" and cfg.max_seconds > 0
        self.seconds = 0.0          # wall-clock seconds since the first step, across resumes
        self.warm_seconds = None    # ``seconds`` when the warm-up ended
        self.t_last = None          # this process's previous step

    @staticmethod
    def batches_per_step(cfg) -> int:
        return 1

    def state_dict(self) -> dict:
        since = time.perf_counter() - self.t_last if self.t_last is not None else 0.0  # the last step's own time
        return {"last_lr": self.last_lr, "seconds": self.seconds + since, "warm_seconds": self.warm_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.last_lr = state.get("last_lr", self.last_lr)
        self.seconds = float(state.get("seconds", 0.0))
        self.warm_seconds = state.get("warm_seconds")

    def time_ratio(self, step: int) -> float:
        """The share of the time left after the warm-up that is spent, when the decay runs over time (else 0).
        Seconds count from the first step (as the loop's ``max_seconds`` does) and go on across a resume."""
        now = time.perf_counter()
        if self.t_last is not None:
            self.seconds += now - self.t_last
        self.t_last = now
        if not self.by_time or step < self.cfg.warmup_steps:
            return 0.0
        if self.warm_seconds is None:
            self.warm_seconds = self.seconds
        return min(1.0, (self.seconds - self.warm_seconds) / max(1e-9, self.cfg.max_seconds - self.warm_seconds))

    def train_step(self, x: torch.Tensor, y, noise: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        """One AdamW step on windows (b, context + 1): minimize the next-token cross-entropy."""
        cfg, opt = self.cfg, self.optimizers["gpt"]
        # the loop halves the learning rate after a NaN rollback by scaling param_groups' lr: keep that factor
        scale = opt.param_groups[0]["lr"] / self.last_lr if self.last_lr else 1.0
        lr = lr_at(step, cfg.g_lr, cfg.warmup_steps, cfg.lr_decay_steps, cfg.min_lr, self.time_ratio(step)) * scale
        for group in opt.param_groups:
            group["lr"] = lr
        self.last_lr = lr / scale if scale else lr
        loss = lm_loss(self.net, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        opt.step()
        return {"loss": loss.detach(), "lr": torch.tensor(lr)}


# ------------------------------------------------------------------------------------------------ sampling
def process_logits(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Next-token logits (b, vocab) float32 -> the logits sampled from, every operation row by row.

    seen (b, vocab) bool: tokens already in the row's text (repetition penalty, Keskar et al. 2019: positive
    logits divided by the penalty, negative ones multiplied). temperature (b,): logits divided by it. top_k
    (b,) int: keep the k largest (0: all). top_p (b,): keep the fewest tokens whose probability reaches top_p
    (Holtzman et al. 2020), always at least the most likely one.
    """
    if bool((penalty != 1).any()):
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty[:, None], logits * penalty[:, None]),
                             logits)
    logits = logits / temperature[:, None]
    if not bool((top_k > 0).any()) and bool((top_p >= 1).all()):
        return logits  # nothing to cut: every token stays (the defaults; skips a sort per step)
    sorted_logits, order = logits.sort(dim=1, descending=True)             # (b, vocab)
    rank = torch.arange(logits.shape[1], device=logits.device)[None, :]
    drop = (top_k[:, None] > 0) & (rank >= top_k[:, None])
    probs = sorted_logits.masked_fill(drop, -math.inf).softmax(dim=1)
    # a token is dropped when the tokens before it already hold top_p of the probability
    drop |= ((probs.cumsum(dim=1) - probs) >= top_p[:, None]) & (top_p[:, None] < 1)  # top_p 1: keep every token
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
    return torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)


def merge_caches(a: KVCache, b: KVCache) -> KVCache:
    """Two batches' caches as one, rows of ``a`` then of ``b``: the shorter is left-padded (its slots shifted
    right, the new ones marked not valid). A key's slot carries no position (the positions are in the keys
    themselves), so shifting changes nothing a row attends to."""
    length = max(a.length, b.length)

    def padded(c: KVCache):
        if c.length == length:
            return c.k, c.v, c.valid
        d = length - c.length
        k, v, valid = torch.zeros_like(c.k), torch.zeros_like(c.v), torch.zeros_like(c.valid)
        k[:, :, :, d:length], v[:, :, :, d:length] = c.k[:, :, :, :c.length], c.v[:, :, :, :c.length]
        valid[:, d:length] = c.valid[:, :c.length]
        return k, v, valid

    (ka, va, oka), (kb, vb, okb) = padded(a), padded(b)
    a.k, a.v, a.valid = torch.cat([ka, kb], dim=1), torch.cat([va, vb], dim=1), torch.cat([oka, okb])
    a.length = length
    a.padded = a.padded or b.padded or not bool(a.valid[:, :length].all())
    return a


class Decoder:
    """Token-by-token sampling of a batch of rows, each with its own prompt, random stream and controls.

    ``step()`` returns each active row's next token; the caller decides when a row is done (its length, a stop
    string) and calls ``finish(row)``, after which the row is dropped from the batch. ``add`` lets rows join a
    running batch (the server's continuous batching): the cache is filled again from every row's window, which
    computes what each row alone would (the same window, the same positions).
    """

    def __init__(self, nets: dict[str, nn.Module], prompts=(), generators=(), controls=(), use_cache: bool = True):
        self.net = nets["gpt"]
        self.use_cache = use_cache
        self.device = next(self.net.parameters()).device
        self.context = self.net.context
        self.rows, self.seqs, self.starts, self.gens = [], [], [], []
        self.temperature = torch.zeros(0)
        self.top_k = torch.zeros(0, dtype=torch.int64)
        self.top_p = torch.zeros(0)
        self.penalty = torch.zeros(0)
        self.seen = torch.zeros(0, self.net.vocab_size, dtype=torch.bool)
        self.cache = None
        self.pending = None  # the tokens the next forward pass appends (b,), when the cache is current
        self.fresh = 0       # rows at the end of the batch that joined since the last step
        self.next_row = 0
        self.add(prompts, generators, controls)

    def add(self, prompts, generators, controls) -> list[int]:
        """Rows joining the batch; returns their indices (numbered on from the rows already added)."""
        new = list(range(self.next_row, self.next_row + len(prompts)))
        self.next_row += len(prompts)
        self.rows += new
        self.seqs += [list(p) for p in prompts]
        self.starts += [max(0, len(p) - self.context) for p in prompts]
        self.gens += list(generators)
        f32 = torch.float32
        self.temperature = torch.cat([self.temperature, torch.tensor([c["temperature"] for c in controls], dtype=f32)])
        self.top_k = torch.cat([self.top_k, torch.tensor([c["top_k"] for c in controls], dtype=torch.int64)])
        self.top_p = torch.cat([self.top_p, torch.tensor([c["top_p"] for c in controls], dtype=f32)])
        self.penalty = torch.cat([self.penalty, torch.tensor([c["repetition_penalty"] for c in controls], dtype=f32)])
        seen = torch.zeros(len(prompts), self.net.vocab_size, dtype=torch.bool)
        for r, p in enumerate(prompts):
            seen[r, torch.tensor(p, dtype=torch.int64)] = True
        self.seen = torch.cat([self.seen, seen])
        self.fresh += len(prompts)  # prefilled on their own at the next step, then merged into the cache
        return new

    def finish(self, row: int) -> None:
        """Drop row ``row`` (an original index) from the batch."""
        i = self.rows.index(row)
        keep = [j for j in range(len(self.rows)) if j != i]
        for name in ("rows", "seqs", "starts", "gens"):
            setattr(self, name, [getattr(self, name)[j] for j in keep])
        idx = torch.tensor(keep, dtype=torch.int64)
        for name in ("temperature", "top_k", "top_p", "penalty", "seen"):
            setattr(self, name, getattr(self, name)[idx])
        old = len(keep) + 1 - self.fresh  # rows held in the cache before this one left
        if i >= old:  # it joined since the last step: not in the cache yet
            self.fresh -= 1
        elif self.cache is not None:
            dev = torch.tensor([j for j in keep if j < old], dtype=torch.int64, device=self.device)
            self.cache.k, self.cache.v = self.cache.k[:, dev], self.cache.v[:, dev]
            self.cache.valid = self.cache.valid[dev]
            self.pending, self.positions = self.pending[dev], self.positions[dev]

    @property
    def active(self) -> int:
        return len(self.rows)

    def _windows(self, first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The windows of rows ``first`` onwards, left-padded to the longest: ids, positions, valid (None when
        none is padded)."""
        windows = [s[st:] for s, st in zip(self.seqs[first:], self.starts[first:])]
        t = max(len(w) for w in windows)
        ids = torch.zeros(len(windows), t, dtype=torch.int64)
        pos = torch.zeros(len(windows), t, dtype=torch.int64)
        valid = torch.zeros(len(windows), t, dtype=torch.bool)
        for r, w in enumerate(windows):
            ids[r, t - len(w):] = torch.tensor(w, dtype=torch.int64)
            pos[r, t - len(w):] = torch.arange(len(w))
            valid[r, t - len(w):] = True
        padded = not bool(valid.all())
        return ids.to(self.device), pos.to(self.device), (valid.to(self.device) if padded else None)

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:
        """The next-token logits (b, vocab) of every active row, with the cache or by recomputing."""
        grown = [len(s) - st > self.context for s, st in zip(self.seqs, self.starts)]
        for r, over in enumerate(grown):  # a row outgrew the context: its window jumps to its last half
            if over:
                self.starts[r] = len(self.seqs[r]) - self.context // 2
        if not self.use_cache:
            ids, pos, valid = self._windows()
            return self.net(ids, pos, valid=valid, last=True).float()
        old = len(self.rows) - self.fresh  # rows whose keys and values are cached
        if self.cache is None or any(grown) or self.cache.length >= self.context or old == 0:
            ids, pos, valid = self._windows()  # (re)fill the cache from every row's window
            self.cache = self.net.new_cache(len(self.rows))
            self.positions, self.fresh = pos[:, -1], 0
            return self.net(ids, pos, cache=self.cache, valid=valid, last=True).float()
        self.positions = self.positions + 1
        logits = self.net(self.pending[:, None], self.positions[:, None], cache=self.cache, last=True).float()
        if not self.fresh:
            return logits
        # rows that joined: their windows prefilled on their own, their cache merged with the running one
        ids, pos, valid = self._windows(old)
        cache = self.net.new_cache(self.fresh)
        joined = self.net(ids, pos, cache=cache, valid=valid, last=True).float()
        self.cache = merge_caches(self.cache, cache)
        self.positions, self.fresh = torch.cat([self.positions, pos[:, -1]]), 0
        return torch.cat([logits, joined])

    def step(self) -> list[int]:
        """Draw each active row's next token (in ``self.rows`` order) and append it."""
        logits = process_logits(self.logits().cpu(), self.seen, self.temperature, self.top_k, self.top_p,
                                self.penalty)
        probs = logits.softmax(dim=1)
        tokens = [int(torch.multinomial(probs[r], 1, generator=g)) for r, g in enumerate(self.gens)]
        for r, tok in enumerate(tokens):
            self.seqs[r].append(tok)
            self.seen[r, tok] = True
        self.pending = torch.tensor(tokens, dtype=torch.int64, device=self.device)
        return tokens
