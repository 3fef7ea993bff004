"""Speech enhancement: noisy speech in, clean speech out, against the classical baselines, scored by SI-SDR and STOI.

    denoiser = train_denoiser("runs/denoiser", max_seconds=300)          # a mask U-Net on noisy Asterisk prompts
    clean = denoiser.enhance(noisy)                                      # float32 (samples,) at 8 kHz
    clean = spectral_subtraction(noisy, 8000); clean = wiener(noisy)     # the classical baselines
    si_sdr(clean, reference), stoi(clean, reference, 8000)               # the scores

The task (``genforge repair --task denoise`` on a WAV): Asterisk's studio prompts (one speaker, 8 kHz) mixed
with white noise, drum hits (audio:drums) or babble (three to five other prompts at once) at 0, 5 and 10 dB
SNR. The prompts are split by file 80 / 10 / 10 (seed 0); babble is made from prompts of the same split, so
no test voice or sentence is heard in training.

The genforge denoiser is a small U-Net on the log-magnitude STFT (256-point, hop 64) that predicts a mask in
[0, 1] for the noisy magnitude; the noisy phase is kept (as in most mask-based enhancement, e.g. Wang et al.
2014, "On training targets for supervised speech separation"). It is trained end to end on the waveform by
negative SI-SDR (Le Roux et al. 2019), the score it is judged by, on half-second crops of fresh mixtures at
-5 to 15 dB SNR.

Baselines: magnitude spectral subtraction with over-subtraction 2 and a spectral floor of 0.02 (Berouti et
al. 1979), the noise spectrum the mean of the quietest tenth of the frames (the pauses between words), and scipy.signal.wiener, the local-statistics Wiener filter in the time domain
(window size chosen on the validation prompts).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genforge.data.audio import load_audio
from genforge.data.audio.sources import read_asterisk_prompts
from genforge.data.audio.wav import list_audio_files, read_audio
from genforge.data.split import split_indices
from genforge.errors import GenforgeError, ModelFileError
from genforge.generation import provenance
from genforge.generation.audio import save_wav
from genforge.io import read_json
from genforge.models.files import read_weights, write_weights

RATE = 8000
NOISES = ("white", "drums", "babble")
SNRS = (0, 5, 10)
FORMAT = "genforge-denoiser"


# ------------------------------------------------------------------------------------------------ scores


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019, eq. 1-3): the estimate's part along the (zero-mean)
    reference, against the rest."""
    s, e = reference - reference.mean(), estimate - estimate.mean()
    target = (e @ s) / max(s @ s, 1e-12) * s
    return float(10 * np.log10(max(target @ target, 1e-20) / max((e - target) @ (e - target), 1e-20)))


def stoi(estimate: np.ndarray, reference: np.ndarray, rate: int = RATE) -> float:
    """Short-time objective intelligibility (Taal et al. 2011) by pystoi, 0 to 1."""
    # pystoi is the audio extra's; only the enhancement scores need it.
    from pystoi import stoi as _stoi

    return float(_stoi(reference, estimate, rate, extended=False))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that 10 log10(P_clean / P_noise) = snr_db (noise tiled or cut to length)."""
    if len(noise) < len(clean):
        noise = np.tile(noise, math.ceil(len(clean) / len(noise)))
    noise = noise[:len(clean)].astype(np.float64)
    gain = math.sqrt(np.mean(clean.astype(np.float64) ** 2) / max(np.mean(noise ** 2), 1e-20) / 10 ** (snr_db / 10))
    return (clean + gain * noise).astype(np.float32)


# ------------------------------------------------------------------------------------------------ noise


class NoiseBank:
    """Where noise comes from: white (seeded), drum hits scattered in time, babble of other prompts."""

    def __init__(self, prompts: list[np.ndarray], drums: np.ndarray):
        self.prompts = prompts       # the babble talkers: prompts of the same split as the clean speech
        self.drums = drums           # float32 (n, samples) drum hits at RATE

    def draw(self, kind: str, length: int, rng: np.random.Generator, exclude: int = -1) -> np.ndarray:
        if kind == "white":
            return rng.standard_normal(length).astype(np.float32)
        out = np.zeros(length, np.float32)
        if kind == "drums":
            for _ in range(max(1, int(length / RATE * 4))):  # about four hits a second
                hit = self.drums[rng.integers(len(self.drums))]
                at = int(rng.integers(0, length))
                n = min(len(hit), length - at)
                out[at:at + n] += hit[:n] * rng.uniform(0.3, 1.0)
            return out
        if kind == "babble":
            others = [i for i in range(len(self.prompts)) if i != exclude]
            for i in rng.choice(others, size=min(len(others), int(rng.integers(3, 6))), replace=False):
                p = self.prompts[i]
                p = np.tile(p, math.ceil(length / len(p)))
                start = int(rng.integers(0, len(p) - length + 1))
                seg = p[start:start + length]
                out += seg / max(np.sqrt(np.mean(seg ** 2)), 1e-6)
            return out
        raise GenforgeError(f"noise must be one of {', '.join(NOISES)}, got {kind!r}")


@dataclass
class EnhancementData:
    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    names: dict[str, list[str]]
    drums: dict[str, np.ndarray]   # drum hits per split (by the drums' own split)

    def bank(self, part: str) -> NoiseBank:
        return NoiseBank(getattr(self, part), self.drums[part])


def load_enhancement_data(seed: int = 0) -> EnhancementData:
    """The Asterisk prompts of 1.5 s or more at 8 kHz split 80 / 10 / 10 by file, and drum hits from audio:drums'
    own splits."""
    prompts, names = read_asterisk_prompts(RATE)
    # STOI needs 30 frames of speech (384 ms at its 10 kHz) after dropping silent ones: shorter prompts ("yes")
    # would score a meaningless 1e-5, so only prompts of at least 1.5 s are used
    keep = [i for i, p in enumerate(prompts) if len(p) >= int(1.5 * RATE)]
    prompts, names = [prompts[i] for i in keep], [names[i] for i in keep]
    test_idx, val_idx, train_idx = split_indices(None, len(prompts), (0.1, 0.1), seed)
    drums = load_audio("audio:drums", rate=RATE, length=RATE // 2)
    parts = {"train": train_idx, "val": val_idx, "test": test_idx}
    return EnhancementData(*([prompts[i] for i in parts[p]] for p in ("train", "val", "test")),
                           names={p: [names[i] for i in idx] for p, idx in parts.items()},
                           drums={"train": drums.train.x, "val": drums.val.x, "test": drums.test.x})


# ------------------------------------------------------------------------------------------------ baselines


def spectral_subtraction(noisy: np.ndarray, rate: int = RATE, alpha: float = 2.0, beta: float = 0.02) -> np.ndarray:
    """|S|^2 = max(|Y|^2 - alpha |N|^2, beta |Y|^2) with the noisy phase (Berouti et al. 1979)."""
    n_fft, hop = 256 * rate // 8000, 64 * rate // 8000
    x = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32))
    win = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=win, return_complex=True)          # (freq, frames)
    power = spec.abs() ** 2
    energy = power.sum(0)                                                      # (frames,)
    quiet = energy <= torch.quantile(energy, 0.1)                              # the quietest tenth: pauses
    noise = power[:, quiet].mean(1, keepdim=True)                              # (freq, 1)
    clean = torch.maximum(power - alpha * noise, beta * power)
    out = torch.istft(spec * torch.sqrt(clean / power.clamp_min(1e-20)), n_fft, hop, window=win, length=len(noisy))
    return out.numpy().astype(np.float32)


def wiener(noisy: np.ndarray, size: int = 7) -> np.ndarray:
    """scipy.signal.wiener: each sample shrunk toward its neighbourhood's mean by the local SNR."""
    # scipy is the audio extra's; only this baseline and resampling need it.
    from scipy.signal import wiener as _wiener

    with np.errstate(divide="ignore", invalid="ignore"):  # a window of digital silence has zero variance
        out = _wiener(noisy.astype(np.float64), mysize=size)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------ the denoiser


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())


class MaskUNet(nn.Module):
    """(b, 1, freq, frames) log magnitude -> (b, 1, freq, frames) mask in [0, 1]; three levels, skips by concat.

    Any freq and frames work: each level pads to an even size and crops back."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.widths = tuple(widths)
        self.enc = nn.ModuleList()
        c = 1
        for w in widths:
            self.enc.append(_block(c, w))
            c = w
        self.mid = _block(c, c)
        self.dec = nn.ModuleList()
        for w in reversed(widths):
            self.dec.append(_block(c + w, w))
            c = w
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, sizes = [], []
        h = x
        for block in self.enc:
            h = block(h)
            skips.append(h)
            sizes.append(h.shape[-2:])
            h = F.max_pool2d(F.pad(h, (0, h.shape[-1] % 2, 0, h.shape[-2] % 2)), 2)
        h = self.mid(h)
        for block in self.dec:
            skip = skips.pop()
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")[..., :skip.shape[-2], :skip.shape[-1]]
            h = block(torch.cat([h, skip], dim=1))
        return torch.sigmoid(self.out(h))


@dataclass(frozen=True)
class DenoiserConfig:
    n_fft: int = 256
    hop: int = 64
    widths: tuple[int, ...] = (8, 16, 32)   # ~60 M multiply-adds per second of audio: cheap on two CPU cores
    crop: int = RATE // 2       # half-second training crops
    batch_size: int = 8
    lr: float = 1e-3
    snr_low: float = -5.0
    snr_high: float = 15.0
    seed: int = 0


class Denoiser:
    """A trained mask U-Net and its STFT: ``enhance(noisy)`` for float32 (samples,) at 8 kHz."""

    def __init__(self, net: MaskUNet, cfg: DenoiserConfig, meta: dict | None = None):
        self.net, self.cfg, self.meta = net.eval(), cfg, meta or {}

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """(b, samples) -> (b, samples), differentiable (training runs through it)."""
        win = torch.hann_window(self.cfg.n_fft)
        spec = torch.stft(x, self.cfg.n_fft, self.cfg.hop, window=win, return_complex=True)  # (b, freq, frames)
        logmag = torch.log(spec.abs() + 1e-4)[:, None]                                      # (b, 1, freq, frames)
        mask = self.net(logmag)[:, 0]
        return torch.istft(spec * mask, self.cfg.n_fft, self.cfg.hop, window=win, length=x.shape[-1])

    @torch.inference_mode()
    def enhance(self, noisy: np.ndarray) -> np.ndarray:
        x = np.asarray(noisy, dtype=np.float32)
        if x.ndim != 1 or len(x) < self.cfg.n_fft:
            raise GenforgeError(f"denoise: expected one channel of at least {self.cfg.n_fft} samples, got {x.shape}")
        self.net.eval()
        return self._apply(torch.from_numpy(x)[None])[0].numpy()


def _neg_si_sdr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    ref = ref - ref.mean(-1, keepdim=True)
    est = est - est.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref * ref).sum(-1, keepdim=True).clamp_min(1e-8) * ref
    ratio = (target ** 2).sum(-1) / ((est - target) ** 2).sum(-1).clamp_min(1e-8)
    return -10 * torch.log10(ratio.clamp_min(1e-8)).mean()


def _batch(data: list[np.ndarray], bank: NoiseBank, cfg: DenoiserConfig, rng: np.random.Generator):
    clean, noisy = [], []
    for _ in range(cfg.batch_size):
        i = int(rng.integers(len(data)))
        p = data[i]
        if len(p) < cfg.crop:
            p = np.pad(p, (0, cfg.crop - len(p)))
        start = int(rng.integers(0, len(p) - cfg.crop + 1))
        c = p[start:start + cfg.crop]
        n = bank.draw(str(rng.choice(NOISES)), cfg.crop, rng, exclude=i)
        clean.append(c)
        noisy.append(mix(c, n, float(rng.uniform(cfg.snr_low, cfg.snr_high))))
    return torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(noisy))


def train_denoiser(out: str | Path | None = None, max_seconds: float = 300.0, max_steps: int = 100_000,
                   cfg: DenoiserConfig = DenoiserConfig(), data: EnhancementData | None = None,
                   progress: bool = True) -> Denoiser:
    """Train the mask U-Net for ``max_seconds`` (or ``max_steps``) on mixtures of the train prompts; with
    ``out``, save it there (``denoiser.safetensors`` + ``denoiser.json``)."""
    data = data or load_enhancement_data(cfg.seed)
    bank = data.bank("train")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = MaskUNet(cfg.widths)
    den = Denoiser(net, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    step = 0
    net.train()
    while step < max_steps and time.perf_counter() - t0 < max_seconds:
        clean, noisy = _batch(data.train, bank, cfg, rng)
        loss = _neg_si_sdr(den._apply(noisy), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if progress and step % 100 == 0:
            print(f"genforge: denoiser step {step} SI-SDR {-loss.item():.2f} dB ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    net.eval()
    den.meta = {"format": FORMAT, "format_version": 1, "config": {**asdict(cfg), "widths": list(cfg.widths)},
                "steps": step, "train_seconds": round(time.perf_counter() - t0, 1), "rate": RATE,
                "train_prompts": len(data.train)}
    if out is not None:
        save_denoiser(den, out)
    return den


def save_denoiser(den: Denoiser, directory: str | Path) -> Path:
    directory = Path(directory)
    den.meta = write_weights(directory / "denoiser.safetensors", directory / "denoiser.json", den.net.state_dict(),
                             den.meta, FORMAT)
    return directory


def load_denoiser(directory: str | Path) -> Denoiser:
    directory = Path(directory)
    meta = read_json(directory / "denoiser.json", ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise ModelFileError(f"{directory / 'denoiser.json'}: not a genforge denoiser")
    try:
        c = meta["config"]
        cfg = DenoiserConfig(**{**c, "widths": tuple(c["widths"])})
    except (TypeError, KeyError) as e:
        raise ModelFileError(f"{directory / 'denoiser.json'}: field 'config' is malformed ({e})") from None
    with torch.device("meta"):
        skeleton = MaskUNet(cfg.widths)
    tensors = read_weights(directory / "denoiser.safetensors", directory / "denoiser.json", meta,
                           skeleton.state_dict())
    net = MaskUNet(cfg.widths)
    net.load_state_dict(tensors, strict=True)
    return Denoiser(net, cfg, meta)


# ------------------------------------------------------------------------------------------------ the table


def mixtures_of(data: EnhancementData, part: str = "test", n: int | None = None, seed: int = 1):
    """(clean, noisy, noise kind, SNR) for each prompt of ``part`` x noise x SNR; the same seed, the same set."""
    rng = np.random.default_rng(seed)
    bank = data.bank(part)
    prompts = getattr(data, part)[:n] if n else getattr(data, part)
    out = []
    for i, clean in enumerate(prompts):
        for kind in NOISES:
            noise = bank.draw(kind, len(clean), rng, exclude=i)
            for snr in SNRS:
                out.append((clean, mix(clean, noise, snr), kind, snr))
    return out


def best_wiener_size(data: EnhancementData, sizes=(3, 5, 7, 11, 15, 21)) -> int:
    """The scipy.signal.wiener window with the best mean SI-SDR on the validation mixtures."""
    mixtures = mixtures_of(data, "val", seed=2)
    scores_ = {s: np.mean([si_sdr(wiener(noisy, s), clean) for clean, noisy, _, _ in mixtures]) for s in sizes}
    return max(scores_, key=scores_.get)


def enhancement_table(methods: dict, mixtures) -> list[dict]:
    """For each method, noise and SNR: mean SI-SDR, its improvement over the noisy input, and STOI."""
    rows = []
    for name, fn in methods.items():
        per = {}
        for clean, noisy, kind, snr in mixtures:
            est = noisy if fn is None else fn(noisy)
            d = per.setdefault((kind, snr), {"si_sdr": [], "si_sdri": [], "stoi": []})
            s = si_sdr(est, clean)
            d["si_sdr"].append(s)
            d["si_sdri"].append(s - si_sdr(noisy, clean))
            d["stoi"].append(stoi(est, clean))
        for (kind, snr), d in sorted(per.items()):
            rows.append({"method": name, "noise": kind, "snr": snr, "n": len(d["si_sdr"]),
                         **{k: float(np.mean(v)) for k, v in d.items()}})
    return rows


def format_enhancement(rows: list[dict]) -> str:
    lines = ["| method | noise | SNR in (dB) | SI-SDR (dB) | SI-SDRi (dB) | STOI |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['noise']} | {r['snr']} | {r['si_sdr']:.2f} | {r['si_sdri']:.2f} | {r['stoi']:.3f} |"
              for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ files in, files out

CLASSICAL = {"spectral-subtraction": spectral_subtraction, "wiener": wiener}


def denoise_files(model: str, inputs: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """``genforge repair MODEL noisy.wav --task denoise --out clean.wav``: MODEL is a denoiser directory (from
    :func:`train_denoiser`) or a classical baseline by name (spectral-subtraction, wiener). INPUTS: a WAV/FLAC
    file or a folder of them; OUT: a .wav (one input) or a folder. Inputs are resampled to 8 kHz and mono is
    required; each output carries provenance in its INFO chunk and the ledger."""
    if model in CLASSICAL:
        fn, meta = CLASSICAL[model], {"model": model}
    else:
        den = load_denoiser(model)
        fn, meta = den.enhance, {"model": str(model), "weights_sha256": den.meta.get("weights_sha256")}
    src, out = Path(inputs), Path(out)
    files = list_audio_files(src) if src.is_dir() else [src]
    if not files:
        raise GenforgeError(f"{src}: a folder of zero audio files (.wav, .flac, .ogg, .aiff)")
    if len(files) > 1 and out.suffix:
        raise GenforgeError(f"--out {out}: {len(files)} inputs need a folder name (no suffix)")
    if len(files) == 1 and out.suffix and out.suffix.lower() != ".wav":
        raise GenforgeError(f"--out {out}: write a .wav, or a folder name for several inputs")
    notes, written = [], []
    for f in files:
        x, n = read_audio(f, RATE)  # every bad input is a one-line error naming the file, before anything is written
        notes += n
        written.append((f, x))
    for f, x in written:
        target = out if out.suffix else out / (f.stem + ".wav")
        stamp = provenance.stamp({**meta, "kind": "repair", "task": "denoise", "source": str(f)})
        save_wav(fn(x), target, RATE, stamp, title=f"denoised {f.name}", ledger=True)
    return out, notes


def is_audio_input(path: str | Path) -> bool:
    """A WAV/FLAC file, or a folder holding audio files and no images: what repair hands to denoise_files."""
    p = Path(path)
    audio_suffixes = (".wav", ".flac", ".ogg", ".aiff", ".aif")
    if p.suffix.lower() in audio_suffixes:
        return True
    return p.is_dir() and any(f.suffix.lower() in audio_suffixes for f in p.iterdir())
