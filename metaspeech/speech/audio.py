"""Audio I/O: every waveform the library reads goes through :func:`load_audio`.

All reading is done with ``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3, and
uncompressed NIST SPHERE). torchaudio 2.11's own ``load`` needs torchcodec,
which is not a dependency, so torchaudio is used for resampling only.

Every failure is an :class:`AudioError` whose message names the file and says
what to do, so a bad file deep inside a corpus is found from the message alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch

from metaspeech.errors import DataError

SPHERE_MAGIC = b"NIST_1A"


class AudioError(DataError):
    """An audio file is missing, unreadable, empty or at the wrong sample rate."""


class SphereAudioError(AudioError):
    """A NIST SPHERE file libsndfile cannot decode (e.g. shorten-compressed).

    A subclass so corpus loaders can stop on it: it is a property of the whole
    corpus distribution (it needs converting), not of one damaged file.
    """


def is_sphere(path: str | Path) -> bool:
    """True when the file starts with the NIST SPHERE magic (``NIST_1A``)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SPHERE_MAGIC)) == SPHERE_MAGIC
    except OSError:
        return False


def _open_error(path: Path, err: Exception) -> AudioError:
    """Turn a libsndfile failure into an actionable message (missing / SPHERE / corrupt)."""
    if not path.exists():
        return AudioError(f"audio file {path} does not exist: fix the path in the manifest or restore the file")
    if path.is_dir():
        return AudioError(f"audio path {path} is a directory, not an audio file: fix the path in the manifest")
    if is_sphere(path):
        return SphereAudioError(
            f"cannot decode NIST SPHERE audio {path} ({err}): it is probably shorten-compressed; "
            f"convert it to RIFF WAV first, e.g. `sox {path} {path.with_suffix('.wav')}` "
            f"or `sph2pipe -f wav {path} {path.with_suffix('.wav')}`"
        )
    return AudioError(
        f"cannot read audio file {path} ({err}): it is corrupt, truncated or not an audio format "
        f"libsndfile reads; re-download it, convert it to WAV/FLAC (e.g. with sox or ffmpeg), or remove it"
    )


class AudioHeader(NamedTuple):
    """What a file's header says: duration in seconds, sample rate, channels (more than 1 is averaged to mono)."""

    duration: float
    sample_rate: int
    channels: int


def audio_header(path: str | Path) -> AudioHeader:
    """The file's :class:`AudioHeader`, read from the header only (no samples are decoded)."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises LibsndfileError / RuntimeError / TypeError variants
        raise _open_error(path, err) from err
    return AudioHeader(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def audio_info(path: str | Path) -> tuple[float, int]:
    """``(duration_seconds, sample_rate)`` from the header only (no samples are decoded)."""
    header = audio_header(path)
    return header.duration, header.sample_rate


def load_audio(path: str | Path, sample_rate: int = 16000, resample: bool = True) -> torch.Tensor:
    """Mono float32 waveform ``[samples]`` at ``sample_rate``.

    Multi-channel audio (stereo) is averaged to mono: the recognizer reads one channel, and the
    corpus check counts such files in its warning (:mod:`metaspeech.datamodules.validation`). A file at another rate is resampled
    (``resample=True``) or rejected, so features are never silently computed at
    the wrong rate.
    """
    path = Path(path)
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise _open_error(path, err) from err
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} contains no samples (zero-length audio): re-record it or remove it")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples: re-export it or remove it")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        if not resample:
            raise AudioError(
                f"audio file {path}: sample rate {file_rate} != expected {sample_rate}; "
                f"pass resample=True or convert it (e.g. `sox {path} -r {sample_rate} out.wav`)"
            )
        wave = _resample(wave, file_rate, sample_rate)
    return wave


def _resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling; torchaudio is imported here so plain reading stays light."""
    import torchaudio.functional as AF

    return AF.resample(wave, orig_freq=orig_rate, new_freq=new_rate).contiguous()
