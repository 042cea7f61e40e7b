"""The label-free and transductive rows of the test protocol, chosen on meta-val speakers only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaspeech.algorithms import FOMAML
from metaspeech.errors import ConfigError
from metaspeech.training.label_free import LabelFreeEvaluation, LabelFreeRow, choose_on_meta_val


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_root, feature_cache):
    """A tiny FOMAML model trained 30 outer steps on the tiny corpus, with its data module."""
    import lightning as L

    from metaspeech.datamodules import EmbeddedCorpus
    from metaspeech.models import BiLSTMCTC
    from metaspeech.training.module import MetaSpeechModule
    from tests.conftest import TINY_MODEL_ARGS

    data = EmbeddedCorpus(preset="tiny", root=str(corpus_root), cache_dir=str(feature_cache), k_shot=3, q_query=3,
                          tasks_per_batch=4, batches_per_epoch=10, eval_pool_size=5, eval_size=4, seed=0)
    torch.manual_seed(0)
    module = MetaSpeechModule(BiLSTMCTC(vocab_size=29, input_dim=80, **TINY_MODEL_ARGS), FOMAML(inner_steps=1, inner_lr=0.2),
                              scope=["lin", "lhuc", "head"], lr=3e-3, warmup_steps=1, val_shots=3, val_steps=3,
                              test_shots=[1, 5], test_steps=[0, 3],
                              results_dir=str(tmp_path_factory.mktemp("label-free-results")))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                        use_distributed_sampler=False, limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=tmp_path_factory.mktemp("label-free"))
    trainer.fit(module, datamodule=data)
    return module, data


def test_per_utterance_regroups_a_speaker(trained) -> None:
    _, data = trained
    item = next(iter(data.test_dataloader()))
    regrouped = item.evaluation.per_utterance()
    b = item.evaluation.examples_per_task
    assert regrouped.num_tasks == b and regrouped.examples_per_task == 1
    assert torch.equal(regrouped.inputs[0][2, 0], item.evaluation.inputs[0][0, 2])
    assert regrouped.texts == [[t] for t in item.evaluation.texts[0]]


class _Spy:
    """Wraps a data module's evaluation loaders and records, in order, which split's speakers were read."""

    def __init__(self, data) -> None:
        self.data, self.read = data, []

    def __getattr__(self, name):
        return getattr(self.data, name)

    def _loader(self, split: str, loader):
        for item in loader:
            self.read.append((split, item.task))
            yield item

    def val_dataloader(self):
        return self._loader("val", self.data.val_dataloader())

    def test_dataloader(self):
        return self._loader("test", self.data.test_dataloader())


def test_the_label_free_choice_is_made_on_meta_val_speakers_before_any_test_speaker_is_read(trained) -> None:
    module, data = trained
    spy = _Spy(data)
    callback = LabelFreeEvaluation(objectives=["entropy"], transductive=["entropy"], learning_rates=[0.05, 0.5], steps=[1, 3])
    trainer = type("Trainer", (), {"datamodule": spy})()
    callback.on_test_start(trainer, module)
    splits = [split for split, _ in spy.read]
    first_test = splits.index("test")
    assert set(splits[:first_test]) == {"val"} and set(splits[first_test:]) == {"test"}
    val_speakers = {task for split, task in spy.read if split == "val"}
    test_speakers = {task for split, task in spy.read if split == "test"}
    assert val_speakers and test_speakers and not val_speakers & test_speakers
    alone = choose_on_meta_val(module, data.val_dataloader(), LabelFreeRow("entropy"), 3, [0.05, 0.5], [1, 3])
    assert callback.result["selection"][0] == alone
    assert set(alone["meta_val_wer"]) == {f"lr={lr} s={s}" for lr in (0.05, 0.5) for s in (1, 3)}


def test_the_test_report_carries_label_free_and_transductive_rows(trained, tiny_trainer) -> None:
    module, data = trained
    callback = LabelFreeEvaluation(objectives=["entropy", "pseudo_label"], transductive=["entropy"], learning_rates=[0.1],
                                   steps=[3])
    tiny_trainer(callbacks=[callback]).test(module, datamodule=data, verbose=False)
    saved = json.loads(next(Path(module.results_dir).glob("adaptation_*.json")).read_text())
    rows = saved["settings"]["label_free"]["rows"]
    cells = {(r["row"], r["shots"], r["steps"]) for r in rows if r["group"] == "all"}
    assert cells == {("entropy", 1, 3), ("entropy", 5, 3), ("pseudo_label", 1, 3), ("pseudo_label", 5, 3),
                     ("transductive entropy", 0, 3)}
    supervised = {(c["shots"], c["steps"]): c["wer"] for c in saved["conditions"]}
    for r in rows:
        assert 0 <= r["guard_refused"] <= 1 and 0 <= r["speakers_worse"] <= 1 and r["adapt_seconds_per_speech_second"] > 0
        if r["group"] == "all" and r["shots"]:
            assert r["unadapted_wer"] == pytest.approx(supervised[(r["shots"], 0)])  # the same utterances, unadapted
    assert {rec["row"] for rec in saved["settings"]["label_free"]["records"]} == {"entropy", "pseudo_label", "transductive entropy"}


def test_a_supervised_objective_is_refused_as_a_label_free_row() -> None:
    with pytest.raises(ConfigError, match="not a label-free objective"):
        LabelFreeEvaluation(objectives=["supervised"])
