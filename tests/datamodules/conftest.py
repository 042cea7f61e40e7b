"""Fixtures that build tiny corpora in each corpus's real on-disk layout.

Audio is a fraction of a second of a sine tone, so every fixture builds in
milliseconds. The builders are fixtures returning callables because, with
``--import-mode=importlib``, test modules cannot import from this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

SR = 16000
WriteAudio = Callable[..., Path]


def _write_audio(path: Path, seconds: float = 0.25, sample_rate: int = SR, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype("float32")
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    sf.write(str(path), data, sample_rate, subtype="PCM_16")
    return path


@pytest.fixture
def write_audio() -> WriteAudio:
    """``write_audio(path, seconds=0.25, sample_rate=16000, channels=1)``: format from the suffix."""
    return _write_audio


# ------------------------------------------------------------------ LibriSpeech
LIBRI = {  # subset -> speaker -> chapter -> [(utt, text, seconds)]
    "train-clean-100": {"19": {"198": [("0000", "NORTHANGER ABBEY", 0.3), ("0001", "THIS LITTLE WORK", 0.2)]},
                        "26": {"495": [("0000", "HE SAID", 0.25)]}},
    "dev-clean": {"84": {"121123": [("0000", "GO DO YOU HEAR", 0.4)]}},
}
SPEAKERS_TXT = """\
; Some comment
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
26   | M | train-clean-100  | 25.08 | Denny Sayers
84   | F | dev-clean        |  8.02 | Christie Nowak
"""


@pytest.fixture
def librispeech_root(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    for subset, speakers in LIBRI.items():
        for speaker, chapters in speakers.items():
            for chapter, utts in chapters.items():
                folder = root / subset / speaker / chapter
                lines = []
                for utt, text, seconds in utts:
                    _write_audio(folder / f"{speaker}-{chapter}-{utt}.flac", seconds)
                    lines.append(f"{speaker}-{chapter}-{utt} {text}")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return root


# ------------------------------------------------------------------ VCTK
VCTK_INFO = """\
ID  AGE  GENDER  ACCENTS  REGION  COMMENTS
p225  23  F    English    Southern  England
p226  22  M    English    Surrey
p245  25  M    Irish      Dublin
p315  18  M    American   Connecticut
"""
VCTK_TEXT = {"p225": ["Please call Stella.", "Ask her to bring these things."], "p245": ["Six spoons of fresh snow peas."]}


@pytest.fixture
def vctk_root(tmp_path: Path) -> Path:
    """VCTK 0.92: two mics per utterance; p315 has audio but no transcripts."""
    root = tmp_path / "VCTK-Corpus-0.92"
    for speaker, texts in VCTK_TEXT.items():
        for index, text in enumerate(texts, start=1):
            for mic in ("mic1", "mic2"):
                _write_audio(root / "wav48_silence_trimmed" / speaker / f"{speaker}_{index:03d}_{mic}.flac", 0.2 + 0.1 * index)
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "txt" / speaker / f"{speaker}_{index:03d}.txt").write_text(text + "\n")
    for index in (1, 2):
        _write_audio(root / "wav48_silence_trimmed" / "p315" / f"p315_{index:03d}_mic1.flac", 0.2)
    (root / "speaker-info.txt").write_text(VCTK_INFO)
    return root


@pytest.fixture
def vctk_old_root(tmp_path: Path) -> Path:
    """Older VCTK: ``wav48/<spk>/<spk>_<nnn>.wav`` and speaker IDs without the ``p``."""
    root = tmp_path / "VCTK-Corpus"
    _write_audio(root / "wav48" / "p226" / "p226_001.wav", 0.3, sample_rate=48000)
    (root / "txt" / "p226").mkdir(parents=True)
    (root / "txt" / "p226" / "p226_001.txt").write_text("Please call Stella.\n")
    (root / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION\n226  22  M    English    Surrey\n")
    return root


# ------------------------------------------------------------------ Common Voice
CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"
CV_ROWS = [
    ("aaa111", "common_voice_en_1.wav", 'He said "hello" there.', "2", "0", "twenties", "male_masculine", "United States English", "en"),
    ("aaa111", "common_voice_en_2.wav", "The sky is blue.", "3", "0", "twenties", "male_masculine", "United States English", "en"),
    ("bbb222", "common_voice_en_3.flac", "Scones are tasty.", "2", "1", "", "", "", "en"),
]


@pytest.fixture
def common_voice_root(tmp_path: Path) -> Path:
    root = tmp_path / "cv-corpus" / "en"
    lines = [CV_HEADER]
    for index, (client, clip, sentence, *rest) in enumerate(CV_ROWS):
        _write_audio(root / "clips" / clip, 0.2 + 0.1 * index)
        lines.append("\t".join([client, clip, sentence, *rest, ""]))
    (root / "validated.tsv").write_text("\n".join(lines) + "\n")
    (root / "train.tsv").write_text("\n".join(lines[:2]) + "\n")
    return root


# ------------------------------------------------------------------ TIMIT
TIMIT = {  # (split dir, dialect dir, speaker dir) -> [(sentence, text)]
    ("TRAIN", "DR1", "FCJF0"): [("SA1", "She had your dark suit in greasy wash water all year."),
                                ("SI1027", "Even then, if she took one step forward.")],
    ("TRAIN", "DR2", "MARC0"): [("SX286", "Straw hats are out of fashion this year.")],
    ("TEST", "DR8", "MSLB0"): [("SA2", "Don't ask me to carry an oily rag like that.")],
}


@pytest.fixture
def timit_root(tmp_path: Path) -> Path:
    """TIMIT with RIFF ``.WAV`` files (as converted redistributions ship them)."""
    root = tmp_path / "TIMIT"
    for (split, dialect, speaker), sentences in TIMIT.items():
        folder = root / split / dialect / speaker
        for sentence, text in sentences:
            seconds = 0.3
            _write_audio(folder / f"{sentence}.WAV", seconds)
            (folder / f"{sentence}.TXT").write_text(f"0 {int(seconds * SR)} {text}\n")
            (folder / f"{sentence}.PHN").write_text("0 100 h#\n")
    return root
