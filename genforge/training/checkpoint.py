"""Checkpoints in two parts, written as one atomic unit.

``RUN/checkpoints/step_00001000/`` holds the release weights
(``model.safetensors`` + ``config.json``, loadable by :func:`genforge.load`
without the trainer) and ``state.pt``, the resume state (raw weights,
optimizers, EMA, step, RNG). The directory is built under a temporary name and
renamed into place; only then does ``last.json`` (itself written atomically)
point at it. A crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch

from genforge.errors import ModelFileError
from genforge.io import atomic_write_json, fsync_dir
from genforge.models.files import read_pointer, save_model

STATE = "state.pt"


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def save_checkpoint(run: Path, step: int, release_nets: dict, meta: dict, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` and point ``last.json`` at it; prune to the newest ``keep``.

    With ``encrypt: true`` in the training config the weights and the resume state are written encrypted
    (:mod:`genforge.crypto`, key from ``--key-file`` or the environment).
    """
    keyring = None
    if (meta.get("train_config") or {}).get("encrypt"):
        from genforge.crypto import encrypt_bytes, load_keyring

        keyring = load_keyring()
    root = checkpoint_dir(run)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(tmp, release_nets, {**meta, "step": step}, keyring)
        buf = io.BytesIO()
        torch.save(state, buf)
        with open(tmp / STATE, "wb") as f:
            f.write(buf.getvalue() if keyring is None else encrypt_bytes(buf.getvalue(), STATE, keyring))
            f.flush()
            os.fsync(f.fileno())
        final = root / name
        if final.exists():  # re-saving a step (after a rollback): move the old one aside first
            old = root / f".{name}.old{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / "last.json", {"dir": name, "step": step})
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    pinned = set()
    for pointer in ("last.json", "best.json"):
        try:
            pinned.add(read_pointer(root / pointer))
        except (OSError, ModelFileError):
            pass
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name not in pinned:
            shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(run: Path) -> Path | None:
    pointer = checkpoint_dir(run) / "last.json"
    if not pointer.is_file():
        return None
    return checkpoint_dir(run) / read_pointer(pointer)


def load_state(ckpt: Path) -> dict:
    """Read ``state.pt`` with ``weights_only=True``: a pickle that tries to run code is refused."""
    path = Path(ckpt) / STATE
    if not path.is_file():
        raise ModelFileError(f"{path}: resume state missing")
    from genforge.crypto import plain_source

    source = plain_source(path)  # the file, or its decrypted bytes in memory
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError on truncation, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: not a valid resume state ({first[:200]})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ModelFileError(f"{path}: not a valid resume state")
    return state
