"""Helpers shared by the corpus loaders (private: import from ``metaspeech.datamodules.corpora``).

The loaders only *discover* utterances. A file that is missing or unreadable is
kept with ``duration=0.0`` and reported in one warning, so the single bad-input
policy of :mod:`metaspeech.datamodules.validation` (skip with a count, or raise)
decides what happens to it, the same way for every corpus. The one exception is
audio libsndfile cannot decode at all (compressed NIST SPHERE): that is a
property of the corpus distribution, so the loader stops and says how to convert.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from metaspeech.datamodules.manifest import Utterance
from metaspeech.errors import MetaSpeechError
from metaspeech.speech.audio import AudioError, SphereAudioError, audio_info

PROBE_THREADS = 8
"""Header reads are I/O bound (network file systems): a few threads hide the latency."""


class CorpusLayoutError(MetaSpeechError, FileNotFoundError):
    """The corpus root is missing or does not have the layout the loader expects.

    The message names the path and the layout that was expected.
    """


def require_dir(root: str | Path, corpus: str, layout: str) -> Path:
    """Resolve ``root`` and check it is a directory, else explain the layout expected."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise CorpusLayoutError(f"{corpus} root {path} does not exist or is not a directory: expected {layout}")
    return path


def probe_durations(corpus: str, paths: list[Path]) -> list[float]:
    """Duration of each file from its header; ``0.0`` for a missing or unreadable file.

    Bad files are counted and reported in one warning (validation decides later).
    Raises :class:`SphereAudioError` at once: the whole corpus needs converting.
    """
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        results = list(pool.map(_probe_one, paths))
    bad = [(path, err) for path, (_, err) in zip(paths, results) if err is not None]
    for _, err in bad:
        if isinstance(err, SphereAudioError):
            raise err
    if bad:
        warnings.warn(
            f"{corpus}: {len(bad)} of {len(paths)} audio file(s) are missing or unreadable "
            f"(first: {bad[0][1]}); they are kept with duration 0 and the validation step "
            f"skips them (on_bad_input='skip') or stops on them (on_bad_input='raise')",
            stacklevel=3,
        )
    return [duration for duration, _ in results]


def _probe_one(path: Path) -> tuple[float, AudioError | None]:
    try:
        return audio_info(path)[0], None
    except AudioError as err:
        return 0.0, err


def warn_skipped(corpus: str, what: str, examples: Iterable[str]) -> None:
    """One warning with a count for rows a loader drops (e.g. audio without a transcript)."""
    examples = list(examples)
    if examples:
        shown = ", ".join(examples[:3]) + (", ..." if len(examples) > 3 else "")
        warnings.warn(f"{corpus}: skipped {len(examples)} {what} ({shown})", stacklevel=3)


def normalize_gender(value: str) -> str:
    """``male`` / ``female`` from the spellings corpora use (``M``, ``f``, ``male_masculine``); empty -> ``unknown``."""
    text = value.strip().lower()
    if text in ("m", "male") or text.startswith("male_"):
        return "male"
    if text in ("f", "female") or text.startswith("female_"):
        return "female"
    return text or "unknown"


def require_rows(rows: list[Utterance], corpus: str, root: Path, layout: str) -> list[Utterance]:
    """An empty result is a layout problem (wrong folder), never a silently empty corpus."""
    if not rows:
        raise CorpusLayoutError(f"no {corpus} utterances found under {root}: expected {layout}")
    return rows
