"""Tokenizers for CTC, built from the training transcripts and saved with the model.

Id 0 is always the CTC blank. Texts are normalized with
:func:`metaspeech.speech.text.normalize_text` when a tokenizer is built; ``encode``
expects normalized text and raises :class:`UnknownCharacterError` for anything
outside the vocabulary rather than dropping it silently (a silently shortened
reference would make the WER wrong).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Iterable, TypeVar

from metaspeech.errors import DataError
from metaspeech.speech.text import normalize_text

BLANK = "<blank>"
_T = TypeVar("_T", bound="_SerializableTokenizer")


class UnknownCharacterError(DataError):
    """A transcript contains characters the tokenizer has never seen in its training texts."""

    def __init__(self, characters: list[str], text: str) -> None:
        self.characters = characters
        self.text = text
        super().__init__(
            f"characters {characters} in {text!r} are not in the tokenizer's vocabulary, which was built from "
            "the training (meta-train) texts: normalize the text with metaspeech.speech.text.normalize_text first, "
            "or include transcripts containing these characters in the training texts"
        )


class _SerializableTokenizer:
    """JSON persistence and equality shared by the tokenizers (subclasses define ``to_dict``/``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any]) -> _T:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (everything needed to rebuild it, no external files)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls: type[_T], path: str | Path) -> _T:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


class CharTokenizer(_SerializableTokenizer):
    """Characters as CTC labels: ``<blank>`` (0), space (1), ``'`` (2), then the other characters, sorted.

    Build it with :meth:`from_texts` from the training transcripts; the
    vocabulary is saved with every checkpoint (:meth:`to_dict`).
    """

    kind = "char"

    def __init__(self, symbols: Iterable[str]) -> None:
        symbols = list(symbols)
        if not symbols or symbols[0] != BLANK:
            raise ValueError(f"the first symbol must be the CTC blank {BLANK!r}, got {symbols[:1]}")
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"duplicate symbols in the vocabulary: {symbols}")
        if any(len(s) != 1 for s in symbols[1:]):
            raise ValueError(f"every symbol after the blank must be one character: {symbols[1:]}")
        self._symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The characters of the normalized ``texts`` (always including space and apostrophe)."""
        seen: set[str] = set()
        for text in texts:
            seen.update(normalize_text(text))
        return cls([BLANK, " ", "'", *sorted(seen - {" ", "'"})])

    @property
    def vocabulary(self) -> list[str]:
        """All symbols, index = id (a copy)."""
        return list(self._symbols)

    @property
    def vocab_size(self) -> int:
        return len(self._symbols)

    @property
    def allowed_chars(self) -> set[str]:
        """Characters ``encode`` accepts (the vocabulary without the blank)."""
        return set(self._symbols[1:])

    def encode(self, text: str) -> list[int]:
        """Normalized text -> ids (never 0); raises :class:`UnknownCharacterError` on unseen characters."""
        unknown = sorted(set(text) - self.allowed_chars)
        if unknown:
            raise UnknownCharacterError(unknown, text)
        return [self._index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; blanks (0) are ignored. Repeats are *not* collapsed (that is CTC decoding's job)."""
        return "".join(self._symbols[int(i)] for i in ids if int(i) != 0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "vocabulary": list(self._symbols)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        _check_type(data, cls.kind)
        return cls(data["vocabulary"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={''.join(self._symbols[1:])!r})"


def _import_sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as err:
        raise ImportError(
            "SentencePieceTokenizer needs the optional package sentencepiece: "
            "pip install sentencepiece  (or: pip install 'metaspeech[sentencepiece]')"
        ) from err
    return sentencepiece


class SentencePieceTokenizer(_SerializableTokenizer):
    """Subword units (SentencePiece unigram/BPE) with the :class:`CharTokenizer` interface.

    Id 0 is the CTC blank; SentencePiece's own ids are shifted by one. Needs the
    optional ``sentencepiece`` package (an ImportError says how to install it).
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, allowed_chars: Iterable[str]) -> None:
        spm = _import_sentencepiece()
        self._model_proto = bytes(model_proto)
        self._processor = spm.SentencePieceProcessor(model_proto=self._model_proto)
        self._allowed = set(allowed_chars)

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], vocab_size: int = 128, model_type: str = "unigram"
    ) -> "SentencePieceTokenizer":
        """Train on the normalized ``texts``; ``vocab_size`` is an upper bound on small corpora."""
        spm = _import_sentencepiece()
        normalized = [t for t in (normalize_text(text) for text in texts) if t]
        if not normalized:
            raise ValueError("cannot train a SentencePiece model: the training texts are empty after normalization")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(normalized), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            minloglevel=2,
        )
        allowed = set().union(*map(set, normalized)) | {" "}
        return cls(model.getvalue(), allowed)

    @property
    def vocabulary(self) -> list[str]:
        pieces = [self._processor.id_to_piece(i) for i in range(self._processor.get_piece_size())]
        return [BLANK, *pieces]

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size() + 1

    @property
    def allowed_chars(self) -> set[str]:
        return set(self._allowed)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self._allowed)
        if unknown:
            raise UnknownCharacterError(unknown, text)
        return [i + 1 for i in self._processor.encode(text, out_type=int)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([int(i) - 1 for i in ids if int(i) != 0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "model": base64.b64encode(self._model_proto).decode("ascii"),
            "allowed_chars": sorted(self._allowed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SentencePieceTokenizer":
        _check_type(data, cls.kind)
        return cls(base64.b64decode(data["model"]), data["allowed_chars"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"


Tokenizer = CharTokenizer | SentencePieceTokenizer
_KINDS: dict[str, type[CharTokenizer] | type[SentencePieceTokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    SentencePieceTokenizer.kind: SentencePieceTokenizer,
}


def _check_type(data: dict[str, Any], kind: str) -> None:
    found = data.get("type", kind)
    if found != kind:
        raise ValueError(f"this is a {found!r} tokenizer, not {kind!r}: use metaspeech.speech.tokenizer.tokenizer_from_dict")


def build_tokenizer(kind: str, texts: Iterable[str], **kwargs: Any) -> Tokenizer:
    """``kind`` = ``char`` or ``sentencepiece``; ``kwargs`` go to that tokenizer's ``from_texts``."""
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}: choose one of {sorted(_KINDS)}")
    return _KINDS[kind].from_texts(texts, **kwargs)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild any tokenizer from :meth:`to_dict` output (dispatches on ``data["type"]``, default ``char``)."""
    kind = data.get("type", CharTokenizer.kind)
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r} in saved tokenizer: expected one of {sorted(_KINDS)}")
    return _KINDS[kind].from_dict(data)
