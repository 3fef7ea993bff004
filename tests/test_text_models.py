"""The GPT and the sentence VAE: the KV cache against recomputation, batched decoding against unbatched,
the sampling controls, one training step of each family, and homotopies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from genforge.config import Config
from genforge.data.text.tokenizer import BOS, EOS, PAD, CharTokenizer
from genforge.generation.text import generate_text, run, text_plan
from genforge.models import lm, sentence_vae
from genforge.models.recurrent import SentenceDecoder, SentenceEncoder
from genforge.models.transformer import GPT

CHARS = "abcdefghijklmnopqrstuvwxyz \n.,:"


def tiny_gpt_model(context=32, seed=0):
    torch.manual_seed(seed)
    tok = CharTokenizer.train(CHARS)
    net = GPT((context + 1,), vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32).eval()
    output = SimpleNamespace(tokenizer=tok, context=context, start_ids=tok.encode("\n"))
    return SimpleNamespace(nets={"gpt": net}, output=output, method=lm, controls=lm.CONTROLS, name="tiny",
                           family="lm")


def test_kv_cache_logits_equal_recomputation():
    net = tiny_gpt_model().nets["gpt"]
    x = torch.randint(4, net.vocab_size, (3, 30))
    full = net(x)
    cache = net.new_cache(3)
    steps = [net(x[:, :10], cache=cache)] + [net(x[:, i:i + 1], cache=cache) for i in range(10, 30)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_kv_cache_gives_the_same_text_as_recomputing_past_the_context():
    model = tiny_gpt_model(context=32)
    cached = generate_text(model, 3, seed=7, prompt="to be or not", max_new_tokens=100)   # 3 window jumps
    again = generate_text(model, 3, seed=7, prompt="to be or not", max_new_tokens=100, use_cache=False)
    assert cached.texts == again.texts and all(len(s.tokens) == 100 for s in cached.samples)
    assert len(set(cached.texts)) == 3                                  # each sample its own stream


def test_a_batch_of_requests_draws_the_same_tokens_as_each_alone():
    model = tiny_gpt_model()
    asks = [dict(seed=1, prompt="hi", max_new_tokens=70), dict(seed=2, prompt="a much longer prompt", top_k=5,
            max_new_tokens=40), dict(seed=3, max_new_tokens=60, top_p=0.5, temperature=0.7),
            dict(seed=4, prompt="ab", repetition_penalty=1.5, max_new_tokens=50)]
    rows = [row for a in asks for row in text_plan(model, 1, **a).rows]
    together = run(model, rows)
    alone = [run(model, text_plan(model, 1, **a).rows)[0] for a in asks]
    assert [t.tokens for t in together] == [t.tokens for t in alone]
    assert [len(t.tokens) for t in together] == [70, 40, 60, 50]        # rows end at their own lengths


def test_process_logits_controls():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    one = lambda **kw: lm.process_logits(logits, torch.zeros(1, 5, dtype=torch.bool),
                                         torch.tensor([kw.get("t", 1.0)]), torch.tensor([kw.get("k", 0)]),
                                         torch.tensor([kw.get("p", 1.0)]), torch.tensor([1.0]))
    assert torch.isfinite(one()).all()
    assert torch.isfinite(one(k=2)).tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(1)[0]
    assert torch.isfinite(one(p=float(probs[0]) - 1e-3)).tolist() == [[True, False, False, False, False]]
    assert torch.isfinite(one(p=float(probs[0]) + 1e-3)).tolist() == [[True, True, False, False, False]]
    assert torch.allclose(one(t=0.5), logits * 2)
    seen = torch.tensor([[True, False, False, False, True]])
    out = lm.process_logits(logits, seen, torch.ones(1), torch.zeros(1, dtype=torch.int64), torch.ones(1),
                            torch.tensor([2.0]))
    assert out[0, 0] == 1.5 and out[0, 4] == -2.0 and out[0, 1] == 2.0   # CTRL's penalty: both signs


def test_stop_strings_cut_the_text_and_streaming_sends_the_same_text():
    model = tiny_gpt_model()
    free = generate_text(model, 1, seed=11, max_new_tokens=80).texts[0]
    stop = free[20:22]
    pieces = []
    out = generate_text(model, 1, seed=11, max_new_tokens=80, stop=[stop], on_text=lambda i, p: pieces.append(p))
    s = out.samples[0]
    assert s.finish_reason == "stop" and s.text == free[:free.index(stop)]
    assert "".join(pieces) == s.text                                     # nothing past the stop was streamed


def test_prompt_policies_and_bad_controls():
    model = tiny_gpt_model(context=16)
    long = "abcdefghij" * 3
    out = generate_text(model, 1, seed=0, prompt=long, max_new_tokens=4)
    assert out.samples[0].prompt_tokens == 16 and "only its last 16 tokens" in out.notes[0]
    from genforge.errors import GenforgeError

    with pytest.raises(GenforgeError, match="the prompt is 30 tokens, longer than the model's context of 16"):
        generate_text(model, 1, prompt=long, long_prompt="refuse")
    with pytest.raises(GenforgeError, match=r"character 'Q' \(U\+0051\) at offset 2"):
        generate_text(model, 1, prompt="abQ")
    with pytest.raises(GenforgeError, match=r"top_p must be in \(0, 1\], got 1.5"):
        generate_text(model, 1, top_p=1.5)
    with pytest.raises(GenforgeError, match=r"top_p must be in \(0, 1\], got 0"):
        generate_text(model, 1, top_p=0)
    with pytest.raises(GenforgeError, match="max_new_tokens must be an integer from 1 to 2048, got 5000"):
        generate_text(model, 1, max_new_tokens=5000)
    with pytest.raises(GenforgeError, match="max_new_tokens 300 is above the limit of 100"):
        text_plan(model, 1, max_new_tokens=300, max_new_tokens_limit=100)
    with pytest.raises(GenforgeError, match="stop must be text of 1 to 1000 characters, got ''"):
        generate_text(model, 1, stop=[""])


def text_cfg(**kw):
    return Config(**{"g_lr": 1e-2, "g_betas": [0.9, 0.99], "warmup_steps": 0, "grad_clip": 1.0,
                     "kl_anneal_steps": 10, "text_word_dropout": 0.3, "free_bits": 0.05, **kw})


def test_one_gpt_training_step_lowers_the_loss_on_its_batch():
    net = tiny_gpt_model().nets["gpt"].train()
    trainer = lm.Trainer(text_cfg(), {"gpt": net})
    x = torch.randint(4, net.vocab_size, (8, 17))
    before = float(lm.lm_loss(net, x).detach())
    assert abs(before - math.log(net.vocab_size)) < 0.5                 # starts near uniform
    noise = torch.Generator().manual_seed(0)
    for step in range(5):
        losses = trainer.train_step(x, None, noise, step)
    assert float(lm.lm_loss(net, x).detach()) < before - 0.3 and set(losses) == {"loss", "lr"}


def test_lr_schedule_warms_up_and_decays():
    assert lm.lr_at(0, 1e-3, 10, 100, 1e-4) == pytest.approx(1e-4)
    assert lm.lr_at(9, 1e-3, 10, 100, 1e-4) == pytest.approx(1e-3)
    assert lm.lr_at(55, 1e-3, 10, 100, 1e-4) == pytest.approx(5.5e-4)
    assert lm.lr_at(500, 1e-3, 10, 100, 1e-4) == 1e-4 and lm.lr_at(500, 1e-3, 10, 0, 1e-4) == 1e-3
    # over time: the cosine is at whichever is further along, the steps or the share of the time budget
    assert lm.lr_at(20, 1e-3, 10, 0, 1e-4, time_ratio=0.5) == pytest.approx(5.5e-4)
    assert lm.lr_at(20, 1e-3, 10, 100, 1e-4, time_ratio=1.0) == pytest.approx(1e-4)
    assert lm.lr_at(55, 1e-3, 10, 100, 1e-4, time_ratio=0.1) == pytest.approx(5.5e-4)


def test_lr_decay_over_time_ends_annealed_when_max_seconds_is_spent_and_resumes_on_the_curve(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(lm.time, "perf_counter", lambda: clock[0])
    net = tiny_gpt_model().nets["gpt"].train()
    cfg = text_cfg(g_lr=1e-3, min_lr=1e-4, warmup_steps=2, lr_decay_over="time", max_seconds=42)
    x, noise = torch.randint(4, net.vocab_size, (2, 9)), torch.Generator().manual_seed(0)

    def steps(trainer, first, last):
        lrs = []
        for step in range(first, last):
            lrs.append(float(trainer.train_step(x, None, noise, step)["lr"]))
            clock[0] += 10.0                                      # every step (and what follows it) takes 10 s
        return lrs

    trainer = lm.Trainer(cfg, {"gpt": net})
    lrs = steps(trainer, 0, 4)   # warm-up ends at step 2, 20 s in: the decay spans the 22 s left of 42
    assert lrs[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert lrs[3] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 10 / 22)) * 9e-4)
    state = trainer.state_dict()
    again = lm.Trainer(cfg, {"gpt": net})
    again.load_state_dict(state)
    again.optimizers["gpt"].load_state_dict(trainer.optimizers["gpt"].state_dict())  # as the loop's resume does
    clock[0] += 1000.0                                            # the pause between processes does not count
    assert steps(again, 4, 6) == pytest.approx([1e-4 + 0.5 * (1 + math.cos(math.pi * 20 / 22)) * 9e-4, 1e-4])
    # by steps (the default), the same clock changes nothing: constant after the warm-up without lr_decay_steps
    plain = lm.Trainer(text_cfg(g_lr=1e-3, warmup_steps=2, max_seconds=42), {"gpt": net})
    assert steps(plain, 0, 6)[2:] == pytest.approx([1e-3] * 4)


def sentences(tok, texts, width):
    x = torch.full((len(texts), width), PAD, dtype=torch.int64)
    for i, t in enumerate(texts):
        ids = [BOS] + tok.encode(t) + [EOS]
        x[i, :len(ids)] = torch.tensor(ids)
    return x


def test_one_sentence_vae_step_reports_elbo_and_kl_with_annealing():
    torch.manual_seed(0)
    tok = CharTokenizer.train(CHARS)
    nets = {"encoder": SentenceEncoder((26,), vocab_size=tok.vocab_size, z_dim=4, n_embd=16, hidden=32),
            "decoder": SentenceDecoder((26,), vocab_size=tok.vocab_size, z_dim=4, n_embd=16, hidden=32)}
    trainer = sentence_vae.Trainer(text_cfg(), nets)
    x = sentences(tok, ["to be or not to be", "that is the question", "whether tis nobler"], 24)
    noise = torch.Generator().manual_seed(0)
    first = trainer.train_step(x, None, noise, step=0)
    assert float(first["kl_weight"]) == 0.0                              # annealing starts at 0
    assert float(first["elbo"]) == pytest.approx(-(float(first["rec"]) + float(first["kl"])))
    assert float(trainer.train_step(x, None, noise, step=5)["kl_weight"]) == 0.5
    assert float(trainer.train_step(x, None, noise, step=50)["kl_weight"]) == 1.0
    # word dropout replaces real tokens only, never <bos> or padding
    dropped = sentence_vae.word_dropout(x[:, :-1], 0.99, torch.Generator().manual_seed(1))
    assert (dropped[:, 0] == BOS).all() and ((dropped == PAD) == (x[:, :-1] == PAD)).all()


def test_sentence_vae_samples_are_seeded_and_homotopies_run_between_sentences():
    torch.manual_seed(0)
    tok = CharTokenizer.train(CHARS)
    nets = {"encoder": SentenceEncoder((26,), vocab_size=tok.vocab_size, z_dim=4, n_embd=16, hidden=32).eval(),
            "decoder": SentenceDecoder((26,), vocab_size=tok.vocab_size, z_dim=4, n_embd=16, hidden=32).eval()}
    output = SimpleNamespace(tokenizer=tok, context=24, start_ids=[BOS])
    model = SimpleNamespace(nets=nets, output=output, method=sentence_vae, controls=sentence_vae.CONTROLS,
                            name="tiny", family="sentence_vae")
    a = generate_text(model, 3, seed=1, max_new_tokens=20)
    assert a.texts == generate_text(model, 3, seed=1, max_new_tokens=20).texts
    assert a.texts != generate_text(model, 3, seed=2, max_new_tokens=20).texts
    from genforge.errors import GenforgeError

    with pytest.raises(GenforgeError, match="prompt"):
        generate_text(model, 1, prompt="hello")                          # the VAE takes no prompt
    z = sentence_vae.encode_mean(nets, sentences(tok, ["to be", "not to be"], 12))
    path = sentence_vae.homotopy(z[0], z[1], 5)
    assert path.shape == (5, 4) and torch.allclose(path[0], z[0]) and torch.allclose(path[-1], z[1])


def test_rows_joining_a_running_batch_draw_the_same_tokens_as_alone():
    """Continuous batching: requests that arrive while others decode join the batch at the next step."""
    model = tiny_gpt_model()
    asks = [dict(seed=1, prompt="hi", max_new_tokens=60), dict(seed=2, prompt="later", max_new_tokens=30),
            dict(seed=3, max_new_tokens=50, top_k=3)]
    alone = [run(model, text_plan(model, 1, **a).rows)[0].tokens for a in asks]
    arrivals = {5: text_plan(model, 1, **asks[1]).rows, 12: text_plan(model, 1, **asks[2]).rows}
    calls = []

    def more(active):
        calls.append(active)
        return arrivals.pop(len(calls), [])

    together = run(model, text_plan(model, 1, **asks[0]).rows, more=more)
    assert [t.tokens for t in together] == alone
    assert max(calls) == 3                                               # all three decoded at once


def test_a_row_cancelled_as_it_joins_leaves_the_others_unchanged():
    import threading

    model = tiny_gpt_model()
    asks = [dict(seed=1, prompt="hi", max_new_tokens=50), dict(seed=2, max_new_tokens=40)]
    alone = [run(model, text_plan(model, 1, **a).rows)[0].tokens for a in asks]
    gone = text_plan(model, 1, seed=3, max_new_tokens=40).rows
    gone[0].cancelled = threading.Event()
    gone[0].cancelled.set()
    arrivals = {4: gone + text_plan(model, 1, **asks[1]).rows}
    calls = []
    together = run(model, text_plan(model, 1, **asks[0]).rows,
                   more=lambda active: calls.append(active) or arrivals.pop(len(calls), []))
    assert [t.tokens for t in together] == [alone[0], [], alone[1]]
    assert together[1].finish_reason == "cancelled"


def test_text_decoded_token_by_token_equals_the_whole_decode_across_split_characters():
    """The tracker decodes only the ids after the last whole character; byte-level BPE tokens can end inside a
    multi-byte character (é, 東), and the text must equal one decode of every id, stop strings included."""
    pytest.importorskip("tokenizers")
    from genforge.data.text.tokenizer import BPETokenizer
    from genforge.generation.text import Row, _Tracker

    text = "naïve café: 東京 and Zürich, ünïcödé!\n" * 3
    tok = BPETokenizer.train("plain ascii words only\n" * 50, 260)   # no merges for the accents: bytes
    ids = tok.encode(text)
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)      # some tokens split a character
    row = Row([], None, {}, 10_000, ())
    tracker = _Tracker(row, tok)
    for i in ids:
        assert not tracker.add(i, lambda t: False)
        assert tracker.text == tok.decode(tracker.ids)
    stop = _Tracker(Row([], None, {}, 10_000, ("東京",)), tok)
    assert any(stop.add(i, lambda t: False) for i in ids) and stop.text == "naïve café: " and stop.reason == "stop"


def test_a_run_that_keeps_nothing_hands_each_sample_to_on_done_and_forgets_it():
    """The server's run lasts as long as the server: with keep=False finished rows are not kept (they used
    to pile up, request after request), and each sample still reaches its row's on_done."""
    model = tiny_gpt_model()
    rows = text_plan(model, 3, seed=4, max_new_tokens=12).rows
    got = []
    for r in rows:
        r.on_done = got.append
    assert run(model, rows, keep=False) == []
    assert [s.tokens for s in got] == [s.tokens for s in run(model, text_plan(model, 3, seed=4, max_new_tokens=12).rows)]
