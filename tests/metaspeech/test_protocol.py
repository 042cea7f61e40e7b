"""The k x s protocol without a Trainer: any adapt / transcribe functions, exact records and seconds."""

from __future__ import annotations

import pytest
import torch

from metaspeech.engine.batch import EvaluationBatch, TaskBatch
from metaspeech.errors import ConfigError
from metaspeech.evaluation.oracle import OracleFit
from metaspeech.evaluation.protocol import AdaptationEvaluator, evaluate_oracle, validation_scores


def _task_batch(ids: list[str], texts: list[str], frames: list[int]) -> TaskBatch:
    count = len(ids)
    return TaskBatch(
        inputs=(torch.zeros(1, count, max(frames), 2), torch.tensor([frames])),
        targets=(torch.zeros(1, count, 1, dtype=torch.long), torch.ones(1, count, dtype=torch.long)),
        texts=[texts], ids=[ids],
    )


@pytest.fixture
def item() -> EvaluationBatch:
    pool = _task_batch(["p0", "p1", "p2"], ["a", "b", "c"], [100, 200, 300])
    evaluation = _task_batch(["e0", "e1"], ["the cat", "a dog"], [50, 60])
    return EvaluationBatch(pool=pool, evaluation=evaluation, task="spk1")


def test_every_k_and_s_is_scored_with_nested_supports(item) -> None:
    seen = []

    def adapt_along(support: TaskBatch, steps: list[int]) -> dict:
        seen.append((support.ids[0], list(steps)))
        return {s: {"steps": torch.tensor([s])} for s in steps}

    def transcribe(batch: TaskBatch, fast: dict) -> list[list[str]]:
        return [batch.texts[0] if int(fast["steps"]) > 0 else ["the hat", "a dog"]]  # adapting fixes one word

    evaluator = AdaptationEvaluator(shots=[1, 3], steps=[0, 2], frame_shift_seconds=0.01)
    records = evaluator.evaluate(item, adapt_along, transcribe)
    assert seen == [(["p0"], [0, 2]), (["p0", "p1", "p2"], [0, 2])]  # one adaptation per k, read at every s
    assert [(r.shots, r.steps, r.utterance) for r in records] == [
        (k, s, u) for k in (1, 3) for s in (0, 2) for u in ("e0", "e1")]
    errors = {(r.shots, r.steps): 0 for r in records}
    for r in records:
        errors[(r.shots, r.steps)] += r.word_errors
    assert errors == {(1, 0): 1, (1, 2): 0, (3, 0): 1, (3, 2): 0}
    assert evaluator.seconds == {("spk1", 1): pytest.approx(1.0), ("spk1", 3): pytest.approx(6.0)}


def test_more_shots_than_the_pool_holds_names_the_settings(item) -> None:
    evaluator = AdaptationEvaluator(shots=[5], steps=[0], frame_shift_seconds=0.01)
    with pytest.raises(ConfigError, match="eval_pool_size"):
        evaluator.evaluate(item, lambda s, n: {}, lambda b, f: [["x", "y"]])


def test_validation_scores_before_and_after_adaptation_with_their_weights(item) -> None:
    def adapt(support: TaskBatch, steps: int) -> dict:
        assert support.ids[0] == ["p0", "p1"]  # the first val_shots pool utterances
        return {"steps": torch.tensor([steps])}

    def loss(batch: TaskBatch, fast: dict) -> torch.Tensor:
        return torch.tensor([2.0]) / (1 + fast["steps"].float())

    def transcribe(batch: TaskBatch, fast: dict) -> list[list[str]]:
        return [batch.texts[0] if int(fast["steps"]) > 0 else ["the hat", "a dog"]]

    scores = validation_scores(item, shots=2, steps=3, adapt=adapt, loss=loss, transcribe=transcribe)
    assert scores == {"val/loss_pre": (2.0, 1), "val/wer_pre": (0.25, 4), "val/loss_post": (0.5, 1), "val/wer_post": (0.0, 4)}
    assert set(validation_scores(item, 2, 3, adapt, loss, None)) == {"val/loss_pre", "val/loss_post"}  # no tokenizer


def test_the_oracle_is_scored_at_its_pool_size_and_chosen_steps(item) -> None:
    assert evaluate_oracle(item, lambda pool, evaluation: pytest.fail("no oracle pool")) == ([], [])
    oracle_item = EvaluationBatch(pool=item.pool, evaluation=item.evaluation, task="spk1",
                                  oracle=_task_batch([f"o{i}" for i in range(4)], ["a"] * 4, [10] * 4))
    fit = OracleFit(fast={}, learner=None, scope="head", steps=15, dev_loss=0.0, training_utterances=3)
    records, scopes = evaluate_oracle(oracle_item, lambda pool, evaluation: (["the cat", "a cat"], fit))
    assert scopes == ["head"]
    assert [(r.shots, r.steps, r.utterance, r.word_errors) for r in records] == [(4, 15, "e0", 0), (4, 15, "e1", 1)]
