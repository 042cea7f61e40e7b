"""One outer step's meta-gradient without a Trainer: chunk weights, the one backward per chunk, skip decisions."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from metaspeech.algorithms import FOMAML, NonFiniteLossError
from metaspeech.errors import ConfigError
from metaspeech.meta_gradient import SkipStep, backward_in_chunks, check_chunk_size, check_finite_gradients
from metaspeech.toy import sine_learner, sine_meta_batch

STRATEGY = SingleDeviceStrategy(device=torch.device("cpu"))


def _batch(tasks: int = 5):
    batch = sine_meta_batch(tasks, 4, torch.Generator().manual_seed(0))
    batch.tasks = [f"speaker{t}" for t in range(tasks)]
    return batch


def test_chunks_backpropagate_their_task_share_and_sum_to_the_unchunked_gradient() -> None:
    gradients, weights = {}, []
    for chunk in (None, 2):
        torch.manual_seed(0)
        learner, algorithm = sine_learner(), FOMAML(inner_steps=1, inner_lr=0.1)

        def backward(loss: torch.Tensor) -> None:
            weights.append(chunk)
            loss.backward()

        result = backward_in_chunks(_batch(), chunk, lambda c: algorithm.outer_loss(learner, c), backward, STRATEGY)
        assert result.query_losses.shape == (5,)
        gradients[chunk] = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
    assert weights == [None, 2, 2, 2]  # one backward without chunks, one per chunk (2 + 2 + 1 tasks)
    torch.testing.assert_close(gradients[2], gradients[None])


def test_a_non_finite_inner_loop_skips_the_step_naming_the_chunks_tasks() -> None:
    def outer_loss(chunk):
        if chunk.tasks[0] == "speaker2":
            raise NonFiniteLossError(0, [1])
        return FOMAML(inner_steps=1).outer_loss(sine_learner(), chunk)

    with pytest.raises(SkipStep, match=r"task\(s\) \[1\].*\['speaker3'\]"):
        backward_in_chunks(_batch(), 2, outer_loss, lambda loss: loss.backward(), STRATEGY)


def test_a_non_finite_outer_loss_skips_the_step_without_a_diagnosis() -> None:
    def outer_loss(chunk):
        result = FOMAML(inner_steps=1).outer_loss(sine_learner(), chunk)
        result.loss = result.loss * float("nan")
        return result

    with pytest.raises(SkipStep, match="^$"):
        backward_in_chunks(_batch(), None, outer_loss, lambda loss: pytest.fail("backpropagated a NaN loss"), STRATEGY)


def test_gradient_and_chunk_size_checks() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, float("inf")])
    with pytest.raises(SkipStep, match="non-finite meta-gradient"):
        check_finite_gradients([param])
    check_finite_gradients([torch.nn.Parameter(torch.zeros(1))])  # no gradient at all is fine
    assert check_chunk_size(None) is None and check_chunk_size(3) == 3
    with pytest.raises(ConfigError, match="model.tasks_per_chunk"):
        check_chunk_size(0)
