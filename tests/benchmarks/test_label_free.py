"""The label-free benchmark on the tiny corpus: supervised and label-free rows at their meta-val choices, and the cost."""

from __future__ import annotations

import math

from benchmarks import label_free
from metaspeech.algorithms import FOMAML
from metaspeech.training.label_free import LabelFreeRow


def test_rows_compare_label_free_with_supervised_and_the_cost_is_timed(tiny_data, tiny_module, tiny_trainer) -> None:
    data = tiny_data(eval_pool_size=3, eval_size=3)
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5))
    tiny_trainer(max_steps=10, limit_val_batches=0).fit(module, datamodule=data)
    data.setup("test")
    val_items, test_items = list(data.val_dataloader()), list(data.test_dataloader())
    rows = [LabelFreeRow("supervised"), LabelFreeRow("entropy"), LabelFreeRow("entropy", True)]
    table = label_free.compare_rows(module, val_items, test_items, rows, 3, [0.1, 0.5], [1, 2], data.task_groups("test"))
    overall = {r["row"]: r for r in table if r["group"] == "all"}
    assert set(overall) == {"supervised", "entropy", "transductive entropy"}
    assert overall["entropy"]["supervised_wer"] == overall["supervised"]["wer"]
    assert overall["entropy"]["unadapted_wer"] == overall["supervised"]["unadapted_wer"]  # the same utterances
    assert all(r["steps"] in (1, 2) and r["learning_rate"] in (0.1, 0.5) for r in table)
    share = overall["supervised"]["share_of_supervised_gain"]
    assert math.isnan(share) or share == 1.0
    cost = label_free.single_utterance_cost(module, test_items, "entropy", 2, 0.1, utterances=4)
    assert cost["utterances"] == 4 and cost["speech_seconds"] > 0 and cost["adapt_seconds_per_speech_second"] > 0
    text = label_free.markdown(table, cost)
    assert "| all | transductive entropy | 0 |" in text and "s of adaptation per second of speech" in text


def test_summarize_averages_runs_and_takes_the_share_of_the_mean_gains(tmp_path) -> None:
    import json

    def row(name: str, wer: float, unadapted: float, supervised: float, worse: float) -> dict:
        return {"row": name, "group": "all", "selected": True, "shots": 5, "wer": wer, "unadapted_wer": unadapted,
                "supervised_wer": supervised, "speakers_worse": worse, "share_of_supervised_gain": float("nan")}

    for seed, (unadapted, supervised, entropy) in enumerate([(0.40, 0.30, 0.35), (0.50, 0.42, 0.50)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        rows = [row("supervised", supervised, unadapted, supervised, 0.1), row("entropy", entropy, unadapted, supervised, 0.3)]
        (folder / "label_free.json").write_text(json.dumps({"rows": rows}))
    text = label_free.summarize([tmp_path / "seed0", tmp_path / "seed1"])
    assert text.startswith("2 runs")
    # WER 42.5 +- 10.6; unadapted 45; supervised mean 36: the entropy row reaches (45 - 42.5) / (45 - 36) = 28 %
    assert "| all | entropy | 5 | 42.5 ± 10.6 | 45.0 ± 7.1 | 6.3 ± 8.8 % | 28 % | 30 ± 0 % |" in text
    assert "| all | supervised | 5 | 36.0 ± 8.5 | 45.0 ± 7.1 | 20.5 ± 6.4 % | 100 % | 10 ± 0 % |" in text
