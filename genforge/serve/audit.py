"""The audit log: one JSON line per API request, hash-chained and signed.

Each line holds the time, the key id (never the key), the endpoint, the
request's parameters, hashes of what was returned, the status and the
latency, plus:

- ``seq``: 1, 2, 3, ... (a deleted or moved line breaks the count);
- ``prev``: the SHA-256 of the previous line's bytes (all zeros for the first),
  so editing, deleting or reordering a line breaks the chain after it;
- ``hmac``: HMAC-SHA256 of the line's other fields under a secret key, so a
  full rewrite with a recomputed chain is caught too: the forger lacks the key.

The key comes from ``$GENFORGE_AUDIT_KEY`` (hex or text), else the file named
by ``$GENFORGE_AUDIT_KEY_FILE``, else ``$XDG_CONFIG_HOME/genforge/audit.key`` (``~/.config`` when unset) (made,
mode 0600, on first use). Never from the command line, where other users of
the machine can read it. Keep the key away from the log's machine for the
strongest guarantee.

Each line is written before its response is sent (OWASP: audit before
acting, fail closed): when the write fails (a full disk), the service answers
503 instead, unless the operator chose best effort. A failed write leaves no
torn line behind (the file is cut back to where the line began), so the
chain stays intact. A crash of the server loses at most the requests in
flight (``fsync=True`` survives a power cut too, at a few milliseconds a
line). What a chain cannot show by itself is the loss of its last lines;
``verify`` prints the last line's hash, to note elsewhere if that matters.

Requests without a valid key, and connections refused before a request was
read, are not written one line each (anyone could fill the disk with them):
``Tally`` counts them per client address and outcome and writes one summary
line per client per interval (``"event": "summary"``, with the count).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.io import user_dir

KEY_ENV, KEY_FILE_ENV = "GENFORGE_AUDIT_KEY", "GENFORGE_AUDIT_KEY_FILE"
GENESIS = "0" * 64
TAIL_BYTES = 4 << 20


def default_audit_log() -> Path:
    """$XDG_DATA_HOME/genforge/audit.jsonl (~/.local/share when unset)."""
    return user_dir("data") / "audit.jsonl"


def load_key(create: bool = False) -> bytes:
    """The HMAC key: environment variable, key file, or the default key file (made when ``create``)."""
    if os.environ.get(KEY_ENV):
        raw = os.environ[KEY_ENV].strip()
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = raw.encode()
    else:
        path = Path(os.environ.get(KEY_FILE_ENV) or user_dir("config") / "audit.key")
        if not path.exists() and create and not os.environ.get(KEY_FILE_ENV):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        try:
            raw = path.read_text().strip()
        except OSError as e:
            raise GenforgeError(f"audit key file {path}: {e.strerror} (set ${KEY_ENV} or ${KEY_FILE_ENV})") from None
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = raw.encode()
    if len(key) < 16:
        raise GenforgeError("audit key too short: give at least 16 bytes (32 hex digits)")
    return key


def _line_bytes(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes, fields: dict) -> str:
    return hmac.new(key, _line_bytes(fields), hashlib.sha256).hexdigest()


class AuditLog:
    """Appends signed, chained lines to a JSONL file. One writer per file (an exclusive lock says so)."""

    def __init__(self, path: str | Path, key: bytes, fsync: bool = False):
        self.path = Path(path)
        self.key, self.fsync = key, fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "ab", buffering=0)  # unbuffered: a failed write leaves nothing queued
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise GenforgeError(f"audit log {self.path} is in use by another server: give each its own "
                                "--audit-log") from None
        self.seq, self.prev = self._tail()
        self.lock = threading.Lock()

    def _tail(self) -> tuple[int, str]:
        """(seq, hash) of the last line, to continue the chain across restarts.

        A last line torn by a crash (no newline) is closed with one and chained like any other line; ``verify``
        reports it as not JSON, and the lines after it still verify.
        """
        size = self.path.stat().st_size
        if size == 0:
            return 0, GENESIS
        with open(self.path, "rb") as f:
            f.seek(max(0, size - TAIL_BYTES))  # lines are far shorter: parameters are bounded by the body limit
            lines = f.read().split(b"\n")
        if lines[-1] != b"":
            self.file.write(b"\n")
        else:
            lines.pop()
        seq = 0
        for back, data in enumerate(reversed(lines[-2:])):
            try:
                seq = int(json.loads(data)["seq"]) + back
                break
            except (ValueError, KeyError, TypeError):
                continue
        return seq, hashlib.sha256(lines[-1]).hexdigest()

    def write(self, fields: dict) -> None:
        """Append one line: ``fields`` plus time, seq, prev and hmac."""
        with self.lock:
            line = {"time": _now(), **fields, "seq": self.seq + 1, "prev": self.prev}
            line["hmac"] = _mac(self.key, line)
            data = _line_bytes(line)
            start = self.file.seek(0, os.SEEK_END)
            try:
                view = memoryview(data + b"\n")
                while view:  # a raw write may take only part of the line
                    view = view[self.file.write(view):]
                if self.fsync:
                    os.fsync(self.file.fileno())
            except OSError:
                # disk full...: cut off what part of the line went in, so that the next line chains to the last
                # whole one; the caller decides what the failure means (503, or best effort)
                try:
                    self.file.truncate(start)
                except OSError:
                    pass
                raise
            self.seq += 1
            self.prev = hashlib.sha256(data).hexdigest()

    def close(self) -> None:
        self.file.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Tally:
    """Counts of events that get no line each (requests without a valid key, refused connections), per
    client address and outcome; ``flush`` writes one summary line per client and empties the counts.

    The service flushes every ``interval`` seconds and when it stops, so the lines from one address are at
    most one per interval however many requests it sends. At most ``max_clients`` addresses are told apart;
    the rest are counted together as client "other".
    """

    def __init__(self, log: AuditLog | None, interval: float = 60.0, max_clients: int = 1000):
        self.log, self.interval, self.max_clients = log, interval, max_clients
        self.counts: dict[str, Counter] = {}
        self.since, self.started = _now(), time.monotonic()
        self.lock = threading.Lock()

    def add(self, client: str, outcome: str) -> None:
        with self.lock:
            if client not in self.counts and len(self.counts) >= self.max_clients:
                client = "other"
            self.counts.setdefault(client, Counter())[outcome] += 1
        if time.monotonic() - self.started >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the summary lines (a failed write is logged by the caller; the counts are kept for the next)."""
        with self.lock:
            counts, since = self.counts, self.since
            self.counts, self.since, self.started = {}, _now(), time.monotonic()
        if self.log is None:
            return
        items = sorted(counts.items())
        for n, (client, outcomes) in enumerate(items):
            try:
                self.log.write({"event": "summary", "client": client, "count": sum(outcomes.values()),
                                "outcomes": dict(sorted(outcomes.items())), "from": since})
            except OSError:
                with self.lock:  # keep what was not written, for the next flush
                    for c, o in items[n:]:
                        self.counts.setdefault(c, Counter()).update(o)
                raise


def verify(path: str | Path, key: bytes) -> tuple[list[str], int, str]:
    """Check every line of an audit log: (problems, each naming its line number; lines read; last line's hash)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GenforgeError(f"{path}: {e.strerror}") from None
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    problems: list[str] = []
    prev, expected_seq = GENESIS, 1
    for number, data in enumerate(lines, start=1):
        where = f"line {number}"
        try:
            line = json.loads(data)
            if not isinstance(line, dict):
                raise ValueError
        except ValueError:
            problems.append(f"{where}: not a JSON object (edited or torn)")
            prev, expected_seq = hashlib.sha256(data).hexdigest(), expected_seq + 1
            continue
        fields = {k: v for k, v in line.items() if k != "hmac"}
        if not isinstance(line.get("hmac"), str) or not hmac.compare_digest(_mac(key, fields), line["hmac"]):
            problems.append(f"{where}: HMAC does not match: the line was edited, or written with another key")
        if line.get("prev") != prev:
            problems.append(f"{where}: 'prev' is not the hash of the line before it: a line before it was "
                            "edited, deleted or moved")
        if line.get("seq") != expected_seq:
            problems.append(f"{where}: sequence number {line.get('seq')!r} where {expected_seq} was expected: "
                            "lines were deleted or reordered")
        if isinstance(line.get("seq"), int):
            expected_seq = line["seq"]
        expected_seq += 1
        prev = hashlib.sha256(data).hexdigest()
    if raw and not raw.endswith(b"\n"):
        problems.append(f"line {len(lines)}: no newline at the end: torn write (crash) or truncated file")
    return problems, len(lines), prev
