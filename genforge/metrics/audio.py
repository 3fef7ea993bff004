"""Audio evaluators and scores: a small CNN on log-mel spectrograms is the ruler for generated audio.

    ev = get_audio_evaluator("audio:spoken-digits")       # shipped, cached, or trained now (a minute or two)
    result = score_audio(ev, x, y)                       # x float32 (n, samples) at ev.rate; y asked-for classes
    print(format_audio_table([("samples", result), *real_rows(ev)]))

As for images (:mod:`genforge.metrics.evaluator_net`), no pretrained audio classifier can be downloaded here
and none would share a scale with SC09's, so genforge trains its own: the same conv-BN-ReLU-pool network as
the image evaluators (:class:`~genforge.metrics.evaluator_net.EvaluatorNet`), on a log-mel spectrogram in
place of pixels, trained with a fixed seed on the train split only and saved as safetensors + JSON with its
test accuracy, its real-data accuracy and the SHA-256 of its weights, which every score carries.

The digit evaluator hears only 0 to 4 kHz (its mel filters stop there): the real-data check is Asterisk's
8 kHz telephone prompts, and a classifier that relied on what lies above 4 kHz in espeak-ng's voices would
fail a real speaker for a reason that has nothing to do with the digit. Each log-mel is shifted so that its
loudest cell is 0 (the level of a clip says nothing about its class), and training sees each clip shifted in
time, stretched by 0.85-1.15, with added noise and SpecAugment masks (Park et al. 2019), so that a clip
spoken by an unseen voice, early or late, is still a digit.

Scores (:func:`score_audio`): inception score, Frechet distance in the 128-d feature space ("FD"), improved
precision and recall, and for conditional samples the share classified as the class asked for.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from genforge.data.audio import AudioSplits, MelSpec, load_audio
from genforge.data.audio.features import to_pictures
from genforge.data.audio.wav import fit_length, resample
from genforge.errors import DataError, GenforgeError, ModelFileError
from genforge.generation import sample as draw
from genforge.generation.audio import AudioMelOutput
from genforge.io import read_json
from genforge.metrics import scores
from genforge.metrics.evaluator_net import SHIPPED_DIR, EvaluatorNet, cache_dir
from genforge.models.files import read_weights, weights_blob, write_weights

FORMAT = "genforge-audio-evaluator"
FORMAT_VERSION = 1
WIDTHS = (8, 16, 32, 64)  # 0.24 GMAC per batch of 64 forward: a step in ~0.1 s on two cores
# The ruler's ears: 16 kHz clips, 25 ms windows every 10 ms, 40 mel bands. Digits stop at 4 kHz (see above);
# drums keep the whole band (a hi-hat lives above 5 kHz).
EAR = {"spoken-digits": MelSpec(rate=16000, n_fft=400, hop=160, n_mels=40, fmax=4000.0),
       "drums": MelSpec(rate=16000, n_fft=400, hop=160, n_mels=40)}
WARP = (0.9, 1.1)  # the mel-axis warp of augment_mel
REAL_CHECK = {"spoken-digits": "audio:asterisk-digits"}


@dataclass(frozen=True)
class AudioRecipe:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3          # Adam, cosine decay to 0
    weight_decay: float = 1e-4
    seed: int = 0


def ear_of(spec: str) -> MelSpec:
    """The evaluator's mel front end for a data spec: the digits' for audio:spoken-digits, else the full band."""
    return EAR["spoken-digits"] if spec.strip() == "audio:spoken-digits" else EAR["drums"]


def normalized_log_mel(ear: MelSpec, x: torch.Tensor) -> torch.Tensor:
    """(b, samples) -> (b, 1, n_mels, frames): log mel, loudest cell at 0, floored 12 nats (~52 dB) below it."""
    m = ear.log_mel(x)                                           # (b, n_mels, frames)
    m = m - m.amax(dim=(1, 2), keepdim=True)
    return (m.clamp_min(-12.0) / 6.0 + 1.0)[:, None]             # about [-1, 1]


def augment_mel(m: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(b, 1, f, t) -> the same shape: each clip stretched in time (0.85-1.15) and shifted, its mel axis warped
    by 0.9-1.1 (vocal tract length perturbation, Jaitly & Hinton 2013: another speaker's formants), a noise
    floor 36 to 5 dB down, and one frequency and one time mask (SpecAugment)."""
    b, _, f, t = m.shape

    def u(lo, hi):
        return torch.empty(b).uniform_(lo, hi, generator=gen)

    # One affine resampling does stretch, shift and warp: output cell (x, y) reads input (sx x + tx, sy y + ty)
    # in [-1, 1] coordinates. grid_sample pads with 0, so it runs on m + 1 (silence is then 0).
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = 1 / u(0.85, 1.15), u(-0.3, 0.3)
    theta[:, 1, 1] = 1 / u(*WARP)
    theta[:, 1, 2] = theta[:, 1, 1] - 1  # keep the lowest band in place: the warp is about 0 Hz
    grid = F.affine_grid(theta, [b, 1, f, t], align_corners=False)
    s = F.grid_sample(m + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    floor = u(-1.0, 0.2)[:, None, None, None]
    s = torch.maximum(s, floor + 0.05 * torch.randn(s.shape, generator=gen))
    fi, ti = torch.arange(f)[None, :, None], torch.arange(t)[None, None, :]
    f0, fw = (u(0, 1) * f).long()[:, None, None], (u(0, 1) * (f // 6 + 1)).long()[:, None, None]
    t0, tw = (u(0, 1) * t).long()[:, None, None], (u(0, 1) * (t // 8 + 1)).long()[:, None, None]
    masked = ((fi >= f0) & (fi < f0 + fw)) | ((ti >= t0) & (ti < t0 + tw))  # (b, f, t)
    return s.masked_fill(masked[:, None], -1.0)


class AudioEvaluator:
    """A frozen audio evaluator: the mel front end, the network in eval mode, its metadata and hash."""

    def __init__(self, net: EvaluatorNet, ear: MelSpec, meta: dict, path: str = ""):
        self.net = net.eval().requires_grad_(False)
        self.ear = ear
        self.meta = meta
        self.path = path

    @property
    def sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def rate(self) -> int:
        return self.ear.rate

    @property
    def length(self) -> int:
        return self.meta["length"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def identity(self) -> dict:
        keys = ("name", "data", "rate", "length", "num_classes", "weights_sha256", "test_accuracy", "test_size",
                "real_accuracy")
        return {k: self.meta.get(k) for k in keys}

    @torch.inference_mode()
    def features_and_probs(self, x: np.ndarray, batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """float waveforms (n, samples) at ``rate`` -> (features (n, 128), class probabilities (n, k)), float64."""
        x = check_waveforms(x, "samples", self.length)
        feats, probs = [], []
        for i in range(0, len(x), batch_size):
            f = self.net.features(normalized_log_mel(self.ear, torch.from_numpy(x[i:i + batch_size])))
            feats.append(f)
            probs.append(torch.softmax(self.net.head(f), dim=1))
        return torch.cat(feats).double().numpy(), torch.cat(probs).double().numpy()

    def classify(self, x: np.ndarray) -> np.ndarray:
        return self.features_and_probs(x)[1].argmax(1)


def check_waveforms(x, where: str, length: int | None = None) -> np.ndarray:
    """float32 (n, samples) finite, or a one-line error naming ``where``."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or 0 in x.shape:
        raise GenforgeError(f"{where}: expected float waveforms (N, samples), got "
                            f"{getattr(x, 'shape', type(x).__name__)}")
    if x.dtype.kind != "f":
        raise GenforgeError(f"{where}: waveforms must be floats in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise GenforgeError(f"{where}: {int((~np.isfinite(x)).any(1).sum())} waveform(s) hold NaN or infinite "
                            "samples (a diverged generator?)")
    if length is not None and x.shape[1] != length:
        raise GenforgeError(f"{where}: waveforms of {x.shape[1]} samples; the evaluator takes {length}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- training


def train_audio_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, ear: MelSpec,
                           recipe: AudioRecipe = AudioRecipe(), progress: bool = False) -> EvaluatorNet:
    """An EvaluatorNet on augmented normalized log-mels of float waveforms (n, samples); seeded."""
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG: seed it, restore the caller's
        torch.manual_seed(recipe.seed)
        with torch.no_grad():
            mels = torch.cat([normalized_log_mel(ear, torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)])
        shape = tuple(mels.shape[1:])                              # (1, n_mels, frames)
        net = EvaluatorNet(shape, num_classes, WIDTHS)
        gen = torch.Generator().manual_seed(recipe.seed + 1)
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps = recipe.steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        batch = min(recipe.batch_size, len(x))
        per_epoch = max(1, len(x) // batch)
        net.train()
        t0 = time.perf_counter()
        for step in range(steps):
            i = step % per_epoch
            if i == 0:
                perm = torch.randperm(len(x), generator=gen)
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(net(augment_mel(mels[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress and (step + 1) % 250 == 0:
                print(f"genforge: audio evaluator step {step + 1}/{steps} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return net.eval()


def _accuracy(ev: AudioEvaluator, x: np.ndarray, y: np.ndarray) -> float:
    return float((ev.classify(x) == y).mean()) if len(x) else float("nan")


def train_audio_evaluator(spec: str, recipe: AudioRecipe = AudioRecipe(), splits: AudioSplits | None = None,
                          progress: bool = True) -> AudioEvaluator:
    """Train the evaluator of ``spec`` on its train split; test it on its test split and its real check."""
    ear = ear_of(spec)
    splits = splits or load_audio(spec, rate=ear.rate, length=16000)
    if splits.train.y is None or splits.num_classes < 2:
        raise DataError(f"{spec}: has no class labels; an audio evaluator is a classifier (one subfolder per class)")
    if progress:
        print(f"genforge: training the audio evaluator for {spec} on {len(splits.train)} clips "
              f"({recipe.steps} steps, seed {recipe.seed})", file=sys.stderr)
    t0 = time.perf_counter()
    net = train_audio_classifier(splits.train.x, splits.train.y, splits.num_classes, ear, recipe, progress)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": audio_evaluator_key(spec),
            "data": spec, "rate": ear.rate, "length": splits.length, "mel": ear.to_dict(),
            "input_shape": [1, ear.n_mels, ear.frames(splits.length)], "num_classes": splits.num_classes,
            "class_names": splits.class_names, "widths": list(WIDTHS), "train_size": len(splits.train),
            "train_sha256": hashlib.sha256(splits.train.x.tobytes()).hexdigest(), "train_recipe": recipe.__dict__,
            "threads": torch.get_num_threads(), "train_seconds": 0.0}
    meta["weights_sha256"] = weights_blob(net.state_dict(), FORMAT)[1]  # what save_audio_evaluator writes
    ev = AudioEvaluator(net, ear, meta)
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    meta["test_accuracy"] = round(_accuracy(ev, splits.test.x, splits.test.y), 6)
    meta["test_size"] = len(splits.test)
    meta["real_accuracy"], meta["real_data"] = None, None
    real = REAL_CHECK.get(spec.strip().split(":", 1)[1] if ":" in spec else "")
    if real is not None:
        r = load_audio(real, rate=ear.rate, length=splits.length).test
        meta["real_accuracy"], meta["real_data"], meta["real_size"] = round(_accuracy(ev, r.x, r.y), 6), real, len(r)
    if progress:
        extra = f", {100 * meta['real_accuracy']:.0f}% on {real}" if real else ""
        print(f"genforge: audio evaluator test accuracy {100 * meta['test_accuracy']:.1f}% on "
              f"{len(splits.test)} clips{extra} ({meta['train_seconds']:.0f} s)", file=sys.stderr)
    return ev


# ------------------------------------------------------------------------------------------ files


def audio_evaluator_key(spec: str) -> str:
    """``audio-spoken-digits``; a folder's spec gets a short hash, so two folders never collide."""
    spec = spec.strip()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.")[:60]
    named = spec.split(":", 1)[1] in ("spoken-digits", "drums") if ":" in spec else False
    return slug if named else f"{slug}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def save_audio_evaluator(ev: AudioEvaluator, directory: str | Path) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json`` (with the weights' SHA-256) into ``directory``."""
    directory = Path(directory)
    weights, json_path = directory / f"{ev.meta['name']}.safetensors", directory / f"{ev.meta['name']}.json"
    ev.meta = write_weights(weights, json_path, ev.net.state_dict(), ev.meta, FORMAT, stamp=True)
    ev.path = str(weights)
    return json_path


def load_audio_evaluator(path: str | Path) -> AudioEvaluator:
    """``NAME.json`` + ``NAME.safetensors``: fields, header and SHA-256 checked before a weight is used."""
    path = Path(path)
    json_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
    meta = read_json(json_path, ModelFileError, label=f"audio evaluator {json_path}")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"audio evaluator {json_path}: not a genforge audio evaluator ({FORMAT!r} "
                             f"version {FORMAT_VERSION})")
    checks = {"name": str, "data": str, "mel": dict, "input_shape": list, "num_classes": int, "widths": list,
              "length": int, "weights_sha256": str, "class_names": list}
    for key, typ in checks.items():
        if not isinstance(meta.get(key), typ):
            raise ModelFileError(f"audio evaluator {json_path}: field '{key}' missing or not a {typ.__name__}")
    try:
        ear = MelSpec.from_dict(meta["mel"], where=f"audio evaluator {json_path}")
    except (DataError, TypeError) as e:
        raise ModelFileError(f"audio evaluator {json_path}: field 'mel' is malformed ({e})") from None
    shape = meta["input_shape"]
    if (len(shape) != 3 or shape != [1, ear.n_mels, ear.frames(meta["length"])]
            or not 2 <= meta["num_classes"] <= 1000 or len(meta["class_names"]) != meta["num_classes"]
            or not all(isinstance(w, int) and 1 <= w <= 1024 for w in meta["widths"])):
        raise ModelFileError(f"audio evaluator {json_path}: input_shape, num_classes or widths out of range")
    args = (tuple(shape), meta["num_classes"], tuple(meta["widths"]))
    with torch.device("meta"):
        skeleton = EvaluatorNet(*args)
    tensors = read_weights(weights, json_path, meta, skeleton.state_dict(), what="audio evaluator",
                           hint="delete a cached one to retrain it")
    net = EvaluatorNet(*args)
    net.load_state_dict(tensors, strict=True)
    return AudioEvaluator(net, ear, meta, str(weights))


def get_audio_evaluator(spec: str, recipe: AudioRecipe = AudioRecipe(), progress: bool = True) -> AudioEvaluator:
    """The evaluator for ``spec``: shipped with genforge, cached, or trained now (announced) and cached."""
    key = audio_evaluator_key(spec)
    for directory in (SHIPPED_DIR, cache_dir()):
        if (directory / f"{key}.json").is_file():
            return load_audio_evaluator(directory / f"{key}.json")
    if progress:
        print(f"genforge: no audio evaluator for {spec} yet: training one now (once; cached in {cache_dir()})",
              file=sys.stderr)
    ev = train_audio_evaluator(spec, recipe, progress=progress)
    save_audio_evaluator(ev, cache_dir())
    return ev


# ------------------------------------------------------------------------------------------------ scores


def score_audio(ev: AudioEvaluator, x: np.ndarray, y: np.ndarray | None = None,
                reference: np.ndarray | None = None) -> dict:
    """IS, FD against ``reference`` waveforms (default: none, FD left out), precision/recall, class match."""
    feats, probs = ev.features_and_probs(x)
    out: dict = {"n": len(x)}
    with scores.one_blas_thread():
        out["is"] = scores.inception_score(probs)[0]
        out["class_entropy"] = scores.class_entropy(probs)
        if reference is not None:
            ref_feats, _ = ev.features_and_probs(reference)
            out["fd"] = scores.fid(ref_feats, feats)
            k = min(scores.PR_K, len(ref_feats) - 1, len(feats) - 1)
            if k >= 1:
                out["precision"], out["recall"] = scores.precision_recall(ref_feats, feats, k=k)
    if y is not None:
        out["class_match"] = scores.class_match(probs, np.asarray(y))
    return out


def real_rows(ev: AudioEvaluator, splits: AudioSplits) -> list[tuple[str, dict]]:
    """The rows every audio table prints beside the samples: the train split scored against the test split
    (what real data scores, as the images' reference row does), and the real-data check where there is one."""
    rows = [(f"real: train split vs test ({len(splits.train)})",
             score_audio(ev, splits.train.x, splits.train.y, reference=splits.test.x))]
    rows[0][1]["accuracy"] = ev.meta.get("test_accuracy")
    if ev.meta.get("real_data"):
        real = load_audio(ev.meta["real_data"], rate=ev.rate, length=ev.length).test
        row = score_audio(ev, real.x, real.y)
        row["accuracy"] = float((ev.classify(real.x) == real.y).mean())
        rows.append((f"real: {ev.meta['real_data']} ({len(real)})", row))
    return rows


AUDIO_COLUMNS = [("fd", "FD", "{:.2f}"), ("precision", "prec", "{:.3f}"), ("recall", "recall", "{:.3f}"),
                 ("is", "IS", "{:.2f}"), ("class_match", "match", "{:.3f}"), ("accuracy", "acc", "{:.3f}")]


def format_audio_table(rows: list[tuple[str, dict]], ev: AudioEvaluator | None = None) -> str:
    """A plain-text table, one row per (name, scores); blank where a score does not apply."""
    width = max(len(name) for name, _ in rows) + 2
    lines = ["".ljust(width) + "".join(h.rjust(9) for _, h, _ in AUDIO_COLUMNS)]
    for name, row in rows:
        cells = [fmt.format(row[k]).rjust(9) if row.get(k) is not None else "".rjust(9) for k, _, fmt in AUDIO_COLUMNS]
        lines.append(name.ljust(width) + "".join(cells))
    if ev is not None:
        lines.append(f"evaluator {ev.meta['name']} sha256 {ev.sha256[:12]}... (test accuracy "
                     f"{100 * ev.meta['test_accuracy']:.1f}%)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ a model


def audio_spec_of(data: str) -> str:
    """The evaluator's data spec of a model's data: audio-wave:X and audio:X share audio:X's evaluator."""
    kind, _, rest = data.strip().partition(":")
    return f"audio:{rest}" if kind in ("audio", "audio-wave") else data


def to_evaluator(ev: AudioEvaluator, x: np.ndarray, rate: int) -> np.ndarray:
    """Samples (n, samples) at ``rate`` -> the evaluator's rate and length (resampled; clipped or padded)."""
    x = check_waveforms(np.asarray(x), "samples")
    if rate != ev.rate:
        x = resample(x, rate, ev.rate)
    if x.shape[1] != ev.length:
        x = np.stack([fit_length(row, ev.length, "start") for row in x])
    return np.ascontiguousarray(x, dtype=np.float32)


def round_trip_rows(model, ev: AudioEvaluator, spec: str, splits: AudioSplits) -> list[tuple[str, dict]]:
    """For a spectrogram model: the real test clips turned into its pictures and back to sound by its own
    Griffin-Lim, scored like samples (class match against their true labels). What the representation lets
    through is the most its samples can score: the ceiling of IS and class match. [] for a waveform model."""
    out = model.output
    if not isinstance(out, AudioMelOutput):
        return []
    same = (out.rate, out.length) == (ev.rate, ev.length)
    clips = splits.test if same else load_audio(spec, rate=out.rate, length=out.length).test
    heard = to_evaluator(ev, out((to_pictures(out.spec, clips.x) + 1) / 2), out.rate)
    row = score_audio(ev, heard, clips.y, reference=splits.test.x)
    return [(f"real: test through the model's mel + Griffin-Lim ({len(clips)})", row)]


def evaluate_audio(model, n: int = 500, seed: int = 0, progress: bool = True, reference_rows: list | None = None,
                   **controls) -> dict:
    """Sample ``n`` clips from an audio model (classes cycled when conditional), score them with the evaluator of
    its data against the test split, beside the real-data rows; also the seconds of audio per compute second.
    ``controls``: sampling controls the model declares (diffusion: steps, sampler, guidance), else its own.
    ``reference_rows``: the rows after the samples' from an earlier result for the same model (they do not
    depend on the controls), so scoring one model several ways computes them once."""
    spec = audio_spec_of(model.meta["data"])
    ev = get_audio_evaluator(spec, progress=progress)
    splits = load_audio(spec, rate=ev.rate, length=ev.length)
    t0 = time.perf_counter()
    samples = draw(model, n, seed=seed, **controls)  # every class in turn; a cluster model's clusters by size
    seconds = time.perf_counter() - t0
    rate = model.output.rate
    x = to_evaluator(ev, samples.x, rate)
    row = score_audio(ev, x, model.class_labels(samples), reference=splits.test.x)
    row["realtime_factor"] = len(samples.x) * samples.x.shape[1] / rate / seconds
    if reference_rows is None:
        reference_rows = [*real_rows(ev, splits), *round_trip_rows(model, ev, spec, splits)]
    rows = [(f"samples ({n}, seed {seed})", row), *reference_rows]
    return {"rows": rows, "table": format_audio_table(rows, ev), "evaluator": ev.identity(),
            "sample_seconds": seconds}
