"""``text:dialogue``: (prompt, reply) pairs from consecutive speaker turns of the plays, plus the English
conversations of the PyPI package ``chatterbot-corpus`` (BSD-3).

A pair is written for the language model as ``PROMPT:`` then the prompt's lines and ``REPLY:`` then the
reply's, a blank line after it; so at sampling time a prompt of ``"PROMPT:\\nHow are you?\\nREPLY:\\n"`` asks
for a reply. Pairs never cross a scene boundary, and a speaker answering himself is not a pair.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from genforge.data.text.plays import INSTALL, Play
from genforge.errors import DataError


def format_pair(prompt: str, reply: str) -> str:
    return f"PROMPT:\n{prompt.strip()}\nREPLY:\n{reply.strip()}\n\n"


def play_pairs(play: Play) -> list[tuple[str, str]]:
    pairs = []
    for a, b in zip(play.speeches, play.speeches[1:]):
        if a.scene == b.scene and a.speaker != b.speaker:
            pairs.append(("\n".join(a.lines), "\n".join(b.lines)))
    return pairs


def chatterbot_files() -> list[Path]:
    try:  # the text extra: optional, so imported only when text:dialogue is read
        import chatterbot_corpus
    except ImportError:
        raise DataError(f"text:dialogue: {INSTALL}") from None
    return sorted((Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml"))


def chatterbot_pairs(path: Path) -> list[tuple[str, str]]:
    """Consecutive statements of each conversation in one chatterbot YAML file."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable chatterbot corpus file ({type(e).__name__})") from None
    pairs = []
    for convo in (doc or {}).get("conversations") or []:
        turns = [str(t).strip() for t in convo if isinstance(t, (str, int, float)) and str(t).strip()]
        pairs += list(zip(turns, turns[1:]))
    return pairs
