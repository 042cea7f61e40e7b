"""What the Lightning glue takes from a data module, as typed protocols.

Why protocols: the core never imports a corpus (the data modules import the core), yet the
LightningModule needs the tokenizer and feature settings the data was encoded with, and the
test report needs the speakers' groups, the adaptation pool size and the audio files. A data
module offers them by having these members; ``EpisodicDataModule`` (and so every metaspeech
corpus) has all of them. Any other ``LightningDataModule`` works too, without these features.

Where each is read: :class:`SpeechFrontEnd` once, by ``MetaSpeechModule.setup``
(:meth:`~metaspeech.training.module.MetaSpeechModule.use_front_end`); :class:`HeldOutSpeakers` by the
test report (:class:`~metaspeech.training.reporting.AdaptationReportWriter`). The sizes a recognizer is
built with (``vocab_size``, ``input_dim``) are constructor arguments instead: the CLI links
them from ``data.vocab_size`` / ``data.feature_dim`` (:mod:`metaspeech.cli.lightning_cli`), since a
recognizer's weights exist before any Trainer does.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from metaspeech.speech.features import FeatureConfig
from metaspeech.speech.tokenizer import Tokenizer


@runtime_checkable
class SpeechFrontEnd(Protocol):
    """The text and feature side of a corpus: the tokenizer of its transcripts and the features it computes."""

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def feature_config(self) -> FeatureConfig: ...


@runtime_checkable
class HeldOutSpeakers(Protocol):
    """The evaluation side of a corpus, for the test report."""

    @property
    def eval_pool_size(self) -> int:
        """Adaptation utterances per held-out task: the most shots the protocol can use."""
        ...

    def task_groups(self, split: str = "test") -> dict[str, str]:
        """``task -> group`` (e.g. "unseen accent") of the evaluation tasks of ``split``."""
        ...

    def audio_path(self, utterance_id: str) -> str | None:
        """The audio file of an utterance id, or None if unknown."""
        ...
