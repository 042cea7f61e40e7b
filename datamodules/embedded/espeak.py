"""A small ctypes binding to eSpeak NG, loaded from the pip package ``espeakng_loader``.

Why ctypes and not the ``espeak-ng`` program: the pip wheel ships only the shared
library and its voice data, so the embedded corpus needs no system packages.

eSpeak NG keeps global state (current voice, parameters, the synth callback) and
is not thread-safe, so there is exactly one initialized engine per process
(:func:`get_engine`). Parallel generation must use processes, each of which
initializes its own engine on first use; within a process a lock serializes calls.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

# espeak_AUDIO_OUTPUT: with SYNCHRONOUS, espeak_Synth returns only after every
# sample went through the callback, so no background thread is involved.
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
ESPEAK_RATE = 1
ESPEAK_VOLUME = 2
ESPEAK_PITCH = 3
ESPEAK_RANGE = 4
# espeak_POSITION_TYPE and synth flags
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
# espeak_ERROR
EE_OK = 0

NATIVE_SAMPLE_RATE = 22050
"""What eSpeak NG renders at; :func:`Engine.synthesize` also returns the value it reports."""

# int callback(short *wav, int numsamples, espeak_EVENT *events); the event
# struct is never read, so a void pointer is enough.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceSettings:
    """What makes one synthetic voice: eSpeak voice name (+ variant), pitch and rate.

    ``pitch`` is espeakPITCH (0-100, 50 = the voice's own base pitch) and
    ``rate`` is espeakRATE in words per minute (80-450).
    """

    voice: str
    pitch: int = 50
    rate: int = 175


def voice_string(accent: str, variant: str | None) -> str:
    """eSpeak's ``language+variant`` syntax, e.g. ``voice_string("en-us", "f2") == "en-us+f2"``."""
    if not variant:
        return accent
    return f"{accent}+{variant.lstrip('+')}"


class Engine:
    """The process's eSpeak NG instance; use :func:`get_engine` rather than constructing one."""

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._declare_signatures()
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline if the Python object dies.
        self._callback = _SynthCallback(self._collect)
        data_path = espeakng_loader.get_data_path().encode("utf-8")
        rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialize with data at {data_path.decode()} (code {rate})")
        self.sample_rate = int(rate)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        # Klatt voices and "breath" settings draw noise from eSpeak's own RNG;
        # reseeding it before every utterance makes the audio reproducible.
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
            self._set_seed.restype = None

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int, _events: int) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def _set_voice(self, settings: VoiceSettings) -> None:
        code = self._lib.espeak_SetVoiceByName(settings.voice.encode("utf-8"))
        if code != EE_OK:
            raise RuntimeError(
                f"eSpeak NG cannot set voice {settings.voice!r} (error {code}); "
                "use a language like 'en-us' or 'en-gb-scotland', optionally with a variant like '+f2'"
            )
        for param, value in ((ESPEAK_PITCH, settings.pitch), (ESPEAK_RATE, settings.rate)):
            code = self._lib.espeak_SetParameter(param, int(value), 0)
            if code != EE_OK:
                raise RuntimeError(f"eSpeak NG rejected parameter {param}={value} for voice {settings.voice!r}")

    def synthesize(self, text: str, settings: VoiceSettings, seed: int = 0) -> tuple[np.ndarray, int]:
        """Render ``text`` with ``settings``; returns float32 mono samples in [-1, 1] and the sample rate."""
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._set_voice(settings)
            if self._set_seed is not None:
                self._set_seed(int(seed) & 0x7FFFFFFF)
            self._chunks = []
            code = self._lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
            if code != EE_OK:
                raise RuntimeError(f"eSpeak NG failed to synthesize with voice {settings.voice!r} (error {code})")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        samples = np.concatenate(chunks).astype(np.float32) / 32768.0
        return samples, self.sample_rate


_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> Engine:
    """The one eSpeak NG engine of this process, initialized on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Engine()
        return _ENGINE


def synthesize(
    text: str, voice: str = "en-us", pitch: int = 50, rate: int = 175, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG voice ``voice`` (e.g. ``"en-gb-scotland+m3"``).

    Returns ``(samples, sample_rate)``: float32 mono samples and the native rate (22050 Hz).
    Raises ``RuntimeError`` naming the voice if eSpeak does not know it.
    """
    return get_engine().synthesize(text, VoiceSettings(voice=voice, pitch=pitch, rate=rate), seed=seed)
