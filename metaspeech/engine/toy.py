"""A non-speech toy problem for algorithm plugins: sine-wave regression (Finn et al., 2017).

Each task is a sine ``a * sin(x - phase)``. Every algorithm must work on it
unchanged, which shows nothing in the algorithms knows about speech; a method
developer can check a new plugin on it in seconds before touching speech.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.layers import TaskLinear
from metaspeech.engine.learner import Learner
from metaspeech.engine.staged import StagedModel


class _Act(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (torch.relu(x),)


class _Lin(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.linear = TaskLinear(i, o)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (self.linear(x),)


class SineMLP(StagedModel):
    """1 -> hidden -> hidden -> 1 MLP as stages ``l0, a0, l1, a1, head``."""

    def __init__(self, hidden: int = 40) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(
            {"l0": _Lin(1, hidden), "a0": _Act(), "l1": _Lin(hidden, hidden), "a1": _Act(), "head": _Lin(hidden, 1)}
        )

    @property
    def summary_dim(self) -> int:
        return 3

    def task_statistics(self, inputs, targets, num_tasks, statistics=None):
        x, y = inputs[0].reshape(num_tasks, -1), targets[0].reshape(num_tasks, -1)
        return torch.stack([y.mean(1), (y * torch.sin(x)).mean(1), (y * torch.cos(x)).mean(1)], dim=1)


def mse_loss(output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
    """Per-example squared error ``[N]``."""
    return (output[0] - targets[0]).pow(2).flatten(1).mean(1)


def sine_tasks(num_tasks: int, examples: int, generator: torch.Generator) -> TaskBatch:
    """``T`` random sine tasks with ``2 * examples`` points each: x, y ``[T, 2 * examples, 1]``."""
    amplitude = 0.1 + 4.9 * torch.rand(num_tasks, 1, 1, generator=generator)
    phase = math.pi * torch.rand(num_tasks, 1, 1, generator=generator)
    x = 10 * torch.rand(num_tasks, 2 * examples, 1, generator=generator) - 5
    return TaskBatch(inputs=(x,), targets=(amplitude * torch.sin(x - phase),))


def sine_meta_batch(num_tasks: int, k: int, generator: torch.Generator) -> MetaBatch:
    """A meta-batch of ``T`` sine tasks with ``k`` support and ``k`` query points each."""
    both = sine_tasks(num_tasks, k, generator)
    support = TaskBatch(inputs=(both.inputs[0][:, :k],), targets=(both.targets[0][:, :k],))
    query = TaskBatch(inputs=(both.inputs[0][:, k:],), targets=(both.targets[0][:, k:],))
    return MetaBatch(support=support, query=query)


def sine_learner(scope: list[str] | None = None) -> Learner:
    """A fresh sine MLP learner adapting ``scope`` (default: all parameters)."""
    return Learner(SineMLP(), mse_loss, scope=scope or ["all"])
