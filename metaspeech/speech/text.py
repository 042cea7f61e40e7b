"""The one text normalizer, applied to references and hypotheses alike.

WER and CER are only comparable when both sides are normalized the same way,
and the character tokenizer is built from normalized text, so decoding yields
normalized text. Every transcript therefore passes through :func:`normalize_text`
before tokenization and before scoring.
"""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({ch: "'" for ch in "\u2018\u2019\u201a\u201b\u2032\u02bc\u02bb`\u00b4"})
"""Curly single quotes, primes and modifier letters used as apostrophes (``it’s`` -> ``it's``).

Double quotation marks (“ ” „) are punctuation, not apostrophes: they become spaces.
"""
_LETTERS_WITHOUT_DECOMPOSITION = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "ø": "o", "Ø": "o", "ł": "l", "Ł": "l", "đ": "d", "Đ": "d",
     "ð": "d", "þ": "th", "ı": "i"}
)
"""Latin letters that NFKD does not split into base letter + accent, spelled out instead of dropped."""
_NOT_ALLOWED = re.compile(r"[^a-z0-9' ]+")
_LONE_APOSTROPHES = re.compile(r"(?<![a-z0-9])'+(?![a-z0-9])")
_REPEATED_APOSTROPHES = re.compile(r"'{2,}")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase ASCII words: ``[a-z0-9']`` separated by single spaces.

    Steps: unify apostrophes (curly quotes -> ``'``), NFKD with accents stripped
    (``café`` -> ``cafe``), lowercase, every other character (punctuation,
    hyphens, double quotes, symbols) -> space, apostrophes that touch no letter
    or digit dropped, whitespace collapsed and stripped.

    >>> normalize_text("  Hello,  World! It\u2019s Café-time. ")
    "hello world it's cafe time"
    """
    text = text.translate(_APOSTROPHES).translate(_LETTERS_WITHOUT_DECOMPOSITION)
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    words = _NOT_ALLOWED.sub(" ", ascii_text)
    words = _LONE_APOSTROPHES.sub(" ", _REPEATED_APOSTROPHES.sub("'", words))
    return _SPACES.sub(" ", words).strip()
