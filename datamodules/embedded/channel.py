"""A deterministic recording channel per speaker: EQ tilt, a small room, and noise.

Why: eSpeak voices differ mostly in pitch, formants and accent; real speakers
also differ in microphone, room and background noise. Giving every synthetic
speaker its own fixed channel makes "adapt to this speaker" include "adapt to
this recording condition", as with real corpora.

All functions take and return float32 mono numpy arrays. Randomness comes only
from the seeds passed in: the room (impulse response) is seeded per speaker, the
noise per utterance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchaudio

TARGET_SAMPLE_RATE = 16000
NOISE_COLORS = ("white", "pink")
Seed = int | Sequence[int]


@dataclass(frozen=True)
class ChannelParams:
    """One speaker's channel.

    ``tilt_db`` is the spectral tilt in dB per octave around 1 kHz (negative =
    duller), ``rt60`` the reverberation time in seconds, ``snr_db`` the
    speech-to-noise ratio and ``noise`` its colour ("white" or "pink").
    """

    tilt_db: float
    rt60: float
    snr_db: float
    noise: str = "white"


def _fft_size(n: int) -> int:
    """Next power of two: numpy's FFT is many times slower on lengths with large prime factors."""
    return 1 << max(n - 1, 1).bit_length()


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    """Cached so the sinc kernel is built once per process and rate pair."""
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample(samples: np.ndarray, orig_sr: int, new_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with torchaudio (eSpeak renders at 22.05 kHz, the corpus is 16 kHz)."""
    if orig_sr == new_sr:
        return samples.astype(np.float32, copy=False)
    with torch.no_grad():
        out = _resampler(orig_sr, new_sr)(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)))
    return out.numpy()


def apply_tilt(samples: np.ndarray, sample_rate: int, tilt_db: float) -> np.ndarray:
    """Tilt the spectrum by ``tilt_db`` dB per octave, pivoting at 1 kHz (flat below 100 Hz).

    An FFT-domain gain is exact and phase-free, so it only colours the sound.
    """
    if tilt_db == 0 or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    size = _fft_size(2 * samples.size)  # the padding absorbs the zero-phase filter's wrap-around
    freqs = np.fft.rfftfreq(size, d=1.0 / sample_rate)
    octaves = np.log2(np.maximum(freqs, 100.0) / 1000.0)
    gain = 10.0 ** (tilt_db * octaves / 20.0)
    return np.fft.irfft(np.fft.rfft(samples, size) * gain, size)[: samples.size].astype(np.float32)


def room_impulse_response(rt60: float, sample_rate: int, seed: Seed, direct_to_reverb_db: float = 6.0) -> np.ndarray:
    """A synthetic room: a direct path plus exponentially decaying noise.

    The tail decays by 60 dB over ``rt60`` seconds and starts after a 3 ms
    pre-delay; its energy is ``direct_to_reverb_db`` below the direct path, which
    keeps the speech intelligible while clearly changing its colour.
    """
    rng = np.random.default_rng(seed)
    length = max(int(rt60 * sample_rate), 1)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.908 * t / rt60)
    tail[: int(0.003 * sample_rate)] = 0.0
    tail *= np.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(samples: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Convolve with the room (FFT convolution); the output keeps the reverberant tail."""
    n = samples.size + impulse_response.size - 1
    size = _fft_size(n)
    out = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(impulse_response, size), size)[:n]
    return out.astype(np.float32)


def colored_noise(num_samples: int, color: str, seed: Seed) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise colour {color!r} unknown; use one of {NOISE_COLORS}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(num_samples)
    if color == "pink" and num_samples > 1:
        size = _fft_size(num_samples)
        spectrum = np.fft.rfft(noise, size)
        scale = np.ones(spectrum.size)
        scale[1:] = 1.0 / np.sqrt(np.arange(1, spectrum.size))
        noise = np.fft.irfft(spectrum * scale, size)[:num_samples]
    noise /= max(float(np.sqrt(np.mean(noise**2))), 1e-12)
    return noise.astype(np.float32)


def add_noise(samples: np.ndarray, snr_db: float, color: str, seed: Seed) -> np.ndarray:
    """Add noise at ``snr_db`` below the speech power (measured over the whole signal)."""
    power = float(np.mean(samples.astype(np.float64) ** 2)) if samples.size else 0.0
    if power == 0.0:
        return samples.astype(np.float32, copy=False)
    noise = colored_noise(samples.size, color, seed) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (samples + noise).astype(np.float32)


def normalize_peak(samples: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale to a fixed peak so 16-bit PCM never clips (level is not a speaker cue here)."""
    top = float(np.max(np.abs(samples))) if samples.size else 0.0
    if top == 0.0:
        return samples.astype(np.float32, copy=False)
    return (samples * (peak / top)).astype(np.float32)


def apply_channel(
    samples: np.ndarray, sample_rate: int, params: ChannelParams, room_seed: Seed, noise_seed: Seed
) -> np.ndarray:
    """Resample to 16 kHz, then tilt, reverberate, add noise and normalize the peak.

    ``room_seed`` should identify the speaker (one fixed room each) and
    ``noise_seed`` the utterance.
    """
    out = resample(samples, sample_rate, TARGET_SAMPLE_RATE)
    out = apply_tilt(out, TARGET_SAMPLE_RATE, params.tilt_db)
    out = reverberate(out, room_impulse_response(params.rt60, TARGET_SAMPLE_RATE, room_seed))
    out = add_noise(out, params.snr_db, params.noise, noise_seed)
    return normalize_peak(out)
