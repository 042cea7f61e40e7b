"""Acoustic features: log-mel filterbanks or MFCCs (torchaudio), cached on disk.

Stateless like torchaudio's transforms: ``FeatureExtractor(config)(waveform)``.
Features are computed once per (config, set of files) and stored as float16.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torchaudio
from torch import Tensor, nn


@dataclass
class FeatureConfig:
    """Feature settings (part of the cache key and saved with every checkpoint).

    Args:
        kind: ``fbank`` (log-mel filterbank) or ``mfcc``.
        n_mels: mel bins (the fbank dimension).
        n_mfcc: cepstra (the MFCC dimension).
        win_ms / hop_ms: analysis window and frame shift.
        vad_trim: trim leading/trailing silence with an energy detector.
        cmvn: ``utterance`` (mean/variance normalization per utterance) or ``none``.
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

    @property
    def dim(self) -> int:
        return self.n_mels if self.kind == "fbank" else self.n_mfcc

    def cache_key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class FeatureExtractor(nn.Module):
    """Waveform ``[samples]`` -> features ``[frames, dim]`` (or batched ``[B, samples] -> [B, frames, dim]``)."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        super().__init__()
        self.config = config or FeatureConfig()
        c = self.config
        win = int(c.sample_rate * c.win_ms / 1000)
        hop = int(c.sample_rate * c.hop_ms / 1000)
        mel_args = {"n_fft": 512 if win <= 512 else win, "win_length": win, "hop_length": hop, "n_mels": c.n_mels}
        if c.kind == "fbank":
            self.transform = torchaudio.transforms.MelSpectrogram(c.sample_rate, **mel_args)
        else:
            self.transform = torchaudio.transforms.MFCC(c.sample_rate, n_mfcc=c.n_mfcc, melkwargs=mel_args)

    @torch.no_grad()
    def forward(self, waveform: Tensor) -> Tensor:
        spec = self.transform(waveform.float())
        features = (spec + 1e-6).log() if self.config.kind == "fbank" else spec
        features = features.transpose(-1, -2)
        if self.config.vad_trim and features.dim() == 2:
            features = trim_silence(features, self._frame_energy(waveform, features.shape[0]))
        if self.config.cmvn == "utterance":
            features = (features - features.mean(-2, keepdim=True)) / (features.std(-2, keepdim=True) + 1e-5)
        return features

    def _frame_energy(self, waveform: Tensor, frames: int) -> Tensor:
        hop = int(self.config.sample_rate * self.config.hop_ms / 1000)
        padded = torch.nn.functional.pad(waveform.float(), (0, frames * hop))
        return padded[: frames * hop].reshape(frames, hop).pow(2).mean(1).add(1e-10).log10().mul(10)


def trim_silence(features: Tensor, energy_db: Tensor, floor_db: float = 40.0, margin: int = 5) -> Tensor:
    """Drop leading/trailing frames more than ``floor_db`` below the loudest frame; never returns empty."""
    voiced = torch.nonzero(energy_db > energy_db.max() - floor_db).flatten()
    if voiced.numel() == 0:
        return features
    start = max(int(voiced[0]) - margin, 0)
    stop = min(int(voiced[-1]) + margin + 1, features.shape[0])
    return features[start:stop]


class SpecAugment(nn.Module):
    """Frequency and time masking for training (Park et al., 2019); identity in eval mode.

    ``features [B, frames, F]`` with ``lengths [B]`` -> same shape; time masks stay within each utterance.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: float = 0.05) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def forward(self, features: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.training:
            return features
        out = features.clone()
        batch, _, dims = out.shape
        for b in range(batch):
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_width + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(dims - width, 1), (1,), generator=generator))
                out[b, :, start : start + width] = 0.0
            length = int(lengths[b])
            for _ in range(self.time_masks):
                width = int(torch.randint(0, max(int(self.time_width * length), 1) + 1, (1,), generator=generator))
                start = int(torch.randint(0, max(length - width, 1), (1,), generator=generator))
                out[b, start : start + width, :] = 0.0
        return out


class FeatureCache:
    """Features of a list of audio files, computed once and stored in ``cache_dir``.

    The file name hashes the feature config and every file's path, size and
    modification time, so changed audio or settings are recomputed; the write is
    atomic, so an interrupted run never leaves a truncated cache.
    """

    def __init__(self, cache_dir: str | Path, config: FeatureConfig) -> None:
        self.cache_dir = Path(cache_dir)
        self.config = config

    def path_for(self, paths: list[str]) -> Path:
        digest = hashlib.sha256(self.config.cache_key().encode())
        for path in paths:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return self.cache_dir / f"features-{self.config.cache_key()}-{digest.hexdigest()[:16]}.pt"

    def load_or_compute(self, paths: list[str], compute: Callable[[str], Tensor]) -> list[Tensor]:
        """Features ``[frames, dim]`` (float16) per path, in order; ``compute(path)`` only on a cache miss."""
        cache = self.path_for(paths)
        if cache.is_file():
            return torch.load(cache, weights_only=True)
        features = [compute(path).to(torch.float16) for path in paths]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(features, tmp)
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return features
