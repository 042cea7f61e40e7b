"""The pieces of one outer step without a Trainer: chunk weights, the plugin's result as a value, skip reasons."""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, NonFiniteLossError
from metaspeech.engine.toy import sine_learner, sine_meta_batch
from metaspeech.errors import ConfigError
from metaspeech.training.meta_gradient import check_chunk_size, non_finite_gradient, outer_result, task_chunks


def _batch(tasks: int = 5):
    batch = sine_meta_batch(tasks, 4, torch.Generator().manual_seed(0))
    batch.tasks = [f"speaker{t}" for t in range(tasks)]
    return batch


def test_chunks_backpropagate_their_task_share_and_sum_to_the_unchunked_gradient() -> None:
    gradients = {}
    for chunk_size in (None, 2):
        torch.manual_seed(0)
        learner, algorithm = sine_learner(), FOMAML(inner_steps=1, inner_lr=0.1)
        chunks = task_chunks(_batch(), chunk_size)
        assert [w for _, w in chunks] == ([1.0] if chunk_size is None else [0.4, 0.4, 0.2])  # 2 + 2 + 1 tasks
        for chunk, weight in chunks:
            outcome = outer_result(algorithm, learner, chunk, loss_scale=1.0)
            assert outcome.finite and outcome.why == ""
            (outcome.result.loss * weight).backward()
        gradients[chunk_size] = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
    torch.testing.assert_close(gradients[2], gradients[None])


class _Raises(FOMAML):
    def outer_loss(self, learner, batch, loss_scale=1.0):
        raise NonFiniteLossError(0, [1])


class _NaNLoss(FOMAML):
    def outer_loss(self, learner, batch, loss_scale=1.0):
        result = super().outer_loss(learner, batch, loss_scale)
        result.loss = result.loss * float("nan")
        return result


def test_a_non_finite_inner_loop_is_named_with_the_chunks_tasks() -> None:
    chunk = task_chunks(_batch(), 2)[1][0]  # speaker2, speaker3
    outcome = outer_result(_Raises(inner_steps=1), sine_learner(), chunk, loss_scale=1.0)
    assert outcome.result is None and not outcome.finite
    assert "task(s) [1]" in outcome.why and "['speaker3']" in outcome.why


def test_a_non_finite_outer_loss_is_not_finite_and_named() -> None:
    outcome = outer_result(_NaNLoss(inner_steps=1), sine_learner(), _batch(), loss_scale=1.0)
    assert outcome.result is not None and not outcome.finite
    assert outcome.why == "non-finite outer loss nan"


def test_gradient_and_chunk_size_checks() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, float("inf")])
    assert non_finite_gradient([param]) == "non-finite meta-gradient (norm inf)"
    assert non_finite_gradient([torch.nn.Parameter(torch.zeros(1))]) == ""  # no gradient at all is fine
    assert check_chunk_size(None) is None and check_chunk_size(3) == 3
    with pytest.raises(ConfigError, match="model.tasks_per_chunk"):
        check_chunk_size(0)
