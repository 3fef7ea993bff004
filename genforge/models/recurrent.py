"""The sentence VAE's networks (Bowman et al. 2016, "Generating sentences from a continuous space"): a GRU
encoder that reads a sentence into the mean and log-variance of q(z|x), and a GRU decoder that writes a
sentence from z, token by token.

The decoder sees z twice: as its initial hidden state (Bowman et al.) and concatenated to every input
embedding, so the latent cannot be forgotten a few steps into a sentence, one of the things that lets a
strong autoregressive decoder ignore z (posterior collapse). Word dropout, KL annealing and free bits, the
other defences, live in the method (``models/sentence_vae.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from genforge.data.text.tokenizer import PAD


class SentenceEncoder(nn.Module):
    """Token ids (b, t) with padding -> mu, logvar (b, z_dim) each, from a bidirectional GRU's final states.
    ``example_shape``: a padded line's, (max_len + 2,); any length up to it is read."""

    def __init__(self, example_shape: tuple[int], vocab_size: int, z_dim: int = 32, n_embd: int = 128,
                 hidden: int = 256, **unused):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, n_embd, padding_idx=PAD)
        self.gru = nn.GRU(n_embd, hidden, batch_first=True, bidirectional=True)
        self.to_stats = nn.Linear(2 * hidden, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = (x != PAD).sum(1).clamp(min=1).cpu()                     # (b,)
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)                                            # (2, b, hidden): forward, backward
        mu, logvar = self.to_stats(torch.cat([h[0], h[1]], dim=1)).chunk(2, dim=1)
        return mu, logvar


class SentenceDecoder(nn.Module):
    """z (b, z_dim) and input ids (b, t) -> next-token logits (b, t, vocab_size); ``step`` runs one token."""

    def __init__(self, example_shape: tuple[int], vocab_size: int, z_dim: int = 32, n_embd: int = 128,
                 hidden: int = 256, **unused):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, n_embd, padding_idx=PAD)
        self.init_h = nn.Linear(z_dim, hidden)
        self.gru = nn.GRU(n_embd + z_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def initial_state(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.init_h(z))[None]                            # (1, b, hidden)

    def forward(self, z: torch.Tensor, inputs: torch.Tensor, h: torch.Tensor | None = None):
        """Returns logits (b, t, vocab_size) and the final hidden state (1, b, hidden)."""
        e = self.emb(inputs)                                               # (b, t, n_embd)
        zs = z[:, None, :].expand(-1, inputs.shape[1], -1)                 # (b, t, z_dim)
        out, h = self.gru(torch.cat([e, zs], dim=2), self.initial_state(z) if h is None else h)
        return self.out(out), h
