"""The pieces of one outer step that :meth:`MetaSpeechModule.training_step` puts together: task chunks, the
plugin's outer result as a value, finiteness checks and gradient sync.

Why chunks: second-order inner loops hold every task's double-backward graph until the
backward. Backpropagating each chunk's share of the loss (``loss_chunk * T_chunk / T``)
right away frees its graph, so peak memory falls with the chunk size, and the summed
gradient equals the unchunked one. Without ``tasks_per_chunk`` the whole meta-batch is one
chunk: one ``manual_backward`` per step. Under DDP every chunk but the last runs under
Lightning's ``block_backward_sync`` (``no_sync``), so gradients are averaged over ranks once.

Nothing here calls back into the module or raises to skip a step: a step that must not reach
the weights is a value (:class:`ChunkResult` without a result, :func:`non_finite_gradient`'s
reason) and the module decides.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Iterable

import torch
from lightning.pytorch.strategies import ParallelStrategy, Strategy
from torch import Tensor

from metaspeech.engine.algorithm import MetaAlgorithm, NonFiniteLossError, OuterResult
from metaspeech.engine.batch import MetaBatch
from metaspeech.engine.learner import Learner
from metaspeech.errors import ConfigError


def check_chunk_size(tasks_per_chunk: int | None) -> int | None:
    """``tasks_per_chunk`` if it is a valid chunk size (None: the whole meta-batch), else a :class:`ConfigError`."""
    if tasks_per_chunk is not None and tasks_per_chunk < 1:
        raise ConfigError(f"model.tasks_per_chunk must be >= 1 (or null for the whole meta-batch), got {tasks_per_chunk}")
    return tasks_per_chunk


def task_chunks(batch: MetaBatch, tasks_per_chunk: int | None) -> list[tuple[MetaBatch, float]]:
    """The chunks of ``batch`` and each one's share of its tasks (the whole batch and 1.0 without chunks)."""
    chunks = batch.chunks(tasks_per_chunk) if tasks_per_chunk else [batch]
    return [(chunk, chunk.num_tasks / batch.num_tasks) for chunk in chunks]


@dataclass
class ChunkResult:
    """The plugin's outer result of one chunk, or None and why not (a non-finite inner loop or outer loss)."""

    result: OuterResult | None
    why: str = ""

    @property
    def finite(self) -> bool:
        return self.result is not None and bool(torch.isfinite(self.result.loss))


def outer_result(algorithm: MetaAlgorithm, learner: Learner, chunk: MetaBatch, loss_scale: float) -> ChunkResult:
    """``algorithm.outer_loss`` of ``chunk``; a non-finite inner loop or outer loss is named (with the chunk's tasks)."""
    try:
        result = algorithm.outer_loss(learner, chunk, loss_scale=loss_scale)
    except NonFiniteLossError as err:
        return ChunkResult(None, f"{err} (tasks {[chunk.tasks[t] for t in err.tasks if t < len(chunk.tasks)]})")
    return ChunkResult(result, "" if bool(torch.isfinite(result.loss)) else f"non-finite outer loss {float(result.loss.detach())}")


def non_finite_gradient(parameters: Iterable[torch.nn.Parameter]) -> str:
    """Why the meta-gradient must not reach the weights ("" when it may).

    A finite loss can still have a NaN/inf gradient (under fp16 the GradScaler skips such a
    step itself). Gradients are averaged over ranks already, so every rank decides alike.
    """
    norm = gradient_norm(parameters)
    return "" if bool(torch.isfinite(norm)) else f"non-finite meta-gradient (norm {float(norm)})"


def gradient_sync(strategy: Strategy, last: bool) -> ContextManager[None]:
    """Average gradients over ranks on the ``last`` chunk's backward only: Lightning's ``no_sync`` before it."""
    return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) and not last else nullcontext()


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> Tensor:
    """Global L2 norm of the parameters' ``.grad`` (0 when none has one)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())
