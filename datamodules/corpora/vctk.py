"""VCTK from its own layout; accents come from ``speaker-info.txt``.

Two releases are read::

    VCTK-Corpus-0.92/                          VCTK-Corpus/ (0.80 and older)
      speaker-info.txt                           speaker-info.txt
      txt/p225/p225_001.txt                      txt/p225/p225_001.txt
      wav48_silence_trimmed/p225/                wav48/p225/p225_001.wav
        p225_001_mic1.flac, p225_001_mic2.flac

Some recordings have no transcript (all of p315, a few others): they are
skipped with one counted warning.
"""

from __future__ import annotations

import re
from pathlib import Path

from metaspeech.datamodules.corpora._common import (
    CorpusLayoutError,
    normalize_gender,
    probe_durations,
    require_dir,
    require_rows,
    warn_skipped,
)
from metaspeech.datamodules.manifest import Utterance

LAYOUT = (
    "VCTK layout root/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac (0.92) or "
    "root/wav48/<spk>/<spk>_<nnn>.wav (older), with root/txt/<spk>/<spk>_<nnn>.txt"
)
MICS = ("mic1", "mic2")


def load_vctk(root: str | Path, mic: str = "mic1") -> list[Utterance]:
    """Utterances of one microphone (0.92; older releases have one) with accent, gender, age, region."""
    if mic not in MICS:
        raise ValueError(f"VCTK mic must be one of {MICS}, got {mic!r}")
    root = require_dir(root, "VCTK", LAYOUT)
    recordings = _find_recordings(root, mic)
    speakers = _read_speaker_info(root / "speaker-info.txt")
    mic_label = mic if (root / "wav48_silence_trimmed").is_dir() else None  # older releases: one mic
    entries, untranscribed = [], []
    for utt_id, audio in recordings:
        transcript = root / "txt" / audio.parent.name / f"{utt_id}.txt"
        if transcript.is_file():
            entries.append((utt_id, audio, transcript.read_text(encoding="utf-8", errors="replace").strip()))
        else:
            untranscribed.append(utt_id)
    warn_skipped("VCTK", "recording(s) without a transcript in txt/", untranscribed)
    durations = probe_durations("VCTK", [audio for _, audio, _ in entries])
    rows = [
        Utterance(str(audio), text, audio.parent.name, duration, _labels(utt_id, audio.parent.name, mic_label, speakers))
        for (utt_id, audio, text), duration in zip(entries, durations)
    ]
    return require_rows(rows, "VCTK", root, LAYOUT)


def _find_recordings(root: Path, mic: str) -> list[tuple[str, Path]]:
    """``(utterance id, audio path)`` for the release found under ``root``."""
    if (root / "wav48_silence_trimmed").is_dir():
        suffix = f"_{mic}"
        found = sorted((root / "wav48_silence_trimmed").glob(f"*/*{suffix}.flac"))
        return [(path.stem[: -len(suffix)], path) for path in found]
    if (root / "wav48").is_dir():
        return [(path.stem, path) for path in sorted((root / "wav48").glob("*/*.wav"))]
    raise CorpusLayoutError(f"neither wav48_silence_trimmed/ nor wav48/ found under {root}: expected {LAYOUT}")


def _read_speaker_info(path: Path) -> dict[str, dict[str, object]]:
    """``ID AGE GENDER ACCENTS REGION`` per line; older releases write ``225`` for ``p225``."""
    if not path.is_file():
        return {}
    info: dict[str, dict[str, object]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].upper() == "ID":
            continue
        speaker = fields[0] if fields[0].startswith(("p", "s")) else f"p{fields[0]}"
        region = re.sub(r"\(.*?\)", "", " ".join(fields[4:])).strip()
        info[speaker] = {
            "age": int(fields[1]) if fields[1].isdigit() else fields[1],
            "gender": normalize_gender(fields[2]),
            "accent": fields[3],
            "region": region or "unknown",
        }
    return info


def _labels(utt_id: str, speaker: str, mic: str | None, speakers: dict[str, dict[str, object]]) -> dict[str, object]:
    labels: dict[str, object] = {"id": utt_id}
    if mic is not None:
        labels["mic"] = mic
    labels.update(speakers.get(speaker, {"accent": "unknown"}))
    return labels
