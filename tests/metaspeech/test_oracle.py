"""The speaker oracle (metaspeech.evaluation.oracle) and the share of the speaker gap closed in the report."""

from __future__ import annotations

import math

import pytest
import torch

from metaspeech.algorithms import FOMAML
from metaspeech.evaluation.oracle import SpeakerOracle
from metaspeech.evaluation.scoring import AdaptationReport, UtteranceRecord
from metaspeech.training.reporting import last_test_report


def _record(task: str, shots: int, steps: int, errors: int, words: int = 10) -> UtteranceRecord:
    return UtteranceRecord(task, shots, steps, "u", "ref", "hyp", errors, words, errors, words)


def test_gap_closed_is_the_share_of_the_way_from_no_adaptation_to_the_oracle() -> None:
    records = [_record("a", 5, 0, 6), _record("b", 5, 0, 4), _record("a", 5, 5, 4), _record("b", 5, 5, 3)]
    oracle = [_record("a", 30, 20, 2), _record("b", 30, 10, 2)]
    report = AdaptationReport(records, groups={"a": "seen accent", "b": "unseen accent"}, oracle=oracle)
    cells = {(c.shots, c.steps): c for c in report.conditions()}
    # s=0: 10/20 = 50 %, adapted: 7/20 = 35 %, oracle: 4/20 = 20 %: (50 - 35) / (50 - 20) = 0.5.
    assert cells[(5, 5)].oracle_wer == pytest.approx(0.2)
    assert cells[(5, 5)].gap_closed == pytest.approx(0.5)
    assert cells[(5, 0)].gap_closed == pytest.approx(0.0)
    seen = report.subset("seen accent").conditions()[1]
    assert seen.gap_closed == pytest.approx((0.6 - 0.4) / (0.6 - 0.2))
    assert "Speaker oracle" in report.render() and "gap closed" in report.render()


def test_gap_closed_is_undefined_without_an_oracle_or_when_the_oracle_is_no_better(tmp_path) -> None:
    records = [_record("a", 5, 0, 6), _record("a", 5, 5, 4)]
    assert math.isnan(AdaptationReport(records).conditions()[1].gap_closed)
    worse_oracle = AdaptationReport(records, oracle=[_record("a", 30, 0, 7)])
    assert math.isnan(worse_oracle.conditions()[1].gap_closed)
    report = AdaptationReport(records, oracle=[_record("a", 30, 5, 1)])
    loaded = AdaptationReport.load(report.write(tmp_path)["json"])
    assert loaded.conditions()[1].gap_closed == pytest.approx(report.conditions()[1].gap_closed)


def test_the_oracle_fine_tunes_copies_early_stops_and_picks_a_scope(tiny_data, tiny_module) -> None:
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    data.setup("test")
    item = next(iter(data.test_dataloader()))
    assert item.oracle is not None and item.oracle.examples_per_task == 8
    module = tiny_module(FOMAML()).eval()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    oracle = SpeakerOracle(scopes=["head", "all"], max_steps=30, learning_rates=[3e-3], eval_every=5)
    fit = oracle.fit(module.model, module.learner.loss, item.oracle)
    assert fit.scope in ("head", "all") and fit.training_utterances == 6  # 2 of 8 held out for early stopping
    assert fit.steps > 0 and fit.steps % 5 == 0
    start = SpeakerOracle(scopes=[fit.scope], max_steps=0).fit(module.model, module.learner.loss, item.oracle)
    assert start.steps == 0 and fit.dev_loss < start.dev_loss
    assert all(torch.equal(before[n], p) for n, p in module.model.named_parameters())


def test_the_test_report_carries_the_oracle_of_every_held_out_speaker(tiny_data, tiny_module, tiny_trainer) -> None:
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1, 3], test_steps=[0, 2],
                         oracle=SpeakerOracle(scopes=["head"], max_steps=10, eval_every=5))
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0)
    trainer.test(module, datamodule=data)
    report = last_test_report(trainer)
    speakers = {r.task for r in report.records}
    assert {r.task for r in report.oracle} == speakers and {r.shots for r in report.oracle} == {8}
    assert report.settings["oracle"]["chosen_scopes"] == {"head": len(speakers)}
    for c in report.conditions():
        assert c.oracle_wer == pytest.approx(sum(r.word_errors for r in report.oracle) / sum(r.words for r in report.oracle))


class _CountingOracle(SpeakerOracle):
    """Counts held-out checks: with ``eval_every`` steps between them, how far fine-tuning ran."""

    checks = 0

    @staticmethod
    def _dev_loss(learner, fast, prepared_dev) -> float:
        _CountingOracle.checks += 1
        return SpeakerOracle._dev_loss(learner, fast, prepared_dev)


def test_patience_stops_an_over_fitting_scope_early_and_keeps_the_same_best(tiny_data, tiny_module) -> None:
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    data.setup("test")
    pool = next(iter(data.test_dataloader())).oracle
    module = tiny_module(FOMAML()).eval()
    fits, checks = {}, {}
    for patience in (None, 2, 100):  # lr 3.0: the held-out loss blows up and never recovers
        _CountingOracle.checks = 0
        oracle = _CountingOracle(scopes=["all"], max_steps=30, learning_rates=[3.0], eval_every=2, patience=patience)
        fits[patience], checks[patience] = oracle.fit(module.model, module.learner.loss, pool), _CountingOracle.checks
    assert checks[None] == checks[100] == 16  # step 0 and every 2nd of 30 steps
    assert checks[2] == fits[None].steps // 2 + 1 + 2  # up to the best check, then two checks without gain
    for patience in (2, 100):
        assert fits[patience].steps == fits[None].steps and fits[patience].dev_loss == fits[None].dev_loss


@pytest.mark.parametrize("best_lr, edge", [(1e-4, "smallest"), (3e-4, None), (1e-3, "largest")])
def test_a_choice_at_an_end_of_the_learning_rate_grid_is_reported(best_lr, edge, monkeypatch) -> None:
    """The meta-val search picks the rate with the fewest word errors; at an end of the grid, the report says so."""
    oracle = SpeakerOracle(scopes=["all"], learning_rates=[1e-4, 3e-4, 1e-3], search_speakers=2)
    monkeypatch.setattr(SpeakerOracle, "_fit_setting", lambda self, model, loss, setting, pool: setting)
    errors = {1e-4: 5, 3e-4: 5, 1e-3: 5, best_lr: 2}
    chosen = oracle.choose(None, None, [("pool", "evaluation")] * 2, lambda setting, evaluation: (errors[setting.lr], 10))
    assert chosen.lr == best_lr
    described = oracle.describe()
    assert described["chosen_at_grid_edge"] == edge and described["meta_val_wer"]["all @ 0.0003"] == (0.2 if edge is None else 0.5)


@pytest.mark.parametrize("rates, max_steps", [([1e-4], 200), ([1e-4, 1e-3], 0)])
def test_no_edge_is_reported_for_one_rate_or_an_oracle_that_takes_no_step(rates, max_steps, monkeypatch) -> None:
    oracle = SpeakerOracle(scopes=["all", "head"], learning_rates=rates, max_steps=max_steps, search_speakers=1)
    monkeypatch.setattr(SpeakerOracle, "_fit_setting", lambda self, model, loss, setting, pool: setting)
    oracle.choose(None, None, [("pool", "evaluation")], lambda setting, evaluation: (1, 10))
    assert oracle.chosen is not None and oracle.chosen_at_grid_edge() is None


def test_patience_must_be_positive() -> None:
    with pytest.raises(ValueError, match="patience"):
        SpeakerOracle(patience=0)


def test_no_oracle_ever_trains_or_early_stops_on_an_evaluation_utterance(tiny_data, tiny_module, tiny_trainer, monkeypatch) -> None:
    fitted = []  # (training ids, held-out ids) of every oracle fine-tuning: the meta-val search, the speaker and accent oracles
    original = SpeakerOracle._fit_scope

    def recording(self, learner, setting, train, dev):
        fitted.append((set(train.ids[0]), set(dev.ids[0])))
        return original(self, learner, setting, train, dev)

    monkeypatch.setattr(SpeakerOracle, "_fit_scope", recording)
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    accents = {"spk015": "a", "spk016": "b", "spk017": "b"}  # two held-out speakers share accent b
    monkeypatch.setattr(type(data), "task_accents", lambda self, split="test": accents)
    oracle = SpeakerOracle(scopes=["head"], learning_rates=[1e-3, 3e-3], max_steps=4, eval_every=2, accent=True)
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1], test_steps=[0, 1], oracle=oracle)
    trainer = tiny_trainer()
    trainer.test(module, datamodule=data, verbose=False)
    test_items, val_items = list(data.test_dataloader()), list(data.val_dataloader())
    evaluation = {u for item in test_items + val_items for u in item.evaluation.ids[0]}
    pools = {item.task: set(item.oracle.ids[0]) for item in test_items}
    assert len(fitted) == 2 * len(val_items) + len(test_items) + 2  # the grid on meta-val; one chosen fit per speaker; 2 accent fits
    assert all(not (train | dev) & evaluation for train, dev in fitted)
    accent_fits = [(t, d) for t, d in fitted if len(t) > 6]
    assert len(accent_fits) == 2
    for train, dev in accent_fits:  # the mate's whole oracle pool, the target's own pool, held-out part from the target
        target = next(task for task in ("spk016", "spk017") if dev <= pools[task])
        mate = ({"spk016", "spk017"} - {target}).pop()
        assert pools[mate] <= train and train - pools[mate] == pools[target] - dev
    report = last_test_report(trainer)
    assert {r.task for r in report.accent_oracle} == {"spk016", "spk017"}
    assert report.settings["oracle"]["chosen_on_meta_val"]["lr"] in (1e-3, 3e-3)
    assert set(report.settings["oracle"]["meta_val_wer"]) == {"head @ 0.001", "head @ 0.003"}
    assert report.settings["oracle"]["chosen_at_grid_edge"] in ("smallest", "largest")  # a grid of two rates: both are ends
    assert "accent oracle" in {row["condition"] for row in report.decomposition_rows()}
    seconds = report.settings["seconds"]  # where the test's time went, part by part
    assert set(seconds) == {"oracle_search", "protocol", "oracle", "accent_oracle"} and min(seconds.values()) > 0


def test_a_few_shot_cell_below_the_oracle_is_flagged() -> None:
    from metaspeech.cli.experiment import markdown_table, summarize

    records = [_record("a", 5, 0, 6), _record("a", 5, 5, 1), _record("a", 5, 1, 5)]
    report = AdaptationReport(records, oracle=[_record("a", 30, 20, 2)])
    cells = {(c.shots, c.steps): c for c in report.conditions()}
    assert cells[(5, 5)].beats_oracle and not cells[(5, 1)].beats_oracle and not cells[(5, 0)].beats_oracle
    assert "below the speaker oracle" in report.render()
    rows = summarize({"joint": {0: report}})
    assert [r["beats_oracle"] for r in rows if r["group"] == "all"] == [False, False, True]
    table = markdown_table(rows)
    assert table.count("(below the oracle)") == 1 and "| 5 | 5 |" in table.split("(below the oracle)")[0].splitlines()[-1]
