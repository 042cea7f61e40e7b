"""The bad-input policy, applied to manifest rows before any feature is computed.

Real corpora contain broken files, empty transcripts, stray characters and
speakers with a handful of recordings. Each such row is either dropped with one
warning that counts it (``on_error="skip"``), or stops the run at the first bad
row with a message naming the file, the problem and the fix
(``on_error="raise"``). Nothing bad reaches feature extraction silently.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from metaspeech.datamodules.manifest import Utterance
from metaspeech.errors import DataError
from metaspeech.speech.audio import AudioError, AudioHeader, audio_header

ON_ERROR = ("skip", "raise")
PROBE_THREADS = 8

MISSING = "missing audio file"
UNREADABLE = "unreadable audio"
EMPTY_AUDIO = "zero-length audio"
TOO_SHORT = "audio too short"
TOO_LONG = "audio too long"
SAMPLE_RATE = "sample rate mismatch"
EMPTY_TEXT = "empty transcript"
OOV = "characters outside the vocabulary"


class DataValidationError(DataError):
    """A manifest row is unusable; the message names the file, the problem and the fix."""


class Problem(NamedTuple):
    reason: str  # one of the reason constants above: the key of ValidationReport.skipped
    detail: str  # what exactly is wrong with this row
    fix: str  # what the user can do about it


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_utterances`: rows kept and, per reason, the audio paths dropped."""

    kept: list[Utterance] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    bad_chars: set[str] = field(default_factory=set)
    resampled: dict[str, int] = field(default_factory=dict)
    """Kept audio paths at another rate than ``resample_to`` -> their rate (resampled when loaded)."""
    downmixed: dict[str, int] = field(default_factory=dict)
    """Kept audio paths with more than one channel -> their channels (averaged to mono when loaded)."""

    @property
    def num_skipped(self) -> int:
        return sum(len(paths) for paths in self.skipped.values())

    def summary(self) -> str:
        total = len(self.kept) + self.num_skipped
        if not self.skipped:
            return f"all {total} utterance(s) passed validation"
        counts = ", ".join(f"{reason}: {len(paths)}" for reason, paths in sorted(self.skipped.items()))
        text = f"skipped {self.num_skipped} of {total} utterance(s) ({counts})"
        if self.bad_chars:
            text += f"; characters outside the vocabulary: {sorted(self.bad_chars)}"
        return text

    def resampling_note(self, target: int) -> str:
        """One line counting the kept files that are resampled to ``target`` Hz ("" when none)."""
        if not self.resampled:
            return ""
        rates = ", ".join(f"{rate} Hz: {n}" for rate, n in sorted(_count(self.resampled.values()).items()))
        example = next(iter(self.resampled))
        return f"resampling {len(self.resampled)} utterance(s) to {target} Hz ({rates}; e.g. {example})"


    def downmix_note(self) -> str:
        """One line counting the kept files with several channels, averaged to mono ("" when none)."""
        if not self.downmixed:
            return ""
        example = next(iter(self.downmixed))
        return f"averaging {len(self.downmixed)} multi-channel utterance(s) to mono (e.g. {example})"


def _count(values: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def validate_utterances(
    rows: Iterable[Utterance],
    *,
    allowed_chars: set[str] | None,
    min_duration: float = 0.05,
    max_duration: float | None = None,
    sample_rate: int | None = None,
    resample_to: int | None = None,
    on_error: str = "skip",
) -> ValidationReport:
    """Check every row; keep the good ones, skip or raise on the bad ones.

    Checks, in order: the audio file exists and libsndfile can read its header;
    it has more than ``min_duration`` seconds (zero-length audio is its own
    reason) and at most ``max_duration``; its rate equals ``sample_rate`` when
    given; the transcript is not blank; after lowercasing it uses only
    ``allowed_chars`` (whitespace always passes: word boundaries are the text
    normalizer's business). Durations come from the files, not from the rows.
    With ``resample_to`` (and no ``sample_rate``), files at another rate are kept,
    listed in ``report.resampled`` and counted in the warning: they are resampled
    when loaded. Multi-channel files are kept too, listed in ``report.downmixed`` and
    counted in the warning: they are averaged to mono when loaded.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    rows = list(rows)
    with ThreadPoolExecutor(max_workers=PROBE_THREADS) as pool:
        headers = list(pool.map(_read_header, [row.audio_filepath for row in rows]))
    report = ValidationReport()
    for row, header in zip(rows, headers):
        problem = _check(row, header, allowed_chars, min_duration, max_duration, sample_rate)
        if problem is None:
            report.kept.append(row)
            if resample_to is not None and header.sample_rate != resample_to:
                report.resampled[row.audio_filepath] = header.sample_rate
            if header.channels > 1:
                report.downmixed[row.audio_filepath] = header.channels
            continue
        if on_error == "raise":
            raise DataValidationError(
                f"{row.audio_filepath}: {problem.detail}; {problem.fix} "
                f"(or set on_bad_input='skip' to drop such rows with a warning)"
            )
        report.skipped.setdefault(problem.reason, []).append(row.audio_filepath)
        if problem.reason == OOV:
            report.bad_chars |= _bad_chars(row.text, allowed_chars or set())
    notes = [report.summary()] if report.skipped else []
    if report.skipped:
        notes[0] += " [" + "; ".join(f"{reason}: {_listing(paths)}" for reason, paths in sorted(report.skipped.items())) + "]"
    if report.resampled:
        notes.append(report.resampling_note(resample_to or 0))
    if report.downmixed:
        notes.append(report.downmix_note())
    if notes:
        warnings.warn("; ".join(notes), stacklevel=2)
    return report


def _listing(paths: list[str], limit: int = 5) -> str:
    """Every skipped file up to ``limit``, then how many more: each skipped item is named."""
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def _read_header(path: str) -> AudioHeader | AudioError:
    """The file's header, or the error (returned, so one bad file does not stop the pool)."""
    try:
        return audio_header(path)
    except AudioError as err:
        return err


def _check(
    row: Utterance,
    header: AudioHeader | AudioError,
    allowed_chars: set[str] | None,
    min_duration: float,
    max_duration: float | None,
    sample_rate: int | None,
) -> Problem | None:
    """The first problem of a row, or ``None`` when it is usable."""
    if isinstance(header, AudioError):
        if not Path(row.audio_filepath).exists():
            return Problem(MISSING, "audio file does not exist", "fix the path in the manifest or restore the file")
        return Problem(UNREADABLE, str(header), "re-download or convert the file, or remove the row")
    duration, rate = header.duration, header.sample_rate
    if duration <= 0:
        return Problem(EMPTY_AUDIO, "audio has no samples (zero-length)", "re-record or remove the file")
    if duration <= min_duration:
        return Problem(TOO_SHORT, f"audio lasts {duration:.3f}s <= min_duration={min_duration}s", "remove the row or lower min_duration")
    if max_duration is not None and duration > max_duration:
        return Problem(TOO_LONG, f"audio lasts {duration:.1f}s > max_duration={max_duration}s", "segment the file or raise max_duration")
    if sample_rate is not None and rate != sample_rate:
        return Problem(SAMPLE_RATE, f"sample rate {rate} != expected {sample_rate}",
                       f"resample the file to {sample_rate} Hz (e.g. with sox)")
    if not row.text.strip():
        return Problem(EMPTY_TEXT, "transcript is empty", "add the transcript or remove the row")
    bad = _bad_chars(row.text, allowed_chars) if allowed_chars is not None else set()
    if bad:
        return Problem(OOV, f"transcript {row.text!r} has characters {sorted(bad)} outside the vocabulary",
                       "normalize the text, extend the vocabulary, or remove the row")
    return None


def _bad_chars(text: str, allowed_chars: set[str]) -> set[str]:
    return {char for char in text.lower() if not char.isspace() and char not in allowed_chars}


class TaskSizeCheck(NamedTuple):
    """Tasks with too few utterances, and one message naming them (``""`` when none)."""

    too_small: list[str]
    message: str


def check_task_sizes(task_to_count: dict[str, int], needed: int, key: str, what: str = "k_shot+q_query") -> TaskSizeCheck:
    """Find tasks (speakers, accents, ...) that cannot fill one episode of ``needed`` utterances.

    ``key`` is the task label (``speaker``) and ``what`` names where ``needed``
    comes from, so the message says which setting to change.
    """
    small = sorted((task for task, count in task_to_count.items() if count < needed), key=str)
    if not small:
        return TaskSizeCheck([], "")
    if len(small) == 1:
        task = small[0]
        message = (
            f"{key} {task!r} has {task_to_count[task]} utterances but {what} needs {needed}: "
            f"lower k/q or drop the {key}"
        )
    else:
        listed = ", ".join(f"{task!r} ({task_to_count[task]})" for task in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        message = (
            f"{len(small)} {key} tasks have fewer utterances than {what} needs ({needed}): "
            f"{listed}{more}: lower k/q or drop these tasks"
        )
    return TaskSizeCheck(small, message)
