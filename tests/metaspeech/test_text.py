"""The one text normalizer used before tokenization and before WER/CER."""

from __future__ import annotations

import re

import pytest

from metaspeech.speech.text import normalize_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello,  World! It\u2019s Café-time. ", "hello world it's cafe time"),
        ("THE END.", "the end"),
        ("naïve  résumé  Zoë", "naive resume zoe"),
        ("rock\u2019n\u2018roll don`t", "rock'n'roll don't"),
        ("\u201cquoted\u201d words", "quoted words"),
        ("well-known e-mail", "well known e mail"),
        ("tab\tnew\nline\u00a0nbsp", "tab new line nbsp"),
        ("Room 101, 3.5%", "room 101 3 5"),
        ("Straße Ærø Łódź", "strasse aero lodz"),
        ("\ufb01ne \u2460", "fine 1"),  # NFKD compatibility forms: ligature, circled digit
        ("the dogs' bones 'tis", "the dogs' bones 'tis"),
        ("a ' b '' c", "a b c"),
        ("it''s", "it's"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("raw", ["Hello, World!", "It\u2019s Café-time", "\u00c9cole   normale", "a--b__c"])
def test_output_alphabet_and_idempotence(raw: str) -> None:
    normalized = normalize_text(raw)
    assert re.fullmatch(r"[a-z0-9' ]*", normalized)
    assert "  " not in normalized and normalized == normalized.strip()
    assert normalize_text(normalized) == normalized
