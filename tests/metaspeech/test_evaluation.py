"""The evaluation table's numbers on a fixture with known errors, computed by hand."""

from __future__ import annotations

import json

import pytest

from metaspeech.evaluation.scoring import AdaptationReport, score_utterance


def _records():
    # speaker a: 4 reference words per utterance
    #   s=0: "the cat sat down" -> "the cat sad"    : 1 substitution + 1 deletion = 2 errors / 4 words
    #   s=5: "the cat sat down" -> "the cat sat down": 0 / 4
    # speaker b: 2 reference words
    #   s=0: "hello world" -> "hello world"          : 0 / 2
    #   s=5: "hello world" -> "hello word there"     : 1 substitution + 1 insertion = 2 / 2
    return [
        score_utterance("a", 5, 0, "a1", "The cat sat down.", "the cat sad"),
        score_utterance("a", 5, 5, "a1", "The cat sat down.", "the cat sat down"),
        score_utterance("b", 5, 0, "b1", "Hello, world!", "hello world"),
        score_utterance("b", 5, 5, "b1", "Hello, world!", "hello word there"),
    ]


def test_word_and_character_errors_are_counted_after_normalization() -> None:
    first = _records()[0]
    assert (first.word_errors, first.words) == (2, 4)
    # "the cat sat down" (16 chars) vs "the cat sad": the best alignment keeps "the cat sa" and
    # matches hyp "d" with the "d" of "down": delete "t", " " and "own" = 5 edits
    assert (first.char_errors, first.chars) == (5, 16)


def test_corpus_wer_relative_reduction_median_and_share_worse() -> None:
    report = AdaptationReport(_records(), {("a", 5): 7.5, ("b", 5): 2.5})
    before, after = report.conditions()
    assert (before.steps, after.steps) == (0, 5)
    assert before.wer == pytest.approx(2 / 6)  # corpus level: (2 + 0) / (4 + 2), not a mean of rates
    assert after.wer == pytest.approx(2 / 6)
    assert after.relative_wer_reduction == pytest.approx(0.0)
    assert after.median_speaker_wer == pytest.approx((0.0 + 1.0) / 2)
    assert after.median_speaker_relative_reduction == pytest.approx((1.0 + 0.0) / 2)  # a: 0.5 -> 0; b starts perfect: 0
    assert after.speakers_worse == pytest.approx(0.5)  # b got worse, a got better
    assert after.adaptation_seconds == pytest.approx(5.0)


def test_report_writes_json_and_csv_and_renders(tmp_path) -> None:
    report = AdaptationReport(_records())
    paths = report.write(tmp_path, name="t")
    data = json.loads(paths["json"].read_text())
    assert len(data["conditions"]) == 2 and len(data["records"]) == 4
    assert paths["csv"].read_text().splitlines()[0].startswith("shots,steps,wer")
    text = report.render()
    assert "33.3" in text


def test_speaker_groups_are_reported_separately(tmp_path) -> None:
    report = AdaptationReport(_records(), groups={"a": "seen accent", "b": "unseen accent", "absent": "seen accent"})
    assert report.group_names() == ["seen accent", "unseen accent"]
    seen = {c.steps: c for c in report.subset("seen accent").conditions()}
    unseen = {c.steps: c for c in report.subset("unseen accent").conditions()}
    assert (seen[0].wer, seen[5].wer, seen[5].relative_wer_reduction) == (0.5, 0.0, 1.0)
    assert (unseen[0].wer, unseen[5].wer) == (0.0, 1.0)
    data = json.loads(report.write(tmp_path, name="g")["json"].read_text())
    assert data["task_groups"] == {"a": "seen accent", "b": "unseen accent"}
    assert [c["wer"] for c in data["groups"]["unseen accent"]] == [0.0, 1.0]
    assert "unseen accent (1 spk)" in report.render()


def test_report_round_trips_through_its_json(tmp_path) -> None:
    report = AdaptationReport(_records(), groups={"a": "seen accent", "b": "unseen accent"})
    loaded = AdaptationReport.load(report.write(tmp_path, name="r")["json"])
    assert loaded.records == report.records and loaded.groups == report.groups
    assert [c.wer for c in loaded.conditions()] == [c.wer for c in report.conditions()]
