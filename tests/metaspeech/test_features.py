"""Feature extraction, silence trimming, CMVN, SpecAugment and the feature cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch

from metaspeech.speech.audio import load_audio
from metaspeech.speech.features import FeatureCache, FeatureConfig, FeatureExtractor, SpecAugment

RATE = 16000


def _tone(seconds: float, freq: float = 440.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE)) / RATE
    return amplitude * torch.sin(2 * math.pi * freq * t)


def _silence_tone_silence(seed: int = 0) -> torch.Tensor:
    """0.5 s near-silence (-70 dB noise), 0.5 s tone, 0.5 s near-silence: [24000]."""
    gen = torch.Generator().manual_seed(seed)
    noise = 3e-4 * torch.randn(int(1.5 * RATE), generator=gen)
    wave = noise.clone()
    wave[RATE // 2 : RATE] += _tone(0.5)
    return wave


@pytest.mark.parametrize(("kind", "dim"), [("fbank", 80), ("mfcc", 40)])
def test_one_second_gives_about_100_frames(kind: str, dim: int) -> None:
    config = FeatureConfig(kind=kind)
    features = FeatureExtractor(config)(torch.randn(RATE))
    assert config.dim == dim
    assert 98 <= features.shape[0] <= 101 and features.shape[1] == dim
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_batch_equals_one_by_one(kind: str) -> None:
    extractor = FeatureExtractor(FeatureConfig(kind=kind))
    waves = torch.stack([torch.randn(8000), 0.01 * torch.randn(8000), _tone(0.5)])
    batch = extractor(waves)
    assert batch.shape == (3, 51, extractor.config.dim)
    for row, wave in zip(batch, waves):
        torch.testing.assert_close(row, extractor(wave), atol=1e-4, rtol=1e-4)


def test_log_mel_has_a_floor_on_digital_silence() -> None:
    features = FeatureExtractor(FeatureConfig(cmvn="none"))(torch.zeros(RATE))
    assert torch.allclose(features, torch.full_like(features, math.log(1e-6)))


def test_bad_waveform_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\[samples\]"):
        FeatureExtractor()(torch.zeros(1, 1, RATE))
    with pytest.raises(ValueError, match="per waveform"):
        FeatureExtractor(FeatureConfig(vad_trim=True))(torch.zeros(2, RATE))


@pytest.mark.parametrize("field", [{"kind": "plp"}, {"cmvn": "speaker"}, {"kind": "mfcc", "n_mfcc": 90}, {"hop_ms": 0}])
def test_invalid_configs_raise(field: dict) -> None:
    with pytest.raises(ValueError, match="features"):
        FeatureConfig(**field)


def test_vad_trim_removes_leading_and_trailing_silence_and_keeps_the_tone() -> None:
    wave = _silence_tone_silence()
    full = FeatureExtractor(FeatureConfig(cmvn="none"))(wave)
    trimmed = FeatureExtractor(FeatureConfig(cmvn="none", vad_trim=True))(wave)
    assert full.shape[0] == 151
    assert 50 < trimmed.shape[0] < 80  # 50 tone frames plus small margins
    start = next(i for i in range(full.shape[0]) if torch.equal(full[i], trimmed[0]))
    torch.testing.assert_close(trimmed, full[start : start + trimmed.shape[0]])
    assert 30 <= start <= 50 and start + trimmed.shape[0] >= 100  # the whole tone (frames 50..100) is kept


def test_vad_trim_never_returns_empty() -> None:
    extractor = FeatureExtractor(FeatureConfig(vad_trim=True))
    assert extractor(torch.zeros(RATE)).shape[0] == 101
    assert extractor(1e-4 * torch.randn(RATE)).shape[0] > 0


def test_utterance_cmvn_gives_zero_mean_unit_variance() -> None:
    for kind in ("fbank", "mfcc"):
        features = FeatureExtractor(FeatureConfig(kind=kind, cmvn="utterance"))(_silence_tone_silence())
        torch.testing.assert_close(features.mean(0), torch.zeros(features.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(features.std(0, unbiased=False), torch.ones(features.shape[1]), atol=1e-3, rtol=0)


def test_extract_keeps_the_statistics_that_per_utterance_cmvn_removes() -> None:
    """``statistics`` are the mean and std of the raw features, so two recordings differing only in level
    give the same normalized features but different statistics (noise: no frame hits the log floor)."""
    wave = 0.1 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))
    raw, _ = FeatureExtractor(FeatureConfig(cmvn="none")).extract(wave)
    normalized, statistics = FeatureExtractor(FeatureConfig(cmvn="utterance")).extract(wave)
    torch.testing.assert_close(statistics, torch.cat([raw.mean(0), raw.std(0, unbiased=False)]))
    louder, louder_statistics = FeatureExtractor(FeatureConfig(cmvn="utterance")).extract(4 * wave)
    torch.testing.assert_close(louder, normalized, atol=1e-3, rtol=1e-3)
    assert float((louder_statistics[:80] - statistics[:80]).mean()) > 2.0  # log(16) on average over mel bins


def test_global_cmvn_is_not_an_option() -> None:
    with pytest.raises(ValueError, match="'utterance' or 'none'"):
        FeatureConfig(cmvn="global")


def _padded_ones(lengths: list[int], frames: int = 200, dims: int = 80) -> torch.Tensor:
    return torch.ones(len(lengths), frames, dims)


def test_spec_augment_masks_in_training_and_not_in_eval() -> None:
    augment = SpecAugment()
    features, lengths = _padded_ones([200, 150, 120]), torch.tensor([200, 150, 120])
    masked = augment(features, lengths, generator=torch.Generator().manual_seed(0))
    assert masked.shape == features.shape and (masked == 0).any()
    assert torch.equal(features, torch.ones_like(features))  # input untouched
    augment.eval()
    assert augment(features, lengths) is features


def test_spec_augment_time_masks_stay_inside_each_utterance() -> None:
    augment = SpecAugment(freq_masks=0, time_masks=10, time_width=0.2)
    lengths = torch.tensor([200, 60, 10, 0])
    masked = augment(_padded_ones(lengths.tolist()), lengths, generator=torch.Generator().manual_seed(1))
    for row, length in zip(masked, lengths.tolist()):
        masked_frames = (row == 0).all(dim=1)
        assert (row[masked_frames] == 0).all() and (row[~masked_frames] == 1).all()  # whole frames only
        assert not masked_frames[length:].any()
    assert (masked[0] == 0).any() and (masked[1] == 0).any()


def test_spec_augment_mask_widths_are_bounded() -> None:
    augment = SpecAugment(freq_masks=1, freq_width=15, time_masks=1, time_width=0.05)
    lengths = torch.full((64,), 200)
    masked = augment(_padded_ones(lengths.tolist()), lengths, generator=torch.Generator().manual_seed(2))
    freq_width = (masked == 0).all(dim=1).sum(dim=1)
    time_width = (masked == 0).all(dim=2).sum(dim=1)
    assert freq_width.max() <= 15 and time_width.max() <= 10
    assert freq_width.float().std() > 0 and time_width.float().std() > 0  # widths drawn per utterance


def test_spec_augment_is_reproducible_with_a_generator() -> None:
    augment = SpecAugment()
    features, lengths = torch.randn(4, 100, 80), torch.tensor([100, 90, 80, 70])
    first = augment(features, lengths, generator=torch.Generator().manual_seed(3))
    again = augment(features, lengths, generator=torch.Generator().manual_seed(3))
    other = augment(features, lengths, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_cache_key_is_stable_and_differs_across_configs() -> None:
    assert FeatureConfig().cache_key() == FeatureConfig().cache_key()
    keys = {FeatureConfig(**kw).cache_key() for kw in ({}, {"kind": "mfcc"}, {"n_mels": 40}, {"vad_trim": True}, {"cmvn": "none"})}
    assert len(keys) == 5 and all(len(k) == 16 for k in keys)


@pytest.fixture
def wav_files(tmp_path: Path) -> list[str]:
    paths = []
    for index, seconds in enumerate((0.3, 0.5, 0.4)):
        path = tmp_path / f"utt{index}.wav"
        sf.write(path, (_tone(seconds, 200.0 * (index + 1))).numpy(), RATE)
        paths.append(str(path))
    return paths


class _CountingLoader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: str) -> torch.Tensor:
        self.calls += 1
        return load_audio(path, RATE)


def test_cache_computes_once_and_then_loads_from_disk(tmp_path: Path, wav_files: list[str]) -> None:
    config = FeatureConfig()
    cache, loader = FeatureCache(tmp_path / "cache", config), _CountingLoader()
    first = cache.load_or_compute(wav_files, loader)
    assert loader.calls == 3
    second = FeatureCache(tmp_path / "cache", config).load_or_compute(wav_files, loader)
    assert loader.calls == 3  # a hit: nothing recomputed
    extractor = FeatureExtractor(config)
    for path, a, b in zip(wav_files, first, second):
        assert a.dtype == torch.float16 and a.dim() == 2 and a.shape[1] == 80
        assert torch.equal(a, b)
        torch.testing.assert_close(a.float(), extractor(load_audio(path, RATE)), atol=1e-2, rtol=1e-2)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]  # no temp files left behind


def test_cache_keeps_the_order_of_the_paths(tmp_path: Path, wav_files: list[str]) -> None:
    cache = FeatureCache(tmp_path, FeatureConfig())
    forward = cache.load_or_compute(wav_files, load_audio)
    loader = _CountingLoader()
    backward = cache.load_or_compute([*reversed(wav_files), wav_files[0]], loader)
    assert loader.calls == 0  # same set of files -> same cache file
    assert [f.shape for f in backward] == [f.shape for f in [*reversed(forward), forward[0]]]


def test_cache_misses_on_changed_audio_or_config(tmp_path: Path, wav_files: list[str]) -> None:
    cache, loader = FeatureCache(tmp_path, FeatureConfig()), _CountingLoader()
    cache.load_or_compute(wav_files, loader)
    FeatureCache(tmp_path, FeatureConfig(kind="mfcc")).load_or_compute(wav_files, loader)
    assert loader.calls == 6
    stat = os.stat(wav_files[1])
    os.utime(wav_files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.load_or_compute(wav_files, loader)
    assert loader.calls == 9
    assert len(list(tmp_path.glob("features-*.pt"))) == 3


def test_cache_with_worker_threads_gives_the_same_features(tmp_path: Path, wav_files: list[str]) -> None:
    serial = FeatureCache(tmp_path / "a", FeatureConfig()).load_or_compute(wav_files, load_audio)
    threaded = FeatureCache(tmp_path / "b", FeatureConfig()).load_or_compute(wav_files, load_audio, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded))


def test_cache_recomputes_a_corrupt_file(tmp_path: Path, wav_files: list[str]) -> None:
    cache, loader = FeatureCache(tmp_path, FeatureConfig()), _CountingLoader()
    cache.load_or_compute(wav_files, loader)
    cache.path_for(wav_files).write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        features = cache.load_or_compute(wav_files, loader)
    assert loader.calls == 6 and len(features) == 3


def test_cache_rejects_a_load_fn_that_returns_features(tmp_path: Path, wav_files: list[str]) -> None:
    extractor = FeatureExtractor()
    with pytest.raises(ValueError, match="mono waveform"):
        FeatureCache(tmp_path, FeatureConfig()).load_or_compute(wav_files, lambda p: extractor(load_audio(p)))


def test_cache_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        FeatureCache(tmp_path, FeatureConfig()).load_or_compute([str(tmp_path / "nope.wav")], load_audio)
    assert FeatureCache(tmp_path, FeatureConfig()).load_or_compute([], load_audio) == []
