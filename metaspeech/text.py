"""The one text normalizer, applied to references and hypotheses alike.

WER and CER are only comparable when both sides are normalized the same way;
the tokenizer is built from normalized text, so decoding yields normalized text.
"""

from __future__ import annotations

import re
import unicodedata

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_ALLOWED = re.compile(r"[^a-z0-9' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase, strip accents, unify apostrophes, turn punctuation into spaces, collapse spaces.

    >>> normalize_text("  Hello,  World! It\u2019s Café-time. ")
    "hello world it's cafe time"
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_QUOTES))
    ascii_text = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    return _SPACES.sub(" ", _NOT_ALLOWED.sub(" ", ascii_text)).strip()
