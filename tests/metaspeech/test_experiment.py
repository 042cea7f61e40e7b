"""The compare path: same budget for every algorithm, one table over seeds and speaker groups, one plot."""

from __future__ import annotations

import json

import pytest
import yaml

from metaspeech.cli.experiment import headline, markdown_report, summarize
from metaspeech.cli.main import main
from metaspeech.evaluation.scoring import AdaptationReport, score_utterance
from tests.conftest import REPO, TINY_MODEL_ARGS


def _report(errors_after: int) -> AdaptationReport:
    records = [
        score_utterance("a", 1, 0, "u", "one two three four", "one two"),  # 2 / 4
        score_utterance("a", 1, 2, "u", "one two three four", " ".join(["one", "two", "three", "four"][: 4 - errors_after])),
        score_utterance("b", 1, 0, "v", "five six", "five six"),
        score_utterance("b", 1, 2, "v", "five six", "five six"),
    ]
    oracle = [score_utterance("a", 4, 3, "u", "one two three four", "one two three four"),
              score_utterance("b", 4, 3, "v", "five six", "five six")]
    return AdaptationReport(records, groups={"a": "seen accent", "b": "unseen accent"}, oracle=oracle)


def test_summary_averages_seeds_and_reports_each_group() -> None:
    rows = summarize({"maml": {0: _report(0), 1: _report(2)}})
    overall = {(r["shots"], r["steps"]): r for r in rows if r["group"] == "all"}
    assert overall[(1, 0)]["wer"] == pytest.approx(2 / 6)
    assert overall[(1, 2)]["wer"] == pytest.approx((0 / 6 + 2 / 6) / 2)
    assert overall[(1, 2)]["wer_std"] == pytest.approx(1 / 6)
    assert overall[(1, 2)]["seeds"] == 2
    seen = {r["steps"]: r for r in rows if r["group"] == "seen accent"}
    assert seen[2]["wer"] == pytest.approx((0 + 0.5) / 2) and seen[2]["speakers"] == 1
    text = markdown_report(rows)
    assert "**All held-out speakers** (2 speakers)" in text and "**Held-out speakers, unseen accent** (1 speakers)" in text
    # The oracle is perfect: seed 0 closes the whole gap (100 %), seed 1 none of it (0 %).
    assert overall[(1, 2)]["gap_closed"] == pytest.approx(0.5) and overall[(1, 2)]["oracle_wer"] == 0.0
    assert "| 1 | 2 | 16.7 ± 16.7 (+50.0; median +25.0; 0 % worse; 50 % of gap) |" in text
    assert "| oracle | | 0.0 |" in text


def test_headline_names_the_best_algorithm_and_compares_the_best_meta_learner_with_joint_training() -> None:
    rows = summarize({"maml": {0: _report(2)}, "fomaml": {0: _report(2)}, "joint": {0: _report(1)}})
    summary = headline(rows)
    # No (5, 5) cell in these reports: the largest k and s run, (1, 2).
    assert (summary["shots"], summary["steps"]) == (1, 2)
    # joint: 2 errors of 6 words at s = 0, 1 after adaptation, 0 for the oracle.
    assert summary["best"]["algorithm"] == "joint" and summary["best"]["wer"] == pytest.approx(1 / 6)
    assert summary["best"]["relative_wer_reduction"] == pytest.approx(0.5) and summary["best"]["gap_closed"] == pytest.approx(0.5)
    versus = summary["meta_vs_joint"]
    assert versus["algorithm"] == "maml" and versus["relative_wer_reduction"] == pytest.approx(-1.0)
    text = markdown_report(rows)
    assert ("**Headline, all held-out speakers, k = 1, s = 2** (1 seed(s)): the best is joint at 16.7 % WER "
            "(+50.0 % relative vs no adaptation; 0 % of speakers worse; 50 % of the oracle gap closed).") in text
    expected = "The best meta-learner, maml, is not better than joint training + the same fine-tuning: 33.3 vs 16.7 % (-100.0 % relative)."
    assert expected in text
    alone = headline(summarize({"maml": {0: _report(2)}}))
    assert alone["best"]["algorithm"] == "maml" and "meta_vs_joint" not in alone


def test_headline_says_when_meta_learning_and_joint_training_differ_by_less_than_the_seed_spread() -> None:
    """fomaml: 0 and 2 errors of 6 words at s = 2 on seeds 0 and 1 (16.7 ± 16.7 %); joint: 2 and 1 (25.0 ± 8.3 %)."""
    rows = summarize({"fomaml": {0: _report(0), 1: _report(2)}, "joint": {0: _report(2), 1: _report(1)}})
    versus = headline(rows)["meta_vs_joint"]
    assert versus["seed_spread"] == pytest.approx(1 / 6) and versus["within_seed_spread"]
    assert ("The best meta-learner, fomaml, and joint training + the same fine-tuning differ by less than the seed spread "
            "(standard deviation 16.7 points): 16.7 vs 25.0 % (+33.3 % relative).") in markdown_report(rows)
    one_seed = headline(summarize({"fomaml": {0: _report(0)}, "joint": {0: _report(2)}}))["meta_vs_joint"]
    assert one_seed["seed_spread"] == 0.0 and not one_seed["within_seed_spread"]


def test_headline_compares_only_algorithms_run_on_the_same_seeds() -> None:
    """A one-seed mean is not compared with a three-seed mean: reptile (seed 0 only) is left out, named."""
    rows = summarize({"reptile": {0: _report(0)}, "fomaml": {0: _report(2), 1: _report(2)}, "joint": {0: _report(1), 1: _report(1)}})
    summary = headline(rows)
    assert summary["best"]["algorithm"] == "joint" and summary["meta_vs_joint"]["algorithm"] == "fomaml"
    assert summary["left_out"] == ["reptile"] and "Left out, run on other seeds: reptile." in markdown_report(rows)


def _tiny_demo(output, corpus_root, feature_cache, workers: int) -> list[str]:
    return [
        "demo", "--preset", "tiny", "--base_steps", "2", "--steps", "2", "--output", str(output), "--workers", str(workers),
        f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
        *[f"--model.recognizer.init_args.{k}={v}" for k, v in TINY_MODEL_ARGS.items()],
        "--model.test_shots=[1,3]", "--model.test_steps=[0,2]",
    ]


def test_demo_runs_meta_training_and_joint_training_from_one_shared_base(corpus_root, feature_cache, tmp_path, monkeypatch, capsys) -> None:
    """``metaspeech demo`` (the README's main job) end to end on the tiny corpus with a tiny budget."""
    monkeypatch.chdir(REPO)
    assert main(_tiny_demo(tmp_path, corpus_root, feature_cache, workers=1)) == 0
    printed = capsys.readouterr().out
    assert "fomaml WER %" in printed and "joint WER %" in printed and "unseen accent" in printed
    assert (tmp_path / "base" / "seed0" / "base.ckpt").is_file()
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    assert {r["algorithm"] for r in rows} == {"fomaml", "joint"}
    assert {r["outer_steps"] for r in rows} == {2} and all(r["train_seconds"] > 0 for r in rows)
    assert "Budget from the shared start" in printed and "**Headline, all held-out speakers, k = 3, s = 2**" in printed
    assert json.loads((tmp_path / "comparison.json").read_text())["headline"]["best"]["algorithm"] in {"fomaml", "joint"}
    assert printed.count("chosen on meta-val speakers") == 2  # configs/protocol/benchmark.yaml: each algorithm's inner lr
    settings = json.loads(next((tmp_path / "joint" / "seed0").glob("adaptation_*.json")).read_text())["settings"]
    assert settings["seconds"]["test_time_selection"] > 0  # what the meta-val search cost
    assert {(r["shots"], r["steps"]) for r in rows if r["group"] == "all"} == {(1, 0), (1, 2), (3, 0), (3, 2)}
    assert {r["group"] for r in rows} >= {"all", "unseen accent"}
    assert (tmp_path / "wer_vs_steps.png").stat().st_size > 1000
    oracle = yaml.safe_load((tmp_path / "joint" / "seed0" / "config.yaml").read_text())["model"]["oracle"]["init_args"]
    assert (oracle["scopes"], oracle["learning_rates"], oracle["max_steps"]) == (["all"], [1e-4, 3e-4], 200)  # protocol/demo.yaml


def test_comparison_can_be_rebuilt_from_runs_done_in_parts(tmp_path) -> None:
    from metaspeech.cli.experiment import collect_reports, write_comparison

    for algorithm, seed, errors in (("maml", 0, 0), ("maml", 1, 2), ("joint", 0, 1)):
        _report(errors).write(tmp_path / algorithm / f"seed{seed}", name=f"adaptation_{algorithm}")
    results = collect_reports(tmp_path)
    assert {name: sorted(by_seed) for name, by_seed in results.items()} == {"joint": [0], "maml": [0, 1]}
    rows = write_comparison(results, [0, 1], tmp_path)["rows"]
    assert {(r["algorithm"], r["seeds"]) for r in rows if r["group"] == "all"} == {("maml", 2), ("joint", 1)}


def test_demo_side_by_side_gives_the_numbers_of_the_runs_one_after_the_other(
    corpus_root, feature_cache, tmp_path, monkeypatch, capsys
) -> None:
    """``--workers 2``: FOMAML and joint training in two one-thread processes, after a shared start trained here.

    With one thread everywhere the two paths compute the same floats, so every number of the comparison
    but the wall-clock matches; each run's console output is in its folder, and the parent shows progress.
    """
    import torch

    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_tiny_demo(tmp_path / "sequential", corpus_root, feature_cache, workers=1)) == 0
        capsys.readouterr()
        assert main(_tiny_demo(tmp_path / "side_by_side", corpus_root, feature_cache, workers=2)) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "fomaml seed 0, joint seed 0: 2 processes side by side, 1 thread(s) each" in printed
    assert "fomaml WER %" in printed and "joint WER %" in printed
    assert "joint seed 0: test protocol (held-out speakers)" in printed  # the workers' progress reached the parent
    assert "fomaml seed 0: test-time adaptation" in printed

    def numbers(folder):
        rows = json.loads((tmp_path / folder / "comparison.json").read_text())["rows"]
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    assert numbers("side_by_side") == numbers("sequential") and len(numbers("sequential")) > 10
    for name in ("fomaml", "joint"):
        log = (tmp_path / "side_by_side" / name / "seed0" / "log.txt").read_text()
        assert "chosen on meta-val speakers" in log and f"{name}: adaptation protocol" in log


def test_fit_only_runs_leave_their_trained_model_and_run_no_test(corpus_root, feature_cache, tmp_path, monkeypatch) -> None:
    """``benchmarks/adaptation.py --fit_only``: a checkpoint for another benchmark (e.g. label_free.py), no protocol."""
    import torch

    from metaspeech.cli.experiment import FINAL_CHECKPOINT, QUICK_RUN, run_comparison
    from metaspeech.cli.inference import load_module

    monkeypatch.chdir(REPO)
    overrides = [
        "--trainer.max_steps=2", *QUICK_RUN, f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
        *[f"--model.recognizer.init_args.{k}={v}" for k, v in TINY_MODEL_ARGS.items()],
    ]
    summary = run_comparison(["configs/fomaml_entropy.yaml"], "configs/data/embedded_tiny.yaml", "configs/trainer/cpu.yaml",
                             tmp_path, [0], overrides, test=False)
    assert summary is None
    path = tmp_path / "fomaml_entropy" / "seed0" / FINAL_CHECKPOINT
    assert torch.load(path, weights_only=False)["global_step"] == 2
    assert load_module(path).algorithm.inner_objective == "entropy"
    assert not list(tmp_path.rglob("adaptation_*.json")) and not (tmp_path / "comparison.json").exists()


def test_each_algorithm_is_read_at_the_cell_its_meta_val_search_chose() -> None:
    """Seed 0 chose s = 2 and seed 1 s = 0 (adaptation did not help on meta-val): the row averages those cells,
    never the best test cell; a run without a selection is left out."""
    from metaspeech.evaluation.selection_report import selection_markdown, summarize_at_selection

    chose_two, chose_none, unselected = _report(0), _report(2), _report(0)
    chose_two.settings["test_time_selection"] = {"chosen": {"scope": "all", "optimizer": "adam", "lr": 3e-4}, "shots": 1, "steps": 2}
    chose_none.settings["test_time_selection"] = {"chosen": {"scope": None, "optimizer": "sgd", "lr": 0.2}, "shots": 1, "steps": 0}
    rows = summarize_at_selection({"maml": {0: chose_two, 1: chose_none}, "joint": {0: unselected}})
    overall = next(r for r in rows if r["group"] == "all")
    assert overall["algorithm"] == "maml" and overall["seeds"] == 2 and not any(r["algorithm"] == "joint" for r in rows)
    # seed 0 at s = 2: 0 errors of 6 words; seed 1 at s = 0: 2 of 6. Unadapted: 2 of 6 in both.
    assert overall["wer"] == pytest.approx(1 / 6) and overall["unadapted_wer"] == pytest.approx(2 / 6)
    assert overall["relative_wer_reduction"] == pytest.approx(0.5) and overall["gap_closed"] == pytest.approx(0.5)
    assert [c["steps"] for c in overall["choices"]] == [2, 0]
    text = selection_markdown(rows)
    assert "| all held-out (2) | maml (2) | 33.3 | 16.7 ± 16.7 | +50.0 % | 0 % | 50 % | 0.0 |" in text
    assert "- maml: seed 0: all, adam, lr 0.0003, k = 1, s = 2; seed 1: training scope, sgd, lr 0.2, k = 1, s = 0" in text
    assert selection_markdown([]) == ""
