"""Checkpoints in two parts, written as one atomic unit.

``RUN/checkpoints/step_00001000/`` holds the release weights
(``model.safetensors`` + ``config.json``, loadable by :func:`genforge.load`
without the trainer), ``state.pt``, the resume state (raw weights, optimizers,
EMA, step, RNG), and ``state.json``, the resume state's own record: the
SHA-256 and size of the plain ``state.pt`` bytes, its step and whether the run
is differentially private. ``torch.load`` ignores the CRC-32s stored in the
file, so the digest is what catches a flipped byte before the state is
trusted. The directory is built under a temporary name and renamed into place;
only then does ``last.json`` (itself written atomically) point at it. A crash
at any moment leaves the previous checkpoint intact; the temporary directory it
leaves is swept at the next start (:func:`sweep_temporary`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.crypto import encrypt_bytes, is_encrypted, read_plain
from genforge.errors import ModelFileError
from genforge.io import atomic_write_json, fsync_dir
from genforge.models.files import read_pointer, save_model

STATE = "state.pt"
RECORD = "state.json"
RECORD_FORMAT = "genforge-resume-state"
# what every resume state holds (older runs may lack the bookkeeping keys, which default in the loop)
REQUIRED = {"nets": dict, "ema": dict, "optimizers": dict, "trainer": dict, "noise_rng": torch.Tensor,
            "aug_rng": torch.Tensor, "step": int}


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def save_checkpoint(run: Path, step: int, release_nets: dict, meta: dict, state: dict, keep: int = 2,
                    keyring=None) -> Path:
    """Write checkpoint ``step`` and point ``last.json`` at it; prune to the newest ``keep``.

    With a ``keyring`` (:mod:`genforge.crypto`; the run's ``encrypt: true``) the weights and the resume state
    are written encrypted. The digest in ``state.json`` is of the plain bytes, so re-encrypting a run in place
    (``genforge security encrypt`` / ``rekey``) keeps it valid.
    """
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
        plain = buf.getvalue()
        with open(tmp / STATE, "wb") as f:
            f.write(plain if keyring is None else encrypt_bytes(plain, STATE, keyring))
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(tmp / RECORD, {"format": RECORD_FORMAT, "sha256": hashlib.sha256(plain).hexdigest(),
                                         "bytes": len(plain), "step": step, "privacy": "privacy" in state})
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


def sweep_temporary(run: Path) -> list[str]:
    """Remove the ``.step_*.tmp*`` / ``.step_*.old*`` directories a kill -9 during a checkpoint write left
    behind (no process of this run writes one now: the run is ours). Returns their names, for the log."""
    root = checkpoint_dir(run)
    swept = []
    for debris in sorted(root.glob(".step_*.tmp*")) + sorted(root.glob(".step_*.old*")):
        if debris.is_dir() and not debris.is_symlink():
            shutil.rmtree(debris, ignore_errors=True)
            swept.append(debris.name)
    return swept


def last_checkpoint(run: Path) -> Path | None:
    pointer = checkpoint_dir(run) / "last.json"
    if not pointer.is_file():
        return None
    return checkpoint_dir(run) / read_pointer(pointer)


@dataclass
class ResumeState:
    """A resume state read and checked: the dict ``torch.load`` returned, and whether its digest was verified
    (False only for checkpoints written before ``state.json`` existed)."""
    state: dict
    verified: bool
    path: Path


def read_record(ckpt: Path) -> dict | None:
    """The checkpoint's ``state.json`` (checked), or None when there is none (a checkpoint from before it)."""
    path = Path(ckpt) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        raise ModelFileError(f"{path}: unreadable or not JSON: the checkpoint is damaged") from None
    if (not isinstance(record, dict) or record.get("format") != RECORD_FORMAT
            or not isinstance(record.get("sha256"), str) or len(record["sha256"]) != 64
            or type(record.get("bytes")) is not int or type(record.get("step")) is not int
            or not isinstance(record.get("privacy"), bool)):
        raise ModelFileError(f"{path}: not a valid resume-state record (needs format {RECORD_FORMAT!r}, sha256, "
                             "bytes, step, privacy)")
    return record


def read_state(ckpt: Path, keyring=None) -> ResumeState:
    """Read ``state.pt``: its bytes checked against ``state.json``'s SHA-256 before ``torch.load`` sees them,
    then loaded with ``weights_only=True`` (a pickle that tries to run code is refused) and its keys and
    ``step`` checked. A checkpoint without ``state.json`` (written before it existed) loads unverified.
    Shapes are checked against the networks by :func:`check_state`."""
    path = Path(ckpt) / STATE
    if not path.is_file():
        raise ModelFileError(f"{path}: resume state missing")
    record = read_record(ckpt)
    data = read_plain(path, keyring)  # decrypted in memory when encrypted (AES-GCM checks it too)
    if record is not None:
        if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise ModelFileError(f"{path}: SHA-256 does not match {RECORD}: the resume state is damaged or was "
                                 "altered; resume from an intact copy of the run")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError on truncation, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: not a valid resume state ({first[:200]})") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: not a valid resume state (a {type(state).__name__}, not a mapping)")
    for key, typ in REQUIRED.items():
        if key not in state:
            raise ModelFileError(f"{path}: not a valid resume state (key '{key}' missing)")
        if not isinstance(state[key], typ) or isinstance(state[key], bool):
            raise ModelFileError(f"{path}: not a valid resume state ('{key}' is a {type(state[key]).__name__}, "
                                 f"not a {typ.__name__})")
    if state["step"] < 0 or (record is not None and state["step"] != record["step"]):
        raise ModelFileError(f"{path}: not a valid resume state (step {state['step']} must be a non-negative "
                             f"integer{'' if record is None else f' equal to {RECORD} step ' + str(record['step'])})")
    return ResumeState(state=state, verified=record is not None, path=path)


def load_state(ckpt: Path, keyring=None) -> dict:
    """The resume state of ``ckpt`` as a dict, digest and keys checked (:func:`read_state`)."""
    return read_state(ckpt, keyring).state


def _shapes(tensors: dict, where: str, path: Path) -> dict:
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise ModelFileError(f"{path}: not a valid resume state ('{where}' is not a mapping of tensors)")
    return {k: tuple(v.shape) for k, v in tensors.items()}


def check_state(state: dict, nets: dict, ema_nets: dict, optimizers: dict, path: Path) -> None:
    """The resume state fits this run: the same networks, EMA copies and optimizers, every tensor the shape
    the network has now. One line naming the first mismatch (loading would otherwise fail half-way with a
    traceback, or, for optimizer moments, later, in the middle of a step)."""
    for what, saved, live in (("nets", state["nets"], nets), ("ema", state["ema"], ema_nets)):
        if set(saved) != set(live):
            raise ModelFileError(f"{path}: '{what}' holds {sorted(saved)}, this run has {sorted(live)}")
        for role, net in live.items():
            want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            have = _shapes(saved[role], f"{what}.{role}", path)
            if have != want:
                bad = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
                detail = (f"{have.get(bad[0])} where the network has {want.get(bad[0])}" if bad[0] in want
                          and bad[0] in have else "missing or unexpected")
                raise ModelFileError(f"{path}: '{what}.{role}.{bad[0]}' is {detail}")
    if set(state["optimizers"]) != set(optimizers):
        raise ModelFileError(f"{path}: 'optimizers' holds {sorted(state['optimizers'])}, this run has "
                             f"{sorted(optimizers)}")
    for name, opt in optimizers.items():
        saved = state["optimizers"][name]
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        moments = saved.get("state") if isinstance(saved, dict) else None
        if not isinstance(groups, list) or not isinstance(moments, dict) or len(groups) != len(opt.param_groups):
            raise ModelFileError(f"{path}: 'optimizers.{name}' is not this run's optimizer state")
        params = [p for g in opt.param_groups for p in g["params"]]
        ids = [i for g in groups for i in (g.get("params", []) if isinstance(g, dict) else [None])]
        if len(ids) != len(params) or not all(type(i) is int for i in ids):
            raise ModelFileError(f"{path}: 'optimizers.{name}' covers {len(ids)} parameters, the networks have "
                                 f"{len(params)}")
        for i, p in zip(ids, params):
            for key, value in (moments.get(i) or {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != tuple(p.shape):
                    raise ModelFileError(f"{path}: 'optimizers.{name}' moment '{key}' of parameter {i} is "
                                         f"{tuple(value.shape)} where the parameter is {tuple(p.shape)}")


def is_encrypted_run(ckpt: Path) -> bool:
    """Whether a checkpoint was written encrypted (its resume state or weights)."""
    return is_encrypted(Path(ckpt) / STATE) or is_encrypted(Path(ckpt) / "model.safetensors")
