"""One ``LightningDataModule`` per corpus: each only says where its rows come from.

Select one from YAML, e.g.::

    data:
      class_path: metaspeech.datamodules.LibriSpeechCorpus
      init_args: {root: /data/LibriSpeech, subsets: [train-clean-100]}

Every init argument of :class:`~metaspeech.datamodules.episodic.EpisodicDataModule`
(shots, tasks per batch, features, ...) is accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaspeech.datamodules.corpora import (
    load_common_voice,
    load_jsonl_manifest,
    load_librispeech,
    load_timit,
    load_vctk,
)
from metaspeech.datamodules.embedded import generate_corpus
from metaspeech.datamodules.episodic import EpisodicDataModule
from metaspeech.datamodules.manifest import Utterance, read_manifest
from metaspeech.speech.tokenizer import CharTokenizer

EMBEDDED_ALPHABET = "abcdefghijklmnopqrstuvwxyz' "


class EmbeddedCorpus(EpisodicDataModule):
    """The embedded corpus (eSpeak NG or Kokoro-82M by preset), synthesized on first use (deterministic, cached).

    Args:
        preset: eSpeak's ``tiny`` (tests), ``small`` (the main job), ``full``;
            Kokoro's ``kokoro-tiny``, ``kokoro-small`` (needs the ``kokoro`` extra and npm).
        root: folder for generated corpora (default: ``data/embedded`` for eSpeak,
            the user cache for Kokoro, whose corpora take long to remake).
        corpus_seed: seed of the synthesis (speakers, sentences, channels).
        generation_workers: processes for synthesis (default: all cores).
        generation_threads: onnxruntime threads per process (Kokoro; default: the cores shared among the processes).
    """

    def __init__(
        self,
        preset: str = "small",
        root: str | None = None,
        corpus_seed: int = 0,
        generation_workers: int | None = None,
        generation_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.preset, self.root, self.corpus_seed = preset, root, corpus_seed
        self.generation_workers, self.generation_threads = generation_workers, generation_threads

    def _generate(self) -> Path:
        return generate_corpus(
            self.root, self.preset, seed=self.corpus_seed,
            num_workers=self.generation_workers, num_threads=self.generation_threads,
        )  # fmt: skip

    def prepare_corpus(self) -> None:
        self._generate()

    def load_rows(self) -> list[Utterance]:
        # generate_corpus returns at once when the corpus is cached (normally by prepare_data).
        return read_manifest(self._generate())

    def build_tokenizer(self) -> CharTokenizer:
        """The synthesized text only uses ``[a-z' ]``: a fixed alphabet, known before any audio exists."""
        return CharTokenizer.from_texts([EMBEDDED_ALPHABET])


class ManifestCorpus(EpisodicDataModule):
    """Any JSONL manifest (``audio_filepath, text, speaker, duration`` + labels).

    Rows with a ``split`` label (train/val/test) keep it; otherwise speakers are
    split by ``val_fraction`` / ``test_fraction``.
    """

    def __init__(self, manifest: str = "manifest.jsonl", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest

    def load_rows(self) -> list[Utterance]:
        return load_jsonl_manifest(self.manifest)


class LibriSpeechCorpus(EpisodicDataModule):
    """LibriSpeech from its own layout (``<subset>/<speaker>/<chapter>/*.flac`` + ``.trans.txt``)."""

    def __init__(self, root: str = "LibriSpeech", subsets: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.subsets = root, subsets

    def load_rows(self) -> list[Utterance]:
        return load_librispeech(Path(self.root), self.subsets)


class VCTKCorpus(EpisodicDataModule):
    """VCTK 0.92 (``wav48_silence_trimmed``) or the older ``wav48`` layout; accents from ``speaker-info.txt``."""

    def __init__(self, root: str = "VCTK-Corpus-0.92", mic: str = "mic1", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.mic = root, mic

    def load_rows(self) -> list[Utterance]:
        return load_vctk(Path(self.root), mic=self.mic)


class CommonVoiceCorpus(EpisodicDataModule):
    """Common Voice (``<split>.tsv`` + ``clips/``); ``task_key: accent`` makes accents the tasks."""

    def __init__(self, root: str = "cv-corpus/en", split: str = "validated", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.split = root, split

    def load_rows(self) -> list[Utterance]:
        return load_common_voice(Path(self.root), split=self.split)


class TIMITCorpus(EpisodicDataModule):
    """TIMIT layout (``TRAIN|TEST/DR*/<speaker>/*.WAV`` + ``.TXT``); dialect regions as accents."""

    def __init__(self, root: str = "TIMIT", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def load_rows(self) -> list[Utterance]:
        return load_timit(Path(self.root))
