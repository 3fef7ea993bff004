"""Audio data: WAV writing and reading, every bad input of issue #17 as a one-line error naming the file, the
log-mel / Griffin-Lim round trip on a known tone, the sources (espeak-ng, drum kits, a user's folder)."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import torch

from genforge.data.audio import DIGIT_NAMES, load_audio, parse_audio_spec
from genforge.data.audio import spoken_digits
from genforge.data.audio.features import MelSpec, spectral_convergence
from genforge.data.audio.sources import DRUMS_DIR, drum_label
from genforge.data.audio.wav import read_audio, read_info, wav_bytes, write_wav
from genforge.errors import DataError

sf = pytest.importorskip("soundfile")
RATE = 16000


def tone(freq=440.0, seconds=1.0, rate=RATE, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------------------------------ writing/reading


def test_a_written_wav_reads_back_with_its_info_chunk(tmp_path):
    x = tone()
    path = write_wav(tmp_path / "a.wav", x, RATE, {"INAM": "a tone", "ICMT": '{"seed": 7}'})
    y, notes = read_audio(path, RATE)
    assert notes == [] and y.shape == x.shape
    assert np.abs(y - x).max() <= 1 / 32767 + 1e-6      # 16-bit rounding only
    assert read_info(path) == {"INAM": "a tone", "ICMT": '{"seed": 7}'}
    y2, rate = sf.read(path)                           # another reader agrees: the file is a standard WAV
    assert rate == RATE and np.allclose(y2, y, atol=1e-6)


def test_writing_clips_instead_of_wrapping(tmp_path):
    y, _ = read_audio(write_wav(tmp_path / "loud.wav", np.array([2.0, -2.0, 0.5], np.float32), RATE), RATE)
    assert y[0] == pytest.approx(1.0, abs=1e-4) and y[1] == pytest.approx(-1.0, abs=1e-4)


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = write_wav(tmp_path / "keep.wav", tone(), RATE)
    before = path.read_bytes()
    with pytest.raises(DataError, match="one channel"):
        write_wav(path, np.zeros((2, 100), np.float32), RATE)
    assert path.read_bytes() == before


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "PCM_32"])
def test_24_bit_and_float_wavs_read_as_the_same_audio(tmp_path, subtype):
    x = tone()
    sf.write(tmp_path / "x.wav", x, RATE, subtype=subtype)
    y, _ = read_audio(tmp_path / "x.wav", RATE)
    assert np.abs(y - x).max() < 1e-4


def test_a_flac_reads(tmp_path):
    sf.write(tmp_path / "x.flac", tone(), RATE)
    y, _ = read_audio(tmp_path / "x.flac", RATE)
    assert np.abs(y - tone()).max() < 1e-3


# ------------------------------------------------------------------------------------------ bad input


def _wav(tmp_path, name="bad.wav"):
    return tmp_path / name, bytearray(wav_bytes(tone(), RATE))


def test_truncated_wav(tmp_path):
    path, data = _wav(tmp_path)
    path.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(DataError, match=f"{path}: truncated"):
        read_audio(path, RATE)


def test_lying_header(tmp_path):
    path, data = _wav(tmp_path)
    riff = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, 40, riff * 4)   # the data chunk claims four times the file
    struct.pack_into("<I", data, 4, riff)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: truncated: chunk 'data' claims"):
        read_audio(path, RATE)
    path2, data2 = _wav(tmp_path, "odd.wav")
    struct.pack_into("<I", data2, 40, 31999)     # not a whole number of 2-byte frames
    path2.write_bytes(bytes(data2))
    with pytest.raises(DataError, match=f"{path2}: .*(header lies|claims)"):
        read_audio(path2, RATE)


def test_empty_wav_and_empty_data(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav: empty file"):
        read_audio(tmp_path / "empty.wav", RATE)
    head = wav_bytes(np.zeros(2, np.float32), RATE)
    nodata = bytearray(head[:40]) + struct.pack("<I", 0)
    struct.pack_into("<I", nodata, 4, len(nodata) - 8)
    (tmp_path / "nodata.wav").write_bytes(bytes(nodata))
    with pytest.raises(DataError, match="nodata.wav: empty"):
        read_audio(tmp_path / "nodata.wav", RATE)


def test_a_non_audio_file_with_a_wav_name(tmp_path):
    path = tmp_path / "photo.wav"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(DataError, match=f"{path}: not a WAV file"):
        read_audio(path, RATE)


def test_stereo_where_mono_is_configured(tmp_path):
    sf.write(tmp_path / "st.wav", np.stack([tone(), tone(880)], 1), RATE)
    with pytest.raises(DataError, match="st.wav: 2 channels where mono is configured"):
        read_audio(tmp_path / "st.wav", RATE)
    y, notes = read_audio(tmp_path / "st.wav", RATE, on_stereo="mix")
    assert np.allclose(y, (tone() + tone(880)) / 2, atol=1e-4) and "averaged to mono" in notes[0]


def test_an_unexpected_sample_rate_is_resampled_with_a_note_or_refused(tmp_path):
    sf.write(tmp_path / "r8k.wav", tone(1000, rate=8000), 8000)
    y, notes = read_audio(tmp_path / "r8k.wav", RATE)
    assert len(y) == RATE and notes == ["r8k.wav: resampled from 8000 Hz to 16000 Hz"]
    assert np.argmax(np.abs(np.fft.rfft(y))) == 1000   # still a 1 kHz tone (1 Hz bins over one second)
    with pytest.raises(DataError, match="r8k.wav: sample rate 8000 Hz, the config expects 16000 Hz"):
        read_audio(tmp_path / "r8k.wav", RATE, on_rate="refuse")


def test_silence_and_nan_samples(tmp_path):
    write_wav(tmp_path / "quiet.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(DataError, match="quiet.wav: pure silence"):
        read_audio(tmp_path / "quiet.wav", RATE)
    x = tone()
    x[100:110] = np.nan
    sf.write(tmp_path / "nan.wav", x, RATE, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav: 10 sample\\(s\\) are NaN"):
        read_audio(tmp_path / "nan.wav", RATE)
    sf.write(tmp_path / "hot.wav", tone() * 3, RATE, subtype="FLOAT")
    with pytest.raises(DataError, match="hot.wav: floating-point samples reach 1.5"):
        read_audio(tmp_path / "hot.wav", RATE)


def test_a_folder_of_zero_files_and_a_folder_with_bad_files(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="none: a folder of zero audio files"):
        load_audio(f"audio:{tmp_path / 'none'}")
    root = tmp_path / "mine"
    for k, name in enumerate(["low", "high"]):
        for i in range(10):
            write_wav(root / name / f"{i}.wav", tone(200 + 800 * k + 10 * i, 0.5), RATE)
    (root / "low" / "broken.wav").write_bytes(b"RIFF")
    splits = load_audio(f"audio:{root}", length=RATE // 2)
    assert splits.class_names == ["high", "low"] and len(splits.train) + len(splits.val) + len(splits.test) == 20
    assert any("broken.wav" in n and "dropped" in n for n in splits.notes)
    with pytest.raises(DataError, match="broken.wav: not a WAV"):
        load_audio(f"audio:{root}", length=RATE // 2, on_bad="reject")


def test_espeak_ng_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="install the Debian package espeak-ng"):
        spoken_digits.make_spoken_digits(tmp_path / "sd", voices=10, progress=False)
    assert not (tmp_path / "sd").exists()


def test_spoken_digits_not_made_yet(tmp_path):
    with pytest.raises(DataError, match="genforge data make spoken-digits"):
        load_audio("audio:spoken-digits", voices_dir=tmp_path / "nothing")


def test_spec_forms():
    assert parse_audio_spec("audio:drums") == ("drums", None)
    assert parse_audio_spec("audio:./drums")[0] == "dir"
    for bad in ("", "audio:", "drums", "folder:x"):
        with pytest.raises(DataError, match="audio source spec"):
            parse_audio_spec(bad)


# ------------------------------------------------------------------------------------------ representations


def test_a_tone_lands_in_its_mel_band_and_griffin_lim_brings_it_back():
    spec = MelSpec(rate=RATE)
    x = torch.from_numpy(tone(440.0))[None]
    m = spec.log_mel(x)                                   # (1, 64, 126)
    assert m.shape == (1, 64, spec.frames(RATE))
    fb = spec.filterbank()
    centre = float((fb * torch.linspace(0, RATE / 2, fb.shape[1])).sum(1)[m[0].mean(1).argmax()]
                   / fb[m[0].mean(1).argmax()].sum())
    assert abs(centre - 440) < 60                         # the loudest band is the one around 440 Hz
    # Griffin-Lim from the true magnitude: nearly the same magnitude, and the same pitch
    y = spec.griffin_lim(spec.stft(x).abs(), RATE)
    assert spectral_convergence(y, x, spec) < 0.15
    # from the mel spectrogram (the lossy path every spectrogram model takes): still a 440 Hz tone
    z = spec.to_audio(m, RATE)[0].numpy()
    assert abs(int(np.argmax(np.abs(np.fft.rfft(z)))) - 440) <= 15
    assert spec.to_unit(m).min() >= -1 and spec.to_unit(m).max() <= 1
    assert torch.allclose(spec.from_unit(spec.to_unit(m)), m.clamp(spec.log_lo, spec.log_hi), atol=1e-4)


def test_mel_parameters_are_checked_and_round_trip():
    spec = MelSpec(rate=8000, n_fft=256, hop=64, n_mels=32, fmax=4000.0)
    assert MelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DataError, match="fmax"):
        MelSpec(rate=8000, fmax=6000.0)
    with pytest.raises(DataError, match="unknown mel parameter"):
        MelSpec.from_dict({"rate": 8000, "bogus": 1})


# ------------------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("name,label", [("bd_01", "kick"), ("EE_Kick_Hard_2", "kick"), ("sn3_04", "snare"),
                                        ("pearlsnarerimshot-soft", "snare"), ("hh2_03", "hihat"),
                                        ("sabianhatopen-med", "hihat"), ("t1_01", "tom"), ("pearltomfloor-hard", "tom"),
                                        ("29800__stomachache__3", "other"), ("crashride18bell-0", "cymbal"),
                                        ("rd_02", "cymbal"), ("EE_Conga_1", "other")])
def test_drum_labels_from_file_names(name, label):
    assert drum_label(name) == label


@pytest.mark.skipif(not DRUMS_DIR.is_dir(), reason="hydrogen-drumkits is not installed")
def test_the_drum_kits_load_with_every_class():
    splits = load_audio("audio:drums", length=4000)
    assert splits.class_names == ["kick", "snare", "hihat", "tom", "cymbal", "other"]
    assert np.bincount(splits.train.y, minlength=6).min() >= 20
    assert splits.train.x.dtype == np.float32 and splits.train.x.shape[1] == 4000


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_spoken_digits_are_made_seeded_and_split_by_voice(tmp_path):
    a = spoken_digits.make_spoken_digits(tmp_path / "a", voices=10, seed=3, progress=False)
    splits = load_audio("audio:spoken-digits", voices_dir=a)
    assert splits.class_names == DIGIT_NAMES                      # label k is the digit k
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 10, 10)
    voices = {p: {f.split("/")[-1] for f in getattr(splits, p).files} for p in ("train", "val", "test")}
    assert not (voices["train"] & voices["test"]) and not (voices["train"] & voices["val"])
    assert np.abs(splits.train.x).max(1).min() > 0.25              # every clip has speech in it
    b = spoken_digits.make_spoken_digits(tmp_path / "b", voices=10, seed=3, progress=False)
    assert (a / "three" / "v0004.wav").read_bytes() == (b / "three" / "v0004.wav").read_bytes()
    with pytest.raises(DataError, match="already holds a spoken-digits set"):
        spoken_digits.make_spoken_digits(a, voices=10, progress=False)
