"""Kokoro speakers: a seeded blend of 2-3 base voices, an eSpeak accent, a speaking rate and a channel each.

Why the split logic: as for eSpeak (:mod:`.speakers`), meta-learning is judged on
speakers never seen in meta-training. Here "never seen" holds for the voice too:
val/test speakers are blends of base voices (``held_out_voices``) that no
training speaker uses, and half of them (rounded up) also speak a held-out
accent. A blend mixes voices of one gender, so the gender label stays true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from metaspeech.datamodules.embedded.channel import NOISE_COLORS, ChannelParams
from metaspeech.datamodules.embedded.kokoro_assets import VOICE_SHA256
from metaspeech.datamodules.embedded.speakers import (
    ACCENTS,
    HELD_OUT_ACCENTS,
    RT60_RANGE,
    SNR_RANGE,
    SPLITS,
    TILT_RANGE,
    cycle_evenly,
    split_accents,
    split_sizes,
)

VOICES = tuple(VOICE_SHA256)
"""Kokoro's English base voices."""
GENDERS = ("female", "male")
HELD_OUT_VOICES = ("af_kore", "af_nova", "bf_isabella", "am_eric", "am_puck", "bm_george")
"""Base voices that by default only val/test speakers use (three per gender, American and British)."""
SPEED_RANGE = (0.85, 1.15)
MIN_WEIGHT = 0.15
"""The smallest share of a base voice in a blend, so every named voice is audible in it."""


def voice_gender(name: str) -> str:
    """Kokoro names voices ``<accent><f|m>_<name>``: ``af_heart`` is female, ``bm_lewis`` male."""
    return "female" if name[1] == "f" else "male"


@dataclass(frozen=True)
class KokoroSpeakerSpec:
    """Everything that defines one Kokoro speaker; all of its utterances share it."""

    speaker_id: str
    accent: str
    voices: tuple[str, ...]
    weights: tuple[float, ...]
    gender: str
    speed: float
    tilt_db: float
    rt60: float
    snr_db: float
    noise: str
    split: str

    @property
    def voice(self) -> str:
        """The blend as one readable label, e.g. ``"af_heart:0.62+af_sky:0.38"``."""
        return "+".join(f"{name}:{weight:g}" for name, weight in zip(self.voices, self.weights))

    @property
    def channel(self) -> ChannelParams:
        return ChannelParams(tilt_db=self.tilt_db, rt60=self.rt60, snr_db=self.snr_db, noise=self.noise)

    def labels(self) -> dict[str, Any]:
        """The per-speaker manifest labels (``speaker_id`` is the row's ``speaker`` instead)."""
        return {
            "accent": self.accent, "voice": self.voice, "voices": list(self.voices), "weights": list(self.weights),
            "gender": self.gender, "speed": self.speed, "tilt_db": self.tilt_db, "rt60": self.rt60,
            "snr_db": self.snr_db, "noise": self.noise, "split": self.split,
        }  # fmt: skip


def draw_weights(count: int, rng: np.random.Generator) -> tuple[float, ...]:
    """``count`` weights >= ``MIN_WEIGHT`` summing to 1, in 3 decimals (the label is then exactly what is used)."""
    shares = MIN_WEIGHT + (1.0 - MIN_WEIGHT * count) * rng.dirichlet(np.ones(count))
    weights = [round(float(w), 3) for w in sorted(shares, reverse=True)]
    weights[0] = round(1.0 - sum(weights[1:]), 3)
    return tuple(weights)


def _draw_speaker(
    speaker_id: str, accent: str, gender: str, split: str, pool: Sequence[str], rng: np.random.Generator
) -> KokoroSpeakerSpec:
    candidates = [name for name in pool if voice_gender(name) == gender]
    count = min(int(rng.integers(2, 4)), len(candidates))
    voices = tuple(str(candidates[i]) for i in rng.choice(len(candidates), size=count, replace=False))
    return KokoroSpeakerSpec(
        speaker_id=speaker_id,
        accent=accent,
        voices=voices,
        weights=draw_weights(count, rng),
        gender=gender,
        speed=round(float(rng.uniform(*SPEED_RANGE)), 2),
        tilt_db=round(float(rng.uniform(*TILT_RANGE)), 2),
        rt60=round(float(rng.uniform(*RT60_RANGE)), 3),
        snr_db=round(float(rng.uniform(*SNR_RANGE)), 1),
        noise=str(NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]),
        split=split,
    )


def _check_pools(train_pool: Sequence[str], held_out_voices: Sequence[str]) -> None:
    unknown = sorted(set(held_out_voices) - set(VOICES))
    if unknown:
        raise ValueError(f"held-out voices {unknown} are not Kokoro English voices {list(VOICES)}")
    for gender in GENDERS:
        for name, pool in (("training", train_pool), ("held-out", held_out_voices)):
            if sum(voice_gender(v) == gender for v in pool) < 2:
                raise ValueError(f"the {name} voices need at least two {gender} voices to blend, got {list(pool)}")


def make_kokoro_speakers(
    num_speakers: int,
    seed: int = 0,
    held_out_accents: Sequence[str] = HELD_OUT_ACCENTS,
    held_out_voices: Sequence[str] = HELD_OUT_VOICES,
    num_val: int | None = None,
    num_test: int | None = None,
) -> list[KokoroSpeakerSpec]:
    """``num_speakers`` speakers ordered train, val, test (ids ``spk000``, ...), identical for identical arguments.

    Training speakers blend only voices outside ``held_out_voices`` and speak only
    accents outside ``held_out_accents``; val/test speakers blend only held-out
    voices, and half of them (rounded up) speak a held-out accent.
    """
    unknown = sorted(set(held_out_accents) - set(ACCENTS))
    if unknown:
        raise ValueError(f"held-out accents {unknown} are not among the accents {list(ACCENTS)}")
    seen_accents = [a for a in ACCENTS if a not in set(held_out_accents)]
    train_pool = [v for v in VOICES if v not in set(held_out_voices)]
    _check_pools(train_pool, held_out_voices)
    layout_rng = np.random.default_rng([seed, 10])
    width = max(3, len(str(num_speakers - 1)))
    speakers: list[KokoroSpeakerSpec] = []
    for split, count in zip(SPLITS, split_sizes(num_speakers, num_val, num_test)):
        accents = split_accents(split, count, seen_accents, list(held_out_accents), layout_rng)
        genders = cycle_evenly(GENDERS, count, layout_rng)
        pool = train_pool if split == "train" else list(held_out_voices)
        for accent, gender in zip(accents, genders):
            index = len(speakers)
            rng = np.random.default_rng([seed, 11, index])
            speakers.append(_draw_speaker(f"spk{index:0{width}d}", accent, gender, split, pool, rng))
    return speakers
