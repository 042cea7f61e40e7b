"""Supervised speaker adaptation, then transductive adaptation from it: every condition on the tiny corpus."""

from __future__ import annotations

from benchmarks import enrolled_transductive as bench
from metaspeech.algorithms import FOMAML
from metaspeech.evaluation.oracle import SpeakerOracle
from metaspeech.evaluation.test_time import TestTimeAdaptation


def test_each_condition_is_scored_and_the_transductive_search_reads_meta_val(tiny_data, tiny_module, tiny_trainer) -> None:
    data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_time=TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3))
    tiny_trainer(max_steps=10, limit_val_batches=0).fit(module, datamodule=data)
    data.setup("test")
    val_items, test_items = list(data.val_dataloader()), list(data.test_dataloader())
    choices = bench.choose_transductive(module, val_items, 3, 2, [0.1, 0.5], [1, 2])
    assert set(choices) == {bench.TRANSDUCTIVE, bench.BOTH}
    assert all(c["learning_rate"] in (0.1, 0.5) and c["steps"] in (1, 2) and len(c["meta_val_wer"]) == 4 for c in choices.values())

    oracle = SpeakerOracle(scopes=["all"], learning_rates=[1e-3], max_steps=4, eval_every=2)
    vanishing = {name: {"learning_rate": 1e-12, "steps": 1} for name in choices}
    counts = bench.score_speakers(module, test_items, 3, 2, vanishing, oracle)
    assert set(counts) == set(bench.CONDITIONS) and all(set(c) == {i.task for i in test_items} for c in counts.values())
    assert counts[bench.TRANSDUCTIVE] == counts[bench.UNADAPTED]  # a vanishing step: each utterance stays where it started
    assert counts[bench.BOTH] == counts[bench.SUPERVISED]  # ... which for both is the speaker's supervised adaptation
    assert counts[bench.ORACLE_BOTH] == counts[bench.ORACLE]  # ... and for the matched ceiling the speaker oracle
    assert set(bench.score_speakers(module, test_items, 3, 2, vanishing)) == set(bench.CONDITIONS[:4])  # no oracle given

    counts = bench.score_speakers(module, test_items, 3, 2, choices, oracle)
    groups = data.task_groups("test")
    rows = bench.group_rows(counts, groups, {bench.ALL: 0.0})
    overall = {r["condition"]: r for r in rows if r["group"] == bench.ALL}
    assert set(overall) == set(bench.CONDITIONS)
    assert overall[bench.UNADAPTED]["relative_wer_reduction"] == 0 and overall[bench.UNADAPTED]["speakers_worse"] == 0
    errors = sum(counts[bench.BOTH][t][0] for t in counts[bench.BOTH] if groups.get(t) != bench.SEEN_SPEAKERS)
    words = sum(counts[bench.BOTH][t][1] for t in counts[bench.BOTH] if groups.get(t) != bench.SEEN_SPEAKERS)
    assert overall[bench.BOTH]["wer"] == errors / words
    assert overall[bench.BOTH]["gap_closed"] == (overall[bench.UNADAPTED]["wer"] - errors / words) / overall[bench.UNADAPTED]["wer"]
    matched = overall[bench.UNADAPTED]["wer"] - overall[bench.ORACLE_BOTH]["wer"]
    if matched > 0:
        assert overall[bench.ORACLE_BOTH]["matched_gap_closed"] == 1.0
    assert "| supervised + transductive |" in bench.markdown(rows)

    without_pool = next(iter(counts[bench.ORACLE]))  # a speaker with no oracle pool (training speakers' new sentences)
    partial = {name: {t: c for t, c in by_task.items() if not (name.startswith("oracle") and t == without_pool)}
               for name, by_task in counts.items()}
    rows = bench.group_rows(partial, {t: "mixed" for t in counts[bench.UNADAPTED]}, {})
    assert {r["condition"] for r in rows} == set(bench.CONDITIONS[:4])  # no oracle row over speakers it did not fit


def test_summarize_averages_every_cell_over_runs(tmp_path) -> None:
    import json

    for seed, wer in enumerate((0.30, 0.40)):
        row = {"group": "all held-out", "condition": bench.BOTH, "wer": wer, "relative_wer_reduction": 0.1 * (seed + 1),
               "speakers_worse": 0.2, "gap_closed": 0.5, "matched_gap_closed": 0.25, "oracle_wer": 0.2, "speakers": 20}
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "enrolled_transductive.json").write_text(json.dumps({"rows": [row]}))
    table = bench.summarize([tmp_path / "seed0", tmp_path / "seed1"])
    assert "| all held-out (20) | supervised + transductive | 35.0 ± 7.1 | +15.0 % | 20 % | 50 % | 25 % |" in table


def test_summarizing_a_folder_without_a_run_names_it(tmp_path, capsys) -> None:
    import pytest

    with pytest.raises(SystemExit) as stop:
        bench.main(["--summarize", str(tmp_path / "seed9")])
    assert stop.value.code == 2 and "seed9" in capsys.readouterr().err


def test_a_run_without_its_model_names_the_checkpoint(tmp_path, capsys) -> None:
    import json

    import pytest

    (tmp_path / "adaptation_joint.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(SystemExit) as stop:
        bench.main(["--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "final.ckpt" in err and "--checkpoint" in err


def test_a_plugin_meta_trained_for_the_transductive_steps_takes_them_with_its_learned_rates(
        tiny_data, tiny_module, tiny_trainer, tmp_path) -> None:
    import torch

    from metaspeech.algorithms import MetaSGD
    from metaspeech.cli.inference import load_module

    data = tiny_data(eval_pool_size=3, eval_size=3)
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_time=TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3))
    trainer = tiny_trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    learned = tiny_module(MetaSGD(inner_steps=2, inner_lr=0.3, second_order=False, inner_objective="entropy", transductive=True),
                          freeze_recognizer=True, init_from=str(tmp_path / "run.ckpt"))
    trainer = tiny_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(learned, datamodule=data)
    trainer.save_checkpoint(tmp_path / "transductive.ckpt")

    run = load_module(tmp_path / "run.ckpt")
    plugin = bench.transductive_plugin(run, tmp_path / "transductive.ckpt")
    assert isinstance(plugin, MetaSGD)
    assert bench.transductive_plugin(tiny_module(FOMAML()), tmp_path / "transductive.ckpt") is None  # another model

    data.setup("test")
    choices = bench.choose_transductive(run, list(data.val_dataloader()), 3, 2, [0.1, 0.5], [1, 2], plugin)
    assert all(c["learning_rate"] is None and set(c["meta_val_wer"]) == {"lr=learned s=1", "lr=learned s=2"}
               for c in choices.values())  # only the steps are chosen
    with torch.no_grad():
        for rate in plugin.learning_rates.values():
            rate.zero_()
    counts = bench.score_speakers(run, list(data.test_dataloader()), 3, 2, choices, algorithm=plugin)
    assert counts[bench.TRANSDUCTIVE] == counts[bench.UNADAPTED]  # zero learned rates: the plugin's, not a searched one
    assert counts[bench.BOTH] == counts[bench.SUPERVISED]
