"""Audio through the one core: each audio family for a step on tiny clips (spectrogram GAN, VAE and diffusion;
WaveGAN with phase shuffle), model files that record how samples become sound, every writer (.wav with its
provenance, a folder of WAVs, .npz, the spectrogram grid), and `genforge sample` / `genforge eval` on audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import genforge
from genforge.config import from_dict
from genforge.data.audio import read_info, write_wav
from genforge.data.audio.features import from_pictures, picture_spec, to_pictures
from genforge.data.audio.wav import read_audio
from genforge.errors import ConfigError
from genforge.generation import writers
from genforge.generation.provenance import verify
from genforge.models.wavegan import PhaseShuffle, WaveGANDiscriminator
from genforge.training import check_config, train

RATE, LENGTH = 8000, 2048
TINY = {"audio_rate": RATE, "audio_length": LENGTH, "audio_mels": 16, "z_dim": 8, "base_channels": 8,
        "batch_size": 8, "max_steps": 1, "log_every": 1, "sample_every": 0, "checkpoint_every": 1,
        "tensorboard": False, "num_threads": 1, "grid_n": 4}


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """A folder of two classes of quarter-second clips: low tones and high tones."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    t = np.arange(LENGTH) / RATE
    for name, lo, hi in (("high", 1500, 2500), ("low", 200, 400)):
        for i in range(12):
            write_wav(root / name / f"{i}.wav", 0.5 * np.sin(2 * np.pi * rng.uniform(lo, hi) * t), RATE)
    return root


def _train(tmp_path_factory, data: str, model: str, **extra):
    cfg = check_config(from_dict({"data": data, "model": model, **TINY, **extra}, "test"), "test")
    run = tmp_path_factory.mktemp("runs") / model
    train(cfg, run, quiet=True)
    return run


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory, tones):
    return _train(tmp_path_factory, f"audio:{tones}", "cdcgan", gan_loss="hinge", spectral_norm=True, d_norm="none")


def test_pictures_and_back():
    spec = picture_spec(16000, 16000, 64)
    assert (spec.n_mels, spec.frames(16000)) == (64, 64) and spec.n_fft >= 4 * spec.hop
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 600 * t)).astype(np.float32)[None]
    u = to_pictures(spec, x)
    assert u.shape == (1, 1, 64, 64) and -1 <= float(u.min()) and float(u.max()) <= 1
    y = from_pictures(spec, u, 16000)[0].numpy()
    # still a 600 Hz tone, to within the mel band around it (64 bands to 8 kHz: ~100 Hz wide there)
    assert abs(int(np.argmax(np.abs(np.fft.rfft(y)))) - 600) <= 80


@pytest.mark.parametrize("model,extra", [("dcgan", {}), ("vae-conv", {}), ("cddpm", {}),
                                         ("cvae-conv", {"recon_loss": "mse"})])
def test_each_spectrogram_family_trains_a_step_and_samples_sound(tmp_path_factory, tones, model, extra):
    run = _train(tmp_path_factory, f"audio:{tones}", model, **extra)
    m = genforge.load(run)
    assert m.modality.name == "audio" and m.example_shape == (1, 16, 16)
    assert m.meta["transform"]["kind"] == "audio-mel" and m.meta["transform"]["rate"] == RATE
    s = m.sample(3, seed=0, **({"steps": 2} if model == "cddpm" else {}))
    assert s.x.shape == (3, LENGTH) and s.x.dtype == np.float32 and np.abs(s.x).max() <= 1


@pytest.mark.parametrize("model", ["wavegan", "cwavegan"])
def test_wavegan_trains_a_step_on_waveforms(tmp_path_factory, tones, model):
    run = _train(tmp_path_factory, f"audio-wave:{tones}", model, gan_loss="hinge", spectral_norm=True,
                 d_norm="none")
    m = genforge.load(run)
    assert m.modality.name == "audio-wave" and m.example_shape == (1, LENGTH)
    s = m.sample(4, seed=3)
    assert s.x.shape == (4, LENGTH) and np.array_equal(s.x, genforge.load(run).sample(4, seed=3).x)


def test_phase_shuffle_moves_each_example_by_at_most_two_samples():
    torch.manual_seed(0)
    ps = PhaseShuffle(2).train()
    x = torch.arange(20.0).repeat(6, 3, 1)                               # (6, 3, 20)
    y = ps(x)
    shifts = (y[:, 0, 5] - x[:, 0, 5]).tolist()
    assert all(abs(s) <= 2 for s in shifts) and len(set(shifts)) > 1     # per example, not per batch
    assert torch.equal(y[:, 0], y[:, 2])                                 # every channel moved alike
    assert torch.equal(ps.eval()(x), x)
    d = WaveGANDiscriminator((1, 256), base_channels=4, norm="none")
    assert sum(isinstance(m, PhaseShuffle) for m in d.modules()) >= 2
    assert d(torch.zeros(2, 1, 256)).shape == (2,)


def test_griffin_lim_in_chunks_is_griffin_lim_on_the_whole_batch():
    """Clips go through Griffin-Lim a chunk at a time (for speed), every clip from the same starting phase, so
    neither the chunk size nor a clip's place in the batch changes its sound."""
    spec = picture_spec(8000, 2048, 16)
    t = np.arange(2048) / 8000
    x = np.stack([0.4 * np.sin(2 * np.pi * f * t) for f in (300, 700, 1100, 1900, 2500)]).astype(np.float32)
    mag = spec.stft(torch.from_numpy(x)).abs()
    whole = spec.griffin_lim(mag, 2048, n_iter=8, seed=3, chunk=len(x))
    for chunk in (1, 2, 3):
        assert torch.allclose(spec.griffin_lim(mag, 2048, n_iter=8, seed=3, chunk=chunk), whole, atol=1e-5)
    # a clip alone, or last of a reordered batch, sounds as it did third of the first batch
    assert torch.allclose(spec.griffin_lim(mag[2:3], 2048, n_iter=8, seed=3)[0], whole[2], atol=1e-5)
    assert torch.allclose(spec.griffin_lim(mag.flip(0), 2048, n_iter=8, seed=3)[2], whole[2], atol=1e-5)
    assert not torch.allclose(spec.griffin_lim(mag[2:3], 2048, n_iter=8, seed=4)[0], whole[2], atol=1e-3)
    assert spec.griffin_lim(mag[:0], 2048).shape == (0, 2048)


def test_cluster_guidance_on_spectrograms_reads_no_label_and_samples_channels_last(tmp_path_factory, tones,
                                                                                   tmp_path, monkeypatch):
    """clusters: K on audio clusters the log-mel pictures (the low and the high tones fall apart without their
    folder names being read); the model samples with no class and is scored as unconditional; a model trained
    channels_last samples channels_last."""
    import hashlib

    from genforge.data.clusters import VIEWS, cluster_labels
    from genforge.data.examples import load_examples
    from genforge.metrics import audio
    from genforge.modalities import AUDIO

    run = _train(tmp_path_factory, f"audio:{tones}", "cddpm", clusters=2, channels_last=True)
    m = genforge.load(run)
    assert m.cluster_prior is not None and m.meta["clusters"]["k"] == 2
    assert m.meta["clusters"]["method"].endswith("view level-free")
    conv = next(p for p in m.nets["denoiser"].parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    cfg = check_config(from_dict({"data": f"audio:{tones}", "model": "cddpm", **TINY}, "test"), "test")
    ex = load_examples(cfg, "-1,1")
    assert AUDIO.cluster_view == "level-free"  # each frame's level taken out: the spectral shape is clustered
    view = VIEWS["level-free"](ex)
    assert np.allclose(view.mean(axis=2), 0, atol=1e-5) and view.shape == ex.train_x.shape
    labels, _ = cluster_labels(view, 2, 0)
    assert len(set(zip(labels.tolist(), ex.train_y.tolist()))) == 2          # one cluster per tone
    assert m.meta["clusters"]["labels_sha256"] == hashlib.sha256(labels.astype(np.int64)).hexdigest()
    s = m.sample(4, seed=0, steps=2)
    assert s.x.shape == (4, LENGTH) and np.array_equal(s.x, genforge.load(run).sample(4, seed=0, steps=2).x)
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))
    ev = audio.train_audio_evaluator(m.meta["data"], audio.AudioRecipe(steps=20, batch_size=8), progress=False)
    audio.save_audio_evaluator(ev, audio.cache_dir())
    result = audio.evaluate_audio(m, n=8, progress=False, steps=2)
    assert "class_match" not in result["rows"][0][1] and result["rows"][0][1]["is"] >= 1
    # 1-D data has no pictures to cluster
    with pytest.raises(ConfigError, match="clusters pictures .* audio-wave data"):
        _train(tmp_path_factory, f"audio-wave:{tones}", "cddpm-1d", clusters=2)


def test_a_spectrogram_model_refuses_waveform_data(tones):
    with pytest.raises(ConfigError, match="audio-wave data"):
        check_config(from_dict({"data": f"audio-wave:{tones}", "model": "dcgan", **TINY}, "test"), "test")


def test_every_audio_writer(spec_run, tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    m = genforge.load(spec_run)
    s = m.sample(3, seed=1, classes="low")
    one = writers.write_samples(s, tmp_path / "all.wav", m)
    x, _ = read_audio(one, RATE)
    assert len(x) == 3 * LENGTH + 2 * int(0.25 * RATE)                   # three clips, two gaps
    meta = json.loads(read_info(one)["ICMT"])
    assert meta["seed"] == 1 and meta["classes"] == ["low"] * 3 and meta["weights_sha256"]
    assert verify(one).verified
    folder = writers.write_samples(s, tmp_path / "clips", m)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.wav", "00001.wav", "00002.wav"]
    assert json.loads(read_info(folder / "00001.wav")["ICMT"])["class"] == "low"
    with np.load(writers.write_samples(s, tmp_path / "s.npz", m)) as f:
        assert f["x"].dtype == np.float32 and f["x"].shape == (3, LENGTH) and f["y"].tolist() == [1, 1, 1]
        assert np.array_equal(f["x"], s.x)
    with Image.open(writers.write_samples(s, tmp_path / "grid.png", m)) as im:
        assert json.loads(im.text["genforge"])["kind"] == "spectrogram-grid"


def test_cli_samples_wavs_and_evals_audio(spec_run, tmp_path, capsys, monkeypatch):
    from genforge.cli import main
    from genforge.metrics import audio

    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    assert main(["sample", str(spec_run), "--n", "4", "--class", "high", "--out", str(tmp_path / "d")]) == 0
    assert len(list((tmp_path / "d").glob("*.wav"))) == 4
    # eval: a quick evaluator for the tone folder put in the cache first, so nothing heavy is trained here
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))
    spec = genforge.load(spec_run).meta["data"]
    ev = audio.train_audio_evaluator(spec, audio.AudioRecipe(steps=20, batch_size=8), progress=False)
    audio.save_audio_evaluator(ev, audio.cache_dir())
    capsys.readouterr()
    assert main(["eval", str(spec_run), "--n", "20", "--out", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "samples (20, seed 0)" in out and "real: train split vs test" in out and ev.sha256[:12] in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["evaluator"]["weights_sha256"] == ev.sha256 and result["rows"][0][1]["class_match"] >= 0
    # the ceiling row: the real test clips through this model's own mel picture and Griffin-Lim, heard by the
    # same evaluator against their true labels
    model = genforge.load(spec_run)
    out = model.output  # the model's rate and length (8 kHz, 2048 samples), not the evaluator's
    test = audio.load_audio(spec, rate=out.rate, length=out.length).test
    trip = dict(result["rows"])[f"real: test through the model's mel + Griffin-Lim ({len(test)})"]
    said = out((to_pictures(out.spec, test.x) + 1) / 2)
    heard = audio.to_evaluator(ev, said, out.rate)
    assert trip["class_match"] == pytest.approx(float((ev.classify(heard) == test.y).mean()))
    assert not np.allclose(said, test.x, atol=1e-3)  # it did go through the picture: not the clips themselves


def test_the_service_returns_wavs_that_are_the_cli_samples(spec_run, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import base64
    import io

    from fastapi.testclient import TestClient

    from genforge.serve.app import Served, ServeConfig, create_app

    m = genforge.load(spec_run)
    app = create_app({"tones": Served("tones", m, lambda: genforge.load(spec_run))}, ServeConfig(rate=0, auth=False))
    with TestClient(app) as client:
        r = client.post("/v1/generate", json={"model": "tones", "n": 2, "seed": 5, "class": "high"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["rate"] == RATE and len(body["audio"]) == 2 and len(body["images"]) == 2
        wav = tmp_path / "one.wav"
        wav.write_bytes(base64.b64decode(body["audio"][1]))
        x, _ = read_audio(wav, RATE)
        cli = m.sample(2, seed=5, classes="high").x[1]
        assert np.abs(x - cli).max() <= 1 / 32767 + 1e-6         # the same clip as genforge sample, in 16 bits
        assert json.loads(read_info(wav)["ICMT"])["seed"] == 5
        png = client.post("/v1/generate", json={"model": "tones", "n": 2, "seed": 5, "format": "png"})
        assert png.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(png.content)) as im:
            assert json.loads(im.text["genforge"])["kind"] == "spectrogram-grid"
        page = client.get("/static/app.js").text
        assert "data:audio/wav;base64," in page                   # the page plays what it gets
