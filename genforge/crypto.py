"""Encryption at rest: AES-256-GCM in chunks, keys from a key file or the environment, key rotation.

File format, version 1 (integers big-endian)::

    magic       8 bytes    89 'GFENC' 0d 0a   (PNG-style: a text-mode copy or a wrong tool shows at once)
    version     1 byte     1
    chunk_log2  1 byte     plaintext bytes per chunk = 2**chunk_log2, 12..24 (4 KiB to 16 MiB)
    id_len      1 byte     1..64
    key_id      id_len     ASCII name of the keyring key that encrypted the file
    salt        16 bytes   random per file: the file key is HKDF-SHA256(master key, salt)
    prefix      7 bytes    random per file: chunk i's nonce is prefix || i (4 bytes) || last (1 byte)
    check       16 bytes   HMAC-SHA256(check key, everything above)[:16]: a wrong key is told from an altered file
    chunks      2**chunk_log2 bytes of ciphertext and their 16-byte GCM tag each; the last one may be shorter

Every chunk's associated data is the header, the file's base name, the chunk index and a last-chunk flag,
so a chunk cannot be moved, dropped, appended or swapped in from another file, a file cannot be cut at a
chunk boundary, and a renamed file no longer decrypts. A fresh key per file (HKDF from a random salt, the
design of Tink's AES-GCM-HKDF streaming AEAD) keeps GCM far below its nonce limits whatever the number of
files (random 96-bit nonces under one key are limited to 2**32 messages, NIST SP 800-38D 8.3); within a file
the counter makes each nonce unique. Memory is two chunks, whatever the file size.

Keys never come from the command line (other users can read it in ``ps``): they come from a key file
(``--key-file``, ``$GENFORGE_ENCRYPTION_KEY_FILE``) or ``$GENFORGE_ENCRYPTION_KEY``. A key file is a keyring:
one ``ID:KEY`` line per key (KEY 64 hex digits or base64 of 32 bytes; ``#`` comments), the last line the
primary key that new files are encrypted with; the others keep old files readable until
``genforge security rekey`` has moved them to the primary. A bare key, or a file of exactly 32 raw bytes,
is a keyring of one key named by its fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from genforge.errors import GenforgeError
from genforge.io import atomic_write, atomic_write_text

MAGIC = b"\x89GFENC\r\n"
VERSION = 1
CHUNK_LOG2 = 20                       # 1 MiB chunks
MIN_CHUNK_LOG2, MAX_CHUNK_LOG2 = 12, 24
TAG = 16
KEY_BYTES = 32                        # AES-256
MAX_KEY_FILE_BYTES = 1 << 20
ENV_KEY, ENV_KEY_FILE = "GENFORGE_ENCRYPTION_KEY", "GENFORGE_ENCRYPTION_KEY_FILE"
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FIXED = len(MAGIC) + 3               # magic, version, chunk_log2, id_len


class EncryptionError(GenforgeError):
    """No key, a wrong key, or an encrypted file that is altered, truncated or renamed."""


def _aead(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # optional extra: genforge[security]
    except ImportError:
        raise EncryptionError("encryption needs the 'cryptography' package: pip install 'genforge[security]'") \
            from None
    return AESGCM(key)


# ------------------------------------------------------------------------------------------------ keys


@dataclass(frozen=True)
class Keyring:
    """Keys by id, in file order; new files are encrypted with ``primary``. ``source`` names where the keys
    came from (a path or an environment variable), never the keys."""

    keys: dict[str, bytes] = field(repr=False)
    primary: str
    source: str

    def key(self, key_id: str, where: str) -> bytes:
        if key_id not in self.keys:
            raise EncryptionError(f"{where}: encrypted with key '{key_id}', which is not in {self.source} "
                                  f"(it holds {', '.join(self.keys)})")
        return self.keys[key_id]


def fingerprint(key: bytes) -> str:
    """A public name for a key: 12 hex digits of a hash that reveals nothing usable about it."""
    return hashlib.sha256(b"genforge key id\0" + key).hexdigest()[:12]


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _decode_key(text: str, where: str) -> bytes:
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise EncryptionError(f"{where}: a key must be 64 hex digits or the base64 of 32 bytes")
    return key


def parse_keyring(data: bytes, source: str) -> Keyring:
    """Keys from the bytes of a key file or variable: ``ID:KEY`` lines, a bare key, or 32 raw bytes."""
    if len(data) == KEY_BYTES:  # no text form of a key is 32 bytes long
        return Keyring({fingerprint(data): data}, fingerprint(data), source)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise EncryptionError(f"{source}: not a key file (neither 32 raw bytes nor ID:KEY text lines)") from None
    keys: dict[str, bytes] = {}
    lines = [line.strip() for line in text.splitlines()]
    entries = [e for line in lines if line and not line.startswith("#") for e in re.split(r"[,\s]+", line) if e]
    for n, entry in enumerate(entries, 1):  # one per line in a file; "a:KEY,b:KEY" in a variable
        key_id, sep, value = entry.rpartition(":")
        where = f"{source}: key {n}"  # never the entry itself: it holds a key
        key = _decode_key(value, where)
        key_id = key_id.strip() if sep else fingerprint(key)
        if not _ID.fullmatch(key_id):
            raise EncryptionError(f"{where}: key id must be 1-64 of A-Z a-z 0-9 . _ -")
        if key_id in keys:
            raise EncryptionError(f"{where}: key id '{key_id}' appears twice")
        keys[key_id] = key
    if not keys:
        raise EncryptionError(f"{source}: holds no key")
    return Keyring(keys, list(keys)[-1], source)


def read_key_file(path: str | Path) -> Keyring:
    """A keyring from a key file that only its owner (and the owner's group, read-only) may use."""
    path = _not_a_key(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise EncryptionError(f"{path}: not a regular file")
        if os.name == "posix" and st.st_mode & 0o027:
            raise EncryptionError(f"{path}: key file is open to other users (mode {stat.S_IMODE(st.st_mode):04o});"
                                  f" make it private with: chmod 600 {path}")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise EncryptionError(f"{path}: {st.st_size} bytes is too large for a key file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise EncryptionError(f"key file not found: {path}") from None
    except OSError as e:
        raise EncryptionError(f"cannot read key file {path}: {e.strerror}") from None
    return parse_keyring(data, str(path))


def _not_a_key(path: str | Path) -> Path:
    """Refuse a key given where a key file's path belongs, without echoing it into logs."""
    if not Path(path).exists() and re.search(r"[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=", str(path)):
        raise EncryptionError("--key-file takes the path of a key file; keys are never accepted on the command "
                              "line (other users can read it): put the key in a file or $" + ENV_KEY)
    return Path(path)


_cli_key_file: Path | None = None


def use_key_file(path: str | Path | None) -> None:
    """Make ``path`` the key file of this process (the CLI's ``--key-file``); None goes back to the environment."""
    global _cli_key_file
    _cli_key_file = _not_a_key(path) if path else None


def load_keyring(key_file: str | Path | None = None) -> Keyring:
    """``key_file``, else the CLI's ``--key-file``, else ``$GENFORGE_ENCRYPTION_KEY_FILE``, else
    ``$GENFORGE_ENCRYPTION_KEY``; a clear error when there is none."""
    key_file = key_file or _cli_key_file
    if key_file:
        return read_key_file(key_file)
    from_file, from_env = os.environ.get(ENV_KEY_FILE), os.environ.get(ENV_KEY)
    if from_file and from_env:
        raise EncryptionError(f"both ${ENV_KEY_FILE} and ${ENV_KEY} are set: keep one")
    if from_file:
        return read_key_file(from_file)
    if from_env:
        return parse_keyring(from_env.encode(), f"${ENV_KEY}")
    raise EncryptionError(f"no encryption key: give --key-file FILE or set ${ENV_KEY_FILE} (make one with "
                          f"'genforge security keygen FILE')")


def format_keyring(keyring: Keyring) -> str:
    lines = ["# genforge encryption keys, one ID:KEY per line; the last is the primary (new files use it)"]
    return "\n".join(lines + [f"{i}:{k.hex()}" for i, k in keyring.keys.items()]) + "\n"


def write_key_file(path: str | Path, keyring: Keyring) -> Path:
    """Write a keyring atomically with mode 0600."""
    return atomic_write_text(path, format_keyring(keyring), private=True)


def add_key(keyring: Keyring | None, key_id: str | None = None, source: str = "") -> Keyring:
    """A keyring with a fresh key appended as the primary."""
    key = generate_key()
    key_id = key_id or fingerprint(key)
    if not _ID.fullmatch(key_id):
        raise EncryptionError(f"key id {key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    keys = dict(keyring.keys) if keyring else {}
    if key_id in keys:
        raise EncryptionError(f"key id '{key_id}' is already in {keyring.source}")
    keys[key_id] = key
    return Keyring(keys, key_id, source or (keyring.source if keyring else ""))


# ------------------------------------------------------------------------------------------------ format


def _derive(master: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(file key, header-check key) = HKDF-SHA256(master, salt) (RFC 5869), 32 bytes each."""
    prk = hmac.new(salt, master, hashlib.sha256).digest()
    info = b"genforge-encryption v1"
    t1 = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(prk, t1 + info + b"\x02", hashlib.sha256).digest()
    return t1, t2


@dataclass
class _Header:
    raw: bytes
    chunk: int
    key_id: str
    salt: bytes
    prefix: bytes
    check: bytes


def _nonce(prefix: bytes, i: int, last: bool) -> bytes:
    return prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")  # 12 bytes


def _aad(header: bytes, name: bytes, i: int, last: bool) -> bytes:
    return header + len(name).to_bytes(2, "big") + name + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _name(name: str) -> bytes:
    raw = Path(name).name.encode("utf-8", "surrogateescape")
    if len(raw) >= 1 << 16:
        raise EncryptionError(f"{name}: file name too long")
    return raw


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts what is written to it into ``dst``, chunk by chunk.

    ``name`` is the base name the file will have (it is authenticated). Call :meth:`finish` (or leave the
    ``with`` block without an exception) to write the last chunk; a writer abandoned by an exception writes
    no last chunk, so what it wrote never decrypts.
    """

    def __init__(self, dst: BinaryIO, name: str, keyring: Keyring, chunk_log2: int = CHUNK_LOG2):
        super().__init__()
        if not MIN_CHUNK_LOG2 <= chunk_log2 <= MAX_CHUNK_LOG2:
            raise ValueError(f"chunk_log2 must be in [{MIN_CHUNK_LOG2}, {MAX_CHUNK_LOG2}]")
        key_id = keyring.primary.encode("ascii")
        salt, prefix = os.urandom(16), os.urandom(7)
        file_key, check_key = _derive(keyring.keys[keyring.primary], salt)
        header = MAGIC + bytes([VERSION, chunk_log2, len(key_id)]) + key_id + salt + prefix
        header += hmac.new(check_key, header, hashlib.sha256).digest()[:16]
        self._dst, self._gcm, self._header, self._name = dst, _aead(file_key), header, _name(name)
        dst.write(header)
        self._prefix, self._chunk = prefix, 1 << chunk_log2
        self._buf, self._i, self._pos, self._done = bytearray(), 0, 0, False

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        pos = 0
        while pos < len(view):
            if len(self._buf) == self._chunk:  # a full chunk goes out once more data follows it: the last
                self._emit(self._buf, last=False)  # chunk must carry the last flag
                self._buf.clear()
            take = min(self._chunk - len(self._buf), len(view) - pos)
            self._buf += view[pos:pos + take]
            pos += take
        self._pos += len(view)
        return len(view)

    def tell(self) -> int:  # zipfile asks where it is; seeking is not offered
        return self._pos

    def _emit(self, plain, last: bool) -> None:
        if self._i >= 1 << 32:
            raise EncryptionError("file too large for one encrypted file (2**32 chunks)")
        nonce = _nonce(self._prefix, self._i, last)
        self._dst.write(self._gcm.encrypt(nonce, plain, _aad(self._header, self._name, self._i, last)))
        self._i += 1

    def finish(self) -> None:
        if not self._done:
            self._emit(self._buf, last=True)
            self._buf, self._done = bytearray(), True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        self.close()


def _read_full(src: BinaryIO, n: int, first: bytes = b"") -> bytearray:
    """``first`` and then up to ``n - len(first)`` bytes of ``src``: fewer only at its end. One buffer, no copies."""
    out = bytearray(n)
    out[:len(first)] = first
    view, got = memoryview(out), len(first)
    while got < n:
        step = src.readinto(view[got:])
        if not step:
            break
        got += step
    view.release()
    del out[got:]
    return out


def _read_header(src: BinaryIO, where: str) -> _Header:
    fixed = _read_full(src, _FIXED)
    if fixed[:len(MAGIC)] != MAGIC or len(fixed) < _FIXED:
        raise EncryptionError(f"{where}: not a genforge encrypted file")
    version, log2, id_len = fixed[len(MAGIC):]
    if version != VERSION:
        raise EncryptionError(f"{where}: encrypted file format version {version} is not supported "
                              f"(this genforge reads {VERSION})")
    if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2 or not 1 <= id_len <= 64:
        raise EncryptionError(f"{where}: encrypted file header is malformed (altered?)")
    rest = _read_full(src, id_len + 16 + 7 + 16)
    if len(rest) < id_len + 39:
        raise EncryptionError(f"{where}: encrypted file is truncated (header cut short)")
    key_id = rest[:id_len].decode("ascii", "replace")
    if not _ID.fullmatch(key_id):
        raise EncryptionError(f"{where}: encrypted file header is malformed (altered?)")
    return _Header(fixed + rest, 1 << log2, key_id, rest[id_len:id_len + 16], rest[id_len + 16:id_len + 23],
                   rest[id_len + 23:])


def decrypt_stream(src: BinaryIO, dst: BinaryIO, name: str, keyring: Keyring, where: str | None = None) -> None:
    """Decrypt ``src`` (a file that was named ``name``) into ``dst``, one chunk at a time.

    On a wrong key or an altered, truncated or renamed file it raises :class:`EncryptionError` and ``dst``
    may hold a prefix of the plaintext: write ``dst`` atomically and let the error discard it.
    """
    where = where or name
    h = _read_header(src, where)
    file_key, check_key = _derive(keyring.key(h.key_id, where), h.salt)
    if not hmac.compare_digest(hmac.new(check_key, h.raw[:-16], hashlib.sha256).digest()[:16], h.check):
        raise EncryptionError(f"{where}: the key named '{h.key_id}' in {keyring.source} is not the key this file "
                              "was encrypted with (or the file's header was altered)")
    gcm, name_b, seg = _aead(file_key), _name(name), h.chunk + TAG
    # importable once _aead has found the package
    from cryptography.exceptions import InvalidTag

    buf, i = _read_full(src, seg), 0
    while True:
        if len(buf) < TAG:
            raise EncryptionError(f"{where}: encrypted file is truncated (chunk {i} cut short)")
        following = src.read(1) if len(buf) == seg else b""  # a chunk is the last one when nothing follows it
        last = not following
        try:
            dst.write(gcm.decrypt(_nonce(h.prefix, i, last), buf, _aad(h.raw, name_b, i, last)))
        except InvalidTag:
            raise EncryptionError(f"{where}: chunk {i} fails authentication: the file was altered, truncated or "
                                  "renamed since it was encrypted (its name is authenticated too)") from None
        if last:
            return
        buf, i = _read_full(src, seg, following), i + 1
        if i >= 1 << 32:
            raise EncryptionError(f"{where}: more chunks than the format allows (altered?)")


def encrypt_bytes(data: bytes, name: str, keyring: Keyring, chunk_log2: int = CHUNK_LOG2) -> bytes:
    out = io.BytesIO()
    with EncryptingWriter(out, name, keyring, chunk_log2) as w:
        w.write(data)
    return out.getvalue()


def decrypt_bytes(blob: bytes, name: str, keyring: Keyring, where: str | None = None) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, name, keyring, where)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------ files


def is_encrypted(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


def key_id_of(path: str | Path) -> str | None:
    """The id of the key that encrypted ``path``, or None for a plain file."""
    if not is_encrypted(path):
        return None
    with open(path, "rb") as f:
        return _read_header(f, str(path)).key_id


def read_plain(path: str | Path, keyring: Keyring | None = None) -> bytes:
    """The plaintext bytes of ``path``: decrypted if it is encrypted (keys from :func:`load_keyring` unless
    given), as they are otherwise."""
    path = Path(path)
    if not is_encrypted(path):
        return path.read_bytes()
    keyring = keyring or load_keyring()
    with open(path, "rb") as f:
        out = io.BytesIO()
        decrypt_stream(f, out, path.name, keyring, str(path))
    return out.getvalue()


def plain_source(path: str | Path) -> Path | io.BytesIO:
    """For readers that take a path or a file object: ``path`` itself, or its decrypted bytes in memory."""
    path = Path(path)
    return io.BytesIO(read_plain(path)) if is_encrypted(path) else path


def write_encrypted(path: str | Path, data: bytes, keyring: Keyring, private: bool = False) -> Path:
    """Encrypt ``data`` into ``path`` atomically."""
    path = Path(path)

    def write(f):
        with EncryptingWriter(f, path.name, keyring) as w:
            w.write(data)

    return atomic_write(path, write, private)


def encrypt_file(path: str | Path, keyring: Keyring, chunk_log2: int = CHUNK_LOG2) -> bool:
    """Encrypt a plain file in place (atomically, streaming); False if it already was encrypted."""
    path = Path(path)
    if is_encrypted(path):
        return False
    mode = stat.S_IMODE(path.stat().st_mode)

    def write(f):
        with open(path, "rb") as src, EncryptingWriter(f, path.name, keyring, chunk_log2) as w:
            while block := src.read(1 << chunk_log2):
                w.write(block)

    atomic_write(path, write)
    os.chmod(path, mode)
    return True


def decrypt_file(path: str | Path, out: str | Path, keyring: Keyring) -> Path:
    """Write the plaintext of ``path`` to ``out`` atomically (nothing is written if decryption fails)."""
    path = Path(path)

    def write(f):
        with open(path, "rb") as src:
            decrypt_stream(src, f, path.name, keyring, str(path))

    return atomic_write(out, write, private=True)


def rekey_file(path: str | Path, keyring: Keyring) -> bool:
    """Re-encrypt ``path`` under the primary key, atomically and streaming; False if it already uses it.

    The old key must still be in ``keyring``. A crash leaves the old file, still readable.
    """
    path = Path(path)
    old = key_id_of(path)
    if old is None:
        raise EncryptionError(f"{path}: not encrypted (use 'genforge security encrypt')")
    if old == keyring.primary:
        return False
    mode = stat.S_IMODE(path.stat().st_mode)

    class _Pipe(io.RawIOBase):  # decrypted chunks go straight into the encrypting writer
        def __init__(self, w):
            super().__init__()
            self.w = w

        def writable(self):
            return True

        def write(self, b):
            return self.w.write(b)

    def write(f):
        with open(path, "rb") as src:
            chunk_log2 = _read_header(src, str(path)).chunk.bit_length() - 1
            src.seek(0)
            with EncryptingWriter(f, path.name, keyring, chunk_log2) as w:
                decrypt_stream(src, _Pipe(w), path.name, keyring, str(path))

    atomic_write(path, write)
    os.chmod(path, mode)
    return True


def encrypted_files(paths: list[str | Path]) -> list[Path]:
    """The encrypted files among ``paths``, directories searched recursively (temporary files skipped)."""
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise EncryptionError(f"not found: {p}")
        candidates = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        found += [q for q in candidates if not q.name.startswith(".") and is_encrypted(q)]
    return found
