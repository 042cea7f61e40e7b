"""eSpeak NG's IPA -> Kokoro-82M's phoneme tokens.

Why eSpeak and not Kokoro's own G2P (misaki): eSpeak is already here (the eSpeak
engine's pip wheel), needs no dictionary download, and its English accents
(Scottish, Caribbean, New York, West Midlands, ...) transcribe the same words
differently, which is what gives Kokoro speakers an accent.

Why a mapping: Kokoro v1.0 was trained on misaki's phoneme set, where a diphthong
or an affricate is one symbol (``A`` = eɪ, ``I`` = aɪ, ``ʤ`` = dʒ, ...). eSpeak
joins the letters of such phonemes with a tie character when asked
(:data:`~metaspeech.datamodules.embedded.espeak.PHONEME_TIE`), so they map
one to one; a few other eSpeak symbols map to the nearest symbol Kokoro knows,
and any symbol still outside the vocabulary is dropped.
"""

from __future__ import annotations

import re

from metaspeech.datamodules.embedded.espeak import PHONEME_TIE

VOCAB: dict[str, int] = {
    ";": 1, ":": 2, ",": 3, ".": 4, "!": 5, "?": 6, "—": 9, "…": 10, '"': 11, "(": 12, ")": 13, "“": 14, "”": 15,
    " ": 16, "\u0303": 17, "ʣ": 18, "ʥ": 19, "ʦ": 20, "ʨ": 21, "ᵝ": 22, "ꭧ": 23, "A": 24, "I": 25, "O": 31,
    "Q": 33, "S": 35, "T": 36, "W": 39, "Y": 41, "ᵊ": 42, "a": 43, "b": 44, "c": 45, "d": 46, "e": 47, "f": 48,
    "h": 50, "i": 51, "j": 52, "k": 53, "l": 54, "m": 55, "n": 56, "o": 57, "p": 58, "q": 59, "r": 60, "s": 61,
    "t": 62, "u": 63, "v": 64, "w": 65, "x": 66, "y": 67, "z": 68, "ɑ": 69, "ɐ": 70, "ɒ": 71, "æ": 72, "β": 75,
    "ɔ": 76, "ɕ": 77, "ç": 78, "ɖ": 80, "ð": 81, "ʤ": 82, "ə": 83, "ɚ": 85, "ɛ": 86, "ɜ": 87, "ɟ": 90, "ɡ": 92,
    "ɥ": 99, "ɨ": 101, "ɪ": 102, "ʝ": 103, "ɯ": 110, "ɰ": 111, "ŋ": 112, "ɳ": 113, "ɲ": 114, "ɴ": 115, "ø": 116,
    "ɸ": 118, "θ": 119, "œ": 120, "ɹ": 123, "ɾ": 125, "ɻ": 126, "ʁ": 128, "ɽ": 129, "ʂ": 130, "ʃ": 131, "ʈ": 132,
    "ʧ": 133, "ʊ": 135, "ʋ": 136, "ʌ": 138, "ɣ": 139, "ɤ": 140, "χ": 142, "ʎ": 143, "ʒ": 147, "ʔ": 148, "ˈ": 156,
    "ˌ": 157, "ː": 158, "ʰ": 162, "ʲ": 164, "↓": 169, "→": 171, "↗": 172, "↘": 173, "ᵻ": 177,
}  # fmt: skip
"""Kokoro-82M v1.0's phoneme vocabulary (``vocab.json`` of the ONNX export; id 0 is the pad at both ends)."""

MAX_PHONEMES = 510
"""The longest phoneme sequence a voice table has a style row for (and the model accepts)."""

_TIE = re.escape(PHONEME_TIE)
_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    # Language-switch flags such as "(fr)", should eSpeak switch language for a word (before "r" is mapped).
    (r"\([a-z-]+\)", ""),
    # Multi-letter phonemes eSpeak ties together -> Kokoro's single symbols.
    (f"a{_TIE}ɪ", "I"), (f"a{_TIE}ʊ", "W"), (f"e{_TIE}ɪ", "A"), (f"ɔ{_TIE}ɪ", "Y"),
    (f"o{_TIE}ʊ", "O"), (f"ə{_TIE}ʊ", "Q"), (f"d{_TIE}ʒ", "ʤ"), (f"t{_TIE}ʃ", "ʧ"), (f"ə{_TIE}l", "ᵊl"),
    # Syllabic consonants (n̩, l̩) -> a reduced schwa before the consonant, as Kokoro writes them.
    (r"(\S)\u0329", r"ᵊ\1"),
    # eSpeak symbols with a near Kokoro equivalent.
    ("ɚ", "əɹ"), ("ɐ", "ə"), ("r", "ɹ"), ("x", "k"), ("ç", "k"), ("ɬ", "l"), ("ʲ", "j"), ("ʉ", "u"), ("ʍ", "w"),
    (_TIE, ""),
)  # fmt: skip


def to_kokoro(ipa: str) -> str:
    """eSpeak IPA (with ties) as a string of Kokoro phonemes; symbols Kokoro does not know are dropped."""
    phonemes = ipa
    for pattern, replacement in _SUBSTITUTIONS:
        phonemes = re.sub(pattern, replacement, phonemes)
    phonemes = "".join(symbol for symbol in phonemes if symbol in VOCAB)
    return re.sub(" +", " ", phonemes).strip()


def tokenize(phonemes: str) -> list[int]:
    """Token ids of a Kokoro phoneme string (``to_kokoro`` output), without the pads."""
    return [VOCAB[symbol] for symbol in phonemes if symbol in VOCAB]
