"""The loaded model users sample from: networks in eval mode, the metadata of ``config.json``, and the
controls its family and modality declare.

    model = genforge.load("runs/mnist5k-dcgan")      # a run directory or a model directory
    samples = model.sample(16, seed=0, truncation=0.7)
    samples.x          # uint8 (16, 28, 28); samples.images: PIL images; samples.y, samples.z
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from genforge import devices, modalities
from genforge.controls import Control
from genforge.generation.sampling import OUTPUTS, Samples, sample
from genforge.memory import tune_allocator
from genforge.models import MODELS, family_of, sampling_defaults
from genforge.models.files import read_model


class GenerativeModel:
    """A trained model ready to sample. Obtain one with :func:`genforge.load`."""

    def __init__(self, nets: dict[str, nn.Module], meta: dict, path: str = ""):
        self.nets = nets
        self.meta = meta
        self.path = path
        self.method = MODELS[meta["model"]].method
        # the modality's conversion of the family's [0, 1] outputs (series: back to the data's units)
        self.output = OUTPUTS[self.modality.name](meta, f"{path or 'model'}: config.json")
        for net in nets.values():
            net.eval().requires_grad_(False)

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def family(self) -> str:
        return family_of(self.meta["model"])  # from the recipe, not config.json's copy: one source of truth

    @property
    def modality(self) -> modalities.Modality:
        return modalities.of_meta(self.meta)

    @property
    def controls(self) -> tuple[Control, ...]:
        """Every control this model takes: its family's (those a conditional model needs only when it is one),
        then its modality's output controls."""
        own = tuple(c for c in self.method.CONTROLS if self.num_classes or not c.conditional_only)
        return own + self.modality.output_controls

    @property
    def cluster_prior(self) -> list[float] | None:
        """Cluster-guided models (config ``clusters``): each cluster's share of the training images; else None.

        Such a model is unconditional to its users: its classes are k-means clusters, drawn in proportion
        to these shares when no class is asked for (checked by genforge.load)."""
        clusters = self.meta.get("clusters")
        return clusters["prior"] if clusters else None

    @property
    def has_classes(self) -> bool:
        """Whether samples carry classes a user asked for: a conditional model's, not a cluster model's."""
        return bool(self.num_classes) and self.cluster_prior is None

    def class_labels(self, samples):
        """``samples.y`` where those are classes, else None: a cluster-guided model is scored and shown as the
        unconditional model it is (no class match, no CAS, no column per class)."""
        return samples.y if self.has_classes else None

    @functools.cached_property  # the metadata never changes after load; plan() and decode() both read it
    def sampling_defaults(self) -> dict:
        """The decoding controls used when a caller gives none: the recipe's own (diffusion: sampler,
        sample_steps, guidance), else the declared defaults (models saved before those keys existed)."""
        return sampling_defaults(self.method, self.meta.get("train_config") or {}, bool(self.num_classes))

    @property
    def example_shape(self) -> tuple[int, ...]:
        """One example's shape as the networks see it: images (c, h, w), series (c, t)."""
        return tuple(self.meta["example_shape"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """An image model's (c, h, w): its example_shape, by the name image code reads."""
        return self.example_shape

    @property
    def z_dim(self) -> int:
        return self.meta["z_dim"]

    @property
    def num_classes(self) -> int:
        return self.meta.get("num_classes", 0)

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def device(self) -> torch.device:
        for net in self.nets.values():  # a network of buffers only (the Gaussian copula) has a device too
            for t in (*net.parameters(), *net.buffers()):
                return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> "GenerativeModel":
        for net in self.nets.values():
            net.to(device)
        return self

    def sample(self, n: int, seed: int = 0, classes=None, batch_size: int | None = None, **controls) -> Samples:
        """``n`` samples, reproducibly from ``seed``: :func:`genforge.generation.sample` on this model.

        ``classes`` (conditional models): one class, or a list cycled over the n samples. ``controls``: those
        of ``model.controls`` (truncation for GANs, temperature for VAEs, steps / sampler / guidance for
        diffusion; size and resample for images). Returns :class:`~genforge.generation.Samples`: ``.x``
        (uint8 arrays), ``.images`` (PIL images), ``.y`` (classes), ``.z`` (latents).
        """
        return sample(self, n, seed=seed, classes=classes, batch_size=batch_size, **controls)

    def __repr__(self) -> str:
        return (f"GenerativeModel({self.name}, family={self.family}, modality={self.modality.name}, "
                f"example_shape={self.example_shape}, "
                f"z_dim={self.z_dim}, step={self.meta.get('step')})")


def load(path: str | Path, device: str | torch.device = "auto") -> GenerativeModel:
    """Load a trained model from a run directory (its best, else last, checkpoint) or a model directory
    (config.json + model.safetensors), checking every field and the weights' SHA-256 before trusting them.
    ``device``: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps", or a torch.device.

    >>> model = genforge.load("runs/mnist5k-dcgan")
    >>> model.sample(16, seed=0).x.shape   # uint8 (16, 28, 28)
    """
    tune_allocator()  # sampling, evaluation and the server load through here, also when called from Python
    if isinstance(device, str):  # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps"
        device = devices.pick(device)
    nets, meta, directory = read_model(path, device)
    return GenerativeModel(nets, meta, str(directory))
