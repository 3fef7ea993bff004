"""Text sources and tokenizers: the plays split by play, dialogue pairs, a user's corpus split by document,
the character and byte-level BPE tokenizers, and every bad input of the data layer."""

from __future__ import annotations

import pytest

from genforge.data.text import check_text, load_text
from genforge.data.text.tokenizer import (BOS, PAD, SPECIALS, UNK, CharTokenizer, from_json, load_tokenizer,
                                          train_tokenizer)
from genforge.errors import DataError, GenforgeError, ModelFileError


@pytest.fixture(scope="module")
def plays():
    return load_text("text:shakespeare")


def test_shakespeare_is_split_by_play_and_says_which(plays):
    names = lambda part: {d.name for d in getattr(plays, part)}
    assert len(plays.train) + len(plays.val) + len(plays.test) == 38
    assert len(plays.val) == 2 and len(plays.test) == 2           # about 10% of the plays held out
    assert not (names("train") & names("val")) and not (names("train") & names("test"))
    # no line of a test play is in the training text (lines long enough to be distinctive)
    train = plays.text("train")
    lines = [ln for ln in plays.text("test").splitlines() if len(ln) > 60]
    assert lines and sum(ln in train for ln in lines) / len(lines) < 0.02
    report = check_text("text:shakespeare")
    for d in plays.val + plays.test:
        assert d.name in report                                   # `genforge data check` names them
    assert 4_000_000 < sum(len(d.text) for d in plays.train + plays.val + plays.test) < 5_500_000


def test_plays_read_as_speaker_then_lines(plays):
    text = plays.text("train")
    assert "_" not in text and "**" not in text and "#" not in text   # no Markdown left
    first = text.split("\n\n")[0].splitlines()
    assert first[0].endswith(":") and first[0][:-1].isupper() and len(first) > 1


def test_dialogue_pairs_hold_out_the_same_plays(plays):
    dialogue = load_text("text:dialogue")
    held = {d.name for d in plays.val + plays.test}
    assert held <= {d.name for d in dialogue.val + dialogue.test}
    assert any(d.name.startswith("chatterbot/") for d in dialogue.train)
    pair = dialogue.text("train").split("\n\n")[0]
    assert pair.startswith("PROMPT:\n") and "\nREPLY:\n" in pair


def test_a_directory_is_split_by_document_with_the_seed(tmp_path):
    for i in range(20):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document number {i}\nwith two lines\n")
    a = load_text(f"text:{tmp_path}", val_fraction=0.1, test_fraction=0.1, seed=3)
    b = load_text(f"text:{tmp_path}", val_fraction=0.1, test_fraction=0.1, seed=3)
    c = load_text(f"text:{tmp_path}", val_fraction=0.1, test_fraction=0.1, seed=4)
    assert [d.name for d in a.test] == [d.name for d in b.test] and len(a.test) == 2 and len(a.val) == 2
    assert [d.name for d in a.test + a.val] != [d.name for d in c.test + c.val]
    assert a.text("train").count("document number") == 16


def test_a_file_is_split_by_blank_line_blocks(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"block {i}\nline" for i in range(10)) + "\n")
    s = load_text(f"text:{path}", val_fraction=0.1, test_fraction=0.1)
    assert len(s.train) == 8 and len(s.val) == 1 and len(s.test) == 1


def test_a_file_that_is_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("utf-8") + b"\nna\xefve\n")
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 at byte offset 16 \(byte 0xef\)"):
        load_text(f"text:{path}")
    s = load_text(f"text:{path}", on_bad_utf8="replace", val_fraction=0, test_fraction=0)   # the declared policy
    assert "na\ufffdve" in s.text("train") and any("replaced" in n for n in s.notes)


def test_an_empty_corpus_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: the corpus is empty"):
        load_text(f"text:{tmp_path / 'empty.txt'}")
    with pytest.raises(DataError, match="no such file"):
        load_text(f"text:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="unknown text source spec"):
        load_text("txt:x")


def test_a_corpus_over_the_data_budget_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """The data budget (GENFORGE_MAX_DATA_BYTES, ``limits.Budget``): one file, and a directory's files together."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a" * 600)
    (corpus / "b.txt").write_text("b" * 600)
    monkeypatch.setenv("GENFORGE_MAX_DATA_BYTES", "1000")
    assert load_text(f"text:{corpus / 'a.txt'}", val_fraction=0, test_fraction=0).text("train")  # 600 fit
    with pytest.raises(DataError, match=r"b.txt: a document of the corpus .*corpus: 600 bytes on top of the 600 "
                                        r"bytes already read .* the 1000 byte data budget; set "
                                        r"GENFORGE_MAX_DATA_BYTES"):
        load_text(f"text:{corpus}")
    monkeypatch.setenv("GENFORGE_MAX_DATA_BYTES", "500")
    with pytest.raises(DataError, match=r"a.txt: the file: 600 bytes would exceed the 500 byte data budget; set "
                                        r"GENFORGE_MAX_DATA_BYTES"):
        load_text(f"text:{corpus / 'a.txt'}")


def test_char_tokenizer_round_trips_and_names_a_foreign_character():
    tok = CharTokenizer.train("hello world\n")
    assert tok.vocab_size == len(SPECIALS) + len(set("hello world\n"))
    ids = tok.encode("hello")
    assert min(ids) >= len(SPECIALS) and tok.decode(ids) == "hello"
    with pytest.raises(GenforgeError, match=r"character 'z' \(U\+007A\) at offset 3 of the prompt"):
        tok.encode("helz")
    assert tok.encode("hez", strict=False)[-1] == UNK       # held-out text: counted as unknown, not refused
    assert from_json(tok.to_json()).encode("hello") == ids


def test_bpe_tokenizer_is_byte_level_and_saved_as_the_packages_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 50 + "MACBETH:\nSo foul and fair a day\n" * 20
    tok = train_tokenizer("bpe", text, 300)
    assert tok.vocab_size <= 300
    assert [tok.tok.token_to_id(s) for s in SPECIALS] == [PAD, BOS, 2, UNK]
    ids = tok.encode("the lazy fox")
    assert len(ids) < len("the lazy fox") and tok.decode(ids) == "the lazy fox"
    odd = "na\u00efve \u2014 \u00df \U0001F600"                  # never seen: still encodes, byte by byte
    assert tok.decode(tok.encode(odd)) == odd
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_json())
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(path)).encode("the lazy fox").ids == ids   # the package's own format
    assert load_tokenizer(path, tok.vocab_size).encode("the lazy fox") == ids


def test_a_tokenizer_that_does_not_match_the_model_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(CharTokenizer.train("abc").to_json())
    with pytest.raises(ModelFileError, match="its vocabulary has 7 tokens but the model was trained with 65"):
        load_tokenizer(path, 65)
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_tokenizer(path, 7)
    with pytest.raises(GenforgeError, match="vocab_size for byte-level BPE must be from 260"):
        train_tokenizer("bpe", "abc", 100)
