"""A user's own corpus: ``text:FILE`` (documents are the file's blank-line-separated blocks) and ``text:DIR``
(each UTF-8 file under DIR, recursively, is one document).

Text must be UTF-8. A byte sequence that is not is an error naming the file and the byte offset where
decoding failed, unless the caller declares a replacement policy (``on_bad_utf8="replace"``: U+FFFD for
each bad sequence, counted in the notes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from genforge.data.limits import Budget
from genforge.errors import DataError

UTF8_POLICIES = ("refuse", "replace")
SUFFIXES = (".txt", ".md", ".text", "")  # what text:DIR reads; other files (images, archives) are skipped
_BLOCKS = re.compile(r"\n[ \t]*\n+")


def decode_utf8(data: bytes, origin: str, policy: str = "refuse") -> tuple[str, int]:
    """``data`` as text and the number of replaced sequences; "refuse" raises naming the byte offset."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as e:
        if policy != "replace":
            raise DataError(f"{origin}: not UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); convert "
                            "it (iconv -t UTF-8) or set on_bad_utf8=replace to substitute U+FFFD") from None
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")


def read_text_file(path: Path, policy: str = "refuse", budget: Budget | None = None,
                   what: str = "the file") -> tuple[str, int]:
    """One file as text, its size charged to ``budget`` (a directory's, shared by its files; by default a fresh
    one of the data budget) before it is read: a file over what is left is refused, naming the file, its size,
    the limit and GENFORGE_MAX_DATA_BYTES (``limits.Budget``)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    (budget or Budget()).claim(size, str(path), what)
    text, replaced = decode_utf8(path.read_bytes(), str(path), policy)
    return text.replace("\r\n", "\n"), replaced


def read_corpus(path: Path, policy: str = "refuse") -> tuple[list[tuple[str, str]], list[str]]:
    """``(name, text)`` documents of a file or a directory, and notes on what was read."""
    if policy not in UTF8_POLICIES:
        raise DataError(f"on_bad_utf8 must be one of {', '.join(UTF8_POLICIES)}, got {policy!r}")
    notes = []
    if path.is_file():
        text, replaced = read_text_file(path, policy)
        docs = [(f"{path.name}#{i}", block.strip("\n")) for i, block in enumerate(_BLOCKS.split(text))
                if block.strip()]
        notes.append(f"{path}: {len(docs)} documents (blocks separated by blank lines)")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        docs, replaced, budget = [], 0, Budget()  # one budget for the whole directory
        for p in files:
            text, bad = read_text_file(p, policy, budget, f"a document of the corpus {path}")
            replaced += bad
            if text.strip():
                docs.append((os.fspath(p.relative_to(path)), text.strip("\n") + "\n"))
        notes.append(f"{path}: {len(docs)} documents (one per file; {len(files) - len(docs)} empty)")
    else:
        raise DataError(f"{path}: no such file or directory")
    if replaced:
        notes.append(f"{replaced} byte sequence(s) that were not UTF-8 replaced by U+FFFD (on_bad_utf8=replace)")
    if not docs:
        raise DataError(f"{path}: the corpus is empty (no text in it)")
    return docs, notes
