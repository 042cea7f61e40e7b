"""The cross-validation guard without a Trainer or a model: any adapt / loss functions, exact folds and choices."""

from __future__ import annotations

import pytest
import torch

from metaspeech.engine.batch import TaskBatch
from metaspeech.errors import ConfigError
from metaspeech.evaluation.guard import GUARD_FOLDS, adaptation_helps, check_guard, guarded_adapt


def _support(tasks: int, examples: int) -> TaskBatch:
    """Example ``i`` of every task carries the value ``i`` (so a selection shows which examples it holds)."""
    values = torch.arange(examples, dtype=torch.float).expand(tasks, examples)
    return TaskBatch(inputs=(values.unsqueeze(-1), torch.ones(tasks, examples)), targets=(torch.zeros(tasks, examples),))


def _adapt(calls: list[tuple[list[int], int]]):
    def adapt(support: TaskBatch, steps: int) -> dict[str, torch.Tensor]:
        calls.append(([int(v) for v in support.inputs[0][0, :, 0]], steps))
        return {"w": torch.full((support.num_tasks, 2), float(steps))}

    return adapt


def _loss(batch: TaskBatch, fast: dict[str, torch.Tensor]) -> torch.Tensor:
    """Adapting helps task 0 (its loss falls with the steps taken) and hurts task 1."""
    steps = fast["w"][:, 0]
    return torch.stack([1.0 - 0.1 * steps[0], 1.0 + 0.1 * steps[1]])


def test_a_task_keeps_its_adaptation_only_where_it_helps_on_held_out_support() -> None:
    calls: list = []
    fast = guarded_adapt(_support(tasks=2, examples=4), 3, _adapt(calls), _loss)
    assert fast["w"].tolist() == [[3.0, 3.0], [0.0, 0.0]]
    assert calls[0] == ([0, 1, 2, 3], 3) and calls[-1] == ([0, 1, 2, 3], 0)  # the adaptation itself, then the start


def test_each_support_example_is_held_out_exactly_once_and_never_trained_on_in_its_fold() -> None:
    calls: list = []
    held_out: list[list[int]] = []

    def loss(batch: TaskBatch, fast: dict[str, torch.Tensor]) -> torch.Tensor:
        held_out.append([int(v) for v in batch.inputs[0][0, :, 0]])
        return _loss(batch, fast)

    keep = adaptation_helps(_support(tasks=2, examples=7), 2, _adapt(calls), loss)
    assert keep.tolist() == [True, False]
    folds = held_out[::2]  # before and after adaptation, each fold scores the same held-out examples
    assert len(folds) == GUARD_FOLDS and sorted(i for fold in folds for i in fold) == list(range(7))
    assert folds[0] == [0, 5]
    for fold, (train, _) in zip(folds, calls[::2]):
        assert not set(fold) & set(train) and sorted(fold + train) == list(range(7))


@pytest.mark.parametrize("steps, examples", [(0, 4), (3, 1)])
def test_nothing_to_guard_without_steps_or_with_one_support_example(steps: int, examples: int) -> None:
    calls: list = []
    fast = guarded_adapt(_support(tasks=2, examples=examples), steps, _adapt(calls), _loss)
    assert calls == [(list(range(examples)), steps)] and fast["w"].eq(float(steps)).all()


def test_an_unknown_guard_names_the_setting() -> None:
    assert check_guard("cross_validation") == "cross_validation"
    with pytest.raises(ConfigError, match="model.adaptation_guard"):
        check_guard("always")
