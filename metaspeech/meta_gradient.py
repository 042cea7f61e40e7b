"""The meta-gradient of one outer step, computed ``tasks_per_chunk`` tasks at a time.

Why chunks: second-order inner loops hold every task's double-backward graph until the
backward. Backpropagating each chunk's share of the loss (``loss_chunk * T_chunk / T``)
right away frees its graph, so peak memory falls with the chunk size, and the summed
gradient equals the unchunked one. Without ``tasks_per_chunk`` the whole meta-batch is one
chunk: one ``manual_backward`` per step. Under DDP every chunk but the last runs under
Lightning's ``block_backward_sync`` (``no_sync``), so gradients are averaged over ranks once.
A step that must not reach the weights (a non-finite loss or meta-gradient) raises
:class:`SkipStep`; the module counts it and, under fp16, backs off the loss scale.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable

import torch
from lightning.pytorch.strategies import ParallelStrategy, Strategy
from torch import Tensor

from metaspeech.algorithms.base import NonFiniteLossError, OuterResult
from metaspeech.batch import MetaBatch
from metaspeech.errors import ConfigError


def check_chunk_size(tasks_per_chunk: int | None) -> int | None:
    """``tasks_per_chunk`` if it is a valid chunk size (None: the whole meta-batch), else a :class:`ConfigError`."""
    if tasks_per_chunk is not None and tasks_per_chunk < 1:
        raise ConfigError(f"model.tasks_per_chunk must be >= 1 (or null for the whole meta-batch), got {tasks_per_chunk}")
    return tasks_per_chunk


class SkipStep(Exception):
    """This outer step must not reach the weights, on every rank; the message says why (empty when another rank
    or a non-finite outer loss without a diagnosis decided it)."""


def backward_in_chunks(
    batch: MetaBatch,
    tasks_per_chunk: int | None,
    outer_loss: Callable[[MetaBatch], OuterResult],
    backward: Callable[[Tensor], None],
    strategy: Strategy,
) -> OuterResult:
    """Outer loss and meta-gradient of ``batch``, ``outer_loss(chunk)`` (the plugin's) backpropagated by ``backward``
    (the LightningModule's ``manual_backward``).

    Raises :class:`SkipStep` on every rank when a chunk's inner loop raised :class:`NonFiniteLossError` or its
    outer loss is not finite on any rank: the ranks decide together, so they stay in step.
    """
    chunks = batch.chunks(tasks_per_chunk) if tasks_per_chunk else [batch]
    results = []
    for index, chunk in enumerate(chunks):
        result, why = _outer_result(chunk, outer_loss)
        finite = result is not None and bool(torch.isfinite(result.loss))
        if not strategy.reduce_boolean_decision(finite, all=True):
            raise SkipStep(why)
        weight = chunk.num_tasks / batch.num_tasks
        last = index == len(chunks) - 1
        with nullcontext() if last else without_gradient_sync(strategy):
            backward(result.loss * weight)  # weight 1.0 without chunks
        results.append((result, weight))
    return OuterResult.merge(results)


def _outer_result(chunk: MetaBatch, outer_loss: Callable[[MetaBatch], OuterResult]) -> tuple[OuterResult | None, str]:
    """The chunk's outer result, or None and why (naming the tasks) when its inner loop was not finite."""
    try:
        return outer_loss(chunk), ""
    except NonFiniteLossError as err:
        return None, f"{err} (tasks {[chunk.tasks[t] for t in err.tasks if t < len(chunk.tasks)]})"


def check_finite_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Raise :class:`SkipStep` when the meta-gradient is not finite.

    A finite loss can still have a NaN/inf gradient, which must not reach the weights (under fp16
    the GradScaler skips such a step itself). Gradients are averaged over ranks already, so
    every rank decides alike.
    """
    if not bool(torch.isfinite(gradient_norm(parameters))):
        raise SkipStep("non-finite meta-gradient")


def without_gradient_sync(strategy: Strategy) -> ContextManager[None]:
    """Lightning's ``no_sync`` for parallel strategies; nothing to block on one device."""
    return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> Tensor:
    """Global L2 norm of the parameters' ``.grad`` (0 when none has one)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())
