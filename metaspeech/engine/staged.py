"""A model as an ordered sequence of named stages.

Why stages: with a small adaptation scope, every stage *below* the first adapted
parameter sees the same input at every inner step. The learner runs those
stages once per task (``forward(..., stop=i)``) and every inner step only
re-runs the rest (``forward(..., start=i)``). Stages pass a tuple of tensors
(the *state*) whose first dimension is the example axis ``N``.
"""

from __future__ import annotations

from torch import Tensor, nn

from metaspeech.engine.config import RecordsInitArgs


class StagedModel(RecordsInitArgs, nn.Module):
    """Base class: ``self.stages`` is an ordered ``nn.ModuleDict`` of stages.

    Subclasses build ``stages`` and may override :meth:`task_statistics`.
    """

    stages: nn.ModuleDict

    def forward(self, *state: Tensor, start: int = 0, stop: int | None = None) -> tuple[Tensor, ...]:
        """Run stages ``[start, stop)`` on ``state`` and return the new state."""
        for stage in list(self.stages.values())[start:stop]:
            state = stage(*state)
        return state

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_index(self, parameter_name: str) -> int:
        """Index of the stage holding ``parameter_name`` (``"stages.<stage>.<...>"``)."""
        parts = parameter_name.split(".")
        if len(parts) < 3 or parts[0] != "stages" or parts[1] not in self.stages:
            raise KeyError(f"parameter {parameter_name!r} is not inside a stage of {type(self).__name__}")
        return list(self.stages.keys()).index(parts[1])

    @property
    def summary_dim(self) -> int:
        """Size of :meth:`task_statistics`' output per task."""
        raise NotImplementedError(f"{type(self).__name__} does not define task statistics")

    def task_statistics(
        self, inputs: tuple[Tensor, ...], targets: tuple[Tensor, ...], num_tasks: int, statistics: Tensor | None = None
    ) -> Tensor:
        """A fixed-size description of each task from its examples: ``[T, summary_dim]``.

        Used by task-conditioned algorithms (e.g. a hypernetwork) to embed a support set.
        ``inputs``/``targets`` are flattened: leading dimension ``T * B``; ``statistics``
        ``[T * B, S]`` are per-example descriptors from the data, when it has them.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define task statistics")


class Stage(nn.Module):
    """Wrap a module mapping features ``x [N, frames, C]`` so it passes lengths through."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.module(x), lengths
