"""The test-time adaptation guard: keep a task's adaptation only where it generalizes within its support set.

Why: a few gradient steps on a few utterances can make a speaker worse (too high an inner
learning rate, an odd support set). The guard adapts on part of a task's support set and
compares the loss on the held-out rest before and after, per task; a task whose held-out loss
does not fall keeps its unadapted start. It needs nothing but the support set, so it is fair
to use on test speakers; it costs two extra adaptations per fold.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.learner import FastWeights
from metaspeech.errors import ConfigError

ADAPTATION_GUARDS = ("none", "cross_validation")
GUARD_FOLDS = 5

Adapt = Callable[[TaskBatch, int], FastWeights]
"""``adapt(support, steps)`` -> fast weights ``[T, ...]``, without a guard."""
Loss = Callable[[TaskBatch, FastWeights], Tensor]
"""``loss(batch, fast)`` -> mean loss per task ``[T]``."""


def check_guard(name: str) -> str:
    """``name`` if it is a known guard, else a :class:`ConfigError` that names the setting."""
    if name not in ADAPTATION_GUARDS:
        raise ConfigError(f"model.adaptation_guard must be one of {ADAPTATION_GUARDS}, got {name!r}")
    return name


def guarded_adapt(support: TaskBatch, steps: int, adapt: Adapt, loss: Loss) -> FastWeights:
    """``adapt(support, steps)``, with each task whose adaptation does not help (:func:`adaptation_helps`) reset to 0 steps.

    A task with fewer than two support utterances cannot be cross-validated and keeps its adaptation.
    """
    adapted = adapt(support, steps)
    if steps == 0 or support.examples_per_task < 2:
        return adapted
    keep = adaptation_helps(support, steps, adapt, loss)
    start = adapt(support, 0)
    return {name: torch.where(keep.view(-1, *[1] * (w.dim() - 1)), w, start[name]) for name, w in adapted.items()}


def adaptation_helps(support: TaskBatch, steps: int, adapt: Adapt, loss: Loss) -> Tensor:
    """``[T]`` bool: adapting on part of each task's support lowers the loss on the held-out rest.

    Up to :data:`GUARD_FOLDS` folds; fold ``j`` holds out examples ``j, j + folds, ...``. Summed
    over folds, the held-out loss after ``steps`` inner steps must be below the one at 0 steps.
    """
    count = support.examples_per_task
    folds = min(count, GUARD_FOLDS)
    before = after = torch.zeros(support.num_tasks, device=support.inputs[0].device)
    for fold in range(folds):
        held = list(range(fold, count, folds))
        rest = [i for i in range(count) if i % folds != fold]
        held_out, train = support.select(held), support.select(rest)
        before = before + loss(held_out, adapt(train, 0)).float()
        after = after + loss(held_out, adapt(train, steps)).float()
    return after < before
