"""LibriSpeech from its own layout.

::

    LibriSpeech/
      SPEAKERS.TXT                      (optional: speaker gender)
      train-clean-100/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
      train-clean-100/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac

``root`` may be the ``LibriSpeech`` folder (all or ``subsets`` of its subsets)
or one subset folder itself.
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

LAYOUT = "LibriSpeech layout root/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt (+ .flac), or root=<subset folder>"


def load_librispeech(root: str | Path, subsets: list[str] | None = None) -> list[Utterance]:
    """All utterances of the chosen subsets (default: every subset under ``root``)."""
    root = require_dir(root, "LibriSpeech", LAYOUT)
    subset_dirs = _subset_dirs(root, subsets)
    genders = _read_speaker_genders(root)
    rows: list[Utterance] = []
    for subset_dir in subset_dirs:
        rows.extend(_load_subset(subset_dir, genders))
    return require_rows(rows, "LibriSpeech", root, LAYOUT)


def _is_subset_dir(path: Path) -> bool:
    return next(path.glob("*/*/*.trans.txt"), None) is not None


def _subset_dirs(root: Path, subsets: list[str] | None) -> list[Path]:
    """Decide whether ``root`` is one subset or the folder holding them, and pick ``subsets``."""
    if _is_subset_dir(root):
        if subsets and root.name not in subsets:
            raise CorpusLayoutError(f"{root} is the LibriSpeech subset {root.name!r}, not one of {subsets}")
        return [root]
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and _is_subset_dir(p))
    if not available:
        raise CorpusLayoutError(f"no '*.trans.txt' found under {root}: expected {LAYOUT}")
    if subsets is None:
        return [root / name for name in available]
    missing = [name for name in subsets if name not in available]
    if missing:
        raise CorpusLayoutError(f"LibriSpeech subset(s) {missing} not found under {root}; available: {available}")
    return [root / name for name in subsets]


def _read_speaker_genders(root: Path) -> dict[str, str]:
    """``SPEAKERS.TXT`` lines ``ID | SEX | SUBSET | MINUTES | NAME`` (``;`` starts a comment)."""
    for folder in (root, root.parent):
        path = folder / "SPEAKERS.TXT"
        if path.is_file():
            genders = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                fields = [field.strip() for field in line.split("|")]
                if line.startswith(";") or len(fields) < 2:
                    continue
                genders[fields[0]] = normalize_gender(fields[1])
            return genders
    return {}


def _load_subset(subset_dir: Path, genders: dict[str, str]) -> list[Utterance]:
    entries: list[tuple[Path, str, str, str]] = []  # (audio, utterance id, text, chapter)
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        chapter = trans.parent.name
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, _, text = line.strip().partition(" ")
            if utt_id:
                entries.append((trans.parent / f"{utt_id}.flac", utt_id, text.strip(), chapter))
    durations = probe_durations("LibriSpeech", [entry[0] for entry in entries])
    rows = []
    for (audio, utt_id, text, chapter), duration in zip(entries, durations):
        speaker = audio.parent.parent.name
        labels = {"id": utt_id, "chapter": chapter, "subset": subset_dir.name}
        if speaker in genders:
            labels["gender"] = genders[speaker]
        rows.append(Utterance(str(audio), text, speaker, duration, labels))
    return rows
