"""Test-time adaptation (scope, optimizer, learning rate, steps) is chosen on meta-val speakers only, and reported."""

from __future__ import annotations

import json

import pytest

from metaspeech.algorithms import FOMAML, HyperInit, MetaAlgorithm, MetaSGD
from metaspeech.errors import ConfigError
from metaspeech.evaluation.selection import TestTimeSelection
from metaspeech.evaluation.test_time import TestTimeAdaptation


class DecayingLR(MetaAlgorithm):
    """A user's plugin with a hand-written step size schedule: it does not learn its rate, so it is searched."""

    def step_size(self, step: int, name: str) -> float:
        return 0.5 / (1 + step)


def test_selection_reads_only_meta_val_picks_the_best_candidate_and_reports_it(
    tiny_data, tiny_module, tiny_trainer, tmp_path, monkeypatch
) -> None:
    selection = TestTimeSelection([TestTimeAdaptation(lr=5e4), TestTimeAdaptation(lr=0.5),
                                   TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3)], steps=[1, 2])
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1, 3], test_steps=[0, 2], results_dir=str(tmp_path),
                         test_time_selection=selection)
    data = tiny_data()
    tiny_trainer(max_steps=4, limit_val_batches=0).fit(module, datamodule=data)
    splits_read = []
    original = type(data)._evaluation_loader

    def recording(self, split):
        splits_read.append(split)
        return original(self, split)

    monkeypatch.setattr(type(data), "_evaluation_loader", recording)
    tiny_trainer().test(module, datamodule=data, verbose=False)
    assert splits_read.count("val") == 1 and splits_read.count("test") == 1  # the search read meta-val; the protocol, test
    saved = json.loads((tmp_path / "adaptation_fomaml.json").read_text())["settings"]
    search = saved["test_time_selection"]["meta_val_wer"]
    assert set(search) == {"training scope / sgd / lr 50000.0", "training scope / sgd / lr 0.5", "all / adam / lr 0.001"}
    assert all(set(by_steps) == {"0", "1", "2"} for by_steps in search.values())
    names = list(search)  # in candidate order: ties go to the earlier candidate, then to fewer steps
    best = min((wer, names.index(name), int(s)) for name, by_steps in search.items() for s, wer in by_steps.items())
    chosen = saved["test_time_selection"]["chosen"]
    assert f"{chosen['scope']} / {chosen['optimizer']} / lr {chosen['lr']}" == names[best[1]]
    assert saved["test_time_selection"]["steps"] == best[2]
    assert saved["test_time"] == module.test_time.describe() == chosen
    assert module.algorithm.eval_inner_lr is None  # the plugin is never written to


def test_a_plugin_searches_only_the_scopes_its_meta_parameters_allow(tiny_module) -> None:
    grid = TestTimeSelection([TestTimeAdaptation(lr=0.1), TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3),
                              TestTimeAdaptation(scope=["lhuc"], optimizer="adam", lr=1e-3)])
    metasgd = tiny_module(MetaSGD())
    own = TestTimeAdaptation(optimizer="sgd")  # a candidate without an optimizer runs the plugin's own, named in reports
    assert grid.candidates_for(metasgd.algorithm, metasgd.learner) == [own]  # its learned rates, its scope
    hyperinit = tiny_module(HyperInit())  # set up: its generators exist, one per weight of its scope
    resolved = [TestTimeAdaptation(optimizer="sgd", lr=0.1), *grid.candidates[1:]]
    assert grid.candidates_for(hyperinit.algorithm, hyperinit.learner) == resolved[:2]  # [all] contains its scope
    with pytest.raises(ConfigError, match="model.test_time.scope"):
        tiny_module(HyperInit(), test_time=TestTimeAdaptation(scope=["lhuc"]))  # would drop generated weights
    with pytest.raises(ConfigError, match="model.test_time.scope"):
        tiny_module(MetaSGD(), test_time=TestTimeAdaptation(scope=["all"]))
    fomaml = tiny_module(FOMAML())
    assert grid.candidates_for(fomaml.algorithm, fomaml.learner) == resolved
    adam = tiny_module(FOMAML(inner_optimizer="adam"))
    assert grid.candidates_for(adam.algorithm, adam.learner)[0] == TestTimeAdaptation(optimizer="adam", lr=0.1)


def test_a_hand_written_step_size_schedule_is_searched(tiny_module) -> None:
    assert not DecayingLR.learns_inner_lr and MetaSGD.learns_inner_lr
    grid = TestTimeSelection([TestTimeAdaptation(lr=0.1), TestTimeAdaptation(lr=0.3)])
    module = tiny_module(DecayingLR())
    assert grid.candidates_for(module.algorithm, module.learner) == [c.resolved(module.algorithm) for c in grid.candidates]


def test_bad_grids_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="candidates"):
        TestTimeSelection([])
    with pytest.raises(ConfigError, match="model.test_time.lr"):
        TestTimeAdaptation(lr=-1.0)
    with pytest.raises(ConfigError, match="model.test_time.optimizer"):
        TestTimeAdaptation(optimizer="rmsprop")


def test_a_candidate_that_diverges_on_meta_val_is_out_of_the_search_not_the_end_of_the_test(
        tiny_data, tiny_module, tiny_trainer) -> None:
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5))
    data = tiny_data()
    tiny_trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
    data.setup("test")
    exploding, stable = TestTimeAdaptation(optimizer="sgd", lr=1e30), TestTimeAdaptation(optimizer="sgd", lr=0.5)
    items = list(data.val_dataloader())
    chosen = TestTimeSelection([exploding, stable], steps=[1, 2]).select(
        module.model, module.learner, module.algorithm, module.tokenizer, items, shots=3, steps=[1, 2])
    assert chosen.test_time == stable
    assert chosen.meta_val_wer["training scope / sgd / lr 1e+30"] == {0: None, 1: None, 2: None}
    assert all(w is not None for w in chosen.meta_val_wer["training scope / sgd / lr 0.5"].values())
    with pytest.raises(ConfigError, match="every candidate's inner loop diverged"):
        TestTimeSelection([exploding]).select(module.model, module.learner, module.algorithm, module.tokenizer, items,
                                              shots=3, steps=[1, 2])
