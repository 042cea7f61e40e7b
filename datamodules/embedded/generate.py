"""Generate the embedded multi-speaker, multi-accent corpus with eSpeak NG (or, by preset, Kokoro-82M).

Layout of ``root/<preset>-seed<seed>/``::

    manifest.jsonl            one row per utterance (relative audio paths)
    wav/<speaker>/<utt>.wav   16 kHz mono PCM_16
    corpus.json               stamp, written last: preset, seed, generator version, counts

Why it is built this way:

- *Deterministic*: every random choice is seeded from (seed, speaker index,
  utterance index), never from global RNG state or from which worker ran what,
  and eSpeak itself is reset per utterance, so a seed reproduces the corpus bit
  for bit.
- *Cached*: an existing stamp that matches the request means the corpus is
  complete, so the call returns at once; without a stamp (an interrupted run)
  the corpus is generated again from scratch.
- *Parallel over speakers with processes*: eSpeak is not thread-safe.

The Kokoro engine's presets (``KokoroPreset``, e.g. ``kokoro-tiny``) write the
same layout and manifest; :mod:`.kokoro_corpus` renders them, resumably.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import soundfile as sf

from metaspeech.datamodules.embedded.cache import user_cache_dir
from metaspeech.datamodules.embedded.channel import TARGET_SAMPLE_RATE, apply_channel
from metaspeech.datamodules.embedded.espeak import synthesize
from metaspeech.datamodules.embedded.kokoro_speakers import HELD_OUT_VOICES
from metaspeech.datamodules.embedded.sentences import make_sentence
from metaspeech.datamodules.embedded.speakers import HELD_OUT_ACCENTS, SpeakerSpec, make_speakers
from metaspeech.datamodules.manifest import Utterance, write_manifest
from metaspeech.errors import ConfigError
from metaspeech.training.progress import progress

GENERATOR_VERSION = 1
"""Bump when generation changes its output, so cached corpora are regenerated."""

MANIFEST_NAME = "manifest.jsonl"
STAMP_NAME = "corpus.json"

# Purpose tags that keep the random streams of one (speaker, utterance) independent.
TEXT_STREAM, VOICE_STREAM, ROOM_STREAM, NOISE_STREAM = 0, 1, 2, 3
# Below this many utterances, starting worker processes costs more than it saves.
_MIN_UTTERANCES_FOR_WORKERS = 400


@dataclass(frozen=True)
class CorpusPreset:
    """The size and shape of a generated corpus."""

    name: str
    num_train: int
    num_val: int
    num_test: int
    utterances_per_speaker: int
    min_words: int = 4
    max_words: int = 9
    held_out_accents: tuple[str, ...] = HELD_OUT_ACCENTS
    held_out_utterances: int | None = None
    """Utterances per val/test speaker (None: ``utterances_per_speaker``). Held-out speakers need more
    than the few-shot pool and the evaluation set: the speaker oracle fine-tunes on a large pool of each."""
    engine: ClassVar[str] = "espeak"

    @property
    def num_speakers(self) -> int:
        return self.num_train + self.num_val + self.num_test

    def utterances_for(self, split: str) -> int:
        """Utterances of one speaker of ``split``."""
        if split == "train" or self.held_out_utterances is None:
            return self.utterances_per_speaker
        return self.held_out_utterances

    @property
    def num_utterances(self) -> int:
        return self.num_train * self.utterances_per_speaker + (self.num_val + self.num_test) * self.utterances_for("test")


@dataclass(frozen=True)
class KokoroPreset(CorpusPreset):
    """A corpus of the Kokoro engine; val/test speakers blend only ``held_out_voices`` (see :mod:`.kokoro_speakers`)."""

    held_out_voices: tuple[str, ...] = HELD_OUT_VOICES
    engine: ClassVar[str] = "kokoro"


PRESETS: dict[str, CorpusPreset] = {
    # Seconds on two cores: for tests, smoke runs and notebooks.
    "tiny": CorpusPreset("tiny", 12, 3, 3, 12, min_words=3, max_words=5),
    # Minutes on two cores: the default training corpus.
    # 200 training speakers with 36 sentences each; 50 per held-out speaker (few-shot pool, oracle pool, evaluation).
    "small": CorpusPreset("small", 200, 20, 20, 36, held_out_utterances=50),
    # For longer experiments.
    "full": CorpusPreset("full", 320, 30, 50, 40),
    # Kokoro-82M, about half a minute on two cores: CI's check of the engine.
    "kokoro-tiny": KokoroPreset("kokoro-tiny", 4, 1, 1, 3, min_words=3, max_words=5),
    # Kokoro-82M, 20-40 minutes on two cores (BENCHMARKS.md, "Corpus realism"): training on human-like speech.
    "kokoro-small": KokoroPreset("kokoro-small", 36, 4, 8, 24),
}
ENGINES = ("espeak", "kokoro")
DEFAULT_PRESETS = {"espeak": "tiny", "kokoro": "kokoro-tiny"}


def resolve_preset(preset: str | CorpusPreset) -> CorpusPreset:
    """A preset by name (see ``PRESETS``) or a ``CorpusPreset`` as given."""
    if isinstance(preset, CorpusPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown corpus preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def preset_for_engine(engine: str | None, preset: str | None) -> CorpusPreset:
    """The preset a command line asks for: ``preset`` (checked against ``engine``), else the engine's default."""
    if engine is not None and engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    resolved = resolve_preset(preset or DEFAULT_PRESETS[engine or "espeak"])
    if engine is not None and resolved.engine != engine:
        names = ", ".join(name for name, p in PRESETS.items() if p.engine == engine)
        raise ConfigError(f"preset {resolved.name!r} belongs to the {resolved.engine} engine; with --engine {engine} use {names}")
    return resolved


def default_root(preset: str | CorpusPreset) -> Path:
    """Where corpora go without a ``root``: ``data/embedded`` for eSpeak (seconds to remake), the user cache for Kokoro."""
    if resolve_preset(preset).engine == "kokoro":
        return user_cache_dir() / "corpora"
    return Path("data/embedded")


def corpus_dir(root: str | Path | None, preset: str | CorpusPreset = "tiny", seed: int = 0) -> Path:
    """Where ``generate_corpus`` puts a corpus: ``root/<preset>-seed<seed>`` (``root=None``: ``default_root``)."""
    base = default_root(preset) if root is None else Path(root)
    return base.resolve() / f"{resolve_preset(preset).name}-seed{seed}"


def corpus_stamp(preset: CorpusPreset, seed: int, generator_version: int = GENERATOR_VERSION, **extra: Any) -> dict[str, Any]:
    """What ``corpus.json`` says about a complete corpus; a cached corpus is reused only if it says exactly this."""
    data = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(preset).items()}
    return {
        "generator_version": generator_version,
        "preset": data,
        "seed": seed,
        "num_speakers": preset.num_speakers,
        "num_utterances": preset.num_utterances,
        "sample_rate": TARGET_SAMPLE_RATE,
        **extra,
    }


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it is missing or unreadable (a stamp cut short by a kill)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader sees the old file or the whole new one."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def is_cached(directory: Path, expected: dict[str, Any]) -> bool:
    """Whether ``directory`` holds a complete corpus made for exactly ``expected``."""
    return (directory / MANIFEST_NAME).is_file() and read_json(directory / STAMP_NAME) == expected


@dataclass(frozen=True)
class _SpeakerJob:
    """What a worker needs to render one speaker (picklable for process pools)."""

    speaker: SpeakerSpec
    index: int
    preset: CorpusPreset
    seed: int
    directory: Path


def _render_utterance(job: _SpeakerJob, utt: int) -> Utterance:
    """Text, voice and channel for utterance ``utt`` of a speaker; writes its WAV."""
    spec, key = job.speaker, (job.seed, job.index, utt)
    text = make_sentence(np.random.default_rng([*key, TEXT_STREAM]), job.preset.min_words, job.preset.max_words)
    voice_seed = int(np.random.default_rng([*key, VOICE_STREAM]).integers(2**31 - 1))
    samples, rate = synthesize(text, spec.voice, spec.pitch, spec.rate, seed=voice_seed)
    if samples.size == 0:
        raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with voice {spec.voice!r}")
    audio = apply_channel(
        samples, rate, spec.channel, room_seed=[job.seed, job.index, ROOM_STREAM], noise_seed=[*key, NOISE_STREAM]
    )
    utt_id = f"{spec.speaker_id}-{utt:03d}"
    path = job.directory / "wav" / spec.speaker_id / f"{utt_id}.wav"
    sf.write(path, audio, TARGET_SAMPLE_RATE, subtype="PCM_16")
    labels = {"id": utt_id, **spec.labels()}
    return Utterance(str(path), text, spec.speaker_id, audio.size / TARGET_SAMPLE_RATE, labels)


def _render_speaker(job: _SpeakerJob) -> list[Utterance]:
    (job.directory / "wav" / job.speaker.speaker_id).mkdir(parents=True, exist_ok=True)
    return [_render_utterance(job, utt) for utt in range(job.preset.utterances_for(job.speaker.split))]


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Resampling on one thread: faster for short clips, and never thread-count dependent."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _render_all(jobs: Sequence[_SpeakerJob], num_workers: int, description: str) -> list[Utterance]:
    """Rows in speaker order, whichever worker rendered which speaker; shows speakers done, total and time left."""
    rows: list[Utterance] = []
    with progress(description, total=len(jobs)) as advance:
        if num_workers <= 1:
            with _single_torch_thread():
                for job in jobs:
                    rows += _render_speaker(job)
                    advance(1)
            return rows
        # "spawn": workers start clean (no inherited eSpeak or torch thread state).
        context = multiprocessing.get_context("spawn")
        with context.Pool(num_workers, initializer=_init_worker) as pool:
            for speaker_rows in pool.imap(_render_speaker, jobs, chunksize=1):
                rows += speaker_rows
                advance(1)
    return rows


def _default_workers(preset: CorpusPreset) -> int:
    if preset.num_utterances < _MIN_UTTERANCES_FOR_WORKERS:
        return 1
    return os.cpu_count() or 1


def generate_corpus(
    root: str | Path | None,
    preset: str | CorpusPreset = "tiny",
    seed: int = 0,
    num_workers: int | None = None,
    num_threads: int | None = None,
) -> Path:
    """Generate (or reuse) the embedded corpus and return its manifest path.

    Args:
        root: folder holding corpora; this one goes to ``root/<preset>-seed<seed>``.
            ``None``: ``default_root(preset)`` (the user cache for Kokoro).
        preset: eSpeak's ``"tiny"`` (seconds), ``"small"`` (minutes), ``"full"``;
            Kokoro's ``"kokoro-tiny"``, ``"kokoro-small"``; or a ``CorpusPreset``.
        seed: the same seed gives a byte-identical manifest and identical audio.
        num_workers: worker processes; ``None`` uses every CPU (and none for
            corpora too small to be worth it), ``0``/``1`` renders in this process.
        num_threads: onnxruntime threads per process (Kokoro only); ``None``
            shares the CPUs among the processes.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    preset = resolve_preset(preset)
    directory = corpus_dir(root, preset, seed)
    if preset.engine == "kokoro":
        from metaspeech.datamodules.embedded.kokoro_corpus import generate_kokoro_corpus

        return generate_kokoro_corpus(directory, preset, seed, num_workers, num_threads)
    manifest = directory / MANIFEST_NAME
    expected = corpus_stamp(preset, seed)
    if is_cached(directory, expected):
        return manifest
    # Stale or partial: start from scratch so no file of an earlier run survives.
    (directory / STAMP_NAME).unlink(missing_ok=True)
    shutil.rmtree(directory / "wav", ignore_errors=True)
    manifest.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)

    speakers = make_speakers(
        preset.num_speakers, seed, preset.held_out_accents, num_val=preset.num_val, num_test=preset.num_test
    )
    jobs = [_SpeakerJob(spec, index, preset, seed, directory) for index, spec in enumerate(speakers)]
    workers = _default_workers(preset) if num_workers is None else num_workers
    rows = _render_all(jobs, min(workers, len(jobs)), f"Synthesizing the {preset.name} corpus (speakers)")
    write_manifest(rows, manifest, relative_to=directory)
    write_json(directory / STAMP_NAME, expected)
    return manifest
