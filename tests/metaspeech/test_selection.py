"""The test-time inner learning rate is chosen on meta-val speakers only, and reported."""

from __future__ import annotations

import json

import pytest

from metaspeech.algorithms import FOMAML, MetaSGD
from metaspeech.errors import ConfigError
from metaspeech.selection import InnerLearningRateSelection


def test_selection_reads_only_meta_val_picks_the_best_candidate_and_reports_it(
    tiny_data, tiny_module, tiny_trainer, tmp_path, monkeypatch
) -> None:
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1, 3], test_steps=[0, 2], results_dir=str(tmp_path))
    data = tiny_data()
    tiny_trainer(max_steps=4, limit_val_batches=0).fit(module, datamodule=data)
    splits_read = []
    original = type(data)._evaluation_loader

    def recording(self, split):
        splits_read.append(split)
        return original(self, split)

    monkeypatch.setattr(type(data), "_evaluation_loader", recording)
    selection = InnerLearningRateSelection(learning_rates=[5e4, 0.5])
    tiny_trainer(callbacks=[selection]).test(module, datamodule=data, verbose=False)
    searched = selection.result["meta_val_wer"]
    assert set(searched) == {"50000.0", "0.5"}
    assert selection.result["eval_inner_lr"] == min((wer, float(lr)) for lr, wer in searched.items())[1]
    assert selection.result["eval_inner_lr"] == 0.5 and module.algorithm.eval_inner_lr == 0.5
    assert splits_read.count("val") == 1 and splits_read.count("test") == 1  # the search read meta-val; the protocol, test
    saved = json.loads((tmp_path / "adaptation_fomaml.json").read_text())
    assert saved["settings"]["inner_lr_selection"]["eval_inner_lr"] == 0.5


def test_learned_inner_learning_rates_are_left_alone(tiny_data, tiny_module, tiny_trainer, tmp_path) -> None:
    module = tiny_module(MetaSGD(inner_steps=1, inner_lr=0.5), test_shots=[1], test_steps=[0, 1], results_dir=str(tmp_path))
    selection = InnerLearningRateSelection(learning_rates=[0.1])
    tiny_trainer(callbacks=[selection], limit_test_batches=1).test(module, datamodule=tiny_data(), verbose=False)
    assert selection.result["eval_inner_lr"] == "learned by the algorithm"


def test_candidates_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="learning_rates"):
        InnerLearningRateSelection(learning_rates=[0.1, -1.0])
