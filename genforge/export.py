"""ONNX export of generators and decoders, and the onnxruntime backend that serves them.

``export_onnx(model, out)`` writes the network that maps latents (and
classes) to images, wrapped as ``method.generate`` wraps it (images in
[0, 1], shape (b, c, h, w)), with a dynamic batch dimension:

    out/model.onnx     inputs z float32 (b, z_dim) [and y int64 (b,)], output images float32 (b, c, h, w)
    out/config.json    the model's config.json plus an "onnx" section (file, SHA-256, inputs, opset)

``load_onnx(out)`` checks the hash and opens an onnxruntime session.
``OnnxModel`` behaves as a :class:`~genforge.models.GenerativeModel` for
sampling: ``sample(onnx_model, n, seed)`` runs genforge's own sampling code,
with the forward pass on onnxruntime. An ONNX file is a protobuf graph of
standard operators: loading one runs no code (unlike a pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genforge.crypto import is_encrypted
from genforge.errors import GenforgeError, ModelFileError
from genforge.generation.model import GenerativeModel
from genforge.generation.sampling import OUTPUTS
from genforge.io import atomic_write_bytes, atomic_write_json
from genforge.models import MODELS
from genforge.models.files import WEIGHTS, _read_meta

ONNX_FILE = "model.onnx"
OPSET = 18
EXPORTABLE = ("gan", "vae")  # one forward pass from latent to image; a diffusion sampler loops over steps


class _Generate(nn.Module):
    """The latent network of a model behind its method's ``generate``: (z[, y]) -> images in [0, 1]."""

    def __init__(self, model: GenerativeModel):
        super().__init__()
        self.role = model.method.LATENT                 # "generator" (GAN) or "decoder" (VAE)
        self.net = model.nets[self.role]
        self.generate = model.method.generate

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.generate({self.role: self.net}, z, y)  # (b, c, h, w)


def is_encrypted_model(model: GenerativeModel) -> bool:
    """Whether the model's weights file on disk is encrypted (genforge.crypto)."""
    return bool(model.path) and is_encrypted(Path(model.path) / WEIGHTS)


def onnx_bytes(model: GenerativeModel) -> tuple[bytes, dict]:
    """The ONNX graph of ``model``'s generator (GAN) or decoder (VAE), in memory, and its "onnx" record.

    Nothing is written: :func:`load_onnx_bytes` opens it in onnxruntime directly, which is how an encrypted
    model is served on the ONNX backend without its weights touching the disk in the clear.
    """
    if model.family not in EXPORTABLE:
        raise GenforgeError(f"export supports GAN generators and VAE decoders; model {model.name} is a "
                            f"{model.family}, whose sampler is a loop of many network calls")
    if model.device.type != "cpu":
        model = model.to("cpu")
    import onnx  # noqa: F401  (the exporter needs it; a clear ImportError beats a deep one)

    wrapper = _Generate(model).eval()
    conditional = model.num_classes > 0
    z = torch.randn(2, model.z_dim, generator=torch.Generator().manual_seed(0))
    args = (z, torch.zeros(2, dtype=torch.int64)) if conditional else (z,)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    names = ["z", "y"] if conditional else ["z"]
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with warnings.catch_warnings():
        # the exporter's chatter (deprecations, "torchvision is not installed") is not the user's business
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            # model_proto is built in memory; the exporter writes a file only when given one
            program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names, output_names=["images"],
                                        dynamic_shapes=tuple({0: batch} for _ in args), opset_version=OPSET,
                                        verbose=False)
        finally:
            quiet.setLevel(level)
    data = program.model_proto.SerializeToString()
    info = {"file": ONNX_FILE, "sha256": hashlib.sha256(data).hexdigest(), "opset": OPSET, "inputs": names,
            "output": "images", "network": wrapper.role, "exported_from": str(model.path),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return data, info


def export_onnx(model: GenerativeModel, out: str | Path, plaintext: bool = False) -> Path:
    """Export ``model``'s generator (GAN) or decoder (VAE) to ``out/model.onnx`` with its config.json.

    An ONNX file holds the network's weights in the clear (onnxruntime cannot read an encrypted one), so the
    export of an encrypted model is refused unless ``plaintext`` says that is intended.
    """
    if not plaintext and is_encrypted_model(model):
        raise GenforgeError(f"model {model.path} is encrypted, and an ONNX export holds its {model.method.LATENT}'s "
                            f"weights in the clear: {Path(out) / ONNX_FILE} would be plaintext. Give --plaintext "
                            "if that is intended, or serve it encrypted with --backend onnx (kept in memory)")
    data, info = onnx_bytes(model)
    out = Path(out)
    atomic_write_bytes(out / ONNX_FILE, data)
    atomic_write_json(out / "config.json", {**model.meta, "onnx": info})
    return out


class _OnnxMethod:
    """Stands in for a family module: ``generate`` runs the onnxruntime session."""

    def __init__(self, family_method):
        self.family = family_method

    def __getattr__(self, name):  # LATENT, VALUE_RANGE...: as the family says
        return getattr(self.family, name)

    @staticmethod
    def generate(nets: dict, z: torch.Tensor, y: torch.Tensor | None = None, **controls) -> torch.Tensor:
        if controls:
            raise GenforgeError(f"the ONNX backend takes no {', '.join(controls)}")
        session = nets["onnx"]
        feed = {"z": z.detach().cpu().numpy().astype(np.float32, copy=False)}
        if y is not None:
            feed["y"] = y.detach().cpu().numpy().astype(np.int64, copy=False)
        return torch.from_numpy(session.run(["images"], feed)[0])  # (b, c, h, w) in [0, 1]


class OnnxModel(GenerativeModel):
    """A model whose forward pass runs on onnxruntime; metadata and sampling as GenerativeModel's."""

    def __init__(self, session, meta: dict, path: str = ""):
        self.nets = {"onnx": session}
        self.meta = meta
        self.path = path
        self.method = _OnnxMethod(MODELS[meta["model"]].method)
        self.output = OUTPUTS[self.modality.name](meta, f"{path or 'model'}: config.json")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device) -> "OnnxModel":
        if torch.device(device).type != "cpu":
            raise GenforgeError("the ONNX backend runs on the CPU here")
        return self

    def __repr__(self) -> str:
        return (f"OnnxModel({self.name}, family={self.family}, modality={self.modality.name}, "
                f"example_shape={self.example_shape}, z_dim={self.z_dim})")


def is_onnx_dir(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Open an export written by :func:`export_onnx`, checking its config and the ONNX file's SHA-256."""
    path = Path(path)
    meta = _read_meta(path)
    info = meta.get("onnx")
    if not isinstance(info, dict) or info.get("file") != ONNX_FILE or not isinstance(info.get("sha256"), str):
        raise ModelFileError(f"{path / 'config.json'}: no valid 'onnx' section: not written by genforge export")
    data = (path / ONNX_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ModelFileError(f"{path / ONNX_FILE}: SHA-256 does not match config.json: altered or truncated")
    return load_onnx_bytes(data, meta, path / ONNX_FILE, threads)


def onnx_model_of(model: GenerativeModel, threads: int | None = None) -> OnnxModel:
    """``model`` on the ONNX backend, exported in memory: nothing is written (encrypted models stay so)."""
    data, info = onnx_bytes(model)
    return load_onnx_bytes(data, {**model.meta, "onnx": info}, Path(model.path), threads)


def load_onnx_bytes(data: bytes, meta: dict, where: str | Path, threads: int | None = None) -> OnnxModel:
    """An onnxruntime session over the ONNX graph ``data`` (bytes: InferenceSession reads them in memory)."""
    import onnxruntime as ort  # optional extra: genforge[serve]

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a malformed graph
        raise ModelFileError(f"{where}: onnxruntime cannot load it: {e}") from None
    wanted = ["z", "y"] if meta.get("num_classes", 0) else ["z"]
    if [i.name for i in session.get_inputs()] != wanted:
        raise ModelFileError(f"{where}: inputs {[i.name for i in session.get_inputs()]}, expected {wanted}")
    return OnnxModel(session, meta, str(Path(where).parent if Path(where).name == ONNX_FILE else where))


def describe(path: str | Path) -> str:
    """One line on an export, for the CLI."""
    meta = json.loads((Path(path) / "config.json").read_text())
    info = meta["onnx"]
    return (f"{meta['model']} {info['network']} -> {Path(path) / ONNX_FILE} (opset {info['opset']}, inputs "
            f"{', '.join(info['inputs'])}, sha256 {info['sha256'][:12]}...)")
