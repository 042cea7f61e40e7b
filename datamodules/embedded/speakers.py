"""Synthetic speakers: a fixed accent voice, variant, pitch, rate and channel each.

Why the split logic lives here: meta-learning for speaker adaptation is judged
on speakers never seen in meta-training, and the harder case is an *accent*
never seen either. So some accents (``held_out_accents``) occur only among the
meta-val / meta-test speakers, while those splits also hold speakers of seen
accents, letting an evaluation compare the two.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from metaspeech.datamodules.embedded.channel import NOISE_COLORS, ChannelParams
from metaspeech.datamodules.embedded.espeak import VoiceSettings, voice_string

ACCENTS = (
    "en-us",
    "en",  # British English
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",  # Lancaster
    "en-gb-x-gbcwmd",  # West Midlands
    "en-029",  # Caribbean
    "en-us-nyc",
)
"""eSpeak NG English accent voices a speaker can have."""

VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "croak",
)  # fmt: skip
"""eSpeak NG voice variants (formants, pitch range, synthesizer) a speaker can have."""

HELD_OUT_ACCENTS = ("en-029", "en-gb-scotland")
"""Accents that by default never occur among the training speakers."""

SPLITS = ("train", "val", "test")
PITCH_RANGE = (25, 75)
RATE_RANGE = (140, 190)
TILT_RANGE = (-3.0, 3.0)
RT60_RANGE = (0.1, 0.4)
SNR_RANGE = (15.0, 35.0)


@dataclass(frozen=True)
class SpeakerSpec:
    """Everything that defines one synthetic speaker; all of its utterances share it."""

    speaker_id: str
    accent: str
    variant: str
    pitch: int
    rate: int
    tilt_db: float
    rt60: float
    snr_db: float
    noise: str
    split: str

    @property
    def voice(self) -> str:
        """The full eSpeak voice string, e.g. ``"en-gb-scotland+f2"``."""
        return voice_string(self.accent, self.variant)

    @property
    def voice_settings(self) -> VoiceSettings:
        return VoiceSettings(voice=self.voice, pitch=self.pitch, rate=self.rate)

    @property
    def channel(self) -> ChannelParams:
        return ChannelParams(tilt_db=self.tilt_db, rt60=self.rt60, snr_db=self.snr_db, noise=self.noise)

    def labels(self) -> dict[str, Any]:
        """The per-speaker manifest labels (``speaker_id`` is the row's ``speaker`` instead)."""
        row = asdict(self)
        del row["speaker_id"]
        row["voice"] = self.voice
        return row


def split_sizes(num_speakers: int, num_val: int | None, num_test: int | None) -> tuple[int, int, int]:
    """(train, val, test) speaker counts; ``None`` means 10% (at least one)."""
    default = max(1, round(0.1 * num_speakers))
    num_val = default if num_val is None else num_val
    num_test = default if num_test is None else num_test
    num_train = num_speakers - num_val - num_test
    if num_train < 1 or num_val < 0 or num_test < 0:
        raise ValueError(
            f"cannot split {num_speakers} speakers into {num_val} val and {num_test} test "
            "and still keep at least one training speaker"
        )
    return num_train, num_val, num_test


def cycle_evenly(options: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` values (accents, genders) covering ``options`` as evenly as possible, in a seeded order."""
    if count == 0:
        return []
    order = [options[i] for i in rng.permutation(len(options))]
    return [order[i % len(order)] for i in range(count)]


def split_accents(
    split: str, count: int, seen: Sequence[str], held_out: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """Train gets seen accents only; val/test get held-out accents for half (rounded up) of their speakers."""
    if split == "train" or not held_out:
        return cycle_evenly(seen, count, rng)
    num_held = math.ceil(count / 2)
    accents = cycle_evenly(held_out, num_held, rng) + cycle_evenly(seen, count - num_held, rng)
    return [accents[i] for i in rng.permutation(count)]


def _draw_speaker(speaker_id: str, accent: str, split: str, rng: np.random.Generator) -> SpeakerSpec:
    """Voice and channel parameters, rounded so the manifest labels are exactly what was used."""
    return SpeakerSpec(
        speaker_id=speaker_id,
        accent=accent,
        variant=str(VARIANTS[int(rng.integers(len(VARIANTS)))]),
        pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
        tilt_db=round(float(rng.uniform(*TILT_RANGE)), 2),
        rt60=round(float(rng.uniform(*RT60_RANGE)), 3),
        snr_db=round(float(rng.uniform(*SNR_RANGE)), 1),
        noise=str(NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]),
        split=split,
    )


def make_speakers(
    num_speakers: int,
    seed: int = 0,
    held_out_accents: Sequence[str] = HELD_OUT_ACCENTS,
    num_val: int | None = None,
    num_test: int | None = None,
    accents: Sequence[str] = ACCENTS,
) -> list[SpeakerSpec]:
    """``num_speakers`` speakers, identical for identical arguments.

    Speakers are ordered train, val, test (ids ``spk000``, ``spk001``, ...);
    ``num_val``/``num_test`` default to 10% each. Accents in ``held_out_accents``
    appear only in val and test, which also contain seen accents when they have
    more than one speaker.
    """
    unknown = sorted(set(held_out_accents) - set(accents))
    if unknown:
        raise ValueError(f"held-out accents {unknown} are not among the accents {list(accents)}")
    seen = [a for a in accents if a not in set(held_out_accents)]
    if not seen:
        raise ValueError("every accent is held out; training speakers need at least one seen accent")
    sizes = split_sizes(num_speakers, num_val, num_test)
    layout_rng = np.random.default_rng([seed, 0])
    width = max(3, len(str(num_speakers - 1)))
    speakers: list[SpeakerSpec] = []
    for split, count in zip(SPLITS, sizes):
        for accent in split_accents(split, count, seen, list(held_out_accents), layout_rng):
            index = len(speakers)
            rng = np.random.default_rng([seed, 1, index])
            speakers.append(_draw_speaker(f"spk{index:0{width}d}", accent, split, rng))
    return speakers
