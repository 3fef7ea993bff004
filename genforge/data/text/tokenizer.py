"""Tokenizers: character-level, and byte-level BPE trained with the ``tokenizers`` package.

Both are saved beside the model's weights as ``tokenizer.json`` and give ids 0 to 3 to the same special
tokens (``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``), which the sentence VAE uses and the GPT never trains on.

- ``char``: one id per character seen in the training split (sorted), so a sample is made of the corpus's own
  characters. A prompt with a character outside the vocabulary is an error naming the character and its
  offset; held-out text maps such characters to ``<unk>`` and the evaluator counts them.
- ``bpe``: byte-level BPE (GPT-2's scheme): any UTF-8 text encodes, nothing is ever unknown. Its
  ``tokenizer.json`` is the ``tokenizers`` package's own file, readable by ``tokenizers.Tokenizer.from_file``.

Our char tokenizer's file is a small JSON of our own (``{"genforge_tokenizer": "char", "chars": [...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path

from genforge.errors import DataError, GenforgeError, ModelFileError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
KINDS = ("char", "bpe")
FILENAME = "tokenizer.json"
_INSTALL = "byte-level BPE needs the tokenizers package: pip install 'genforge[text]'"


class CharTokenizer:
    """One id per character: the specials, then the training split's characters in sorted order."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ModelFileError("a character tokenizer's chars must be distinct single characters")
        self.chars = list(chars)
        self.ids = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text: str, strict: bool = True) -> list[int]:
        """Ids of ``text``. ``strict``: a character outside the vocabulary is an error naming it and its offset;
        otherwise it becomes ``<unk>``."""
        ids = self.ids
        if strict:
            for i, ch in enumerate(text):
                if ch not in ids:
                    raise GenforgeError(f"character {ch!r} (U+{ord(ch):04X}) at offset {i} of the prompt is not in "
                                        f"this model's character vocabulary ({len(self.chars)} characters)")
        return [ids.get(ch, UNK) for ch in text]

    def decode(self, ids) -> str:
        n = len(SPECIALS)
        return "".join(self.chars[i - n] if i >= n else "" for i in ids)

    def to_json(self) -> str:
        return json.dumps({"genforge_tokenizer": "char", "chars": self.chars}, ensure_ascii=False)


class BPETokenizer:
    """Byte-level BPE (Radford et al. 2019, GPT-2), trained and run by the ``tokenizers`` package."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        try:  # the text extra: optional, so imported only when a BPE tokenizer is trained
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        except ImportError:
            raise GenforgeError(_INSTALL) from None
        if not isinstance(vocab_size, int) or not 256 + len(SPECIALS) <= vocab_size <= 1_000_000:
            raise GenforgeError(f"vocab_size for byte-level BPE must be from {256 + len(SPECIALS)} (the 256 bytes "
                                f"and {len(SPECIALS)} specials) to 1000000, got {vocab_size!r}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        # line by line: the pre-tokenizer splits at spaces anyway, and lines keep the iterator's pieces small
        tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, strict: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> str:
        return self.tok.to_str()


def train_tokenizer(kind: str, text: str, vocab_size: int = 0):
    """A tokenizer of ``kind`` ("char" or "bpe", with ``vocab_size``) trained on ``text`` (the training split)."""
    if not text:
        raise DataError("cannot train a tokenizer on an empty corpus")
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size)
    raise GenforgeError(f"tokenizer must be one of {', '.join(KINDS)}, got {kind!r}")


def from_json(text: str, origin: str = FILENAME):
    """A tokenizer from the text of a ``tokenizer.json`` (ours for char, the tokenizers package's for BPE)."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ModelFileError(f"{origin}: not valid JSON") from None
    if isinstance(doc, dict) and doc.get("genforge_tokenizer") == "char":
        chars = doc.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ModelFileError(f"{origin}: 'chars' must be a list of characters")
        return CharTokenizer(chars)
    try:  # the text extra: optional, so imported only when a BPE tokenizer file is read
        from tokenizers import Tokenizer
    except ImportError:
        raise ModelFileError(f"{origin}: {_INSTALL}") from None
    try:
        tok = BPETokenizer(Tokenizer.from_str(text))
    except Exception as e:  # the package raises its own exception type for a malformed file
        raise ModelFileError(f"{origin}: not a tokenizer file ({str(e).splitlines()[0][:120]})") from None
    if [tok.tok.token_to_id(s) for s in SPECIALS] != list(range(len(SPECIALS))):
        raise ModelFileError(f"{origin}: the special tokens {', '.join(SPECIALS)} must have ids 0 to 3")
    return tok


def load_tokenizer(path: str | Path, vocab_size: int, text: str | None = None):
    """The tokenizer saved with a model, refused unless its vocabulary is the model's (``vocab_size``, from the
    model's config.json): a different tokenizer would decode the model's ids into the wrong text. The one
    reader of a model's tokenizer.json (``generation.text.TextOutput`` comes here).

    ``text``: the file's content when it was read already (a model file reads it with the weights and checks
    its SHA-256); ``path`` then only names it in the errors."""
    where = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelFileError(f"{where}: missing (a text model keeps its tokenizer beside its weights)") from None
        except UnicodeDecodeError:
            raise ModelFileError(f"{where}: not UTF-8") from None
    tok = from_json(text, where)
    if tok.vocab_size != vocab_size:
        raise ModelFileError(f"{where}: its vocabulary has {tok.vocab_size} tokens but the model was trained with "
                             f"{vocab_size}: this tokenizer belongs to another model")
    return tok
