"""API keys with roles, kept as SHA-256 hashes in a JSON key file.

A key is 256 random bits (``gfk_`` + 64 hex digits), shown once when it is
created; the file keeps only its SHA-256, its id, name, role and dates, so a
leaked key file grants nothing. A presented key is hashed and compared with
every stored hash by ``hmac.compare_digest`` (constant time). Revoking keeps
the record (the audit log names key ids) and stamps it revoked.

Roles are ordered: ``viewer`` (list models, metrics) < ``generator``
(generate) < ``admin`` (key management, reloading models); a key may do what
its role and every lower role may.

The server re-reads the file when it changes, so ``genforge keys revoke`` on a
running server takes effect at its next request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.io import atomic_write_json, read_json, user_dir

ROLES = {"viewer": 0, "generator": 1, "admin": 2}
FORMAT, FORMAT_VERSION = "genforge-keys", 1
PREFIX = "gfk_"
KEYS_FILE_ENV = "GENFORGE_KEYS_FILE"
MAX_NAME = 100


def default_keys_file() -> Path:
    """$GENFORGE_KEYS_FILE, else $XDG_CONFIG_HOME/genforge/keys.json (~/.config when unset)."""
    return Path(os.environ.get(KEYS_FILE_ENV) or user_dir("config") / "keys.json")


def role_allows(role: str, needed: str) -> bool:
    return ROLES[role] >= ROLES[needed]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who made a request: a key's id and role (never the key itself)."""
    key_id: str
    role: str
    name: str = ""


class KeyStore:
    """The key file: create, list, revoke, and authenticate presented keys."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stamp = None        # (inode, mtime_ns, size) of the file last read
        self._records: list[dict] = []

    # ------------------------------------------------------------------ file

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        doc = read_json(self.path, GenforgeError, invalid="not valid JSON (a genforge key file?)")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("keys"), list):
            raise GenforgeError(f"{self.path}: not a genforge key file (format must be {FORMAT!r})")
        if doc.get("format_version") != FORMAT_VERSION:
            raise GenforgeError(f"{self.path}: format_version {doc.get('format_version')!r} is not supported")
        for i, rec in enumerate(doc["keys"]):
            if (not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or rec.get("role") not in ROLES
                    or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) != 64):
                raise GenforgeError(f"{self.path}: key record {i} is malformed (fields id, role, sha256)")
        return doc["keys"]

    def _write(self, records: list[dict]) -> None:
        # private: mode 0600, only the owner reads the hashes
        atomic_write_json(self.path, {"format": FORMAT, "format_version": FORMAT_VERSION, "keys": records},
                          private=True)

    @contextlib.contextmanager
    def _locked(self):
        """Serialise read-modify-write between the CLI and a running server's admin endpoints."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self) -> list[dict]:
        """The key records, re-read when the file changed since the last call (one stat per call)."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._records, self._stamp = self._read(), stamp
        return self._records

    # ------------------------------------------------------------- commands

    def create(self, role: str, name: str = "") -> tuple[str, dict]:
        """A new key of ``role``: returns (the key, shown once; its record, as stored)."""
        if role not in ROLES:
            raise GenforgeError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
            raise GenforgeError(f"key name must be at most {MAX_NAME} printable characters")
        key = PREFIX + secrets.token_hex(32)  # 256 bits from the OS's CSPRNG
        with self._locked():
            records = self._read()
            ids = {r["id"] for r in records}
            key_id = "k" + secrets.token_hex(4)
            while key_id in ids:
                key_id = "k" + secrets.token_hex(4)
            record = {"id": key_id, "name": name, "role": role, "sha256": hash_key(key),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "revoked": None}
            self._write(records + [record])
        return key, record

    def revoke(self, key_id: str) -> dict:
        with self._locked():
            records = self._read()
            for rec in records:
                if rec["id"] == key_id:
                    if rec.get("revoked"):
                        raise GenforgeError(f"key {key_id} was already revoked at {rec['revoked']}")
                    rec["revoked"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    self._write(records)
                    return rec
        raise GenforgeError(f"no key with id {key_id!r} in {self.path} (genforge keys list shows them)")

    def active(self) -> list[dict]:
        return [r for r in self.records() if not r.get("revoked")]

    # ------------------------------------------------------------------ auth

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of a presented key, or None for a missing, unknown or revoked key.

        The presented key's hash is compared with every stored hash, in constant time each, and the loop does
        not stop at a match, so the time taken says nothing about which key (or how much of one) matched.
        """
        if not presented or len(presented) > 200:
            return None
        digest = hash_key(presented)
        found = None
        for rec in self.records():
            if hmac.compare_digest(digest, rec["sha256"]) and not rec.get("revoked"):
                found = rec
        return Principal(found["id"], found["role"], found.get("name", "")) if found else None
