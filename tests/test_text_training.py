"""Text through the one core: a training step of each text family in the loop, exact resume, the model file
with its tokenizer.json, the same text from the CLI and Python for a seed, and the bad inputs of training."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

import genforge
from genforge.cli import main
from genforge.config import from_dict
from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.training import check_config, train

WORDS = "the king queen lord lady love death night day sword crown heart fair foul sweet".split()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Twelve small documents of SPEAKER: lines, as a text:DIR spec."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(12):
        speeches = [f"{rng.choice(['ROMEO', 'JULIET'])}:\n" + " ".join(rng.choice(WORDS) for _ in range(6))
                    for _ in range(25)]
        (root / f"doc{i:02d}.txt").write_text("\n\n".join(speeches) + "\n")
    return f"text:{root}"


TINY = {
    "gpt": {"text_unit": "window", "text_context": 32, "text_n_layer": 1, "text_n_head": 2, "text_n_embd": 16,
            "g_betas": [0.9, 0.99], "ema_decay": 0.0},
    "sentence-vae": {"text_unit": "line", "text_context": 48, "z_dim": 4, "text_n_embd": 8, "text_rnn_hidden": 16,
                     "kl_anneal_steps": 4},
}


def config(corpus, model, **overrides):
    values = {"data": corpus, "model": model, "batch_size": 8, "max_steps": 4, "log_every": 2, "sample_every": 0,
              "checkpoint_every": 2, "grid_n": 2, "tensorboard": False, "num_threads": 1, "g_lr": 3e-3,
              **TINY[model], **overrides}
    return check_config(from_dict(values, "test"), "test")


@pytest.mark.parametrize("model", sorted(TINY))
def test_a_training_run_of_each_text_family_loads_and_samples(corpus, model, tmp_path):
    result = train(config(corpus, model), tmp_path / "run", quiet=True)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 4 and all(l["loss"] == l["loss"] for l in logs)       # finite losses were logged
    if model == "sentence-vae":
        assert {"elbo", "kl", "rec", "kl_weight"} <= set(logs[-1])            # the ELBO and its KL, reported
    ckpt = result.checkpoint
    assert (ckpt / "tokenizer.json").is_file()                                  # the tokenizer beside the weights
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["modality"] == "text" and meta["net_options"]["vocab_size"] == meta["transform"]["vocab_size"]
    assert meta["transform"]["tokenizer_sha256"] == hashlib.sha256((ckpt / "tokenizer.json").read_bytes()).hexdigest()
    m = genforge.load(tmp_path / "run")
    out = m.sample(3, seed=2, max_new_tokens=20)
    assert len(out.texts) == 3 and out.texts == m.sample(3, seed=2, max_new_tokens=20).texts
    assert (tmp_path / "run" / "samples").is_dir()                              # the loop's text card


def test_gpt_resume_continues_exactly(corpus, tmp_path):
    straight = train(config(corpus, "gpt"), tmp_path / "straight", quiet=True)
    train(config(corpus, "gpt", max_steps=2), tmp_path / "resumed", quiet=True)
    resumed = train(config(corpus, "gpt"), tmp_path / "resumed", resume=True, quiet=True)
    a = (straight.checkpoint / "model.safetensors").read_bytes()
    b = (resumed.checkpoint / "model.safetensors").read_bytes()
    assert resumed.step == straight.step == 4 and a == b


def test_the_same_seed_gives_the_same_text_from_the_cli_and_python(corpus, tmp_path):
    train(config(corpus, "gpt"), tmp_path / "run", quiet=True)
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--seed", "5", "--prompt", "ROMEO:\n",
                 "--max-new-tokens", "24", "--top-k", "5", "--stop", "JULIET", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    py = genforge.load(tmp_path / "run").sample(2, seed=5, prompt="ROMEO:\n", max_new_tokens=24, top_k=5,
                                                stop=["JULIET"])
    assert [line["text"] for line in lines] == py.texts and lines[0]["prompt"] == "ROMEO:\n"
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--out", str(tmp_path / "s.txt")]) == 0
    assert "--- sample 1" in (tmp_path / "s.txt").read_text()


def test_training_on_a_corpus_shorter_than_the_context_is_refused(tmp_path):
    (tmp_path / "tiny.txt").write_text("ab\n\ncd\n")
    cfg = from_dict({"data": f"text:{tmp_path / 'tiny.txt'}", "model": "gpt", "text_context": 64,
                     "val_fraction": 0.0, "test_fraction": 0.0, "tensorboard": False}, "test")
    with pytest.raises(DataError, match="fewer than one window of context \\+ 1 = 65"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()                                      # nothing written


def test_a_text_model_and_data_of_another_modality_do_not_mix(corpus):
    with pytest.raises(GenforgeError, match="model 'gpt' makes examples of axes \\(t\\)"):
        check_config(from_dict({"data": "mnist5k", "model": "gpt"}, "test"), "test")
    with pytest.raises(GenforgeError, match="model 'sentence-vae' trains on text_unit 'line'"):
        check_config(from_dict({"data": corpus, "model": "sentence-vae"}, "test"), "test")
    with pytest.raises(GenforgeError, match="'text_n_embd' \\(10\\) must be a multiple of 'text_n_head' \\(4\\)"):
        check_config(from_dict({"data": corpus, "model": "gpt", "text_n_embd": 10, "text_n_head": 4}, "test"),
                     "test")


def test_a_tokenizer_file_swapped_or_mismatched_is_refused(corpus, tmp_path):
    result = train(config(corpus, "gpt", max_steps=2), tmp_path / "run", quiet=True)
    tok_file = result.checkpoint / "tokenizer.json"
    original = tok_file.read_text()
    tok_file.write_text(original.replace('"chars": [', '"chars": ["\\u2603", '))
    with pytest.raises(ModelFileError, match="tokenizer.json: SHA-256 does not match config.json"):
        genforge.load(tmp_path / "run")
    # the same swap with its hash rewritten: refused because its vocabulary is not the network's
    meta = json.loads((result.checkpoint / "config.json").read_text())
    meta["transform"]["tokenizer_sha256"] = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    (result.checkpoint / "config.json").write_text(json.dumps(meta))
    with pytest.raises(GenforgeError, match="tokenizer.json: its vocabulary has .* tokens but the model was "
                                            "trained with"):
        genforge.load(tmp_path / "run")
