"""Character tokenizer for CTC, built from the meta-train transcripts and saved with the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

BLANK = "<blank>"


class UnknownCharacterError(ValueError):
    """A transcript contains characters the tokenizer has never seen."""


class CharTokenizer:
    """Index 0 is the CTC blank, then space, apostrophe and the other characters (sorted).

    Texts are expected normalized (:func:`metaspeech.text.normalize_text`); an unknown
    character raises :class:`UnknownCharacterError` rather than being dropped silently.
    """

    def __init__(self, symbols: list[str]) -> None:
        if not symbols or symbols[0] != BLANK:
            raise ValueError(f"the first symbol must be the CTC blank {BLANK!r}")
        self.vocabulary = list(symbols)
        self._index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen = set().union(*(set(t) for t in texts)) - {" ", "'"}
        return cls([BLANK, " ", "'", *sorted(seen)])

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @property
    def allowed_chars(self) -> set[str]:
        return set(self.vocabulary[1:])

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.allowed_chars)
        if unknown:
            raise UnknownCharacterError(
                f"characters {unknown} in {text!r} are not in the tokenizer, which was built from the "
                "meta-train transcripts; normalize the text or add such transcripts to meta-train"
            )
        return [self._index[ch] for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocabulary[i] for i in ids if i != 0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "vocabulary": self.vocabulary}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        return cls(list(data["vocabulary"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.vocabulary == self.vocabulary
