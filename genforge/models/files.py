"""Model files: ``model.safetensors`` plus ``config.json``. No pickle anywhere.

Loading checks everything before trusting it: the JSON's fields, the
safetensors header (size, dtypes, shapes and offsets, against the networks the
config describes) before any tensor is allocated, and the SHA-256 of the
weights recorded at save time, so a truncated or altered file is a clear error.

The other weights files of genforge (evaluators, detectors, the denoiser, image-to-speech) keep the same
pattern, a ``NAME.safetensors`` beside a ``NAME.json`` that records its ``weights_sha256``, through
:func:`write_weights` and :func:`read_weights`; each keeps its own format name and checks its own fields.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from genforge import modalities
from genforge.crypto import is_encrypted, read_plain, write_encrypted
from genforge.errors import GenforgeError, ModelFileError
from genforge.io import atomic_write_bytes, atomic_write_json, read_json
from genforge.models import MODELS, build_networks, family_of

FORMAT = "genforge-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MAX_HEADER_BYTES = 16 * 2**20
MAX_SIDE = 2**20  # the largest extent of one example's axis (a series of a million samples)
# texts a model's transform carries that are kept beside the weights as files of their own, config.json
# recording each one's SHA-256 in its place (text models: the tokenizer, as tokenizer.json)
SIDE_FILES = {"tokenizer_json": "tokenizer.json"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}
_TORCH_DTYPE = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def state_tensors(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten role -> module into ``{"generator.net.0.weight": tensor, ...}`` (contiguous CPU copies)."""
    return {f"{role}.{k}": v.detach().to("cpu").contiguous()
            for role, net in nets.items() for k, v in net.state_dict().items()}


def weights_blob(tensors: Mapping[str, torch.Tensor | np.ndarray], fmt: str) -> tuple[bytes, str]:
    """The safetensors bytes of ``tensors`` (written as contiguous CPU copies; numpy arrays as they are), with
    ``{"format": fmt}`` as their metadata, and the SHA-256 hex digest of those bytes."""
    plain = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
             else v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = st_save(plain, metadata={"format": fmt})
    return data, hashlib.sha256(data).hexdigest()


def write_weights(weights: Path, config: Path, tensors: Mapping[str, torch.Tensor | np.ndarray], meta: dict,
                  fmt: str, *, stamp: bool = False) -> dict:
    """Write ``tensors`` to ``weights`` (safetensors, see :func:`weights_blob`), then ``meta`` plus their
    ``weights_sha256`` (and with ``stamp`` a ``saved_at`` UTC time) to the JSON file ``config``; each
    atomically, the JSON last, so a JSON file on disk always has its weights. Returns the meta written."""
    data, digest = weights_blob(tensors, fmt)
    meta = {**meta, "weights_sha256": digest}
    if stamp:
        meta["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_bytes(weights, data)
    atomic_write_json(config, meta)
    return meta


def read_weights(weights: Path, config: Path, meta: dict, expected: dict[str, torch.Tensor] | None = None, *,
                 what: str = "", hint: str = "", data: bytes | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``weights``, once its bytes match the ``weights_sha256`` that ``meta`` (read from the JSON
    file ``config``) recorded at save time.

    ``expected``: the tensors the file must hold (a meta-device skeleton's state dict); the safetensors header
    is checked against them (:func:`check_header`) before any tensor is allocated. ``what`` ("evaluator")
    starts the mismatch error and ``hint`` ends it (what the user can do about it). ``data``: the file's bytes
    when they are already in memory (a decrypted file).
    """
    digest = meta.get("weights_sha256")
    if not isinstance(digest, str):
        raise ModelFileError(f"{config}: field 'weights_sha256' missing or not a str")
    if expected is not None:
        check_header(weights, expected, data)
    elif data is None and not weights.is_file():
        raise ModelFileError(f"{weights}: missing")
    if data is None:
        data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelFileError(f"{what + ' ' if what else ''}{weights}: SHA-256 does not match {config.name}: the "
                             f"file was altered or truncated{f' ({hint})' if hint else ''}")
    return st_load(data)


def save_model(directory: str | Path, nets: dict[str, nn.Module], meta: dict, keyring=None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``, each atomically.

    ``meta`` must hold at least model, modality, example_shape, z_dim and base_channels; the format fields and the
    weights' SHA-256 (of the plain safetensors bytes) are added here. With a ``keyring``
    (:mod:`genforge.crypto`) the weights are written encrypted; config.json stays readable.
    """
    directory = Path(directory)
    data, digest = weights_blob(state_tensors(nets), FORMAT)
    transform, side = meta.get("transform"), {}
    if isinstance(transform, dict) and any(key in transform for key in SIDE_FILES):
        transform = dict(transform)
        for key, name in SIDE_FILES.items():
            if key in transform:
                side[name] = transform.pop(key).encode("utf-8")
                transform[key.removesuffix("_json") + "_sha256"] = hashlib.sha256(side[name]).hexdigest()
        meta = {**meta, "transform": transform}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
            "family": family_of(meta["model"]),
            "networks": sorted(nets), "weights_sha256": digest,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if keyring is not None:
        write_encrypted(directory / WEIGHTS, data, keyring)
    else:
        atomic_write_bytes(directory / WEIGHTS, data)
    for name, text in side.items():
        atomic_write_bytes(directory / name, text)
    atomic_write_json(directory / CONFIG, meta)
    return directory


def _read_side_files(meta: dict, directory: Path) -> None:
    """Read the side files config.json names by SHA-256 back into its transform, checking each hash."""
    transform = meta.get("transform")
    if not isinstance(transform, dict):
        return
    for key, name in SIDE_FILES.items():
        digest = transform.get(key.removesuffix("_json") + "_sha256")
        if digest is None:
            continue
        try:
            data = (directory / name).read_bytes()
        except FileNotFoundError:
            raise ModelFileError(f"{directory / name}: missing (config.json records its SHA-256)") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ModelFileError(f"{directory / name}: SHA-256 does not match config.json: the file was altered or "
                                 "belongs to another model")
        try:
            transform[key] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"{directory / name}: not UTF-8") from None


def _net_options(meta: dict, where: Path) -> dict:
    """``net_options`` (text: vocabulary, layers, heads, width; tables: the column layout): names mapped to
    plain numbers, short strings, or lists of them (nested); each network checks its own (a wrong one is a
    ModelFileError)."""
    options = meta.get("net_options") or {}

    def plain(v, depth=0) -> bool:
        if isinstance(v, (list, tuple)):
            return depth < 4 and len(v) <= 100_000 and all(plain(x, depth + 1) for x in v)
        return ((isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and abs(v) <= 10_000_000) or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 64))

    if not isinstance(options, dict) or not all(isinstance(k, str) and plain(v) for k, v in options.items()):
        raise ModelFileError(f"{where}: field 'net_options' must map names to numbers, short strings or lists of them")
    return options


def resolve(path: str | Path) -> Path:
    """A run directory (its best, else last, checkpoint) or a directory holding config.json + weights."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model not found: {path}")
    if path.is_file():
        path = path.parent  # pointing at model.safetensors or config.json
    if (path / CONFIG).is_file():
        return path
    ckpts = path / "checkpoints"
    for pointer in ("best.json", "last.json"):
        if (ckpts / pointer).is_file():
            return ckpts / read_pointer(ckpts / pointer)
    raise ModelFileError(f"{path}: no {CONFIG} here and no checkpoints/last.json: not a model or run directory")


def read_pointer(pointer: Path) -> str:
    """The checkpoint a ``last.json`` or ``best.json`` points at: the name of a directory beside it."""
    try:
        target = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        target = None
    if not isinstance(target, str) or Path(target).name != target or target in ("", ".", ".."):
        raise ModelFileError(f"{pointer}: not a valid checkpoint pointer")
    return target


def _read_meta(path: Path) -> dict:
    meta = read_json(path / CONFIG, ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path / CONFIG}: not a genforge model config (format must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path / CONFIG}: format_version {meta.get('format_version')!r} is not supported "
                             f"(this genforge reads {FORMAT_VERSION})")
    if "example_shape" not in meta and "image_shape" in meta:  # written before modalities: an image model
        meta["example_shape"] = meta.pop("image_shape")
    checks = {"model": str, "z_dim": int, "base_channels": int, "weights_sha256": str, "example_shape": list}
    for key, typ in checks.items():
        if not isinstance(meta.get(key), typ):
            raise ModelFileError(f"{path / CONFIG}: field '{key}' missing or not a {typ.__name__}")
    if meta["model"] not in MODELS:
        raise ModelFileError(f"{path / CONFIG}: unknown model {meta['model']!r}")
    modality = meta.setdefault("modality", modalities.DEFAULT)
    if modality not in modalities.MODALITIES:
        raise ModelFileError(f"{path / CONFIG}: unknown modality {modality!r}")
    axes = modalities.MODALITIES[modality].example_axes
    if MODELS[meta["model"]].axes != axes:
        raise ModelFileError(f"{path / CONFIG}: model {meta['model']!r} makes examples of axes "
                             f"{MODELS[meta['model']].axes}, not the {modality} modality's {axes}")
    shape = meta["example_shape"]
    if (len(shape) != len(axes) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE
                                           for s in shape)
            or (modality == "image" and shape[0] not in (1, 3))):
        raise ModelFileError(f"{path / CONFIG}: field 'example_shape' must be [{', '.join(axes)}] (positive "
                             f"integers up to {MAX_SIDE}{'; c 1 or 3' if modality == 'image' else ''}), got {shape}")
    if not 0 < meta["z_dim"] <= 65536 or not 0 < meta["base_channels"] <= 4096:
        raise ModelFileError(f"{path / CONFIG}: z_dim or base_channels out of range")
    return meta


def check_header(file: Path, expected: dict[str, torch.Tensor], data: bytes | None = None) -> None:
    """Validate a safetensors header against the expected tensors before reading any tensor data.

    ``data``: the file's bytes when they are already in memory (a decrypted file).
    """
    try:
        size = file.stat().st_size if data is None else len(data)
        with open(file, "rb") if data is None else io.BytesIO(data) as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{file}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelFileError(f"{file}: safetensors header claims {n} bytes in a {size}-byte file "
                                     "(truncated or not a safetensors file)")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise ModelFileError(f"{file}: missing") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ModelFileError(f"{file}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{file}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ModelFileError(f"{file}: tensors do not match the networks in config.json ({what})")
    payload = size - 8 - n
    for key, want in expected.items():
        info = header[key]
        if not isinstance(info, dict):
            raise ModelFileError(f"{file}: tensor '{key}' has a malformed header entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (dtype != _TORCH_DTYPE.get(want.dtype) or not isinstance(shape, list)
                or not all(type(s) is int for s in shape) or shape != list(want.shape)):
            raise ModelFileError(f"{file}: tensor '{key}' is {dtype} {shape}, config.json needs "
                                 f"{_TORCH_DTYPE.get(want.dtype)} {list(want.shape)}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= payload
                or offsets[1] - offsets[0] != math.prod(want.shape) * _DTYPE_BYTES[dtype]):
            raise ModelFileError(f"{file}: tensor '{key}' data lies outside the file (truncated?)")
    # safetensors needs the tensors to tile the data exactly, without gaps or overlaps
    spans = sorted(tuple(header[key]["data_offsets"]) for key in expected)
    if [a for a, _ in spans] != [0] + [b for _, b in spans[:-1]] or (spans and spans[-1][1] != payload):
        raise ModelFileError(f"{file}: tensor data overlaps, leaves gaps or does not end with the file (altered?)")


def read_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict, Path]:
    """The networks, the checked ``config.json`` and the directory of a trained model, from a run directory
    (its best, else last, checkpoint) or a model directory (config.json + model.safetensors).

    Users call :func:`genforge.load`, which wraps these in a model that samples.
    """
    directory = resolve(path)
    meta = _read_meta(directory)
    num_classes = meta.get("num_classes", 0)
    if not isinstance(num_classes, int) or not 0 <= num_classes <= 100_000:
        raise ModelFileError(f"{directory / CONFIG}: field 'num_classes' must be a small non-negative integer")
    _check_sampling(meta, directory / CONFIG)
    _check_fields(meta, num_classes, directory / CONFIG)
    clusters = meta.get("clusters")
    if clusters is not None:
        prior = clusters.get("prior") if isinstance(clusters, dict) else None
        if (not isinstance(prior, list) or len(prior) != num_classes
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1 for p in prior)
                or not abs(sum(prior) - 1) < 1e-6):
            raise ModelFileError(f"{directory / CONFIG}: field 'clusters' must hold 'prior', one share per class "
                                 f"({num_classes}) summing to 1")
    d_opts = meta.get("d_options") or {}
    if (not isinstance(d_opts, dict) or set(d_opts) - {"norm", "spectral_norm", "mbstd"}
            or d_opts.get("norm", "batch") not in ("batch", "group", "none")
            or not all(isinstance(d_opts.get(k, False), bool) for k in ("spectral_norm", "mbstd"))):
        raise ModelFileError(f"{directory / CONFIG}: field 'd_options' is malformed")
    _read_side_files(meta, directory)
    shape = (meta["model"], tuple(meta["example_shape"]), meta["z_dim"], meta["base_channels"], num_classes, d_opts,
             _net_options(meta, directory / CONFIG))
    try:
        with torch.device("meta"):  # build the skeleton without allocating memory for its weights
            skeleton = build_networks(*shape)
    except (GenforgeError, TypeError, ValueError) as e:  # TypeError: net_options a network does not take
        raise ModelFileError(f"{directory / CONFIG}: {str(e).splitlines()[0]}") from None
    weights = directory / WEIGHTS
    # an encrypted file is decrypted in memory: the plain weights never touch the disk
    data = read_plain(weights) if is_encrypted(weights) else None
    tensors = read_weights(weights, directory / CONFIG, meta, state_tensors_meta(skeleton), data=data)
    nets = build_networks(*shape)
    # a picture model trained channels_last samples so too, and so does every picture model of a family that
    # declares it samples faster so (SAMPLE_CHANNELS_LAST: the diffusion UNets)
    channels_last = len(meta["example_shape"]) == 3 and (
        getattr(MODELS[meta["model"]].method, "SAMPLE_CHANNELS_LAST", False)
        or (meta.get("train_config") or {}).get("channels_last") is True)
    for role, net in nets.items():
        prefix = f"{role}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    return nets, meta, directory


def _check_sampling(meta: dict, where: Path) -> None:
    """The recipe fields a loaded model samples with (``Control.recipe_field`` of its family's controls)."""
    cfg = meta.get("train_config")
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{where}: field 'train_config' must be a mapping")
    for control in MODELS[meta["model"]].method.CONTROLS:
        key = control.recipe_field
        if key in cfg:
            try:
                control.check(cfg[key])
            except GenforgeError:
                raise ModelFileError(f"{where}: field 'train_config.{key}' has a bad value {cfg[key]!r}") from None


_PRIVACY_NUMBERS = ("epsilon", "delta", "target_epsilon", "steps")


def _check_fields(meta: dict, num_classes: int, where: Path) -> None:
    """The other fields that loading, sampling, ``genforge info`` and the server read, each checked before use:
    a hand-edited or damaged config.json is a one-line error naming the field, not a traceback later."""
    def bad(key: str, want: str) -> ModelFileError:
        return ModelFileError(f"{where}: field '{key}' must be {want}, got {meta.get(key)!r:.80}")

    if not (len(meta["weights_sha256"]) == 64 and all(c in "0123456789abcdef" for c in meta["weights_sha256"])):
        raise bad("weights_sha256", "64 lowercase hex digits")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or (num_classes and len(names) != num_classes)):
        raise bad("class_names", f"a list of {num_classes or 'the'} class names (strings)")
    step = meta.get("step")
    if step is not None and (type(step) is not int or step < 0):
        raise bad("step", "a non-negative integer")
    if not isinstance(meta.get("data", ""), str):
        raise bad("data", "a data spec string")
    if meta.get("value_range", "-1,1") not in ("-1,1", "0,1"):
        raise bad("value_range", "'-1,1' or '0,1'")
    privacy = meta.get("privacy")
    if privacy is not None and (
            not isinstance(privacy, dict)
            or not all(isinstance(privacy.get(k), (int, float)) and not isinstance(privacy.get(k), bool)
                       for k in _PRIVACY_NUMBERS)
            or not isinstance(privacy.get("private_networks"), list)
            or not all(isinstance(n, str) for n in privacy["private_networks"])
            or not isinstance(privacy.get("mechanism"), str)):
        raise bad("privacy", f"a mapping with numbers {', '.join(_PRIVACY_NUMBERS)}, private_networks and mechanism")


def state_tensors_meta(nets: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Like :func:`state_tensors` but without copying (works on meta-device skeletons)."""
    return {f"{role}.{k}": v for role, net in nets.items() for k, v in net.state_dict().items()}
