"""The sentence VAE method (Bowman et al. 2016): the ELBO with KL annealing, word dropout and free bits, the
training step, the sampler, and homotopies between sentences.

Examples are sentences (N, max_len + 2) int64: ``<bos>``, the tokens, ``<eos>``, then ``<pad>``. The networks
are ``recurrent.SentenceEncoder`` and ``recurrent.SentenceDecoder``. Three defences against posterior
collapse (the decoder learning to ignore z, KL going to 0):

- KL annealing: the KL term's weight rises linearly from 0 to 1 over ``kl_anneal_steps`` (Bowman et al. 3.1),
  so the encoder learns to put information into z before the prior pulls it out;
- word dropout: each decoder input token is replaced by ``<unk>`` with probability ``word_dropout``
  (Bowman et al. 3.2), so the decoder must lean on z to predict what comes next;
- free bits: each latent dimension's KL (averaged over the batch) counts at least ``free_bits`` nats
  (Kingma et al. 2016, eq. 15), so the optimizer gains nothing by pushing it below that.

The loss reports the ELBO (nats per sentence, the full KL at weight 1) and the KL itself; a KL under
``COLLAPSED_KL`` nats per sentence is reported as a collapsed posterior (``genforge eval`` says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genforge.controls import MAX_NEW_TOKENS, STOP, TEMPERATURE, TOP_K, TOP_P
from genforge.data.text.tokenizer import BOS, EOS, PAD, UNK
from genforge.models.lm import process_logits

VALUE_RANGE = "0,1"  # the loader's argument; token ids are integers and are not scaled
TEXT_UNIT = "line"  # trains on lines of the text (config text_unit)
NETWORKS = ("encoder", "decoder")
EMA_NETWORKS = ("encoder", "decoder")
LATENT = "decoder"
CONTROLS = (MAX_NEW_TOKENS, TEMPERATURE, TOP_K, TOP_P, STOP)
COLLAPSED_KL = 0.5  # nats per sentence: below it z carries next to nothing about the sentence


def latent_dim(z_dim: int, example_shape: tuple[int, ...]) -> int:
    return z_dim


def network_options(cfg, transform: dict) -> dict:
    return {"vocab_size": transform["vocab_size"], "n_embd": cfg.text_n_embd, "hidden": cfg.text_rnn_hidden}


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sentence and dimension (b, z_dim) (Kingma and Welling 2014, appendix B)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp())


def word_dropout(inputs: torch.Tensor, p: float, noise: torch.Generator) -> torch.Tensor:
    """Replace each real decoder input token (not <bos>, not padding) by <unk> with probability p."""
    if p <= 0:
        return inputs
    u = torch.rand(inputs.shape, generator=noise, device=inputs.device)
    drop = (u < p) & (inputs != PAD) & (inputs != BOS)
    return inputs.masked_fill(drop, UNK)


def elbo_terms(nets: dict[str, nn.Module], x: torch.Tensor, noise: torch.Generator | None, dropout: float = 0.0,
               sample: bool = True) -> dict[str, torch.Tensor]:
    """Sentences (b, L) -> per-sentence reconstruction nats (b,), KL per dimension (b, z_dim), and token count
    (b,). ``sample=False`` decodes from the posterior mean (held-out reconstruction)."""
    mu, logvar = nets["encoder"](x[:, 1:])                                 # read the sentence, not <bos>
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise, device=mu.device) if sample else mu
    inputs = word_dropout(x[:, :-1], dropout, noise) if dropout > 0 else x[:, :-1]
    logits, _ = nets["decoder"](z, inputs)                                 # (b, L - 1, vocab)
    targets = x[:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none", ignore_index=PAD)  # (b, L-1)
    return {"rec": nll.sum(1), "kl_dims": kl_per_dim(mu, logvar), "tokens": (targets != PAD).sum(1)}


class Trainer:
    """One Adam over encoder and decoder; one annealed, word-dropped, free-bits ELBO step per batch."""

    def __init__(self, cfg, nets: dict[str, nn.Module], private=None):
        if private is not None:
            raise ValueError("differential privacy is not implemented for the sentence VAE")
        self.nets, self.cfg = nets, cfg
        params = list(nets["encoder"].parameters()) + list(nets["decoder"].parameters())
        self.optimizers = {"vae": torch.optim.Adam(params, lr=cfg.g_lr, betas=tuple(cfg.g_betas))}

    @staticmethod
    def batches_per_step(cfg) -> int:
        return 1

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def kl_weight(self, step: int) -> float:
        n = self.cfg.kl_anneal_steps
        return self.cfg.kl_weight * (min(1.0, step / n) if n else 1.0)

    def train_step(self, x: torch.Tensor, y, noise: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        """minimize rec + beta(step) * sum_d max(free_bits, mean_batch KL_d)."""
        terms = elbo_terms(self.nets, x, noise, self.cfg.text_word_dropout)
        kl_dims = terms["kl_dims"]                                         # (b, z_dim)
        kl_free = kl_dims.mean(0).clamp(min=self.cfg.free_bits).sum()      # free bits, per dimension
        beta = self.kl_weight(step)
        loss = terms["rec"].mean() + beta * kl_free
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for n in self.nets.values() for p in n.parameters()],
                                           self.cfg.grad_clip)
        opt.step()
        kl = kl_dims.sum(1).mean().detach()
        return {"loss": loss.detach(), "rec": terms["rec"].mean().detach(), "kl": kl,
                "elbo": -(terms["rec"].mean().detach() + kl), "kl_weight": torch.tensor(beta)}


class Decoder:
    """Sentences from latents: each row's z drawn from its own stream (or given), then tokens sampled with
    the row's controls until <eos>. The same interface as ``lm.Decoder`` (``step``, ``finish``, ``rows``)."""

    def __init__(self, nets, prompts=(), generators=(), controls=(), use_cache=True):
        self.decoder = nets["decoder"]
        p = next(self.decoder.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.z_dim, hidden = self.decoder.init_h.in_features, self.decoder.init_h.out_features
        self.rows, self.gens, self.next_row = [], [], 0
        self.temperature, self.top_k, self.top_p = torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        self.z = torch.zeros(0, self.z_dim, device=self.device, dtype=self.dtype)
        self.h = torch.zeros(1, 0, hidden, device=self.device, dtype=self.dtype)
        self.pending = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.add(prompts, generators, controls)

    @torch.inference_mode()
    def add(self, prompts, generators, controls, z: torch.Tensor | None = None) -> list[int]:
        """Rows joining the batch. Each row's z is drawn from its own stream (on the CPU: the same on every
        device) unless given; its decoder starts from z's initial state and <bos>."""
        new = list(range(self.next_row, self.next_row + len(generators)))
        self.next_row += len(generators)
        if not new:
            return new
        if z is None:
            z = torch.stack([torch.randn(self.z_dim, generator=g) for g in generators])
        z = z.to(self.device, self.dtype)
        self.rows += new
        self.gens += list(generators)
        self.temperature = torch.cat([self.temperature, torch.tensor([c["temperature"] for c in controls])])
        self.top_k = torch.cat([self.top_k, torch.tensor([c["top_k"] for c in controls], dtype=torch.int64)])
        self.top_p = torch.cat([self.top_p, torch.tensor([c["top_p"] for c in controls])])
        self.z = torch.cat([self.z, z])
        self.h = torch.cat([self.h, self.decoder.initial_state(z)], dim=1)
        self.pending = torch.cat([self.pending, torch.full((len(new),), BOS, dtype=torch.int64, device=self.device)])
        return new

    @property
    def active(self) -> int:
        return len(self.rows)

    def finish(self, row: int) -> None:
        i = self.rows.index(row)
        keep = [j for j in range(len(self.rows)) if j != i]
        self.rows, self.gens = [self.rows[j] for j in keep], [self.gens[j] for j in keep]
        idx = torch.tensor(keep, dtype=torch.int64)
        self.temperature, self.top_k, self.top_p = self.temperature[idx], self.top_k[idx], self.top_p[idx]
        dev = idx.to(self.device)
        self.z, self.pending, self.h = self.z[dev], self.pending[dev], self.h[:, dev]

    @torch.inference_mode()
    def step(self) -> list[int]:
        logits, self.h = self.decoder(self.z, self.pending[:, None], self.h)
        seen = torch.zeros(logits.shape[0], logits.shape[2], dtype=torch.bool)
        ones = torch.ones(len(self.rows))
        logits = logits[:, -1].float().cpu()
        logits[:, [PAD, BOS, UNK]] = float("-inf")  # never written: padding, a second start, an unknown token
        probs = process_logits(logits, seen, self.temperature, self.top_k, self.top_p, ones).softmax(1)
        tokens = [int(torch.multinomial(probs[r], 1, generator=g)) for r, g in enumerate(self.gens)]
        self.pending = torch.tensor(tokens, dtype=torch.int64, device=self.device)
        return tokens


@torch.inference_mode()
def encode_mean(nets: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Sentences (b, L) with <bos> ... <eos> -> posterior means (b, z_dim)."""
    mu, _ = nets["encoder"](x[:, 1:])
    return mu


def homotopy(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Latents on the straight line from z0 to z1 (Bowman et al. 2016, section 5.2): (steps, z_dim)."""
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
    return (1 - t) * z0[None] + t * z1[None]


def is_end(token: int) -> bool:
    return token == EOS
