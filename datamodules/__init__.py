"""Corpora and episodic sampling, installed as ``metaspeech.datamodules``.

Exports are resolved lazily so that light modules (the corpus generator, the
loaders) import without pulling in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EpisodicDataModule": "metaspeech.datamodules.episodic",
    "EmbeddedCorpus": "metaspeech.datamodules.corpus_modules",
    "ManifestCorpus": "metaspeech.datamodules.corpus_modules",
    "LibriSpeechCorpus": "metaspeech.datamodules.corpus_modules",
    "VCTKCorpus": "metaspeech.datamodules.corpus_modules",
    "CommonVoiceCorpus": "metaspeech.datamodules.corpus_modules",
    "TIMITCorpus": "metaspeech.datamodules.corpus_modules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaspeech.datamodules' has no attribute {name!r}")
