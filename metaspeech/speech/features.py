"""Acoustic features: log-mel filterbanks or MFCCs (torchaudio), normalization, SpecAugment, a disk cache.

- :class:`FeatureConfig` holds every setting that changes the features; it is
  part of the cache key and is saved with each checkpoint.
- :class:`FeatureExtractor` is stateless like torchaudio's transforms:
  ``FeatureExtractor(config)(waveform)``.
- :class:`SpecAugment` masks features at training time only.
- :class:`FeatureCache` computes the features of a set of files once and keeps
  them on disk as float16.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from metaspeech.atomic_files import save_atomically

FEATURE_VERSION = 2
"""Bumped when the extraction code changes the numbers, so old caches are not reused."""
_LOG_FLOOR = 1e-6
_CMVN_EPS = 1e-5


@dataclass
class FeatureConfig:
    """Feature settings.

    Args:
        kind: ``fbank`` (log-mel filterbank, ``n_mels`` dims) or ``mfcc`` (``n_mfcc`` dims).
        sample_rate: expected waveform rate in Hz (audio is resampled to it when read).
        n_mels: mel bins (the fbank dimension; also the filterbank under the MFCCs).
        n_mfcc: cepstral coefficients (the MFCC dimension).
        win_ms / hop_ms: analysis window length and frame shift in milliseconds.
        vad_trim: trim leading/trailing silence with a frame-energy detector.
        cmvn: ``utterance`` (mean/variance normalization over each utterance's
            frames) or ``none``. Either way the per-utterance statistics before
            normalization are kept for task embeddings (:meth:`FeatureExtractor.extract`).
    """

    kind: str = "fbank"
    sample_rate: int = 16000
    n_mels: int = 80
    n_mfcc: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    vad_trim: bool = False
    cmvn: str = "utterance"

    def __post_init__(self) -> None:
        if self.kind not in ("fbank", "mfcc"):
            raise ValueError(f"features.kind must be 'fbank' or 'mfcc', got {self.kind!r}")
        if self.cmvn not in ("utterance", "none"):
            raise ValueError(f"features.cmvn must be 'utterance' or 'none', got {self.cmvn!r}")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"features.n_mfcc ({self.n_mfcc}) cannot exceed features.n_mels ({self.n_mels})")
        if self.hop_ms <= 0 or self.win_ms <= 0:
            raise ValueError(f"features.win_ms and hop_ms must be positive, got {self.win_ms} and {self.hop_ms}")

    @property
    def dim(self) -> int:
        """Feature dimension ``F`` of every frame."""
        return self.n_mels if self.kind == "fbank" else self.n_mfcc

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        """Frame shift in samples."""
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def frame_shift_seconds(self) -> float:
        """Frame shift in seconds: seconds of speech per feature frame (adaptation data is reported in seconds)."""
        return self.hop_ms / 1000.0

    def cache_key(self) -> str:
        """Stable 16-hex-digit hash of the settings and :data:`FEATURE_VERSION` (same config -> same key)."""
        payload = json.dumps({"version": FEATURE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class FeatureExtractor(nn.Module):
    """Waveform -> features, stateless (no learned or fitted state).

    ``forward(waveform)``: ``[samples]`` -> ``[frames, dim]``, or a batch of
    equal-length waveforms ``[B, samples]`` -> ``[B, frames, dim]``, with
    ``frames = samples // hop_length + 1`` (centered frames), before trimming.
    Log-mel: ``log(max(mel power, 1e-6))``; MFCC: torchaudio's ``MFCC`` (DCT of
    the dB mel spectrum). Silence trimming works on single waveforms only,
    because it changes the number of frames per utterance.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        super().__init__()
        self.config = config or FeatureConfig()
        c = self.config
        mel_args = {
            "n_fft": _next_power_of_two(c.win_length),
            "win_length": c.win_length,
            "hop_length": c.hop_length,
            "n_mels": c.n_mels,
            "power": 2.0,
        }
        if c.kind == "fbank":
            self.transform: nn.Module = torchaudio.transforms.MelSpectrogram(c.sample_rate, **mel_args)
        else:
            self.transform = torchaudio.transforms.MFCC(c.sample_rate, n_mfcc=c.n_mfcc, melkwargs=mel_args)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.extract(waveform)[0]

    def extract(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        """``(features, statistics)``: the features and the per-dimension mean and std of the
        features *before* mean/variance normalization, ``[..., 2 * dim]``.

        Why keep the statistics: per-utterance CMVN removes each speaker's static spectral
        offsets (tilt, channel colour, vocal level), so statistics pooled over normalized
        features are the same for every speaker. These are what a task embedding
        (e.g. :class:`~metaspeech.algorithms.HyperInit`) needs to tell speakers apart.
        """
        if waveform.dim() not in (1, 2):
            raise ValueError(f"waveform must be [samples] or [B, samples], got shape {tuple(waveform.shape)}")
        if self.config.vad_trim and waveform.dim() != 1:
            raise ValueError("vad_trim changes the length of each utterance: call the extractor per waveform [samples]")
        waveform = waveform.float()
        # A channel axis ([B, 1, samples]) makes MFCC's top_db clipping per utterance, not per batch.
        features = self.transform(waveform.unsqueeze(-2)).squeeze(-3)
        if self.config.kind == "fbank":
            features = features.clamp(min=_LOG_FLOOR).log()
        features = features.transpose(-1, -2)
        if self.config.vad_trim:
            energy = frame_energy_db(waveform, self.config.win_length, self.config.hop_length, features.shape[0])
            features = trim_silence(features, energy)
        statistics = torch.cat([features.mean(dim=-2), features.std(dim=-2, unbiased=False)], dim=-1)
        if self.config.cmvn == "utterance":
            features = utterance_cmvn(features)
        return features, statistics


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def utterance_cmvn(features: Tensor) -> Tensor:
    """Zero mean, unit variance per dimension over the frames: ``[..., frames, F]`` -> same shape."""
    mean = features.mean(dim=-2, keepdim=True)
    std = features.var(dim=-2, unbiased=False, keepdim=True).add(_CMVN_EPS**2).sqrt()
    return (features - mean) / std


def frame_energy_db(waveform: Tensor, win_length: int, hop_length: int, frames: int) -> Tensor:
    """Energy in dB of each analysis frame, aligned with the (centered) STFT frames: ``[samples]`` -> ``[frames]``."""
    left = win_length // 2
    padded = F.pad(waveform, (left, win_length - left))
    windows = padded.unfold(0, win_length, hop_length)  # [samples // hop + 1, win]
    energy = windows.pow(2).mean(dim=1).add(1e-10).log10().mul(10)
    if energy.shape[0] < frames:
        energy = F.pad(energy, (0, frames - energy.shape[0]), value=float(energy.min()))
    return energy[:frames]


def trim_silence(features: Tensor, energy_db: Tensor, threshold_db: float = 40.0, margin: int = 10) -> Tensor:
    """Drop leading and trailing frames quieter than the loudest frame minus ``threshold_db``.

    Relative to the loudest frame, so the recording level does not matter;
    ``margin`` frames are kept on each side so word onsets and offsets survive.
    ``features [frames, F]``, ``energy_db [frames]`` -> ``[kept, F]``. Never
    returns an empty tensor: if nothing is voiced the input is returned.
    """
    voiced = torch.nonzero(energy_db > energy_db.max() - threshold_db).flatten()
    if voiced.numel() == 0:
        return features
    start = max(int(voiced[0]) - margin, 0)
    stop = min(int(voiced[-1]) + margin + 1, features.shape[0])
    return features[start:stop]


class SpecAugment(nn.Module):
    """Frequency and time masking for training (Park et al., 2019); identity in eval mode.

    ``forward(features [B, frames, F], lengths [B], generator=None)`` -> ``[B, frames, F]``.
    Each utterance gets ``freq_masks`` bands of width ``0..freq_width`` bins and
    ``time_masks`` spans of width ``0..time_width * length`` frames, drawn
    independently per utterance; time masks lie inside each utterance's own
    length, so padding never absorbs a mask. Masked values are set to
    ``mask_value`` (0 = the mean after CMVN). Pass a ``torch.Generator`` for
    reproducible masks.
    """

    def __init__(
        self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: float = 0.05,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= time_width <= 1.0:
            raise ValueError(f"time_width is a fraction of the utterance length in [0, 1], got {time_width}")
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.mask_value = mask_value

    def forward(self, features: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return features
        batch, frames, dims = features.shape
        lengths = lengths.to(features.device).long().clamp(max=frames)
        freq_max = torch.full((batch,), min(self.freq_width, dims), device=features.device)
        freq = _band_mask(freq_max, torch.full_like(lengths, dims), dims, self.freq_masks, generator)
        time_max = (self.time_width * lengths).floor().long()
        time = _band_mask(time_max, lengths, frames, self.time_masks, generator)
        mask = freq.unsqueeze(1) | time.unsqueeze(2)  # [B, frames, F]
        return features.masked_fill(mask, self.mask_value)


def _band_mask(
    max_width: Tensor, extent: Tensor, size: int, count: int, generator: torch.Generator | None
) -> Tensor:
    """``count`` random bands per row inside ``[0, extent)``: ``[B]`` limits -> bool ``[B, size]``.

    Widths are uniform in ``0..max_width``, starts uniform so the band fits in the extent.
    """
    batch = max_width.shape[0]
    device = generator.device if generator is not None else max_width.device
    draws = torch.rand(2, batch, count, generator=generator, device=device).to(max_width.device)
    width = (draws[0] * (max_width.unsqueeze(1) + 1)).floor().long().minimum(extent.unsqueeze(1))
    start = (draws[1] * (extent.unsqueeze(1) - width + 1)).floor().long()
    index = torch.arange(size, device=max_width.device).view(1, 1, size)
    inside = (index >= start.unsqueeze(2)) & (index < (start + width).unsqueeze(2))
    return inside.any(dim=1)


class FeatureCache:
    """Features of a set of audio files, computed once and stored in ``cache_dir``.

    One file per (config key, content key): the content key hashes the sorted
    paths with each file's size and modification time, so changed audio or
    settings are recomputed. Features are stored and returned as float16
    ``[frames, dim]`` (half the memory; callers cast). Writes are atomic (temp
    file + ``os.replace``), so an interrupted run or concurrent ranks never
    leave a truncated cache; a corrupt cache file is recomputed with a warning.
    """

    def __init__(self, cache_dir: str | Path, config: FeatureConfig) -> None:
        self.cache_dir = Path(cache_dir)
        self.config = config

    def path_for(self, paths: Sequence[str]) -> Path:
        """The cache file for this config and these files (their size and mtime included)."""
        digest = hashlib.sha256()
        for path in sorted(set(map(str, paths))):
            stat = _stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return self.cache_dir / f"features-{self.config.cache_key()}-{digest.hexdigest()[:16]}.pt"

    def load_or_compute(
        self, paths: Sequence[str], load_fn: Callable[[str], Tensor], num_workers: int = 0
    ) -> list[Tensor]:
        """Float16 features ``[frames, dim]`` per path, in the order of ``paths``.

        ``load_fn(path)`` must return the mono waveform ``[samples]`` at
        ``config.sample_rate`` (e.g. :func:`metaspeech.speech.audio.load_audio`); it is
        called only on a cache miss, from ``num_workers`` threads if > 0.
        """
        return self.load_or_compute_with_statistics(paths, load_fn, num_workers)[0]

    def load_or_compute_with_statistics(
        self, paths: Sequence[str], load_fn: Callable[[str], Tensor], num_workers: int = 0
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Features as :meth:`load_or_compute`, and per path the float32 statistics ``[2 * dim]``
        of its features before normalization (see :meth:`FeatureExtractor.extract`)."""
        paths = [str(p) for p in paths]
        if not paths:
            return [], []
        cache_file = self.path_for(paths)
        stored = self._read(cache_file)
        if stored is None:
            unique = sorted(set(paths))
            stored = dict(zip(unique, self._compute(unique, load_fn, num_workers)))
            self._write(cache_file, stored)
        return [stored[path][0] for path in paths], [stored[path][1] for path in paths]

    def _compute(self, paths: list[str], load_fn: Callable[[str], Tensor], num_workers: int) -> list[tuple[Tensor, Tensor]]:
        extractor = FeatureExtractor(self.config)

        def one(path: str) -> tuple[Tensor, Tensor]:
            waveform = load_fn(path)
            if not isinstance(waveform, Tensor) or waveform.dim() != 1:
                shape = tuple(waveform.shape) if isinstance(waveform, Tensor) else type(waveform).__name__
                raise ValueError(
                    f"{path}: load_fn must return a mono waveform [samples], got {shape}; "
                    "pass the audio loader (e.g. metaspeech.speech.audio.load_audio), not a feature extractor"
                )
            with torch.no_grad():
                features, statistics = extractor.extract(waveform)
            return features.to(torch.float16).contiguous(), statistics.float()

        if num_workers > 0:
            with ThreadPoolExecutor(max_workers=num_workers) as pool:
                return list(pool.map(one, paths))
        return [one(path) for path in paths]

    def _read(self, cache_file: Path) -> dict[str, tuple[Tensor, Tensor]] | None:
        if not cache_file.is_file():
            return None
        try:
            data = torch.load(cache_file, map_location="cpu", weights_only=True)
            return dict(zip(data["paths"], zip(data["features"], data["statistics"], strict=True), strict=True))
        except Exception as err:  # a damaged file: recompute rather than fail or return wrong features
            warnings.warn(f"feature cache {cache_file} is unreadable ({err}); recomputing it", stacklevel=3)
            return None

    def _write(self, cache_file: Path, stored: dict[str, tuple[Tensor, Tensor]]) -> None:
        payload = {"config": asdict(self.config), "paths": list(stored),
                   "features": [f for f, _ in stored.values()], "statistics": [s for _, s in stored.values()]}
        save_atomically(payload, cache_file)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"audio file {path} does not exist: fix the path in the manifest or restore the file"
        ) from None
