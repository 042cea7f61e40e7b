"""Hypernetwork-generated initialization of the fast weights from a task embedding."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.learner import FastWeights, Learner, PreparedTasks


class WeightGenerator(nn.Module):
    """Task embedding ``[T, E]`` -> an additive update of one weight ``[T, *shape]``.

    Vectors are generated directly; matrices as a rank-``rank`` product ``U V^T`` so the
    generator stays small for large layers. The last layers start at zero, so an
    untrained hypernetwork leaves the shared initialization unchanged.
    """

    def __init__(self, embedding_dim: int, shape: torch.Size, rank: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        if len(self.shape) == 2:
            rows, cols = self.shape
            self.left = nn.Linear(embedding_dim, rows * rank)
            self.right = nn.Linear(embedding_dim, cols * rank)
            nn.init.zeros_(self.left.weight)
            nn.init.zeros_(self.left.bias)
            self.rank = rank
        else:
            self.vector = nn.Linear(embedding_dim, math.prod(self.shape))
            nn.init.zeros_(self.vector.weight)
            nn.init.zeros_(self.vector.bias)

    def forward(self, embedding: Tensor) -> Tensor:
        tasks = embedding.shape[0]
        if len(self.shape) == 2:
            left = self.left(embedding).reshape(tasks, self.shape[0], self.rank)
            right = self.right(embedding).reshape(tasks, self.shape[1], self.rank)
            return left @ right.transpose(1, 2) / self.rank
        return self.vector(embedding).reshape(tasks, *self.shape)


class HyperInit(MetaAlgorithm):
    """Generate each task's initial fast weights from its support set, then take inner steps.

    A task encoder maps the model's task statistics of the support set (for the
    speech models: mean and std of the features, i.e. statistics pooling) to an
    embedding; one :class:`WeightGenerator` per adapted weight turns it into an
    update of the shared initialization. Everything trains end to end through the
    inner loop (``second_order`` decides whether through its gradients too).

    Args:
        embedding_dim: size of the task embedding.
        rank: rank of generated matrix updates.
        inner_steps: inner steps after generation (0 = pure hypernetwork).
    """

    def __init__(
        self,
        inner_steps: int = 1,
        inner_lr: float | Sequence[float] = 0.1,
        second_order: bool = False,
        embedding_dim: int = 64,
        rank: int = 4,
        eval_inner_lr: float | None = None,
        second_order_steps: int | None = None,
        inner_objective: str = "supervised",
        transductive: bool = False,
    ) -> None:
        super().__init__(inner_steps, inner_lr, second_order, eval_inner_lr, second_order_steps, inner_objective, transductive)
        self.embedding_dim = embedding_dim
        self.rank = rank
        self.encoder: nn.Module | None = None
        self.generators = nn.ModuleDict()

    def setup(self, learner: Learner) -> None:
        if self.encoder is not None:
            return
        summary_dim = learner.model.summary_dim
        self.encoder = nn.Sequential(
            nn.LayerNorm(summary_dim),
            nn.Linear(summary_dim, self.embedding_dim),
            nn.Tanh(),
            nn.Linear(self.embedding_dim, self.embedding_dim),
            nn.Tanh(),
        )
        for name, w in learner.init_weights().items():
            self.generators[_key(name)] = WeightGenerator(self.embedding_dim, w.shape, self.rank)

    def adapts_scope(self, training: Learner, test: Learner) -> bool:
        """Any scope that contains the training scope: its generated weights, then fine-tuning of the wider scope."""
        return set(training.adapted_names) <= set(test.adapted_names)

    def initial_weights(self, learner: Learner, prepared: PreparedTasks) -> FastWeights:
        """The shared init ``[T, *shape]`` plus each task's generated update, for every weight that has a generator.

        At test time ``learner`` may adapt a wider scope than the one trained (``adapts_scope``): its other
        weights start at the shared init, so generation, then fine-tuning of the whole model is one inner loop.
        """
        if self.encoder is None:
            raise RuntimeError("HyperInit.setup(learner) must run before adaptation (MetaSpeechModule does this)")
        embedding = self.encoder(learner.task_statistics(prepared))
        start = learner.expand(learner.init_weights(), prepared.num_tasks)
        return {name: w + self.generators[_key(name)](embedding).to(w.dtype) if _key(name) in self.generators else w
                for name, w in start.items()}


def _key(name: str) -> str:
    """A parameter's name as a key of ``HyperInit.generators`` (``nn.ModuleDict`` keys hold no dots)."""
    return name.replace(".", "__")
