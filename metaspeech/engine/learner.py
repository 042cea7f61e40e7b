"""The learner: a model, its loss and an adaptation scope, seen functionally.

Algorithms talk only to a :class:`Learner`; nothing here knows about speech.
Two words for two things: the *scope* is what a user configures (``model.scope``:
presets and name globs, plain data), the *adapted names* are the parameter names it
resolves to on one model (:attr:`Learner.adapted_names`). Fast weights are a
``dict[name, Tensor]`` over the adapted names, each with a leading task dimension
``[T, *param.shape]``. ``Learner.losses`` maps fast weights and a prepared batch to
per-task losses ``[T]``; since task t's loss depends only on task t's slice,
``autograd.grad(losses.sum(), fast)`` gives every task its own gradient in one
backward pass.

Two performance levers live here (docs/architecture.md, "One training step"):

1. ``prepare`` runs the model's stages below the first adapted parameter once;
   every inner step and the query loss start from that cached state.
2. When every adapted parameter belongs to a task-batchable layer, all T tasks
   run as one batch of ``T * B`` examples; otherwise a loop over tasks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.layers import TaskBatchable, split_tasks
from metaspeech.engine.scope import resolve_scope
from metaspeech.engine.staged import StagedModel

FastWeights = dict[str, Tensor]


class TaskLoss(Protocol):
    """Per-example loss ``[N]`` from the model's output state and flattened targets.

    ``differentiable=True`` asks for an implementation with a double backward
    (second-order algorithms differentiate through the inner-loop gradient).
    """

    def __call__(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor: ...


class TaskObjective(TaskLoss, Protocol):
    """An inner-loop objective: a :class:`TaskLoss` whose targets may come from the model itself.

    ``targets(output, targets)`` runs once, before the inner loop, on the output of the *start*
    weights: a supervised objective returns the batch's ``targets``; a label-free one may return its
    own (pseudo-labels). Then the objective is called like a :class:`TaskLoss` at every inner step.
    """

    def targets(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...]) -> tuple[Tensor, ...]: ...


class _LossObjective:
    """A plain :class:`TaskLoss` as the ``supervised`` :class:`TaskObjective`."""

    def __init__(self, loss: TaskLoss) -> None:
        self.loss = loss

    def targets(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return targets

    def __call__(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        return self.loss(output, targets, differentiable)


SUPERVISED = "supervised"


@dataclass
class PreparedTasks:
    """A task batch flattened to ``[T * B, ...]`` and run up to the first adapted stage."""

    state: tuple[Tensor, ...]
    inputs: tuple[Tensor, ...]
    targets: tuple[Tensor, ...]
    num_tasks: int
    statistics: Tensor | None = None  # [T * B, S] per-example statistics (TaskBatch.statistics)


def _flatten(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(t.flatten(0, 1) for t in tensors)


@contextlib.contextmanager
def higher_order_kernels(enabled: bool) -> Iterator[None]:
    """Select kernels that support double backward when ``enabled``.

    cuDNN RNNs and the flash / memory-efficient attention kernels have no double
    backward; the native RNN and the math attention backend do.
    """
    if not enabled:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.backends.cudnn.flags(enabled=False), sdpa_kernel([SDPBackend.MATH]):
        yield


class Learner:
    """Functional view of ``model`` restricted to the parameters ``scope`` selects.

    ``scope`` (presets or name globs, as ``model.scope``) resolves once, here, to
    :attr:`adapted_names`: the names of the parameters the inner loop adapts, in model order.
    ``objectives(name)`` gives the inner-loop objective called ``name`` (for a recognizer:
    ``recognizer.objective``, with label-free ones); without it only ``supervised`` (``loss``) exists.
    """

    def __init__(self, model: StagedModel, loss: TaskLoss, scope: list[str] | str,
                 objectives: Callable[[str], TaskObjective] | None = None) -> None:
        self.model = model
        self.loss = loss
        self.objectives = objectives
        self.adapted_names = resolve_scope(model, scope)
        self.first_stage = min(model.stage_index(name) for name in self.adapted_names)
        modules = dict(model.named_modules())
        self.task_batched = all(isinstance(modules[name.rsplit(".", 1)[0]], TaskBatchable) for name in self.adapted_names)

    def init_weights(self) -> dict[str, nn.Parameter]:
        """The shared initialization of the adapted parameters: the model's own (meta-learned)."""
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.adapted_names}

    def expand(self, weights: dict[str, Tensor], num_tasks: int) -> FastWeights:
        """Give every weight a leading task dimension (a view: gradients flow back to ``weights``)."""
        return {name: w.unsqueeze(0).expand(num_tasks, *w.shape) for name, w in weights.items()}

    def outside_scope(self) -> list[nn.Parameter]:
        """Trainable parameters the inner loop does not adapt (the shared body)."""
        adapted = set(self.adapted_names)
        return [p for n, p in self.model.named_parameters() if n not in adapted and p.requires_grad]

    def prepare(self, batch: TaskBatch) -> PreparedTasks:
        """Flatten ``batch`` and run the stages the inner loop does not change, once."""
        inputs = _flatten(batch.inputs)
        state = self.model(*inputs, stop=self.first_stage)
        statistics = batch.statistics.flatten(0, 1) if batch.statistics is not None else None
        return PreparedTasks(state=state, inputs=inputs, targets=_flatten(batch.targets), num_tasks=batch.num_tasks,
                             statistics=statistics)

    def task_statistics(self, prepared: PreparedTasks) -> Tensor:
        """``[T, model.summary_dim]`` description of each task (for task-conditioned algorithms)."""
        return self.model.task_statistics(prepared.inputs, prepared.targets, prepared.num_tasks, prepared.statistics)

    def objective(self, name: str) -> TaskObjective:
        """The inner-loop objective called ``name``; ``supervised`` is the learner's ``loss``."""
        if name == SUPERVISED:
            return _LossObjective(self.loss)
        if self.objectives is None:
            raise ValueError(f"this learner has only the 'supervised' objective, not {name!r}")
        return self.objectives(name)

    def for_objective(self, prepared: PreparedTasks, fast: FastWeights, name: str) -> PreparedTasks:
        """``prepared`` with the targets objective ``name`` takes from the output of ``fast`` (the start weights).

        Called once before an inner loop: a pseudo-label objective labels the batch here, so its
        targets stay fixed while the weights move. ``supervised`` returns ``prepared`` unchanged.
        """
        if name == SUPERVISED:
            return prepared
        objective = self.objective(name)
        with torch.no_grad():
            output = self._run_from_prepared({n: w.detach() for n, w in fast.items()}, prepared)
        return replace(prepared, targets=objective.targets(output, prepared.targets))

    def losses(self, fast: FastWeights, prepared: PreparedTasks, create_graph: bool = False,
               objective: str = SUPERVISED) -> Tensor:
        """Per-task mean loss ``[T]`` with ``fast`` weights (each ``[T, *shape]``) under objective ``objective``
        (``prepared`` must carry that objective's targets: :meth:`for_objective`)."""
        loss = self.loss if objective == SUPERVISED else self.objective(objective)
        with higher_order_kernels(create_graph):
            output = self._run_from_prepared(fast, prepared)
            per_example = loss(output, prepared.targets, differentiable=create_graph)
        return per_example.reshape(prepared.num_tasks, -1).mean(dim=1)

    def outputs(self, fast: FastWeights, prepared: PreparedTasks) -> tuple[Tensor, ...]:
        """Model output state ``[T * B, ...]`` with ``fast`` weights (e.g. for decoding)."""
        return self._run_from_prepared(fast, prepared)

    def _run_from_prepared(self, fast: FastWeights, prepared: PreparedTasks) -> tuple[Tensor, ...]:
        kwargs = {"start": self.first_stage}
        if self.task_batched:
            return functional_call(self.model, fast, prepared.state, kwargs, strict=False)
        num_tasks = prepared.num_tasks
        per_task = [
            functional_call(
                self.model,
                {name: w[t] for name, w in fast.items()},
                tuple(split_tasks(x, num_tasks)[t] for x in prepared.state),
                kwargs,
                strict=False,
            )
            for t in range(num_tasks)
        ]
        return tuple(torch.cat(parts, dim=0) for parts in zip(*per_task))
