"""A small ctypes binding to eSpeak NG, loaded from the pip package ``espeakng_loader``.

It speaks (:func:`synthesize`, the eSpeak engine) and transcribes text to IPA
phonemes (:func:`phonemize`, the Kokoro engine's front end, so that engine needs
no phonemizer package either).

Why ctypes and not the ``espeak-ng`` program: the pip wheel ships only the shared
library and its voice data, so the embedded corpus needs no system packages.

Why the library is loaded afresh for every utterance: eSpeak NG keeps global
state that its API cannot reset (the pitch-flutter position, the automatic gain,
the Klatt filters' memory, libc ``rand()`` for breathy voices), so the same text
renders differently depending on what was spoken before. Loading a private copy
of ``libespeak-ng.so``, speaking one utterance and unloading it again costs about
a millisecond and makes every utterance a pure function of (text, voice, seed),
whatever process or order produced it.

eSpeak NG is not thread-safe: within a process a lock serializes synthesis, and
parallel generation uses processes.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT: with SYNCHRONOUS, espeak_Synth returns only after every
# sample went through the callback, so no background thread is involved.
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
ESPEAK_RATE = 1
ESPEAK_PITCH = 3
# espeak_POSITION_TYPE and synth flags
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
# espeak_ERROR
EE_OK = 0
# espeak_TextToPhonemes phoneme mode: IPA, with a tie character (bits 8-23) joining
# the letters of one multi-letter phoneme (diphthongs, affricates).
PHONEMES_IPA = 0x02
PHONEMES_TIE = 0x80
PHONEME_TIE = "^"

NATIVE_SAMPLE_RATE = 22050
"""What eSpeak NG renders at; :func:`synthesize` returns the rate the library reports."""

# int callback(short *wav, int numsamples, espeak_EVENT *events); the event
# struct is never read, so a void pointer is enough.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_PRIVATE_LIBRARY: Path | None = None
# Unloading a library: dlclose on POSIX, FreeLibrary on Windows.
_unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")


def _seed_libc_rand(seed: int) -> None:
    """eSpeak's breath noise uses libc ``rand()``; seeding it keeps breathy voices reproducible."""
    try:
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))
    except (OSError, AttributeError, TypeError):  # no C runtime by that name (Windows)
        pass


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


def _private_library() -> Path:
    """A copy of ``libespeak-ng.so`` only this module opens.

    A copy (a different file) gets its own static data even if something else in
    the process already loaded the wheel's library, so unloading it really resets it.
    Every process shares one copy per library build, in the temporary folder under a name
    made of the user id and the build's size and modification time. Why not one temporary
    copy per process, removed at exit: worker processes end without running exit handlers,
    so each of them would leave its copy behind. The copy is written under a unique name and
    renamed into place, so a process never opens a half-written file.
    """
    global _PRIVATE_LIBRARY
    if _PRIVATE_LIBRARY is None:
        import espeakng_loader

        source = Path(espeakng_loader.get_library_path())
        stat = source.stat()
        folder = Path(tempfile.gettempdir()) / f"metaspeech-espeak-{os.getuid()}-{stat.st_size}-{stat.st_mtime_ns}"
        target = folder / source.name
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(prefix=source.name, suffix=".partial", dir=folder)
            os.close(handle)
            shutil.copy2(source, partial)
            os.replace(partial, target)
        _PRIVATE_LIBRARY = target
    return _PRIVATE_LIBRARY


def _declare_signatures(lib: ctypes.CDLL) -> None:
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
    lib.espeak_Terminate.argtypes = []
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p


class _Session:
    """One load-initialize-speak-unload cycle of the library (see the module docstring)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline if the Python object dies.
        self._callback = _SynthCallback(self._collect)
        self.lib = ctypes.CDLL(str(_private_library()))
        _declare_signatures(self.lib)
        data_path = espeakng_loader.get_data_path()
        rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode("utf-8"), 0)
        if rate <= 0:
            self.close(initialized=False)
            raise RuntimeError(f"eSpeak NG failed to initialize with data at {data_path} (code {rate})")
        self.sample_rate = int(rate)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int, _events: int) -> int:
        if num_samples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, settings: VoiceSettings) -> None:
        code = self.lib.espeak_SetVoiceByName(settings.voice.encode("utf-8"))
        if code != EE_OK:
            raise RuntimeError(
                f"eSpeak NG cannot set voice {settings.voice!r} (error {code}); "
                "use a language like 'en-us' or 'en-gb-scotland', optionally with a variant like '+f2'"
            )
        for name, param, value in (("pitch", ESPEAK_PITCH, settings.pitch), ("rate", ESPEAK_RATE, settings.rate)):
            code = self.lib.espeak_SetParameter(param, int(value), 0)
            if code != EE_OK:
                raise RuntimeError(f"eSpeak NG rejected {name}={value} for voice {settings.voice!r} (error {code})")

    def speak(self, text: str, voice: str, seed: int) -> np.ndarray:
        # Both RNGs eSpeak draws from: its own, and libc rand() (breath noise).
        self.lib.espeak_ng_SetRandSeed(seed)
        _seed_libc_rand(seed)
        data = text.encode("utf-8") + b"\0"
        code = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if code != EE_OK:
            raise RuntimeError(f"eSpeak NG failed to synthesize with voice {voice!r} (error {code})")
        code = self.lib.espeak_Synchronize()
        if code != EE_OK:
            raise RuntimeError(f"eSpeak NG failed to finish synthesis with voice {voice!r} (error {code})")
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.chunks).astype(np.float32) / 32768.0

    def phonemes(self, text: str) -> str:
        """IPA of ``text``, one clause per ``espeak_TextToPhonemes`` call (it advances the pointer)."""
        mode = PHONEMES_IPA | PHONEMES_TIE | (ord(PHONEME_TIE) << 8)
        data = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(data))
        clauses: list[str] = []
        while pointer.value:
            clause = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), ESPEAK_CHARS_UTF8, mode)
            clauses.append((clause or b"").decode("utf-8").strip())
        return " ".join(clause for clause in clauses if clause)

    def close(self, initialized: bool = True) -> None:
        if initialized:
            self.lib.espeak_Terminate()
        _unload(self.lib._handle)


def synthesize(
    text: str, voice: str = "en-us", pitch: int = 50, rate: int = 175, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with eSpeak NG voice ``voice`` (e.g. ``"en-gb-scotland+m3"``).

    Returns ``(samples, sample_rate)``: float32 mono samples in [-1, 1] and the
    native rate (22050 Hz). The result depends only on the arguments. Raises
    ``RuntimeError`` naming the voice if eSpeak does not know it.
    """
    settings = VoiceSettings(voice=voice, pitch=pitch, rate=rate)
    with _LOCK:
        session = _Session()
        try:
            session.set_voice(settings)
            samples = session.speak(text, voice, int(seed) & 0x7FFFFFFF)
        finally:
            session.close()
    return samples, session.sample_rate


def phonemize(text: str, accent: str = "en-us") -> str:
    """IPA phonemes of ``text`` in eSpeak NG's ``accent`` (e.g. ``"en-gb-scotland"``), with stress marks.

    The letters of a multi-letter phoneme are joined by ``PHONEME_TIE`` (``"a^ɪ"``,
    ``"d^ʒ"``), so a caller can map diphthongs and affricates to single symbols.
    Clauses are joined by a space. Raises ``RuntimeError`` naming the accent if
    eSpeak does not know it.
    """
    with _LOCK:
        session = _Session()
        try:
            session.set_voice(VoiceSettings(voice=accent))
            phonemes = session.phonemes(text)
        finally:
            session.close()
    return phonemes
