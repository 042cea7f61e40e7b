"""The embedded corpus: multi-speaker, multi-accent English synthesized with eSpeak NG or Kokoro-82M.

``generate_corpus(root, preset, seed)`` writes 16 kHz WAVs and a manifest and
returns the manifest path; see :mod:`.generate` for the layout and guarantees,
and :mod:`.kokoro_corpus` for the Kokoro engine (presets ``kokoro-tiny``,
``kokoro-small``: neural voices, blended into new speakers; resumable).

The command line is ``metaspeech generate --preset small --root data/embedded``
or ``metaspeech generate --engine kokoro --preset kokoro-tiny``.
The generator is imported lazily: ``import metaspeech.datamodules`` stays light.
"""

from __future__ import annotations

from typing import Any

from metaspeech.datamodules.embedded.speakers import SpeakerSpec, make_speakers

__all__ = ["PRESETS", "CorpusPreset", "KokoroPreset", "SpeakerSpec", "corpus_dir", "generate_corpus", "make_speakers"]
_FROM_GENERATE = ("PRESETS", "CorpusPreset", "KokoroPreset", "corpus_dir", "generate_corpus")


def __getattr__(name: str) -> Any:
    if name in _FROM_GENERATE:
        from metaspeech.datamodules.embedded import generate

        return getattr(generate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
