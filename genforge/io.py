"""Atomic file writes: a temporary file in the same directory, fsync, then rename; the one JSON reader; and
where genforge keeps files in the user's home (:func:`user_dir`, after the XDG base directory spec).

A crash, Ctrl-C or full disk in the middle of a write leaves the previous file
untouched; readers never see a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], private: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then atomically replace ``path``.

    The file gets the permissions the user's umask gives new files, or 0600 with ``private`` (secrets).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else 0o666 & ~_UMASK)  # mkstemp alone would make every file 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, private: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), private)


def atomic_write_text(path: str | Path, text: str, private: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode(), private)


def atomic_write_json(path: str | Path, obj, private: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", private)


def read_json(path: str | Path, error: type[Exception], missing: str = "missing", invalid: str = "not valid JSON",
              label: str | None = None):
    """The parsed contents of a JSON file. A missing file raises ``error("LABEL: " + missing)``; undecodable
    text, bad JSON or JSON nested too deeply to parse raises ``error("LABEL: " + invalid)``. LABEL is the
    path unless given. Checking the document's shape is the caller's job."""
    label = str(path) if label is None else label
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{label}: {missing}") from None
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[... nested too deeply
        raise error(f"{label}: {invalid}") from None


# XDG base directories (https://specifications.freedesktop.org/basedir-spec/): the variable, and its default
_XDG = {"config": ("XDG_CONFIG_HOME", ".config"), "data": ("XDG_DATA_HOME", ".local/share"),
        "cache": ("XDG_CACHE_HOME", ".cache")}


def user_dir(kind: str) -> Path:
    """genforge's folder of ``kind`` ("config", "data" or "cache") in the user's home: ``$XDG_CONFIG_HOME/genforge``
    (default ``~/.config/genforge``), ``$XDG_DATA_HOME/genforge`` (``~/.local/share``), ``$XDG_CACHE_HOME/genforge``
    (``~/.cache``). A relative or empty XDG value is ignored, as the spec says. Nothing is created here."""
    if kind not in _XDG:
        raise ValueError(f"user_dir: kind must be one of {', '.join(_XDG)}, got {kind!r}")
    variable, default = _XDG[kind]
    base = os.environ.get(variable, "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / default
    return root / "genforge"


def cache_dir(name: str) -> Path:
    """``$GENFORGE_CACHE/name``, else genforge's user cache folder's (``$XDG_CACHE_HOME/genforge/name``, ``~/.cache``
    when unset): what genforge measures or trains once and keeps (evaluators, machine facts). Nothing is created."""
    root = os.environ.get("GENFORGE_CACHE")
    return (Path(root).expanduser() if root else user_dir("cache")) / name
