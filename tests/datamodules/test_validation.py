"""The bad-input policy: every bad case is skipped and counted, or raises naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metaspeech.datamodules.manifest import Utterance
from metaspeech.datamodules.validation import (
    EMPTY_AUDIO,
    EMPTY_TEXT,
    MISSING,
    OOV,
    SAMPLE_RATE,
    TOO_LONG,
    TOO_SHORT,
    UNREADABLE,
    DataValidationError,
    ValidationReport,
    check_task_sizes,
    validate_utterances,
)

ALPHABET = set("abcdefghijklmnopqrstuvwxyz'")


@pytest.fixture
def good(tmp_path: Path, write_audio) -> Utterance:
    return Utterance(str(write_audio(tmp_path / "good.wav", 0.3)), "Hello there", "s1", 0.3)


@pytest.fixture
def bad_rows(tmp_path: Path, write_audio) -> dict[str, Utterance]:
    """One row per reason, keyed by the reason it must be skipped for."""
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(1000))
    empty = tmp_path / "zero.wav"
    sf.write(str(empty), np.zeros(0, dtype="float32"), 16000)

    def row(path: Path, text: str = "fine text") -> Utterance:
        return Utterance(str(path), text, "s2", 1.0)

    return {
        MISSING: row(tmp_path / "missing.wav"),
        UNREADABLE: row(corrupt),
        EMPTY_AUDIO: row(empty),
        TOO_SHORT: row(write_audio(tmp_path / "short.wav", 0.02)),
        TOO_LONG: row(write_audio(tmp_path / "long.wav", 1.5)),
        SAMPLE_RATE: row(write_audio(tmp_path / "rate.wav", 0.3, sample_rate=8000)),
        EMPTY_TEXT: row(write_audio(tmp_path / "blank.wav", 0.3), "  \t "),
        OOV: row(write_audio(tmp_path / "oov.wav", 0.3), "Café nº 5"),
    }


def validate(rows: list[Utterance], on_error: str = "skip") -> ValidationReport:
    return validate_utterances(rows, allowed_chars=ALPHABET, max_duration=1.0, sample_rate=16000, on_error=on_error)


def test_good_rows_pass_silently(good: Utterance, recwarn: pytest.WarningsRecorder) -> None:
    report = validate([good])
    assert report.kept == [good] and report.skipped == {}
    assert report.summary() == "all 1 utterance(s) passed validation"
    assert not recwarn.list


def test_each_bad_case_is_skipped_and_counted(good: Utterance, bad_rows: dict[str, Utterance]) -> None:
    with pytest.warns(UserWarning) as caught:
        report = validate([good, *bad_rows.values()])
    assert report.kept == [good]
    assert report.skipped == {reason: [row.audio_filepath] for reason, row in bad_rows.items()}
    assert report.num_skipped == 8
    assert report.bad_chars == {"é", "º", "5"}
    assert len(caught) == 1  # one warning for the whole corpus, not one per row
    message = str(caught[0].message)
    assert message.startswith("skipped 8 of 9 utterance(s) (")
    assert f"{MISSING}: 1" in message and f"{OOV}: 1" in message and "missing.wav" in message
    assert "['5', 'º', 'é']" in report.summary()


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (MISSING, r"missing\.wav: audio file does not exist; fix the path"),
        (UNREADABLE, r"corrupt\.wav: cannot read audio file"),
        (EMPTY_AUDIO, r"zero\.wav: audio has no samples"),
        (TOO_SHORT, r"short\.wav: audio lasts 0\.020s <= min_duration"),
        (TOO_LONG, r"long\.wav: audio lasts 1\.5s > max_duration"),
        (SAMPLE_RATE, r"rate\.wav: sample rate 8000 != expected 16000; resample"),
        (EMPTY_TEXT, r"blank\.wav: transcript is empty; add the transcript"),
        (OOV, r"oov\.wav: transcript 'Café nº 5' has characters \['5', 'º', 'é'\] outside the vocabulary"),
    ],
)
def test_raise_names_file_problem_and_fix(good: Utterance, bad_rows: dict[str, Utterance], reason: str, expected: str) -> None:
    with pytest.raises(DataValidationError, match=expected) as info:
        validate([good, bad_rows[reason]], on_error="raise")
    assert "on_bad_input='skip'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_raise_stops_at_first_bad_row(bad_rows: dict[str, Utterance]) -> None:
    rows = [bad_rows[EMPTY_TEXT], bad_rows[MISSING]]
    with pytest.raises(DataValidationError, match="blank.wav"):
        validate(rows, on_error="raise")


def test_optional_checks_are_off_by_default(bad_rows: dict[str, Utterance]) -> None:
    rows = [bad_rows[reason] for reason in (TOO_LONG, SAMPLE_RATE, OOV)]
    report = validate_utterances(rows, allowed_chars=None)
    assert report.kept == rows


def test_uppercase_text_is_checked_after_lowercasing(good: Utterance) -> None:
    assert validate([good]).kept == [good]  # "Hello there": H is allowed as h, the space always passes


def test_unknown_policy(good: Utterance) -> None:
    with pytest.raises(ValueError, match="on_error must be one of"):
        validate([good], on_error="ignore")


def test_check_task_sizes_names_small_tasks() -> None:
    assert check_task_sizes({"p225": 10, "p226": 8}, needed=8, key="speaker") == ([], "")
    too_small, message = check_task_sizes({"p225": 3, "p226": 9}, needed=8, key="speaker")
    assert too_small == ["p225"]
    assert message == "speaker 'p225' has 3 utterances but k_shot+q_query needs 8: lower k/q or drop the speaker"
    many = check_task_sizes({f"s{i:02d}": i for i in range(12)}, needed=12, key="speaker")
    assert len(many.too_small) == 12
    assert many.message.startswith("12 speaker tasks have fewer utterances than k_shot+q_query needs (12): 's00' (0),")
    assert "and 2 more" in many.message


def test_audio_at_another_rate_is_kept_for_resampling_and_counted(tmp_path: Path, write_audio, good) -> None:
    """The README's policy: wrong-rate audio is resampled (in skip and raise mode), with a count in the warning."""
    rows = [good, *(Utterance(str(write_audio(tmp_path / f"r{i}.wav", 0.3, sample_rate=8000)), "ok", "s1", 0.3) for i in range(2)),
            Utterance(str(write_audio(tmp_path / "r48.wav", 0.3, sample_rate=48000)), "ok", "s1", 0.3)]
    for on_error in ("skip", "raise"):
        with pytest.warns(UserWarning, match=r"resampling 3 utterance\(s\) to 16000 Hz \(8000 Hz: 2, 48000 Hz: 1; e\.g\. .*r0\.wav\)"):
            report = validate_utterances(rows, allowed_chars=None, resample_to=16000, on_error=on_error)
        assert len(report.kept) == 4 and set(report.resampled.values()) == {8000, 48000}


def test_the_skip_warning_names_the_skipped_files_and_counts_the_rest(tmp_path: Path, write_audio) -> None:
    rows = [Utterance(str(tmp_path / f"gone{i}.wav"), "text", "s1", 1.0) for i in range(7)]
    with pytest.warns(UserWarning) as caught:
        validate_utterances(rows, allowed_chars=None)
    message = str(caught[0].message)
    assert all(f"gone{i}.wav" in message for i in range(5)) and "and 2 more" in message
