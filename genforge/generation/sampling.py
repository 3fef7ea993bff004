"""The generation plan: (model, n, seed, classes, controls) -> samples, the one path from a seed to outputs.

``plan`` checks the controls against the model's declarations (:mod:`genforge.controls`), resolves the
classes and draws the latents; ``render`` decodes a plan's latents with the family's sampler and applies the
modality's output controls. ``sample`` is the two in a row. The CLI, the Python API (``model.sample``), the
training loop's grids and validation, ``genforge eval``, the HTTP service (which batches the decode step
across requests) and feedback rounds all come through here, so the same seed and controls give the same
outputs everywhere (``tests/test_same_output.py``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from genforge import controls as declared
from genforge.data.series.base import Normalization
from genforge.errors import GenforgeError
from genforge.generation.table_output import TableOutput
from genforge.generation.text import TextOutput, sample_text
from genforge.models import FAMILY_CONTROLS
from genforge.generation.audio import AudioMelOutput, AudioWaveOutput

MAX_SAMPLES = 1_000_000
MAX_SIZE = declared.MAX_SIZE
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS}


@dataclass
class Samples:
    x: np.ndarray            # the modality's output: images uint8 (n, h, w) or (n, h, w, c); series float32
                             # (n, c, t) in the data's own units
    y: np.ndarray | None     # int64 (n,) class of each sample for conditional models, else None
    z: np.ndarray            # float32 (n, z_dim): the latents, so any sample can be regenerated
    seed: int
    controls: dict = field(default_factory=dict)  # the controls that made them, as given to sample()

    @property
    def images(self) -> list[Image.Image]:
        """The samples as PIL images (grayscale "L" or "RGB"); image models only."""
        if self.x.dtype != np.uint8:
            raise GenforgeError("these samples are not images (a series model's samples are float arrays: use .x)")
        return [Image.fromarray(img) for img in self.x]

    def __len__(self) -> int:
        return len(self.x)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.x if dtype is None else self.x.astype(dtype)


@dataclass
class Plan:
    """What a sampling call will decode: latents, classes, and the checked controls."""
    z: torch.Tensor            # float32 (n, z_dim), on the CPU
    y: np.ndarray | None       # int64 (n,) or None
    decode: dict               # decode-stage controls, the model's defaults filled in (family's generate)
    output: dict               # output-stage controls (modality: size, resample)
    seed: int
    controls: dict             # the controls as given (the record written beside outputs)


def latents(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Standard normal latents (n, z_dim), drawn on the CPU so every device gets the same numbers."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def truncation_threshold(truncation: float) -> float:
    """The |z| bound that keeps the central ``truncation`` share of a standard normal coordinate.

    truncation=1 keeps everything (no bound); 0.5 bounds |z| by 0.674; 0.95 by 1.96.
    """
    return math.inf if truncation >= 1 else math.sqrt(2) * float(torch.erfinv(torch.tensor(truncation)))


def truncated_latents(n: int, z_dim: int, seed: int, truncation: float) -> torch.Tensor:
    """Latents with the truncation trick by resampling (Brock et al. 2019, BigGAN section 3.1).

    Every coordinate with |z| above the threshold is drawn again from the same stream until none is left,
    so the result is a standard normal conditioned on the bound (not clipped, which piles mass at the edge).
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=gen)
    bound = truncation_threshold(truncation)
    outside = z.abs() > bound
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=gen)
        outside = z.abs() > bound
    return z


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) floats in [0, 1] -> (b, h, w, c) uint8, rounding to nearest."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class ImageOutput:
    """A family's outputs in [0, 1] -> uint8 images (b, h, w) grayscale or (b, h, w, c) colour."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        pass

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = to_uint8(x).cpu().numpy()
        return out[..., 0] if out.shape[-1] == 1 else out


class SeriesOutput:
    """A family's outputs in [0, 1] -> float32 series (b, c, t) in the data's units: the training data's
    per-channel map to [-1, 1] (``transform.normalization``, saved with the model) undone. A channel that was
    constant in every training window (a valve held shut) comes out at that constant: a network's output is
    never exactly flat, and a few hundredths of jitter on a flat sensor mark a window as generated."""

    def __init__(self, meta: dict, origin: str = "config.json"):
        transform = meta.get("transform")
        if not isinstance(transform, dict) or not isinstance(transform.get("normalization"), dict):
            raise GenforgeError(f"{origin}: a series model needs field 'transform' with its 'normalization'")
        self.normalization = Normalization.from_json(transform["normalization"], f"{origin}: transform")
        self.channel_names = transform.get("channel_names")
        c = meta["example_shape"][0]
        if len(self.normalization.shift) != c or not (
                isinstance(self.channel_names, list) and len(self.channel_names) == c
                and all(isinstance(n, str) for n in self.channel_names)):
            raise GenforgeError(f"{origin}: field 'transform' must describe {c} channel(s) (normalization and "
                                "channel_names)")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = self.normalization.invert((x.float() * 2 - 1).cpu().numpy())
        flat = list(self.normalization.constant)
        out[:, flat] = self.normalization.shift[flat, None]
        return out


# modality -> the conversion of a family's [0, 1] outputs into what a sample is (built once per loaded model)
OUTPUTS = {"image": ImageOutput, "series": SeriesOutput, "table": TableOutput, "text": TextOutput,
           "audio": AudioMelOutput, "audio-wave": AudioWaveOutput}
# modality -> its own sampler, where sampling is not (latents -> the family's generate): text draws tokens
SAMPLERS = {"text": sample_text}


def prior_classes(prior, n: int, seed: int) -> np.ndarray:
    """``n`` classes (int64) drawn independently with probabilities ``prior``, reproducibly from ``seed``."""
    p = np.asarray(prior, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def _ascii_int(text: str) -> int | None:
    """The integer a string spells in ASCII digits ("2", " 2", "-1"), else None ("²", "①", "2.0", "two")."""
    body = text.strip()
    digits = body[1:] if body.startswith("-") else body
    if not (digits.isascii() and digits.isdecimal()):
        return None
    try:
        return int(body)
    except ValueError:  # over Python's 4300-digit limit for int(str): no class index is that long
        return None


def resolve_class(model, c) -> int:
    """One requested class as an index. An int is an index; a string is a class name first, an index only
    when it spells one in ASCII digits and names no class, or with an explicit ``index:N`` / ``name:S``. A
    string that names one class and indexes another is ambiguous: an error naming both readings."""
    k = model.num_classes
    names = model.class_names or []
    if isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)):
        index = int(c)
    elif isinstance(c, str):
        as_int = _ascii_int(c)
        if c in names:
            index = names.index(c)
            if as_int is not None and as_int != index and 0 <= as_int < k:
                raise GenforgeError(f"class {c!r} is ambiguous: it is the name of class {index} and the index of "
                                    f"class {names[as_int]!r}; write name:{c} or index:{as_int}")
            return index
        if c.startswith("name:") and c[5:] in names:
            return names.index(c[5:])
        if c.startswith("index:") and _ascii_int(c[6:]) is not None:
            as_int = _ascii_int(c[6:])
        if as_int is None:
            listed = f": {', '.join(names)}" if names else f" (indices 0 to {k - 1})"
            raise GenforgeError(f"class {c!r} is not one of this model's classes{listed}")
        index = as_int
    else:
        raise GenforgeError(f"class {c!r} must be a class index or name")
    if not 0 <= index < k:
        raise GenforgeError(f"class {c!r} is out of range: this model has classes 0 to {k - 1}")
    return index


def class_indices(model, classes, n: int, seed: int = 0) -> np.ndarray | None:
    """The class of each of ``n`` samples: None for unconditional models; for conditional ones ``classes`` is
    one class or a list cycled over the samples (see :func:`resolve_class`); by default every class in turn,
    or for a cluster-guided model clusters drawn by size (from ``seed``)."""
    k = model.num_classes
    if k == 0:
        if classes is not None:
            raise GenforgeError(f"model {model.name} is unconditional: it cannot generate a requested class")
        return None
    if classes is None and model.cluster_prior is not None:
        return prior_classes(model.cluster_prior, n, seed)
    if classes is None:
        wanted = list(range(k))
    else:
        wanted = [classes] if isinstance(classes, (int, str, np.integer)) else list(classes)
        if not wanted:
            raise GenforgeError("classes: give at least one class")
    resolved = [resolve_class(model, c) for c in wanted]
    return np.resize(np.array(resolved, dtype=np.int64), n)  # cycled to length n


def resize(x: np.ndarray, size: int, resample: str = "lanczos") -> np.ndarray:
    """uint8 images (n, h, w[, c]) -> (n, size, size[, c]) with Pillow's nearest, bilinear or Lanczos filter."""
    if x.shape[1:3] == (size, size):
        return x
    out = [np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE[resample])) for img in x]
    return np.stack(out)


def decode(model, z: torch.Tensor, y: np.ndarray | None = None, batch_size: int | None = None,
           progress: bool = False, **family_controls) -> np.ndarray:
    """Latents (n, z_dim) and classes (n,) or None -> the model's outputs: images uint8 (n, h, w) or
    (n, h, w, c); series float32 (n, c, t) in the data's units (``model.output``, by modality).

    ``family_controls`` (diffusion: steps, guidance, sampler) go to the family's ``generate``; None values are
    dropped, and the model's recipe fills in the ones not given (``model.sampling_defaults``). Callers that
    choose latents themselves (interpolation, class sweeps, feedback, the server's batcher) come here.
    ``progress``: a bar over the samples on stderr (the batches and random streams are the same either way).
    ``batch_size``: samples per forward pass; by default the family's ``SAMPLE_BATCH`` (diffusion: 128), else 500.
    """
    family_controls = {**model.sampling_defaults, **{k: v for k, v in family_controls.items() if v is not None}}
    batch_size = batch_size or getattr(model.method, "SAMPLE_BATCH", 500)
    device = model.device
    y_t = torch.from_numpy(y) if y is not None else None
    chunks = []
    with torch.inference_mode(), tqdm(total=z.shape[0], desc="sampling", unit="img", disable=not progress,
                                      file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        for start in range(0, z.shape[0], batch_size):
            part_y = y_t[start:start + batch_size].to(device) if y_t is not None else None
            images = model.method.generate(model.nets, z[start:start + batch_size].to(device), part_y,
                                           **family_controls)
            chunks.append(model.output(images))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


def draw_latents(model, n: int, seed: int, noise: dict) -> torch.Tensor:
    """The latents (n, z_dim) of a seed under the noise-stage controls (truncation, temperature)."""
    truncation = noise.get("truncation")
    if truncation is not None and truncation < 1:
        z = truncated_latents(n, model.z_dim, seed, truncation)
    else:
        z = latents(n, model.z_dim, seed)
    if "temperature" in noise:
        z = z * noise["temperature"]
    return z


def plan(model, n: int, seed: int = 0, classes=None, **controls) -> Plan:
    """Check a sampling request and fix everything random about it: the classes and the latents."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise GenforgeError(f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise GenforgeError(f"seed must be a non-negative integer, got {seed!r}")
    checked = declared.resolve(model, controls, FAMILY_CONTROLS)
    if "size" in checked:
        checked.setdefault("resample", declared.RESAMPLE.default)  # recorded with the size it filters
    else:
        checked.pop("resample", None)  # a filter without a size changes nothing
    stage = {c.name: c.stage for c in model.controls}
    by_stage = {s: {k: v for k, v in checked.items() if stage[k] == s} for s in ("noise", "decode", "output")}
    y = class_indices(model, classes, n, seed)
    z = draw_latents(model, n, seed, by_stage["noise"])
    record = {**({"classes": classes} if classes is not None else {}), **checked}
    decode_controls = {**model.sampling_defaults, **by_stage["decode"]}
    return Plan(z=z, y=y, decode=decode_controls, output=by_stage["output"], seed=seed, controls=record)


def finish(x: np.ndarray, output: dict) -> np.ndarray:
    """Apply the output controls to decoded samples (images: size and resample)."""
    if output.get("size") is not None:
        x = resize(x, output["size"], output["resample"])
    return x


def render(model, p: Plan, batch_size: int | None = None, progress: bool = False) -> Samples:
    """Decode a plan into samples (``progress``: a bar over the samples on stderr)."""
    x = finish(decode(model, p.z, p.y, batch_size, progress, **p.decode), p.output)
    return Samples(x=x, y=p.y, z=p.z.numpy(), seed=p.seed, controls=p.controls)


def sample(model, n: int, seed: int = 0, classes=None, batch_size: int | None = None, progress: bool = False,
           **controls) -> Samples:
    """Generate ``n`` samples from a loaded model (see :func:`genforge.load`), reproducibly from ``seed``.

    classes: conditional models only; one class (index or name) or a list cycled over the samples.
    controls: those the model declares (``model.controls``; each family's in :mod:`genforge.controls`):
    truncation (GANs, (0, 1]: keep the central share of each latent coordinate), temperature (VAEs, (0, 10]:
    the prior's spread), steps / sampler / guidance (diffusion: sampler steps, "ddim", "dpm++2m" or "dpm++2m-sde",
    classifier-free guidance for conditional models), size / resample (images: resize the output).
    progress: a bar over the samples on stderr (off by default; the samples are the same either way).
    Text models (:mod:`genforge.generation.text`): prompt, max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, stop, long_prompt; they return TextSamples (``.texts``).
    """
    own = SAMPLERS.get(model.modality.name)
    if own is not None:
        return own(model, n, seed, classes, batch_size or 500, progress, **controls)
    return render(model, plan(model, n, seed, classes, **controls), batch_size, progress)
