"""Synthesize a Kokoro corpus, resumably: the eSpeak corpus's layout and manifest, with Kokoro speakers.

Layout of ``root/<preset>-seed<seed>/`` (as in :mod:`.generate`)::

    manifest.jsonl            one row per utterance (relative audio paths)
    wav/<speaker>/<utt>.wav   16 kHz mono PCM_16
    corpus.partial.json       while synthesis runs: the request its WAVs belong to
    corpus.json               stamp, written last: preset, seed, engine, generator version, model hash

Why it is built this way:

- *Resumable*: ``kokoro-small`` takes half an hour, so a kill must not lose
  finished work. Each WAV is written under a temporary name and renamed, so a
  WAV that exists is complete; ``corpus.partial.json`` says which request the
  WAVs belong to. A run that finds the same request there renders only the
  missing utterances; any other request starts from scratch.
- *Deterministic*: text, voice blend and channel of an utterance are seeded from
  (seed, speaker index, utterance index), and the model's output depends only on
  its inputs, so a resumed or parallel run writes the same bytes as one run.
- *Parallel over utterances with processes*, one onnxruntime thread each: on a
  loaded machine, independent processes use the cores better than threads
  inside one session.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from metaspeech.datamodules.embedded.channel import TARGET_SAMPLE_RATE, apply_channel
from metaspeech.datamodules.embedded.generate import (
    MANIFEST_NAME,
    NOISE_STREAM,
    ROOM_STREAM,
    STAMP_NAME,
    TEXT_STREAM,
    KokoroPreset,
    corpus_stamp,
    is_cached,
    read_json,
    write_json,
)
from metaspeech.datamodules.embedded.kokoro import SAMPLE_RATE, KokoroSynthesizer, check_installed
from metaspeech.datamodules.embedded.kokoro_assets import MODEL_SHA256, fetch_voices
from metaspeech.datamodules.embedded.kokoro_speakers import KokoroSpeakerSpec, make_kokoro_speakers
from metaspeech.datamodules.embedded.sentences import make_sentence
from metaspeech.datamodules.manifest import Utterance, write_manifest
from metaspeech.training.progress import progress

GENERATOR_VERSION = 1
"""Bump when Kokoro generation changes its output, so cached corpora are regenerated."""

PARTIAL_NAME = "corpus.partial.json"
# Below this many utterances, starting worker processes (each loads the model) costs more than it saves.
_MIN_UTTERANCES_FOR_WORKERS = 100
# The synthesizer of a worker process, made once by its initializer.
_WORKER_SYNTHESIZER: KokoroSynthesizer | None = None


@dataclass(frozen=True)
class UtteranceJob:
    """One utterance to render (picklable for process pools)."""

    speaker: KokoroSpeakerSpec
    index: int
    utt: int
    preset: KokoroPreset
    seed: int
    directory: Path

    @property
    def utt_id(self) -> str:
        return f"{self.speaker.speaker_id}-{self.utt:03d}"

    @property
    def path(self) -> Path:
        return self.directory / "wav" / self.speaker.speaker_id / f"{self.utt_id}.wav"

    def text(self) -> str:
        rng = np.random.default_rng([self.seed, self.index, self.utt, TEXT_STREAM])
        return make_sentence(rng, self.preset.min_words, self.preset.max_words)


def kokoro_stamp(preset: KokoroPreset, seed: int) -> dict:
    """The request a Kokoro corpus is made for: the eSpeak stamp's fields plus engine, generator version and model."""
    return corpus_stamp(preset, seed, GENERATOR_VERSION, engine="kokoro", model_sha256=MODEL_SHA256)


def render_utterance(job: UtteranceJob, synthesizer: KokoroSynthesizer) -> None:
    """Synthesize, pass through the speaker's channel, and write the WAV atomically."""
    spec = job.speaker
    samples = synthesizer.synthesize(job.text(), spec.accent, spec.voices, spec.weights, spec.speed)
    audio = apply_channel(
        samples, SAMPLE_RATE, spec.channel,
        room_seed=[job.seed, job.index, ROOM_STREAM], noise_seed=[job.seed, job.index, job.utt, NOISE_STREAM],
    )  # fmt: skip
    job.path.parent.mkdir(parents=True, exist_ok=True)
    partial = job.path.with_name(job.path.name + ".partial")
    sf.write(partial, audio, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    partial.replace(job.path)


def _init_worker(num_threads: int) -> None:
    import torch

    global _WORKER_SYNTHESIZER
    torch.set_num_threads(1)
    _WORKER_SYNTHESIZER = KokoroSynthesizer(num_threads)


def _render_in_worker(job: UtteranceJob) -> None:
    assert _WORKER_SYNTHESIZER is not None, "worker started without its initializer"
    render_utterance(job, _WORKER_SYNTHESIZER)


def _render_pending(jobs: Sequence[UtteranceJob], num_workers: int, num_threads: int, description: str) -> None:
    """Render ``jobs`` in this process or in ``num_workers`` processes; shows utterances done and time left."""
    if num_workers <= 1:
        synthesizer = KokoroSynthesizer(num_threads)
        with progress(description, total=len(jobs)) as advance:
            for job in jobs:
                render_utterance(job, synthesizer)
                advance(1)
        return
    check_installed()  # fail here, with the message, rather than in every worker
    # "spawn": workers start clean (no inherited eSpeak, torch or onnxruntime thread state).
    context = multiprocessing.get_context("spawn")
    with progress(description, total=len(jobs)) as advance:
        with context.Pool(num_workers, initializer=_init_worker, initargs=(num_threads,)) as pool:
            for _ in pool.imap_unordered(_render_in_worker, jobs, chunksize=1):
                advance(1)


def _prepare(directory: Path, expected: dict) -> None:
    """Keep the WAVs of an interrupted (or complete but damaged) corpus of this very request; remove everything else."""
    if expected not in (read_json(directory / PARTIAL_NAME), read_json(directory / STAMP_NAME)):
        shutil.rmtree(directory / "wav", ignore_errors=True)
        (directory / STAMP_NAME).unlink(missing_ok=True)
        (directory / MANIFEST_NAME).unlink(missing_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / PARTIAL_NAME, expected)
    for leftover in (directory / "wav").rglob("*.partial"):
        leftover.unlink()


def _row(job: UtteranceJob) -> Utterance:
    duration = sf.info(job.path).frames / TARGET_SAMPLE_RATE
    return Utterance(str(job.path), job.text(), job.speaker.speaker_id, duration, {"id": job.utt_id, **job.speaker.labels()})


def _workers_and_threads(preset: KokoroPreset, num_workers: int | None, num_threads: int | None) -> tuple[int, int]:
    cpus = os.cpu_count() or 1
    if num_workers is None:
        num_workers = 1 if preset.num_utterances < _MIN_UTTERANCES_FOR_WORKERS else cpus
    num_workers = max(1, num_workers)
    return num_workers, max(1, num_threads or cpus // num_workers)


def generate_kokoro_corpus(
    directory: Path, preset: KokoroPreset, seed: int, num_workers: int | None = None, num_threads: int | None = None
) -> Path:
    """Generate, resume or reuse the Kokoro corpus in ``directory``; its manifest path (see ``generate_corpus``)."""
    manifest = directory / MANIFEST_NAME
    expected = kokoro_stamp(preset, seed)
    if is_cached(directory, expected):
        return manifest
    _prepare(directory, expected)
    speakers = make_kokoro_speakers(
        preset.num_speakers, seed, preset.held_out_accents, preset.held_out_voices,
        num_val=preset.num_val, num_test=preset.num_test,
    )  # fmt: skip
    jobs = [
        UtteranceJob(spec, index, utt, preset, seed, directory)
        for index, spec in enumerate(speakers)
        for utt in range(preset.utterances_per_speaker)
    ]
    pending = [job for job in jobs if not job.path.is_file()]
    if pending:
        fetch_voices()  # once, here, not in every worker
        workers, threads = _workers_and_threads(preset, num_workers, num_threads)
        done = len(jobs) - len(pending)
        resumed = f", resuming after {done} of {len(jobs)}" if done else ""
        _render_pending(pending, min(workers, len(pending)), threads, f"Synthesizing the {preset.name} corpus (utterances{resumed})")
    write_manifest([_row(job) for job in jobs], manifest, relative_to=directory)
    write_json(directory / STAMP_NAME, expected)
    (directory / PARTIAL_NAME).unlink(missing_ok=True)
    return manifest
