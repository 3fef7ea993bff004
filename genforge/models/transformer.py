"""The GPT network: a decoder-only transformer (Radford et al. 2018/2019), with a key-value cache.

Pre-norm blocks (LayerNorm before attention and before the MLP, GPT-2's arrangement, which trains stably
without warm-up tricks at these depths), causal ``scaled_dot_product_attention``, a 4x GELU MLP, and the output
projection tied to the token embedding (Press and Wolf 2017: fewer parameters, and the same vector reads and
writes a token).

Positions are learned, one vector per position of the context, as in GPT-2 and nanoGPT. Why not rotary:
genforge never runs the network past its context (generation slides a window, see ``models/lm.py``), so
rotary's gift of relative positions beyond the trained length buys nothing here, and learned positions keep
genforge's GPT the same network as nanoGPT's, so its nanoGPT-configuration benchmark row differs from
nanoGPT only in training, not in architecture. Positions are passed explicitly per row, so a batch of prompts
of different lengths can be left-padded and each row still sees positions 0, 1, 2, ... from its first token.

The cache: every layer's keys and values of the tokens seen so far, in buffers of the context's length
(``KVCache``). A step with the cache computes attention of the new tokens only against the cached ones, so
each new token costs one token's forward pass instead of the whole window's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of every layer for a batch: (layers, b, heads, context, head_dim) each, and which
    cached positions hold a real token (``valid``, (b, context) bool; left padding is not)."""

    def __init__(self, n_layer: int, b: int, n_head: int, context: int, head_dim: int, device, dtype):
        self.k = torch.zeros(n_layer, b, n_head, context, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(b, context, dtype=torch.bool, device=device)
        self.length = 0  # positions filled (the same for every row: padding fills the short rows)
        self.padded = False  # whether any filled position is padding (then every step needs a mask)

    @property
    def context(self) -> int:
        return self.k.shape[3]


def norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``ln(x)`` without the module call."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} must be a multiple of n_head {n_head}")
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor, layer: int = 0, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        h = self.n_head
        # (b, t, 3, h, d) -> q, k, v (b, h, t, d) each
        q, k, v = F.linear(x, self.qkv.weight).view(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)
        if cache is not None:  # append this step's keys and values, attend over everything cached so far
            start = cache.length
            cache.k[layer, :, :, start:start + t] = k
            cache.v[layer, :, :, start:start + t] = v
            k, v = cache.k[layer, :, :, :start + t], cache.v[layer, :, :, :start + t]  # (b, h, start + t, d)
        drop = self.dropout if self.training else 0.0
        if mask is None:  # training and unpadded prompts: the causal kernel, no mask tensor; one new token
            # after an unpadded cache attends to every key, so it needs no mask at all
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (b, h, t, d)
        return F.linear(y.transpose(1, 2).reshape(b, t, c), self.proj.weight)


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False), nn.Dropout(dropout))

    def forward(self, x, layer=0, cache=None, mask=None):
        # the submodules hold the parameters; their arithmetic is called directly (functional), which spares
        # ten module calls per block: a cached sampling step is one token, where that overhead is most of the time
        x = x + self.attn.forward(norm(self.ln1, x), layer, cache, mask)
        up, _, down, drop = self.mlp
        y = F.linear(F.gelu(F.linear(norm(self.ln2, x), up.weight)), down.weight)
        return x + (F.dropout(y, drop.p, True) if self.training else y)


class GPT(nn.Module):
    """Token ids (b, t) -> next-token logits (b, t, vocab_size).

    ``example_shape`` is a training window's, (context + 1,); the other keywords of
    ``genforge.models.build_networks`` (z_dim, base_channels, num_classes) do not apply to a GPT."""

    def __init__(self, example_shape: tuple[int], vocab_size: int, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384, dropout: float = 0.0, **unused):
        super().__init__()
        context = example_shape[0] - 1
        self.vocab_size, self.context, self.n_layer, self.n_head, self.n_embd = (vocab_size, context, n_layer,
                                                                                  n_head, n_embd)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(context, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        # GPT-2's initialization: N(0, 0.02), and the residual projections scaled by 1/sqrt(2 * layers) so the
        # residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def new_cache(self, b: int, device=None, dtype=None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.n_layer, b, self.n_head, self.context, self.n_embd // self.n_head,
                       device or p.device, dtype or p.dtype)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                valid: torch.Tensor | None = None, last: bool = False) -> torch.Tensor:
        """``idx`` (b, t) token ids. ``positions`` (b, t): each token's position (default 0..t-1, or after the
        cache). ``cache``: append to it and attend over it. ``valid`` (b, t) bool: False for left padding, which
        no real token attends to. Returns logits (b, t, vocab_size), or (b, vocab_size) of the last position
        alone with ``last`` (sampling: the output layer runs on one position, as nanoGPT's ``generate``)."""
        b, t = idx.shape
        start = cache.length if cache is not None else 0
        if start + t > self.context:
            raise ValueError(f"{start + t} tokens do not fit the context of {self.context}")
        if positions is None:
            positions = torch.arange(start, start + t, device=idx.device).expand(b, t)
        x = self.wte.weight[idx] + self.wpe.weight[positions]             # (b, t, n_embd)
        if self.training:
            x = F.dropout(x, self.drop.p, True)
        mask = None
        one_step = cache is not None and valid is None and t == 1 and not cache.padded
        if (cache is not None or valid is not None) and not one_step:
            keys_valid = valid if valid is not None else torch.ones(b, t, dtype=torch.bool, device=idx.device)
            if cache is not None:
                cache.valid[:, start:start + t] = keys_valid
                cache.padded = cache.padded or valid is not None and not bool(valid.all())
                keys_valid = cache.valid[:, :start + t]                    # (b, start + t)
            j = torch.arange(start + t, device=idx.device)
            i = torch.arange(start, start + t, device=idx.device)
            causal = j[None, :] <= i[:, None]                              # (t, start + t)
            # a padding query attends to itself alone: never a row with nothing to attend to (NaN), and its
            # (unused) outputs stay finite, so the padding keys in the cache hold no NaN either
            mask = (causal[None] & keys_valid[:, None, :]) | (j[None, :] == i[:, None])[None]  # (b, t, start + t)
            mask = mask[:, None]                                           # (b, 1, t, start + t)
        elif one_step:
            cache.valid[:, start] = True
        for layer, block in enumerate(self.blocks):
            x = block.forward(x, layer, cache, mask)
        if cache is not None:
            cache.length = start + t
        if last:
            x = x[:, -1]                                                   # (b, n_embd)
        # tied output projection: logits are the hidden state's dot product with each token's embedding
        return F.linear(norm(self.ln_f, x), self.wte.weight)               # (b, [t,] vocab_size)
