"""The base-recipe benchmark's learning curve: which steps it scores, and the table it prints."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks import base_recipe
from metaspeech.evaluation.scoring import SEEN_SPEAKERS


def test_the_curve_scores_every_n_steps_before_the_end_and_leaves_scoring_out_of_training_time(monkeypatch) -> None:
    scored = []

    def fake_scores(module, data):
        scored.append(trainer.global_step)
        return {"meta_val": {"seen accent": 0.5, "unseen accent": 0.75}, SEEN_SPEAKERS: 0.25}

    monkeypatch.setattr(base_recipe, "score_groups", fake_scores)
    curve = base_recipe.LearningCurve(every=3)
    trainer = SimpleNamespace(global_step=0, max_steps=9, datamodule=None)
    for step in range(1, 10):
        trainer.global_step = step
        curve.on_train_batch_end(trainer, None)
    assert scored == [3, 6]  # the last step is scored by run_recipe itself
    assert [p["step"] for p in curve.points] == [3, 6] and curve.scoring_seconds >= 0.0
    rows = base_recipe.curve_markdown([{"recipe": "r", "curve": curve.points}]).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| r | 3 |") and rows[2].endswith("| 25.0 | 50.0 | 75.0 |")


def test_no_curve_without_eval_every(monkeypatch) -> None:
    monkeypatch.setattr(base_recipe, "score_groups", lambda *a: (_ for _ in ()).throw(AssertionError("scored")))
    curve = base_recipe.LearningCurve(every=0)
    curve.on_train_batch_end(SimpleNamespace(global_step=5, max_steps=9, datamodule=None), None)
    assert curve.points == []
