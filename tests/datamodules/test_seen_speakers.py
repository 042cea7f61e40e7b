"""The "seen speakers, new sentences" evaluation group of the test protocol."""

from __future__ import annotations

from metaspeech.datamodules.seen_speakers import SEEN_GROUP
from metaspeech.training.reporting import last_test_report


def test_seen_speakers_are_scored_on_sentences_removed_from_meta_training(tiny_data) -> None:
    data = tiny_data(seen_speakers=2, seen_sentences=3)
    data.setup("test")
    assert len(data.seen_tasks) == 2
    train_texts = set(data.datasets["train"].texts)
    train_ids = set(data.datasets["train"].ids)
    test = data.datasets["test"]
    for task in data.seen_tasks:
        speaker = task.name.removesuffix("@seen")
        held_out = [test.ids[i] for i in task.evaluation]
        assert len(held_out) == 3 and all(i.startswith(speaker) for i in held_out)
        assert not {test.texts[i] for i in task.evaluation} & train_texts  # new sentences
        assert not set(held_out) & train_ids
        assert {test.ids[i] for i in task.pool} <= train_ids  # adaptation pool: the speaker's training utterances
        assert len(task.pool) == data.eval_pool_size
    loader_tasks = [item.task for item in data.test_dataloader()]
    assert {t.name for t in data.seen_tasks} <= set(loader_tasks)
    groups = data.task_groups("test")
    assert {groups[t.name] for t in data.seen_tasks} == {SEEN_GROUP}
    assert {"seen accent", "unseen accent"} & set(groups.values())


def test_without_seen_speakers_nothing_changes(tiny_data) -> None:
    plain, none = tiny_data(), tiny_data(seen_speakers=0)
    plain.setup("fit"), none.setup("fit")
    assert plain.datasets["train"].ids == none.datasets["train"].ids and none.seen_tasks == []


def test_the_report_has_a_row_for_seen_speakers(tiny_data, tiny_module, tiny_trainer, tmp_path) -> None:
    from metaspeech.algorithms import FOMAML

    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1], test_steps=[0, 1], results_dir=str(tmp_path))
    trainer = tiny_trainer()
    trainer.test(module, datamodule=tiny_data(seen_speakers=2, seen_sentences=3), verbose=False)
    report = last_test_report(trainer)
    assert SEEN_GROUP in report.group_names()
    assert report.subset(SEEN_GROUP).conditions()[0].speakers == 2
    assert report.conditions()[0].speakers == 3  # the headline rows: held-out speakers only
