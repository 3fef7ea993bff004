"""Image to speech: say the digit a handwritten image shows (issue #17's cross-modal example).

    model = train_image_to_speech("runs/say", max_seconds=300)     # mnist5k images paired with spoken digits
    wave = model.say(image)                                         # uint8 (28, 28) -> float32 (16000,) at 16 kHz
    genforge sample runs/say --from-image digit.png --out say.wav   # the same from the command line

The generator never sees a label. It is conditioned on the image through the shipped mnist5k evaluator's
128-d embedding (:mod:`genforge.metrics.evaluator_net`), and trained on (image, clip) pairs drawn so that the
clip speaks the digit the image shows: mnist5k's train split against audio:spoken-digits' train split
(voices never heard in the test split). So it has to learn, from the embedding alone, which word to say.

The model is a conditional VAE on log-mel spectrograms (64 mels x 64 frames of 1 s at 16 kHz, the
:class:`~genforge.data.audio.features.MelSpec` stored in its config): the encoder sees the spectrogram and
the embedding, the decoder draws a spectrogram from a latent z and the embedding, and Griffin-Lim turns it
into sound. The latent's prior is learnt from the embedding, p(z | e) (Sohn et al. 2015's conditional VAE):
the KL term pulls each clip's posterior towards the prior of its image, and saying an image draws z from that
prior. With a fixed N(0, I) prior (``prior: standard``, the first version's) the latent still carried part of
the word: after 600 s the latents of training clips spread twice as wide as N(0, I), z = 0 said the right digit
for 44% of test images and z ~ N(0, I) for 70-71%.

The learnt Gaussian prior is still too wide for the word: after 600 s its means moved with the image by a fifth
of its spread, and a z drawn from it decoded to a wrong but similar word (one / nine, six / eight) for 14% of
test images, while the posterior z of a real clip of the right digit was heard right 95% of the time. So by
default (``sample_from: neighbours``) a z is not drawn from the Gaussian but from the training pairs themselves:
after training, every training image is paired once more with a clip of its digit, and the clip's posterior mean
is kept beside the image's embedding (a bank, saved with the weights). Saying an image picks one of the
``neighbours`` (20) training images closest to it in embedding (cosine) and decodes that pair's z with the new
image's embedding: a sample of the aggregate posterior near e, which is what p(z | e) should be. The label is
never read at sampling; it only chose the training pairs, as it does in training. Scored by agreement: the share
of held-out test images whose speech the audio evaluator (:mod:`genforge.metrics.audio`) hears as the digit the
image's label says.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.nn import functional as F

from genforge.data import load_splits
from genforge.data.audio import load_audio
from genforge.data.audio.features import MelSpec
from genforge.errors import ConfigError, DataError, GenforgeError, ModelFileError
from genforge.generation import provenance
from genforge.generation.audio import save_wav
from genforge.io import read_json
from genforge.metrics.evaluator_net import Evaluator, get_evaluator
from genforge.models.files import read_weights, write_weights

FORMAT = "genforge-image-to-speech"
RATE, LENGTH = 16000, 16000
IMAGE_SPEC, IMAGE_SHAPE = "mnist5k", (1, 28, 28)
# 1 s -> 1 + 16000 // 250 = 65 frames; the last one (centred on the very end) is dropped for a 64 x 64 picture
MEL = MelSpec(rate=RATE, n_fft=1024, hop=250, n_mels=64, fmax=8000.0, log_hi=6.0)
FRAMES = 64


@dataclass(frozen=True)
class SpeechConfig:
    z_dim: int = 4             # a small latent with a KL weight above 1: the word has to come from the image's
    width: int = 32            # embedding, leaving z only the voice (a 16-d z at weight 0.5 carried the word
    beta: float = 2.0          # itself, and sampling z from the prior then said random digits: 56% agreement)
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    prior: str = "learned"     # p(z | e) from the embedding; "standard": N(0, I), the files made before it
    temperature: float = 0.7   # sample_from prior: say() scales the prior's spread by it (agreement on all 500
                               # validation images after 600 s: 82.2% at 1, 86.0% at 0.7, 87.2% at 0.5; RESULTS.md)
    sample_from: str = "neighbours"  # z from the training pairs nearest the image ("neighbours") or from the
    neighbours: int = 20       # prior ("prior", the files made before it); on all 500 validation images after 600 s:
                               # 95.6% from 1 neighbour, 94.6% from 5, 96.8% from 20, 86.0% from the prior at 0.7

    def __post_init__(self):
        if self.prior not in ("learned", "standard"):
            raise ConfigError(f"prior {self.prior!r} is neither 'learned' nor 'standard'")
        if self.sample_from not in ("neighbours", "prior"):
            raise ConfigError(f"sample_from {self.sample_from!r} is neither 'neighbours' nor 'prior'")
        if isinstance(self.neighbours, bool) or not (isinstance(self.neighbours, int) and 1 <= self.neighbours
                                                     <= 100_000):
            raise ConfigError(f"neighbours {self.neighbours!r} is not a whole number from 1 to 100000")
        if isinstance(self.temperature, bool) or not (isinstance(self.temperature, (int, float))
                                                      and 0 <= self.temperature <= 10):
            raise ConfigError(f"temperature {self.temperature!r} is not a number from 0 to 10")


def to_picture(x: torch.Tensor) -> torch.Tensor:
    """(b, 16000) waveforms -> (b, 1, 64, 64) log-mel in [-1, 1]."""
    return MEL.to_unit(MEL.log_mel(x))[:, None, :, :FRAMES]


def to_waveform(u: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(b, 1, 64, 64) in [-1, 1] -> (b, 16000): the dropped last frame repeated, then Griffin-Lim."""
    m = MEL.from_unit(u[:, 0])
    m = torch.cat([m, m[..., -1:]], dim=-1)
    return MEL.to_audio(m, LENGTH, n_iter=32, seed=seed)


class SpeechVAE(nn.Module):
    """encoder (b, 1, 64, 64) + e (b, 128) -> mu, logvar (b, z); decoder z + e -> (b, 1, 64, 64) in [-1, 1].
    ``bank_size``: rows of the neighbour bank (buffers ``bank_e``, unit-length embeddings, and ``bank_z``, their
    pairs' posterior means), filled by :meth:`fill_bank` after training; 0 for a model that samples the prior."""

    def __init__(self, cfg: SpeechConfig, cond_dim: int = 128, bank_size: int = 0):
        super().__init__()
        if bank_size:
            self.register_buffer("bank_e", torch.zeros(bank_size, cond_dim))
            self.register_buffer("bank_z", torch.zeros(bank_size, cfg.z_dim))
        w = cfg.width
        self.enc = nn.Sequential(                                   # 64 -> 32 -> 16 -> 8 -> 4
            nn.Conv2d(1, w, 4, 2, 1), nn.SiLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.SiLU(), nn.Conv2d(4 * w, 4 * w, 4, 2, 1), nn.SiLU(), nn.Flatten())
        self.enc_out = nn.Linear(4 * w * 16 + cond_dim, 2 * cfg.z_dim)
        self.dec_in = nn.Sequential(nn.Linear(cfg.z_dim + cond_dim, 4 * w * 16), nn.SiLU())
        self.prior = (nn.Sequential(nn.Linear(cond_dim, 4 * w), nn.SiLU(), nn.Linear(4 * w, 2 * cfg.z_dim))
                      if cfg.prior == "learned" else None)
        self.z_dim = cfg.z_dim
        self.dec = nn.Sequential(                                   # 4 -> 8 -> 16 -> 32 -> 64
            nn.ConvTranspose2d(4 * w, 4 * w, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Tanh())
        self.w = w

    def encode(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc_out(torch.cat([self.enc(x), e], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def prior_of(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (b, z) of p(z | e); zeros (N(0, I)) for the standard prior."""
        if self.prior is None:
            zero = e.new_zeros(len(e), self.z_dim)
            return zero, zero
        mu, logvar = self.prior(e).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.dec(self.dec_in(torch.cat([z, e], 1)).view(-1, 4 * self.w, 4, 4))

    @torch.no_grad()
    def fill_bank(self, e: torch.Tensor, x: torch.Tensor, batch: int = 200) -> None:
        """Keep each pair's image embedding (unit length) and its clip's posterior mean: (n, 128), (n, 1, 64, 64)."""
        mu = torch.cat([self.encode(x[i:i + batch], e[i:i + batch])[0] for i in range(0, len(e), batch)])
        self.bank_e.copy_(F.normalize(e, dim=1))
        self.bank_z.copy_(mu)

    def neighbour_z(self, e: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """For each embedding, the bank z of one of its ``k`` nearest bank embeddings (cosine), drawn from ``gen``."""
        k = min(k, len(self.bank_e))
        near = (F.normalize(e, dim=1) @ self.bank_e.T).topk(k, dim=1).indices            # (b, k)
        pick = torch.randint(0, k, (len(e),), generator=gen)
        return self.bank_z[near[torch.arange(len(e)), pick]]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, p_mu: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(p_mu, e^p_logvar)) per dimension, diagonal Gaussians (b, z) -> (b, z)."""
    return 0.5 * (p_logvar - logvar + (logvar.exp() + (mu - p_mu) ** 2) / p_logvar.exp() - 1)


class ImageToSpeech:
    """A trained model and the image evaluator whose embedding it listens to."""

    def __init__(self, net: SpeechVAE, cfg: SpeechConfig, evaluator: Evaluator, meta: dict, path: str = ""):
        self.net, self.cfg, self.evaluator, self.meta, self.path = net.eval(), cfg, evaluator, meta, path

    def embed(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (n, 28, 28) -> (n, 128) the evaluator's features (float32)."""
        return torch.from_numpy(self.evaluator.features(images)).float()

    @torch.inference_mode()
    def say(self, images: np.ndarray, seed: int = 0, temperature: float | None = None,
            sample_from: str | None = None) -> np.ndarray:
        """uint8 images (n, 28, 28) or one (28, 28) -> float32 waveforms (n, 16000) (or (16000,)) at 16 kHz.
        ``sample_from`` (default: the model's own): "neighbours" takes z from the bank pair of one of the image's
        nearest training images, "prior" draws it from p(z | e) with its spread scaled by ``temperature``
        (default: the model's own; 0 says each image with the prior's mean voice, and neighbours ignore it)."""
        temperature = self.cfg.temperature if temperature is None else float(temperature)
        sample_from = sample_from or self.cfg.sample_from
        if sample_from not in ("neighbours", "prior"):
            raise GenforgeError(f"sample_from {sample_from!r} is neither 'neighbours' nor 'prior'")
        if sample_from == "neighbours" and not hasattr(self.net, "bank_z"):
            raise GenforgeError(f"{self.path or 'this model'}: it has no neighbour bank (trained before it, or "
                                "with sample_from prior); say from the prior instead")
        one = images.ndim == 2
        images = check_digit_images(images[None] if one else images, "images")
        gen = torch.Generator().manual_seed(seed)
        e = self.embed(images)
        if sample_from == "neighbours":
            z = self.net.neighbour_z(e, self.cfg.neighbours, gen)
        else:
            mu, logvar = self.net.prior_of(e)
            z = mu + temperature * torch.exp(0.5 * logvar) * torch.randn(len(images), self.cfg.z_dim, generator=gen)
        waves = to_waveform(self.net.decode(z, e), seed=seed).numpy().astype(np.float32)
        return waves[0] if one else waves


def check_digit_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE[1:] or x.dtype != np.uint8:
        raise DataError(f"{where}: image-to-speech takes 28x28 grayscale digits (uint8), got shape {x.shape} "
                        f"dtype {x.dtype}")
    return x


def read_digit_image(path: str | Path) -> np.ndarray:
    """A 28x28 grayscale PNG (white digit on black, as mnist5k) -> uint8 (28, 28); any other size is refused."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.size != (28, 28):
                raise DataError(f"{path}: image of {img.size[0]}x{img.size[1]} pixels; image-to-speech takes the "
                                "28x28 digits of mnist5k (resize it first)")
            return np.array(img.convert("L"), dtype=np.uint8)  # a copy: writable, as torch wants
    except FileNotFoundError:
        raise DataError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _pairs(images_y: np.ndarray, clips_y: np.ndarray, rng: np.random.Generator, idx: np.ndarray) -> np.ndarray:
    """For each image index, a random clip index of the same digit."""
    by_digit = [np.flatnonzero(clips_y == d) for d in range(10)]
    return np.array([by_digit[int(images_y[i])][rng.integers(len(by_digit[int(images_y[i])]))] for i in idx])


def train_image_to_speech(out: str | Path | None = None, max_seconds: float = 300.0, max_steps: int = 100_000,
                          cfg: SpeechConfig = SpeechConfig(), images=None, clips=None,
                          progress: bool = True) -> ImageToSpeech:
    """Train on (mnist5k train image, spoken-digits train clip of the same digit) pairs; save into ``out``."""
    evaluator = get_evaluator(IMAGE_SPEC, IMAGE_SHAPE, progress=progress)
    images = images if images is not None else load_splits(IMAGE_SPEC, image_size=28, channels=1).train
    clips = clips if clips is not None else load_audio("audio:spoken-digits", rate=RATE, length=LENGTH).train
    if clips.y is None or set(np.unique(clips.y)) != set(range(10)):
        raise DataError("image-to-speech needs spoken clips of all ten digits, labelled 0 to 9")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    emb = torch.from_numpy(evaluator.features(images.x[..., 0] if images.x.ndim == 4 else images.x)).float()
    with torch.no_grad():
        pics = torch.cat([to_picture(torch.from_numpy(clips.x[i:i + 200])) for i in range(0, len(clips.x), 200)])
    bank = len(emb) if cfg.sample_from == "neighbours" else 0
    net = SpeechVAE(cfg, emb.shape[1], bank_size=bank)
    model = ImageToSpeech(net, cfg, evaluator, {})
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net.train()
    t0, step = time.perf_counter(), 0
    while step < max_steps and time.perf_counter() - t0 < max_seconds:
        idx = rng.integers(0, len(emb), cfg.batch_size)
        x, e = pics[_pairs(images.y, clips.y, rng, idx)], emb[idx]
        mu, logvar = net.encode(x, e)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.l1_loss(net.decode(z, e), x, reduction="sum") / len(x)
        kl = gaussian_kl(mu, logvar, *net.prior_of(e)).sum() / len(x)
        loss = recon + cfg.beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if progress and step % 200 == 0:
            print(f"genforge: image-to-speech step {step} recon {recon.item():.1f} KL {kl.item():.1f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    net.eval()
    if bank:  # every training image once more, with a clip of its digit
        net.fill_bank(emb, pics[_pairs(images.y, clips.y, rng, np.arange(len(emb)))])
    model.meta = {"format": FORMAT, "format_version": 1, "config": asdict(cfg), "mel": MEL.to_dict(),
                  "frames": FRAMES, "rate": RATE, "length": LENGTH, "steps": step,
                  "bank_size": bank,
                  "train_seconds": round(time.perf_counter() - t0, 1), "image_data": IMAGE_SPEC,
                  "image_evaluator": evaluator.identity(), "audio_data": "audio:spoken-digits"}
    if out is not None:
        save_image_to_speech(model, out)
    return model


def save_image_to_speech(model: ImageToSpeech, directory: str | Path) -> Path:
    directory = Path(directory)
    model.meta = write_weights(directory / "speech.safetensors", directory / "speech.json", model.net.state_dict(),
                               model.meta, FORMAT)
    model.path = str(directory)
    return directory


def is_image_to_speech(path: str | Path) -> bool:
    return (Path(path) / "speech.json").is_file()


def load_image_to_speech(directory: str | Path) -> ImageToSpeech:
    directory = Path(directory)
    meta = read_json(directory / "speech.json", ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise ModelFileError(f"{directory / 'speech.json'}: not a genforge image-to-speech model")
    try:
        # files made before the learnt prior and the temperature: N(0, I), sampled at its full spread; files made
        # before the neighbour bank sample the prior
        cfg = SpeechConfig(**{"prior": "standard", "temperature": 1.0, "sample_from": "prior", **meta["config"]})
    except (TypeError, ConfigError) as e:
        raise ModelFileError(f"{directory / 'speech.json'}: field 'config' is malformed ({e})") from None
    bank = meta.get("bank_size", 0)
    if isinstance(bank, bool) or not isinstance(bank, int) or not 0 <= bank <= 10_000_000 or (
            (bank > 0) != (cfg.sample_from == "neighbours")):
        raise ModelFileError(f"{directory / 'speech.json'}: field 'bank_size' must be a whole number, above 0 "
                             "exactly when config.sample_from is 'neighbours'")
    if meta.get("mel") != MEL.to_dict():
        raise ModelFileError(f"{directory / 'speech.json'}: made with other mel parameters than this genforge's")
    evaluator = get_evaluator(IMAGE_SPEC, IMAGE_SHAPE, progress=False)
    if meta.get("image_evaluator", {}).get("weights_sha256") != evaluator.sha256:
        raise ModelFileError(f"{directory / 'speech.json'}: trained on the embedding of another image evaluator "
                             f"than the shipped {evaluator.name} ({evaluator.sha256[:12]}...)")
    with torch.device("meta"):
        skeleton = SpeechVAE(cfg, bank_size=bank)
    tensors = read_weights(directory / "speech.safetensors", directory / "speech.json", meta, skeleton.state_dict())
    net = SpeechVAE(cfg, bank_size=bank)
    net.load_state_dict(tensors, strict=True)
    return ImageToSpeech(net, cfg, evaluator, meta, str(directory))


def agreement(model: ImageToSpeech, audio_evaluator, images: np.ndarray, labels: np.ndarray, seed: int = 0,
              temperature: float | None = None, sample_from: str | None = None) -> float:
    """The share of images whose generated speech the audio evaluator hears as the image's own digit."""
    waves = np.concatenate([model.say(images[i:i + 100], seed=seed + i, temperature=temperature,
                                      sample_from=sample_from)
                            for i in range(0, len(images), 100)])
    return float((audio_evaluator.classify(waves) == labels).mean())


def say_file(model: str | Path, image: str | Path, out: str | Path, seed: int = 0) -> Path:
    """``genforge sample RUN --from-image digit.png --out say.wav``: the WAV carries provenance (model, its
    weights' hash, the image's SHA-256, seed) in its INFO chunk and the ledger."""
    if Path(out).suffix.lower() != ".wav":
        raise GenforgeError(f"--out {out}: image-to-speech writes one .wav")
    picture = read_digit_image(image)  # a wrong size is refused before the model is loaded
    m = load_image_to_speech(model)
    wave = m.say(picture, seed=seed)
    meta = provenance.stamp({"model": "image-to-speech", "model_path": str(m.path),
                             "weights_sha256": m.meta.get("weights_sha256"), "seed": seed, "source_image": str(image),
                             "source_sha256": hashlib.sha256(Path(image).read_bytes()).hexdigest()})
    return save_wav(wave, out, RATE, meta, title=f"said from {Path(image).name}", ledger=True)
