"""load_audio / audio_info: mono float32 at the asked rate, or an AudioError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from metaspeech.speech.audio import AudioError, SphereAudioError, audio_info, load_audio


def tone(path: Path, seconds: float = 0.5, sample_rate: int = 16000, channels: int = 1, freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (0.25 * np.sin(2 * np.pi * freq * t)).astype("float32")
    sf.write(str(path), np.stack([wave] * channels, axis=1) if channels > 1 else wave, sample_rate)
    return path


def test_load_mono_float32(tmp_path: Path) -> None:
    path = tone(tmp_path / "a.wav", 0.5)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert wave.abs().max() == pytest.approx(0.25, abs=1e-3)
    assert audio_info(path) == (pytest.approx(0.5), 16000)


def test_multichannel_is_averaged(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    left = np.full(1600, 0.5, dtype="float32")
    sf.write(str(path), np.stack([left, -0.5 * left], axis=1), 16000, subtype="PCM_24")
    wave = load_audio(path)
    assert wave.shape == (1600,)
    assert torch.allclose(wave, torch.full((1600,), 0.125), atol=1e-4)


def test_resampling_length_and_content(tmp_path: Path) -> None:
    path = tone(tmp_path / "a48k.wav", 0.5, sample_rate=48000, freq=440.0)
    wave = load_audio(path, sample_rate=16000)
    assert wave.shape == (8000,) and wave.dtype == torch.float32
    spectrum = torch.fft.rfft(wave).abs()
    assert int(spectrum.argmax()) * 16000 / 8000 == pytest.approx(440.0, abs=2.0)  # the tone survives at its frequency
    assert load_audio(tone(tmp_path / "a8k.wav", 0.5, sample_rate=8000), 16000).shape == (8000,)


def test_wrong_rate_without_resampling(tmp_path: Path) -> None:
    path = tone(tmp_path / "a22.wav", 0.2, sample_rate=22050)
    with pytest.raises(AudioError, match=r"a22\.wav: sample rate 22050 != expected 16000"):
        load_audio(path, 16000, resample=False)


def test_missing_file(tmp_path: Path) -> None:
    for call in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"missing\.wav does not exist"):
            call(tmp_path / "missing.wav")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    for call in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"cannot read audio file .*corrupt\.wav .*re-download"):
            call(path)
    assert issubclass(AudioError, ValueError)


def test_zero_length_audio(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype="float32"), 16000)
    assert audio_info(path) == (0.0, 16000)
    with pytest.raises(AudioError, match=r"empty\.wav contains no samples"):
        load_audio(path)


def test_non_finite_samples(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    sf.write(str(path), np.array([0.0, np.nan, 0.1], dtype="float32"), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_compressed_sphere_asks_for_conversion(tmp_path: Path) -> None:
    path = tmp_path / "SA1.WAV"
    header = b"NIST_1A\n   1024\nsample_rate -i 16000\nsample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n"
    path.write_bytes(header.ljust(1024, b" ") + b"\x07" * 256)
    with pytest.raises(SphereAudioError, match=r"NIST SPHERE audio .*SA1\.WAV.*sox .*SA1\.WAV .*SA1\.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="sph2pipe"):
        audio_info(path)


def test_uncompressed_sphere_is_read(tmp_path: Path) -> None:
    path = tmp_path / "SX1.WAV"
    sf.write(str(path), np.full(800, 0.25, dtype="float32"), 16000, format="NIST", subtype="PCM_16")
    assert load_audio(path).shape == (800,)
