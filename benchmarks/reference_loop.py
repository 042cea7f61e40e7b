"""The straightforward meta-learning loop a user would write by hand (learn2learn style).

For every task separately: start from the shared weights, run the *whole* model
on the support set at every inner step, update the scope's weights, then run the
whole model on the query set. No cached activations, no task batching. The
engine is benchmarked against this on the same model and data.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import higher_order_kernels


def _task_loss(model, loss_fn, params: dict[str, Tensor], batch: TaskBatch, t: int, create_graph: bool) -> Tensor:
    inputs = tuple(x[t] for x in batch.inputs)
    targets = tuple(y[t] for y in batch.targets)
    with higher_order_kernels(create_graph):
        output = functional_call(model, params, inputs)
        return loss_fn(output, targets, differentiable=create_graph).mean()


def reference_outer_loss(
    model, loss_fn, adapted_names: list[str], batch: MetaBatch, steps: int, lr: float, kind: str, generator=None,
    second_order_steps: int | None = None,
) -> Tensor:
    """Outer loss of ``kind`` in {maml, fomaml, reptile, hyperinit} by a per-task Python loop.

    ``adapted_names`` are the parameter names a scope resolves to (``Learner.adapted_names``).
    ``generator`` (hyperinit only) maps a task index to its generated initial adapted weights.
    ``second_order_steps`` (maml only): differentiate through the last that-many inner steps only.
    """
    first_second_order = 0 if second_order_steps is None else steps - second_order_steps
    shared = dict(model.named_parameters())
    total = 0.0
    for t in range(batch.num_tasks):
        fast = {n: shared[n] for n in adapted_names} if generator is None else generator(t)
        support = batch.support if kind != "reptile" else TaskBatch.concat_examples(batch.support, batch.query)
        for step in range(steps):
            second_order = kind == "maml" and step >= first_second_order
            loss = _task_loss(model, loss_fn, {**shared, **fast}, support, t, second_order)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
        if kind == "reptile":
            total = total + sum(0.5 * (shared[n] - fast[n].detach()).pow(2).sum() for n in adapted_names)
            total = total + _task_loss(model, loss_fn, {**shared, **{n: w.detach() for n, w in fast.items()}}, support, t, False)
        else:
            total = total + _task_loss(model, loss_fn, {**shared, **fast}, batch.query, t, False)
    return total / batch.num_tasks
