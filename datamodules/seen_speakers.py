"""The "seen speakers, new sentences" evaluation group.

Why: the error on held-out speakers mixes two things, the recognizer's generic error
and the speaker mismatch. Only the second is what speaker adaptation can remove. Scoring
some *training* speakers on sentences never used in training measures the first alone,
so every report can say where the error lies.

For ``speakers`` training speakers (chosen by a seeded hash of their names) ``sentences``
utterances are held out; every training row with one of their transcripts is removed
from meta-training (any speaker's), so those sentences are new to the model. Each such
speaker becomes an evaluation task ``"<speaker>@seen"``: its adaptation pool comes from its
remaining training utterances, its evaluation set is the held-out ones.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

from metaspeech.datamodules.manifest import Utterance
from metaspeech.engine.randomness import seed_from_keys
from metaspeech.evaluation.scoring import SEEN_SPEAKERS as SEEN_GROUP
from metaspeech.speech.text import normalize_text

SUFFIX = "@seen"

__all__ = ["SEEN_GROUP", "SUFFIX", "SeenSpeakerTask", "hold_out_seen_sentences"]


@dataclass
class SeenSpeakerTask:
    """One training speaker scored on held-out sentences: ``pool`` (seen in training) and ``held_out`` rows."""

    name: str
    pool: list[Utterance]
    held_out: list[Utterance]


def _order(seed: int, *keys: str) -> int:
    return seed_from_keys(seed, *keys)


def hold_out_seen_sentences(
    train_rows: list[Utterance], speakers: int, sentences: int, pool_size: int, seed: int
) -> tuple[list[Utterance], list[SeenSpeakerTask]]:
    """``(training rows left, tasks)``; see the module docstring. ``speakers=0`` changes nothing."""
    if speakers <= 0:
        return train_rows, []
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for row in train_rows:
        by_speaker[row.speaker].append(row)
    chosen = sorted(by_speaker, key=lambda s: _order(seed, "seen-speaker", s))[:speakers]
    held = {s: sorted(by_speaker[s], key=lambda r: _order(seed, "seen-sentence", r.utterance_id))[:sentences] for s in chosen}
    held_texts = {normalize_text(r.text) for rows in held.values() for r in rows}
    held_ids = {r.utterance_id for rows in held.values() for r in rows}
    kept = [r for r in train_rows if normalize_text(r.text) not in held_texts and r.utterance_id not in held_ids]
    tasks, too_small = [], []
    for speaker in chosen:
        remaining = sorted((r for r in kept if r.speaker == speaker), key=lambda r: _order(seed, "seen-pool", r.utterance_id))
        if len(remaining) < pool_size or not held[speaker]:
            too_small.append(speaker)
            continue
        tasks.append(SeenSpeakerTask(f"{speaker}{SUFFIX}", remaining[:pool_size], held[speaker]))
    if too_small:
        warnings.warn(
            f"seen-speaker evaluation skips {len(too_small)} speaker(s) left with fewer than eval_pool_size={pool_size} "
            f"training utterances: {too_small[:5]}; lower data.init_args.seen_sentences",
            stacklevel=2,
        )
    return kept, tasks
