"""Manifest rows: the one format every corpus reduces to.

A manifest is a JSONL file, one utterance per line::

    {"audio_filepath": "wav/spk001/0001.wav", "text": "the cat sat",
     "speaker": "spk001", "duration": 2.31, "accent": "en-us", ...}

``audio_filepath`` may be relative; it is then resolved against the manifest's
folder, so a corpus folder can be moved as a whole. Any further keys are
*labels* (accent, noise condition, channel parameters, split) that a task key
or a speaker split can use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from metaspeech.errors import DataError

REQUIRED_KEYS = ("audio_filepath", "text", "speaker", "duration")


class ManifestError(DataError):
    """A manifest file or row is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    """One row of a manifest.

    ``labels`` holds every key beyond the four required ones (e.g. ``accent``,
    ``split``, channel parameters); ``label(key)`` also answers ``speaker``.
    """

    audio_filepath: str
    text: str
    speaker: str
    duration: float
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def utterance_id(self) -> str:
        return self.labels.get("id") or Path(self.audio_filepath).stem

    def label(self, key: str) -> Any:
        if key == "speaker":
            return self.speaker
        if key not in self.labels:
            raise KeyError(
                f"utterance {self.audio_filepath!r} has no label {key!r}; "
                f"available: speaker, {', '.join(sorted(self.labels)) or '(none)'}"
            )
        return self.labels[key]

    def to_json(self) -> dict[str, Any]:
        row = {
            "audio_filepath": self.audio_filepath,
            "text": self.text,
            "speaker": self.speaker,
            "duration": round(float(self.duration), 4),
        }
        row.update(self.labels)
        return row


def read_manifest(path: str | Path, resolve_paths: bool = True) -> list[Utterance]:
    """Read a JSONL manifest; relative audio paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; create it or fix the path")
    rows: list[Utterance] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
            missing = [key for key in REQUIRED_KEYS if key not in data]
            if missing:
                raise ManifestError(
                    f"{path}:{line_no}: missing key(s) {missing}; every row needs {list(REQUIRED_KEYS)}"
                )
            audio = str(data.pop("audio_filepath"))
            if resolve_paths and not Path(audio).is_absolute():
                audio = str((path.parent / audio).resolve())
            try:
                duration = float(data.pop("duration"))
            except (TypeError, ValueError) as err:
                raise ManifestError(f"{path}:{line_no}: duration must be a number") from err
            rows.append(
                Utterance(
                    audio_filepath=audio,
                    text=str(data.pop("text")),
                    speaker=str(data.pop("speaker")),
                    duration=duration,
                    labels=data,
                )
            )
    return rows


def write_manifest(rows: Iterable[Utterance], path: str | Path, relative_to: str | Path | None = None) -> Path:
    """Write rows as JSONL (sorted keys, so equal rows give byte-identical files).

    With ``relative_to``, audio paths under that folder are written relative to it.
    The file is written to a temporary name and renamed, so a reader never sees half a manifest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(relative_to).resolve() if relative_to is not None else None
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            data = row.to_json()
            if base is not None:
                audio = Path(data["audio_filepath"])
                if audio.is_absolute() and audio.resolve().is_relative_to(base):
                    data["audio_filepath"] = str(audio.resolve().relative_to(base))
            handle.write(json.dumps(data, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
