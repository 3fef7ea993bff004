"""Speech enhancement: the scores on known cases, mixtures at an exact SNR, the classical baselines improving
white noise, and the genforge denoiser's training step and file round trip."""

from __future__ import annotations

import numpy as np
import pytest

from genforge.apps import enhance
from genforge.errors import GenforgeError, ModelFileError

RATE = enhance.RATE


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Harmonic syllables (a 120-220 Hz voice with five harmonics) separated by pauses, as speech has."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = np.zeros(n)
    pos = 0
    while pos < n:
        length, pause = int(rng.uniform(0.1, 0.3) * RATE), int(rng.uniform(0.05, 0.2) * RATE)
        f0 = rng.uniform(120, 220)
        seg = slice(pos, min(n, pos + length))
        x[seg] = sum(np.sin(2 * np.pi * k * f0 * t[seg]) / k for k in range(1, 6)) * np.hanning(seg.stop - seg.start)
        pos += length + pause
    return (0.3 * x).astype(np.float32)


def test_si_sdr_on_known_cases():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(8000)
    n = rng.standard_normal(8000)
    s, n = s - s.mean(), n - n.mean()                # SI-SDR compares zero-mean signals
    n -= (n @ s) / (s @ s) * s                       # orthogonal to s: SI-SDR is then exactly the SNR
    n *= np.sqrt((s @ s) / (n @ n) / 10)             # 10 dB below
    assert enhance.si_sdr(s + n, s) == pytest.approx(10.0, abs=1e-6)
    assert enhance.si_sdr(3.0 * (s + n), s) == pytest.approx(10.0, abs=1e-6)   # scale does not matter
    assert enhance.si_sdr(s, s) > 100


def test_a_mixture_has_the_snr_asked_for():
    clean, noise = speechlike(1.0, 0), np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    for snr in enhance.SNRS:
        noisy = enhance.mix(clean, noise, snr)
        residual = noisy - clean
        assert 10 * np.log10(np.mean(clean ** 2) / np.mean(residual ** 2)) == pytest.approx(snr, abs=0.01)


def test_the_classical_baselines_improve_white_noise():
    clean = speechlike(2.0, 2)
    noisy = enhance.mix(clean, np.random.default_rng(3).standard_normal(len(clean)).astype(np.float32), 0)
    before = enhance.si_sdr(noisy, clean)
    assert enhance.si_sdr(enhance.spectral_subtraction(noisy), clean) > before + 2
    assert enhance.si_sdr(enhance.wiener(noisy, 7), clean) > before + 2


def test_stoi_ranks_clean_above_noisy():
    pytest.importorskip("pystoi")
    clean = speechlike(3.0, 4)
    noisy = enhance.mix(clean, np.random.default_rng(5).standard_normal(len(clean)).astype(np.float32), -5)
    assert enhance.stoi(clean, clean) > 0.99 > enhance.stoi(noisy, clean)


def test_the_noise_kinds(tmp_path):
    rng = np.random.default_rng(0)
    prompts = [speechlike(1.0, i) for i in range(4)]
    bank = enhance.NoiseBank(prompts, drums=np.stack([speechlike(0.2, 9)] * 3))
    for kind in enhance.NOISES:
        n = bank.draw(kind, 4000, rng, exclude=0)
        assert n.shape == (4000,) and np.abs(n).max() > 0
    with pytest.raises(GenforgeError, match="noise must be one of white, drums, babble"):
        bank.draw("pink", 4000, rng)


def test_the_denoiser_trains_saves_and_loads(tmp_path):
    prompts = [speechlike(1.0, i) for i in range(6)]
    drums = np.stack([speechlike(0.2, 10 + i) for i in range(3)])
    data = enhance.EnhancementData(prompts[:4], prompts[4:5], prompts[5:], names={}, drums={"train": drums,
                                   "val": drums, "test": drums})
    cfg = enhance.DenoiserConfig(batch_size=2, crop=2048)
    den = enhance.train_denoiser(tmp_path / "den", max_seconds=60, max_steps=3, cfg=cfg, data=data, progress=False)
    assert den.meta["steps"] == 3
    noisy = enhance.mix(prompts[5], np.random.default_rng(0).standard_normal(8000).astype(np.float32), 5)
    out = den.enhance(noisy)
    assert out.shape == noisy.shape and np.isfinite(out).all()
    again = enhance.load_denoiser(tmp_path / "den")
    assert np.array_equal(again.enhance(noisy), out)                  # the same weights, the same output
    with pytest.raises(GenforgeError, match="expected one channel"):
        den.enhance(np.zeros((2, 4000), np.float32))
    weights = tmp_path / "den" / "denoiser.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="SHA-256 does not match"):
        enhance.load_denoiser(tmp_path / "den")


def test_genforge_repair_denoises_a_wav_and_refuses_bad_input_by_name(tmp_path, capsys, monkeypatch):
    from genforge.cli import main
    from genforge.data.audio.wav import read_audio, read_info, write_wav

    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    clean = speechlike(2.0, 6)
    noisy = enhance.mix(clean, np.random.default_rng(7).standard_normal(len(clean)).astype(np.float32), 0)
    write_wav(tmp_path / "noisy.wav", noisy, RATE)
    out = tmp_path / "clean.wav"
    assert main(["repair", "spectral-subtraction", str(tmp_path / "noisy.wav"), "--task", "denoise",
                 "--out", str(out)]) == 0
    fixed, _ = read_audio(out, RATE)
    assert enhance.si_sdr(fixed, clean) > enhance.si_sdr(noisy, clean) + 2
    assert '"task": "denoise"' in read_info(out)["ICMT"]
    assert str(out) in (tmp_path / "ledger.jsonl").read_text()
    from genforge.generation.provenance import verify

    assert verify(out).verified and verify(out).metadata["task"] == "denoise"
    altered = bytearray(out.read_bytes())
    altered[100] ^= 1                                                  # one sample changed
    (tmp_path / "altered.wav").write_bytes(bytes(altered))
    assert not verify(tmp_path / "altered.wav").verified
    before = out.read_bytes()
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVE")
    assert main(["repair", "wiener", str(tmp_path / "broken.wav"), "--task", "denoise", "--out", str(out)]) == 2
    assert "broken.wav" in capsys.readouterr().err
    assert out.read_bytes() == before                                  # nothing already written is lost
    assert main(["repair", "wiener", str(tmp_path / "noisy.wav"), "--task", "inpaint", "--out", str(out)]) == 2
    assert "--task denoise only" in capsys.readouterr().err


def test_genforge_train_speech_denoiser_then_repair_with_it(tmp_path, capsys, monkeypatch):
    from genforge.cli import main
    from genforge.data.audio.wav import read_audio, write_wav

    prompts = [speechlike(1.0, i) for i in range(6)]
    drums = np.stack([speechlike(0.2, 10 + i) for i in range(3)])
    data = enhance.EnhancementData(prompts[:4], prompts[4:5], prompts[5:], names={}, drums={"train": drums,
                                   "val": drums, "test": drums})
    monkeypatch.setattr(enhance, "load_enhancement_data", lambda seed=0: data)   # no Asterisk package needed
    monkeypatch.setenv("GENFORGE_LEDGER", str(tmp_path / "ledger.jsonl"))
    run = tmp_path / "den"
    assert main(["train", "speech-denoiser", "--out", str(run), "--max-steps", "2", "--seed", "3"]) == 0
    assert "speech-denoiser: 2 steps" in capsys.readouterr().out
    den = enhance.load_denoiser(run)
    assert den.meta["steps"] == 2 and den.cfg.seed == 3
    write_wav(tmp_path / "noisy.wav", prompts[5], RATE)
    assert main(["repair", str(run), str(tmp_path / "noisy.wav"), "--task", "denoise",
                 "--out", str(tmp_path / "clean.wav")]) == 0
    assert read_audio(tmp_path / "clean.wav", RATE)[0].shape == prompts[5].shape
    # an existing model is never overwritten; loop-only flags are refused by name
    before = (run / "denoiser.safetensors").read_bytes()
    assert main(["train", "speech-denoiser", "--out", str(run), "--max-steps", "2"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert (run / "denoiser.safetensors").read_bytes() == before
    (tmp_path / "file").write_text("mine")
    assert main(["train", "speech-denoiser", "--out", str(tmp_path / "file"), "--max-steps", "1"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"
    assert main(["train", "speech-denoiser", "--out", str(tmp_path / "x"), "--batch-size", "4"]) == 2
    assert "only --out, --max-seconds, --max-steps and --seed apply to it (got --batch-size)" in capsys.readouterr().err
    assert main(["recipes"]) == 0
    assert "speech-denoiser" in capsys.readouterr().out
