"""TIMIT from its own layout; the eight dialect regions serve as accents.

::

    TIMIT/                                 (folder names in any case)
      TRAIN/DR1/FCJF0/SA1.WAV, SA1.TXT, SA1.PHN, SA1.WRD, ...
      TEST/DR1/FAKS0/...

``<SENT>.TXT`` holds ``<start sample> <end sample> <text>``. The original
``.WAV`` files are NIST SPHERE; libsndfile reads uncompressed SPHERE (the LDC
release), and copies converted to RIFF (``SA1.WAV.wav`` or ``SA1.wav``, as
several redistributions ship) are preferred when present. Audio libsndfile
cannot decode (compressed SPHERE) stops the loader with a ``sox`` command to run.

The official TRAIN/TEST partition is kept as the ``subset`` label (``train`` /
``test``), not ``split``: the data module reads ``split`` as its
meta-train/val/test assignment, and TIMIT has no validation speakers.
"""

from __future__ import annotations

from pathlib import Path

from metaspeech.datamodules.corpora._common import (
    CorpusLayoutError,
    normalize_gender,
    probe_durations,
    require_dir,
    require_rows,
)
from metaspeech.datamodules.manifest import Utterance

LAYOUT = "TIMIT layout root/{TRAIN,TEST}/<DR1..DR8>/<speaker e.g. FCJF0>/<SENT>.WAV + <SENT>.TXT (any case)"
SPLITS = ("train", "test")
RIFF_MAGIC = b"RIFF"


def load_timit(root: str | Path, include_sa: bool = True) -> list[Utterance]:
    """Utterances with dialect (``accent``: ``dr1``..``dr8``), gender and TRAIN/TEST ``subset`` labels.

    ``include_sa=False`` drops the two SA sentences every speaker reads (Kaldi's
    TIMIT recipe does, since identical texts across speakers inflate scores).
    """
    root = require_dir(root, "TIMIT", LAYOUT)
    split_dirs = {child.name.lower(): child for child in root.iterdir() if child.is_dir() and child.name.lower() in SPLITS}
    if not split_dirs:
        raise CorpusLayoutError(f"no TRAIN/ or TEST/ folder under {root}: expected {LAYOUT}")
    entries = []
    for split in sorted(split_dirs):
        for dialect_dir in _subdirs(split_dirs[split], prefix="dr"):
            for speaker_dir in _subdirs(dialect_dir):
                entries.extend(_speaker_entries(speaker_dir, split, dialect_dir.name.lower(), include_sa))
    durations = probe_durations("TIMIT", [audio for audio, _, _, _ in entries])
    rows = [
        Utterance(str(audio), text, speaker, duration, labels)
        for (audio, text, speaker, labels), duration in zip(entries, durations)
    ]
    return require_rows(rows, "TIMIT", root, LAYOUT)


def _subdirs(folder: Path, prefix: str = "") -> list[Path]:
    return sorted(child for child in folder.iterdir() if child.is_dir() and child.name.lower().startswith(prefix))


def _speaker_entries(speaker_dir: Path, split: str, dialect: str, include_sa: bool) -> list[tuple[Path, str, str, dict]]:
    """``(audio, text, speaker, labels)`` per ``<SENT>.TXT`` in one speaker folder."""
    files = [child for child in speaker_dir.iterdir() if child.is_file()]
    speaker = speaker_dir.name.upper()
    entries = []
    for transcript in sorted(f for f in files if f.suffix.lower() == ".txt"):
        sentence = transcript.stem.lower()
        if not include_sa and sentence.startswith("sa"):
            continue
        labels = {
            "id": f"{speaker}_{sentence.upper()}",
            "accent": dialect,
            "dialect": dialect,
            "gender": normalize_gender(speaker[:1]),
            "subset": split,
        }
        entries.append((_pick_audio(files, transcript), _read_text(transcript), speaker, labels))
    return entries


def _pick_audio(files: list[Path], transcript: Path) -> Path:
    """The sentence's audio, preferring a RIFF copy over the SPHERE original.

    With none present, the expected ``<SENT>.WAV`` path is returned so that
    validation reports it as missing.
    """
    sentence = transcript.stem.lower()
    candidates = [f for f in files if f.name.lower() in (f"{sentence}.wav.wav", f"{sentence}.wav")]
    if not candidates:
        return transcript.with_suffix(".WAV" if transcript.suffix.isupper() else ".wav")
    return sorted(candidates, key=lambda path: (not _is_riff(path), path.name))[0]


def _is_riff(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(RIFF_MAGIC)) == RIFF_MAGIC


def _read_text(transcript: Path) -> str:
    """Drop the leading ``start end`` sample offsets; the text is kept as in the corpus."""
    content = transcript.read_text(encoding="utf-8", errors="replace")
    fields = content.split(maxsplit=2)
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return fields[2].strip() if len(fields) == 3 else ""
    return content.strip()
