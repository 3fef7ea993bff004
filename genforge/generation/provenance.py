"""Provenance: every PNG genforge writes says where it came from, and a signed ledger vouches for it.

Each PNG carries an iTXt chunk ``genforge`` holding JSON: model id and weights
hash, seed, classes, controls, genforge version and time. Each write also
appends a line to a JSONL ledger: the SHA-256 of the file bytes and of the
decoded pixels, the same metadata, and an HMAC-SHA256 of the line made with a
key from ``$GENFORGE_PROVENANCE_KEY`` (hex or text) or the file named by
``$GENFORGE_PROVENANCE_KEY_FILE``. Without a key the line is written unsigned.

``verify(path)`` answers whether an image is one genforge wrote, with what
settings, and whether it was altered. What it cannot do: metadata is stripped
by any re-encode, and a re-encode that changes pixels (JPEG, resize) breaks
the link to the ledger. A pixel-exact re-encode is still recognised by its
pixel hash.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from genforge.version import __version__
from genforge.errors import GenforgeError
from genforge.io import user_dir

KEY_ENV, KEY_FILE_ENV, LEDGER_ENV = "GENFORGE_PROVENANCE_KEY", "GENFORGE_PROVENANCE_KEY_FILE", "GENFORGE_LEDGER"
CHUNK = "genforge"


def default_ledger() -> Path | None:
    """$GENFORGE_LEDGER, else $XDG_DATA_HOME/genforge/ledger.jsonl (~/.local/share when unset);
    ``GENFORGE_LEDGER=off`` turns recording off (verification then finds nothing in a ledger)."""
    value = os.environ.get(LEDGER_ENV)
    if value == "off":
        return None
    return Path(value) if value else user_dir("data") / "ledger.jsonl"


def load_key() -> bytes | None:
    """The HMAC key from the environment: never from the command line, where other users can read it."""
    if os.environ.get(KEY_ENV):
        raw = os.environ[KEY_ENV].strip()
        try:
            return bytes.fromhex(raw)
        except ValueError:
            return raw.encode()
    if os.environ.get(KEY_FILE_ENV):
        path = Path(os.environ[KEY_FILE_ENV])
        try:
            key = path.read_bytes().strip()
        except OSError as e:
            raise GenforgeError(f"provenance key file {path}: {e.strerror}") from None
        if len(key) < 16:
            raise GenforgeError(f"provenance key file {path}: key too short (at least 16 bytes)")
        return key
    return None


def model_metadata(model) -> dict:
    """The part of the metadata that names the model."""
    return {"model": model.name, "model_path": str(model.path), "weights_sha256": model.meta.get("weights_sha256"),
            "step": model.meta.get("step")}


def stamp(fields: dict) -> dict:
    return {**fields, "genforge_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def png_bytes(image: np.ndarray, metadata: dict | None) -> bytes:
    """Encode a uint8 image (h, w) or (h, w, c) as PNG with the metadata as an iTXt chunk."""
    info = None
    if metadata is not None:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(CHUNK, json.dumps(metadata, sort_keys=True, default=_jsonable))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def pixel_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode()).hexdigest()


def _sign(line: dict, key: bytes | None) -> dict:
    body = json.dumps(line, sort_keys=True, default=_jsonable)
    if key is None:
        return {**line, "signature": None}
    return {**line, "signature": "hmac-sha256:" + hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}


def record(path: Path, data: bytes, image: np.ndarray, metadata: dict, ledger: Path | None = None) -> None:
    """Append the signed manifest line of a written image to the ledger (one short append, flushed)."""
    ledger = ledger or default_ledger()
    if ledger is None:  # GENFORGE_LEDGER=off
        return
    line = _sign({"file": str(Path(path).resolve()), "sha256": hashlib.sha256(data).hexdigest(),
                  "pixels_sha256": pixel_sha256(image), "metadata": metadata}, load_key())
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a") as f:
        f.write(json.dumps(line, sort_keys=True, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Verdict:
    verified: bool
    reason: str
    metadata: dict | None = None


def verify(path: str | Path, ledger: Path | None = None) -> Verdict:
    """Is ``path`` an image genforge wrote, unaltered? Never raises for a bad image: it says why not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GenforgeError(f"{path}: {e.strerror}") from None
    if data[:4] == b"RIFF":  # a WAV genforge wrote: provenance in its INFO chunk, its 16-bit samples hashed
        found = _wav_provenance(path, data)
        if isinstance(found, Verdict):
            return found
        embedded, pixels = found
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG":
                    return Verdict(False, f"{path} is a {img.format} image, not a PNG: genforge writes PNGs only")
                embedded = img.text.get(CHUNK) if hasattr(img, "text") else None
                pixels = np.asarray(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return Verdict(False, f"{path} is not a readable image")
    claimed = None
    if embedded:
        try:
            claimed = json.loads(embedded)
        except ValueError:
            return Verdict(False, "the embedded genforge metadata is not valid JSON: the file was altered")
    ledger = ledger or default_ledger()
    if ledger is None:
        return Verdict(False, "the ledger is turned off (GENFORGE_LEDGER=off): nothing to check against", claimed)
    if not ledger.is_file():
        return Verdict(False, f"no ledger at {ledger} to check against", claimed)
    digest, pix = hashlib.sha256(data).hexdigest(), pixel_sha256(pixels)
    key = load_key()
    pixel_match = None
    with open(ledger) as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("sha256") != digest and line.get("pixels_sha256") != pix:
                continue
            signature = line.get("signature")
            body = {k: v for k, v in line.items() if k != "signature"}
            if key is not None:
                if signature is None:
                    return Verdict(False, "the ledger line for this image is unsigned", line.get("metadata"))
                if not hmac.compare_digest(_sign(body, key)["signature"], signature):
                    return Verdict(False, "the ledger line for this image fails its signature: the ledger was "
                                          "altered or signed with another key", line.get("metadata"))
            signed = "signed ledger" if key is not None else "ledger (no key set: signature not checked)"
            if line.get("sha256") == digest:
                return Verdict(True, f"generated by genforge: file matches the {signed}", line.get("metadata"))
            pixel_match = Verdict(True, f"generated by genforge: pixels match the {signed}, but the file was "
                                        "re-encoded (metadata may be missing)", line.get("metadata"))
    if pixel_match:
        return pixel_match
    if claimed is not None:
        return Verdict(False, "the image claims to come from genforge but matches no ledger entry: its pixels "
                              "or metadata were altered, or it was written with another ledger", claimed)
    return Verdict(False, "no genforge metadata and no ledger entry: not an image genforge wrote (or it was "
                          "re-encoded with changed pixels)")


def _wav_provenance(path: Path, data: bytes):
    """(the INFO chunk's ICMT JSON or None, the int16 samples) of a 16-bit mono WAV, or a Verdict saying why not."""
    # the audio reader: only WAVs need it, and it brings torch with the data package, which PNGs never need
    from genforge.data.audio.wav import check_riff, read_info

    try:
        fmt = check_riff(path, data)
        info = read_info(path)
    except GenforgeError as e:
        return Verdict(False, f"not a readable WAV: {e}")
    if fmt["tag"] != 1 or fmt["bits"] != 16 or fmt["channels"] != 1:
        return Verdict(False, f"{path} is not 16-bit mono PCM: genforge writes only those WAVs")
    off = fmt["data_offset"]
    samples = np.frombuffer(data[off:off + 2 * fmt["frames"]], dtype="<i2")
    return info.get("ICMT"), samples
