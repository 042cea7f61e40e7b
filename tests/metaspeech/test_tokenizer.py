"""Character tokenizer: layout, strict encoding, round trips; the optional SentencePiece tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from metaspeech.speech.text import normalize_text
from metaspeech.speech.tokenizer import (
    BLANK,
    CharTokenizer,
    SentencePieceTokenizer,
    UnknownCharacterError,
    build_tokenizer,
    tokenizer_from_dict,
)

TEXTS = ["The cat's hat.", "Zebra crossing!", "a b c"]
HAS_SENTENCEPIECE = importlib.util.find_spec("sentencepiece") is not None


def test_layout_is_blank_space_apostrophe_then_sorted_characters() -> None:
    tokenizer = CharTokenizer.from_texts(TEXTS)
    assert tokenizer.vocabulary[:3] == [BLANK, " ", "'"]
    rest = tokenizer.vocabulary[3:]
    assert rest == sorted(rest) == sorted(set("".join(normalize_text(t) for t in TEXTS)) - {" ", "'"})
    assert tokenizer.vocab_size == len(tokenizer.vocabulary)
    assert tokenizer.allowed_chars == set(tokenizer.vocabulary[1:])
    assert "T" not in tokenizer.allowed_chars and "." not in tokenizer.allowed_chars  # built from normalized text


def test_space_and_apostrophe_always_present() -> None:
    assert CharTokenizer.from_texts(["abc"]).vocabulary == [BLANK, " ", "'", "a", "b", "c"]


def test_encode_decode_round_trip() -> None:
    tokenizer = CharTokenizer.from_texts(TEXTS)
    text = normalize_text("The zebra's cat")
    ids = tokenizer.encode(text)
    assert 0 not in ids and len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([0, *ids[:2], 0, 0, *ids[2:], 0]) == text  # blanks are ignored


def test_unknown_characters_raise_with_a_clear_message() -> None:
    tokenizer = CharTokenizer.from_texts(["abc"])
    with pytest.raises(UnknownCharacterError, match=r"\['x', 'z'\].*'zax'.*training") as info:
        tokenizer.encode("zax")
    assert isinstance(info.value, ValueError)
    assert info.value.characters == ["x", "z"] and info.value.text == "zax"
    with pytest.raises(UnknownCharacterError, match="normalize_text"):
        tokenizer.encode("ABC")  # not normalized: no silent lower-casing or dropping


def test_dict_and_json_round_trip(tmp_path: Path) -> None:
    tokenizer = CharTokenizer.from_texts(TEXTS)
    assert CharTokenizer.from_dict(tokenizer.to_dict()) == tokenizer
    assert tokenizer_from_dict(tokenizer.to_dict()) == tokenizer
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded == tokenizer and loaded.vocabulary == tokenizer.vocabulary
    assert hash(loaded) == hash(tokenizer)
    assert loaded != CharTokenizer.from_texts(["abc"])


def test_vocabulary_property_cannot_be_mutated_from_outside() -> None:
    tokenizer = CharTokenizer.from_texts(["abc"])
    tokenizer.vocabulary.append("z")
    assert tokenizer.vocab_size == 6


@pytest.mark.parametrize(
    "symbols", [[" ", "a"], [BLANK, "a", "a"], [BLANK, "ab"], []], ids=["no-blank", "duplicate", "multichar", "empty"]
)
def test_invalid_vocabularies_are_rejected(symbols: list[str]) -> None:
    with pytest.raises(ValueError):
        CharTokenizer(symbols)


def test_from_dict_refuses_another_tokenizer_type() -> None:
    with pytest.raises(ValueError, match="sentencepiece"):
        CharTokenizer.from_dict({"type": "sentencepiece", "vocabulary": [BLANK]})
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "wordpiece"})


def test_build_tokenizer_factory() -> None:
    assert build_tokenizer("char", TEXTS) == CharTokenizer.from_texts(TEXTS)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
        build_tokenizer("bpe", TEXTS)


@pytest.mark.skipif(HAS_SENTENCEPIECE, reason="sentencepiece is installed")
def test_sentencepiece_without_the_package_says_how_to_install() -> None:
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        build_tokenizer("sentencepiece", TEXTS)


@pytest.mark.skipif(not HAS_SENTENCEPIECE, reason="optional package sentencepiece is not installed")
def test_sentencepiece_tokenizer_interface(tmp_path: Path) -> None:
    texts = [f"the cat sat on the mat number {i} and the dog ran" for i in range(50)]
    tokenizer = build_tokenizer("sentencepiece", texts, vocab_size=40)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer.vocabulary[0] == BLANK and tokenizer.vocab_size == len(tokenizer.vocabulary) <= 41
    ids = tokenizer.encode("the dog sat")
    assert 0 not in ids and tokenizer.decode([0, *ids, 0]) == "the dog sat"
    with pytest.raises(UnknownCharacterError):
        tokenizer.encode("the zebra")
    path = tmp_path / "spm.json"
    tokenizer.save(path)
    loaded = SentencePieceTokenizer.load(path)
    assert loaded == tokenizer == tokenizer_from_dict(tokenizer.to_dict())
    assert loaded.encode("the dog sat") == ids
