"""Image to speech: a training step on (image, clip) pairs, the model file's round trip, `genforge sample RUN
--from-image digit.png --out say.wav`, and an image of the wrong size refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from genforge.apps import image_to_speech as i2s
from genforge.data import load_splits
from genforge.data.audio import AudioSet, read_info
from genforge.data.audio.wav import read_audio
from genforge.errors import DataError, GenforgeError, ModelFileError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three training steps on 40 mnist5k images and tone 'clips' (digit d: a 200 + 100 d Hz tone)."""
    images = load_splits("mnist5k", image_size=28, channels=1).train
    images.x, images.y = images.x[:40], images.y[:40]
    t = np.arange(i2s.LENGTH) / i2s.RATE
    clips = AudioSet(np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * d) * t) for d in range(10)]).astype(np.float32),
                     np.arange(10), [])
    out = tmp_path_factory.mktemp("say")
    model = i2s.train_image_to_speech(out, max_seconds=60, max_steps=3, cfg=i2s.SpeechConfig(batch_size=4, width=8),
                                      images=images, clips=clips, progress=False)
    return out, model, images


def test_a_model_says_an_image_and_round_trips(run):
    out, model, images = run
    assert model.meta["steps"] == 3
    wave = model.say(images.x[0, ..., 0], seed=1)
    assert wave.shape == (i2s.LENGTH,) and wave.dtype == np.float32 and np.abs(wave).max() <= 1
    again = i2s.load_image_to_speech(out)
    assert np.array_equal(again.say(images.x[0, ..., 0], seed=1), wave)       # same file, seed: same speech


def test_genforge_sample_from_image_writes_a_wav(run, tmp_path, monkeypatch):
    from genforge.cli import main

    out, model, images = run
    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    Image.fromarray(images.x[0, ..., 0]).save(tmp_path / "digit.png")
    assert main(["sample", str(out), "--from-image", str(tmp_path / "digit.png"), "--out",
                 str(tmp_path / "say.wav")]) == 0
    wave, _ = read_audio(tmp_path / "say.wav", i2s.RATE)
    assert len(wave) == i2s.LENGTH
    info = read_info(tmp_path / "say.wav")
    assert "digit.png" in info["ICMT"] and model.meta["weights_sha256"] in info["ICMT"]


def test_an_image_of_the_wrong_size_is_refused_by_name(run, tmp_path, capsys):
    from genforge.cli import main

    out, _, _ = run
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="big.png: image of 32x32 pixels; image-to-speech takes the 28x28"):
        i2s.read_digit_image(tmp_path / "big.png")
    assert main(["sample", str(out), "--from-image", str(tmp_path / "big.png"), "--out",
                 str(tmp_path / "say.wav")]) == 2
    assert "big.png: image of 32x32" in capsys.readouterr().err and not (tmp_path / "say.wav").exists()
    (tmp_path / "fake.png").write_bytes(b"not a picture")
    with pytest.raises(DataError, match="fake.png: not a readable image"):
        i2s.read_digit_image(tmp_path / "fake.png")


def test_an_altered_model_file_is_refused(run, tmp_path):
    import shutil

    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    raw = bytearray((copy / "speech.safetensors").read_bytes())
    raw[-1] ^= 1
    (copy / "speech.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        i2s.load_image_to_speech(copy)


def test_genforge_train_image_to_speech_by_name(run, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from genforge.cli import main

    _, _, images = run
    t = np.arange(i2s.LENGTH) / i2s.RATE
    clips = AudioSet(np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * d) * t) for d in range(10)]).astype(np.float32),
                     np.arange(10), [])
    # the spoken digits need espeak-ng (genforge data make spoken-digits): tones stand in for them here
    monkeypatch.setattr(i2s, "load_audio", lambda spec, rate, length: SimpleNamespace(train=clips))
    monkeypatch.setattr(i2s, "load_splits", lambda spec, image_size, channels: SimpleNamespace(train=images))
    out = tmp_path / "say"
    assert main(["train", "image-to-speech", "--out", str(out), "--max-steps", "2", "--quiet"]) == 0
    model = i2s.load_image_to_speech(out)
    assert model.meta["steps"] == 2 and model.meta["audio_data"] == "audio:spoken-digits"
    assert main(["train", "image-to-speech", "--out", str(tmp_path / "y"), "--resume", str(out)]) == 2
    assert "only --out, --max-seconds, --max-steps and --seed apply" in capsys.readouterr().err


def test_the_kl_term_is_that_of_two_gaussians():
    import torch

    g = torch.Generator().manual_seed(0)
    mu, logvar, p_mu, p_logvar = (torch.randn(5, 4, generator=g) for _ in range(4))
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                             torch.distributions.Normal(p_mu, (0.5 * p_logvar).exp()))
    assert torch.allclose(i2s.gaussian_kl(mu, logvar, p_mu, p_logvar), want, atol=1e-5)
    zero = torch.zeros(5, 4)  # against N(0, I): the usual VAE term
    assert torch.allclose(i2s.gaussian_kl(mu, logvar, zero, zero),
                          -0.5 * (1 + logvar - mu ** 2 - logvar.exp()), atol=1e-6)


def test_the_latent_is_drawn_from_the_prior_of_the_image(run):
    """A learnt prior p(z | e): say() decodes z = mu(e) + sigma(e) n, so moving the prior moves the speech."""
    import torch

    out, model, images = run
    assert model.cfg.prior == "learned" and model.net.prior is not None
    img = images.x[:2, ..., 0]
    before = model.say(img, seed=4, sample_from="prior")
    bias = model.net.prior[-1].bias
    kept = bias.detach().clone()
    with torch.no_grad():
        bias[: model.cfg.z_dim] += 3.0  # shift the prior's mean
    try:
        assert not np.allclose(model.say(img, seed=4, sample_from="prior"), before)
        assert np.array_equal(model.say(img, seed=4), model.say(img, seed=4))  # the bank does not read the prior
    finally:
        with torch.no_grad():
            bias.copy_(kept)
    assert np.array_equal(model.say(img, seed=4, sample_from="prior"), before)


def test_the_neighbour_bank_holds_every_training_pair_and_say_decodes_a_near_one(run):
    """The bank: each training image's unit embedding and the posterior mean of a clip of its digit; saying an
    image decodes the z of one of its k nearest bank images (cosine), with the image's own embedding."""
    import torch

    out, model, images = run
    net, x = model.net, images.x[..., 0]
    assert model.cfg.sample_from == "neighbours" and model.meta["bank_size"] == len(x) == len(net.bank_z)
    e = model.embed(x)
    assert torch.allclose(net.bank_e, torch.nn.functional.normalize(e, dim=1), atol=1e-6)
    clips = torch.stack([i2s.to_picture(torch.from_numpy(np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * int(d))
                                                                                 * np.arange(i2s.LENGTH) / i2s.RATE)
                                                                   ]).astype(np.float32)))[0] for d in images.y])
    with torch.no_grad():  # the tone clips: one per digit, so each image's pair is the tone of its digit
        assert torch.allclose(net.bank_z, net.encode(clips, e)[0], atol=1e-4)
    # k = 1: a training image's nearest bank image is itself, so its z is its own pair's
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(net.neighbour_z(e, 1, gen), net.bank_z)
    # k = 3: always one of the three nearest, and the seed decides which
    near = (torch.nn.functional.normalize(e, dim=1) @ net.bank_e.T).topk(3, dim=1).indices
    z = net.neighbour_z(e, 3, torch.Generator().manual_seed(5))
    assert all(any(torch.equal(z[i], net.bank_z[j]) for j in near[i]) for i in range(len(x)))
    assert torch.equal(z, net.neighbour_z(e, 3, torch.Generator().manual_seed(5)))
    # moving the bank rows near an image moves its speech; the speech is the decoding of a bank z
    img = x[:1]
    before = model.say(img, seed=2)
    kept = net.bank_z.clone()
    try:
        with torch.no_grad():
            net.bank_z += 5.0
        assert not np.allclose(model.say(img, seed=2), before)
    finally:
        with torch.no_grad():
            net.bank_z.copy_(kept)
    assert np.array_equal(model.say(img, seed=2), before)


def test_a_file_made_before_the_learnt_prior_still_loads_and_a_bad_prior_is_refused(tmp_path):
    import json

    images = load_splits("mnist5k", image_size=28, channels=1).train
    images.x, images.y = images.x[:20], images.y[:20]
    t = np.arange(i2s.LENGTH) / i2s.RATE
    clips = AudioSet(np.stack([0.3 * np.sin(2 * np.pi * (200 + 100 * d) * t) for d in range(10)]).astype(np.float32),
                     np.arange(10), [])
    out = tmp_path / "old"
    model = i2s.train_image_to_speech(out, max_seconds=60, max_steps=2,
                                      cfg=i2s.SpeechConfig(batch_size=4, width=8, prior="standard",
                                                           sample_from="prior"),
                                      images=images, clips=clips, progress=False)
    said = model.say(images.x[0, ..., 0], seed=2)
    meta = json.loads((out / "speech.json").read_text())
    assert meta["bank_size"] == 0 and not hasattr(model.net, "bank_z")
    del meta["config"]["prior"], meta["config"]["sample_from"], meta["config"]["neighbours"], meta["bank_size"]
    (out / "speech.json").write_text(json.dumps(meta))  # as the first version wrote it
    old = i2s.load_image_to_speech(out)
    assert old.cfg.prior == "standard" and old.net.prior is None and old.cfg.sample_from == "prior"
    with pytest.raises(GenforgeError, match="has no neighbour bank"):
        old.say(images.x[0, ..., 0], sample_from="neighbours")
    with pytest.raises(GenforgeError, match="sample_from 'posterior' is neither"):
        old.say(images.x[0, ..., 0], sample_from="posterior")
    assert np.array_equal(old.say(images.x[0, ..., 0], seed=2), said)
    del meta["config"]["temperature"]  # nor did it write a temperature: the prior's full spread
    (out / "speech.json").write_text(json.dumps(meta))
    assert i2s.load_image_to_speech(out).cfg.temperature == 1.0
    for key, value, message in (("prior", "flat", "prior 'flat'"), ("temperature", -1, "temperature -1"),
                                ("sample_from", "anywhere", "sample_from 'anywhere'"),
                                ("neighbours", 0, "neighbours 0")):
        (out / "speech.json").write_text(json.dumps({**meta, "config": {**meta["config"], key: value}}))
        with pytest.raises(ModelFileError, match=f"field 'config' is malformed .*{message}"):
            i2s.load_image_to_speech(out)
    # a bank the config does not call for, or a neighbours model without one
    for extra in ({"bank_size": 5}, {"bank_size": 0, "config": {**meta["config"], "sample_from": "neighbours"}},
                  {"bank_size": "5"}):
        (out / "speech.json").write_text(json.dumps({**meta, **extra}))
        with pytest.raises(ModelFileError, match="field 'bank_size' must be a whole number"):
            i2s.load_image_to_speech(out)
