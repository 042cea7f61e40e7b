"""The test report Callback and the data contract, without a Trainer: scores in, one report and its metrics out."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest

from metaspeech.datamodules.contract import HeldOutSpeakers, SpeechFrontEnd
from metaspeech.errors import ConfigError
from metaspeech.evaluation.scoring import score_utterance
from metaspeech.training.reporting import AdaptationReportWriter, TaskScores, gather_objects


class _Module:
    """What the callback reads and writes on a MetaSpeechModule."""

    def __init__(self) -> None:
        self.protocol_settings = {"inner_lr_selection": {"eval_inner_lr": 0.5}}
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, rank_zero_only: bool = False) -> None:
        assert rank_zero_only
        self.logged[name] = value


class _Groups:
    eval_pool_size = 5

    def task_groups(self, split: str = "test") -> dict[str, str]:
        return {"a": "seen accent", "b": "unseen accent"}

    def audio_path(self, utterance_id: str) -> str | None:
        return None


def _scores(task: str, hypothesis: str) -> TaskScores:
    records = [score_utterance(task, 1, s, "u0", "the cat", "the cat" if s else hypothesis) for s in (0, 1)]
    return TaskScores(records, {(task, 1): 2.5})


def test_the_scores_of_every_task_become_one_report_with_groups_settings_and_metrics() -> None:
    writer, module = AdaptationReportWriter(), _Module()
    trainer = SimpleNamespace(world_size=1, datamodule=_Groups())
    writer.on_test_epoch_start(trainer, module)
    for index, scores in enumerate((_scores("a", "the hat"), _scores("b", "a cat"))):
        writer.on_test_batch_end(trainer, module, scores, None, index)
    writer.on_test_epoch_end(trainer, module)
    report = writer.report
    assert {r.task for r in report.records} == {"a", "b"} and report.adaptation_seconds == {("a", 1): 2.5, ("b", 1): 2.5}
    assert report.group_names() == ["seen accent", "unseen accent"]
    assert report.settings == module.protocol_settings
    assert module.logged == {"test/wer_k1_s0": 0.5, "test/cer_k1_s0": pytest.approx(report.conditions()[0].cer),
                             "test/wer_k1_s1": 0.0, "test/cer_k1_s1": 0.0}
    writer.on_test_epoch_start(trainer, module)
    assert writer.scores == []  # a second test on the same Trainer starts afresh


def test_shot_counts_beyond_the_pool_are_refused_before_adapting() -> None:
    writer = AdaptationReportWriter()
    writer.setup(SimpleNamespace(datamodule=_Groups()), SimpleNamespace(test_shots=[1, 5]), "test")
    with pytest.raises(ConfigError, match=r"model.test_shots=\[1, 8\].*data.init_args.eval_pool_size=5"):
        writer.setup(SimpleNamespace(datamodule=_Groups()), SimpleNamespace(test_shots=[1, 8]), "test")
    writer.setup(SimpleNamespace(datamodule=None), SimpleNamespace(test_shots=[1, 8]), "test")  # no contract, no check


def test_one_process_gathers_its_own_items() -> None:
    items = [object(), object()]
    assert gather_objects(SimpleNamespace(world_size=1), items) == items


def test_metaspeech_data_modules_meet_the_contract_and_others_need_not(tiny_data) -> None:
    data = tiny_data()
    assert isinstance(data, SpeechFrontEnd) and isinstance(data, HeldOutSpeakers)
    assert not isinstance(L.LightningDataModule(), SpeechFrontEnd)
    assert not isinstance(L.LightningDataModule(), HeldOutSpeakers)
