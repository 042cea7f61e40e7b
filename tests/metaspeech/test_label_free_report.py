"""The label-free rows of a comparison: means over seeds, the share of the supervised gain, the markdown table."""

from __future__ import annotations

import json
import math

import pytest

from metaspeech.cli.experiment import write_comparison
from metaspeech.evaluation.label_free_report import share_of_gain
from metaspeech.evaluation.scoring import AdaptationReport, score_utterance


def _label_free_row(row: str, shots: int, steps: int, wer: float, selected: bool) -> dict:
    return {"row": row, "objective": "entropy", "setting": "transductive" if shots == 0 else "support", "group": "all",
            "shots": shots, "steps": steps, "selected": selected, "learning_rate": 0.05, "wer": wer, "cer": wer,
            "unadapted_wer": 0.5, "relative_wer_reduction": (0.5 - wer) / 0.5, "speakers_worse": 0.0, "speakers": 1,
            "utterances": 1, "guard_refused": 0.0, "adapt_seconds_per_speech_second": 0.1}


def _report(label_free_wer: float) -> AdaptationReport:
    """Supervised: 50 % WER unadapted, 25 % after 2 steps (k = 5); label-free rows in the settings."""
    records = [score_utterance("a", 5, 0, "u", "one two three four", "one two"),
               score_utterance("a", 5, 2, "u", "one two three four", "one two three")]
    rows = [_label_free_row("entropy", 5, 2, label_free_wer, True), _label_free_row("entropy", 5, 1, 0.5, False),
            _label_free_row("transductive entropy", 0, 2, 0.5, True)]
    return AdaptationReport(records, settings={"label_free": {"rows": rows}})


def test_share_of_gain() -> None:
    assert share_of_gain(0.5, 0.4, 0.25) == pytest.approx(0.4)
    assert math.isnan(share_of_gain(0.5, 0.4, 0.5))


def test_comparison_json_and_table_carry_the_label_free_rows_beside_the_supervised_ones(tmp_path) -> None:
    summary = write_comparison({"joint": {0: _report(0.4), 1: _report(0.3)}}, [0, 1], tmp_path)
    saved = json.loads((tmp_path / "comparison.json").read_text())
    cells = {(r["row"], r["shots"], r["steps"]): r for r in saved["label_free"]}
    entropy = cells[("entropy", 5, 2)]
    assert entropy["wer"] == pytest.approx(0.35) and entropy["supervised_wer"] == pytest.approx(0.25)
    assert entropy["share_of_supervised_gain"] == pytest.approx((0.5 - 0.35) / (0.5 - 0.25))
    assert cells[("transductive entropy", 0, 2)]["supervised_wer"] == pytest.approx(0.25)  # compared with k = 5
    table = summary["table"]
    assert "**Label-free adaptation, all held-out speakers**" in table
    assert "| joint | entropy | 5 | 2 | 0.05 | 35.0 ± 5.0 | 50.0 | 25.0 | 60 % | 0 % | 0 % | 0.100 |" in table
    assert "| joint | entropy | 5 | 1 |" not in table  # only the steps chosen on meta-val
    assert "| joint | transductive entropy | 0 | 2 |" in table


def test_a_comparison_without_label_free_runs_has_no_label_free_table(tmp_path) -> None:
    report = AdaptationReport([score_utterance("a", 5, 0, "u", "one two", "one")])
    summary = write_comparison({"joint": {0: report}}, [0], tmp_path)
    assert json.loads((tmp_path / "comparison.json").read_text())["label_free"] == []
    assert "Label-free" not in summary["table"]
