"""Kokoro-82M speech synthesis on CPU with onnxruntime: text + accent + voice blend -> 24 kHz audio.

Why Kokoro: eSpeak NG's formant speech sounds robotic (a recognizer trained on
human speech gets most of its words wrong), while Kokoro-82M is a small neural
TTS whose speech is close to human and runs at about real time on one core.

Why blends: Kokoro has 28 English voices. A weighted average of two or three
voice tables is a new, intelligible voice between them, so a corpus can have as
many distinct speakers as it needs, and held-out speakers can be blends of voices
that never occur in training.

The model runs one utterance per call (batch 1 is fixed in the export). Its
output depends only on the inputs; onnxruntime's CPU kernels give the same bytes
for every thread count on one machine, but may differ on CPUs with another
instruction set.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from metaspeech.datamodules.embedded.espeak import phonemize
from metaspeech.datamodules.embedded.kokoro_assets import INSTALL_HINT, KokoroAssetError, load_model_bytes, load_voice
from metaspeech.datamodules.embedded.kokoro_phonemes import MAX_PHONEMES, to_kokoro, tokenize
from metaspeech.errors import DataError

SAMPLE_RATE = 24000
"""What Kokoro renders at."""


def _onnxruntime():
    """The onnxruntime module, or the error saying which extra to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise KokoroAssetError(f"the Kokoro engine needs onnxruntime ({err}); {INSTALL_HINT}") from err
    return onnxruntime


def check_installed() -> None:
    """Raise ``KokoroAssetError`` unless onnxruntime and the (intact) model are installed; before starting workers."""
    _onnxruntime()
    load_model_bytes()


def blend_voices(tables: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted average of voice tables (weights are normalized to sum to 1; each must be positive)."""
    if len(tables) != len(weights) or not tables:
        raise ValueError(f"a blend needs one weight per voice, got {len(tables)} voices and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0):
        raise ValueError(f"blend weights must be positive, got {list(weights)}")
    w = w / w.sum()
    mix = np.zeros_like(tables[0], dtype=np.float64)
    for table, weight in zip(tables, w):
        mix += weight * table
    return mix.astype(np.float32)


class KokoroSynthesizer:
    """One onnxruntime session of Kokoro-82M plus the voice tables it has loaded (load once, speak many times).

    Args:
        num_threads: onnxruntime intra-op threads (``None``: every CPU). Worker
            processes each use one thread, tests use one so they share the CPU.
    """

    def __init__(self, num_threads: int | None = None) -> None:
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, num_threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            load_model_bytes(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tables: dict[str, np.ndarray] = {}

    def voice(self, voices: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        """The blended voice table of ``voices`` (names in ``VOICE_SHA256``) with ``weights``."""
        for name in voices:
            if name not in self._tables:
                self._tables[name] = load_voice(name)
        return blend_voices([self._tables[name] for name in voices], weights)

    def tokens(self, text: str, accent: str) -> list[int]:
        """Kokoro token ids of ``text`` as eSpeak NG's ``accent`` pronounces it."""
        tokens = tokenize(to_kokoro(phonemize(text, accent)))
        if not tokens:
            raise DataError(f"eSpeak NG ({accent}) gave no phonemes Kokoro knows for {text!r}; use English words")
        if len(tokens) > MAX_PHONEMES:
            raise DataError(f"{text[:40]!r}... has {len(tokens)} phonemes, over Kokoro's {MAX_PHONEMES}; split it")
        return tokens

    def synthesize(
        self, text: str, accent: str, voices: Sequence[str], weights: Sequence[float], speed: float = 1.0
    ) -> np.ndarray:
        """Speak ``text``; float32 mono samples at ``SAMPLE_RATE``. The same arguments give the same samples."""
        tokens = self.tokens(text, accent)
        style = self.voice(voices, weights)[len(tokens) - 1]  # the style row for this many phonemes
        feed = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style.reshape(1, -1),
            "speed": np.array([speed], dtype=np.float32),
        }
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32).ravel()
