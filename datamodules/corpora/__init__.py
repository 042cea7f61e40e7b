"""Loaders for real corpora: each reads the corpus's own on-disk layout into manifest rows.

Every loader returns ``list[Utterance]`` with absolute audio paths, durations
from the audio headers, and labels (``id`` plus whatever the corpus provides:
accent, gender, chapter, dialect, ...). Transcripts are kept exactly as in the
corpus; text normalization happens later, in one place.

A wrong root raises :class:`CorpusLayoutError` naming the path and the layout
expected. Missing or unreadable audio files are kept with ``duration=0`` and
counted in a warning; :func:`metaspeech.datamodules.validation.validate_utterances`
then skips or rejects them under the one bad-input policy.
"""

from __future__ import annotations

from metaspeech.datamodules.corpora._common import CorpusLayoutError
from metaspeech.datamodules.corpora.common_voice import load_common_voice
from metaspeech.datamodules.corpora.jsonl import load_jsonl_manifest
from metaspeech.datamodules.corpora.librispeech import load_librispeech
from metaspeech.datamodules.corpora.timit import load_timit
from metaspeech.datamodules.corpora.vctk import load_vctk

__all__ = [
    "CorpusLayoutError",
    "load_common_voice",
    "load_jsonl_manifest",
    "load_librispeech",
    "load_timit",
    "load_vctk",
]
