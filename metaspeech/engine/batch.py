"""Batches of tasks: the data contract between data modules, models and algorithms.

Everything an algorithm sees is a :class:`TaskBatch`: T tasks with B examples
each, every tensor carrying a leading ``[T, B]``. Algorithms never look inside
``inputs`` or ``targets``; the :class:`~metaspeech.engine.learner.Learner` flattens
``[T, B]`` to ``[T * B]`` for the model and folds per-example losses back to
per-task losses ``[T]``. This is what lets all T tasks of a meta-batch run as one
batched forward/backward.

For speech (see :func:`metaspeech.datamodules.collate.collate_tasks`):

- ``inputs  = (features [T, B, frames, n_feats] float, feature_lengths [T, B] long)``
- ``targets = (tokens [T, B, max_tokens] long, token_lengths [T, B] long)``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """T tasks x B examples. ``texts``/``ids`` are ``[T][B]`` lists (may be empty for toy data).

    ``statistics`` (``[T, B, S]``, optional) describes each example without being a model
    input: for speech, the feature mean and std before per-utterance normalization, which
    task embeddings pool (:meth:`metaspeech.models.StagedModel.task_statistics`).
    """

    inputs: tuple[Tensor, ...]
    targets: tuple[Tensor, ...]
    texts: list[list[str]] = field(default_factory=list)
    ids: list[list[str]] = field(default_factory=list)
    statistics: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return int(self.inputs[0].shape[0])

    @property
    def examples_per_task(self) -> int:
        return int(self.inputs[0].shape[1])

    def task(self, index: int) -> "TaskBatch":
        """Task ``index`` alone, keeping a leading task dimension of 1."""
        return self.tasks_between(index, index + 1)

    def tasks_between(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start`` to ``stop - 1``: ``[stop - start, B, ...]``."""
        return TaskBatch(
            inputs=tuple(t[start:stop] for t in self.inputs),
            targets=tuple(t[start:stop] for t in self.targets),
            texts=self.texts[start:stop],
            ids=self.ids[start:stop],
            statistics=self.statistics[start:stop] if self.statistics is not None else None,
        )

    def take(self, count: int) -> "TaskBatch":
        """The first ``count`` examples of every task (used for k-shot subsets of a pool)."""
        return TaskBatch(
            inputs=tuple(t[:, :count] for t in self.inputs),
            targets=tuple(t[:, :count] for t in self.targets),
            texts=[row[:count] for row in self.texts],
            ids=[row[:count] for row in self.ids],
            statistics=self.statistics[:, :count] if self.statistics is not None else None,
        )

    def select(self, indices: list[int]) -> "TaskBatch":
        """Examples ``indices`` of every task, in that order (e.g. the folds of a support set)."""
        index = torch.tensor(indices, dtype=torch.long)
        return TaskBatch(
            inputs=tuple(t[:, index] for t in self.inputs),
            targets=tuple(t[:, index] for t in self.targets),
            texts=[[row[i] for i in indices] for row in self.texts],
            ids=[[row[i] for i in indices] for row in self.ids],
            statistics=self.statistics[:, index] if self.statistics is not None else None,
        )

    def per_utterance(self) -> "TaskBatch":
        """``[T, B, ...]`` -> ``[T * B, 1, ...]``: every utterance becomes a task of its own, task by task.

        Why: per-utterance (transductive) adaptation adapts each utterance on itself; as tasks of one batch
        they run side by side and still get the weights each would get alone.
        """
        regroup = lambda t: t.reshape(t.shape[0] * t.shape[1], 1, *t.shape[2:])  # noqa: E731
        return TaskBatch(
            tuple(regroup(t) for t in self.inputs), tuple(regroup(t) for t in self.targets),
            texts=[[text] for row in self.texts for text in row],
            ids=[[i] for row in self.ids for i in row],
            statistics=regroup(self.statistics) if self.statistics is not None else None,
        )

    def without_transcripts(self) -> "TaskBatch":
        """This batch with empty targets and no texts: what label-free adaptation gets, so it cannot read a transcript."""
        tokens = self.targets[0]
        empty = tokens.new_zeros(*tokens.shape[:2], 0)
        return TaskBatch(self.inputs, (empty, tokens.new_zeros(tokens.shape[:2])), ids=self.ids, statistics=self.statistics)

    @staticmethod
    def concat_examples(first: "TaskBatch", second: "TaskBatch") -> "TaskBatch":
        """Join two batches of the same tasks along the example axis (pads to the longer)."""
        return TaskBatch(
            inputs=tuple(_cat_padded(a, b) for a, b in zip(first.inputs, second.inputs)),
            targets=tuple(_cat_padded(a, b) for a, b in zip(first.targets, second.targets)),
            texts=[a + b for a, b in zip(first.texts, second.texts)],
            ids=[a + b for a, b in zip(first.ids, second.ids)],
            statistics=(torch.cat([first.statistics, second.statistics], dim=1)
                        if first.statistics is not None and second.statistics is not None else None),
        )


def _cat_padded(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate along dim 1, zero-padding trailing dims to a common size."""
    if a.shape[2:] != b.shape[2:]:
        shape = [max(x, y) for x, y in zip(a.shape[2:], b.shape[2:])]
        a = _pad_to(a, shape)
        b = _pad_to(b, shape)
    return torch.cat([a, b], dim=1)


def _pad_to(t: Tensor, trailing: list[int]) -> Tensor:
    pad: list[int] = []
    for size, target in zip(reversed(t.shape[2:]), reversed(trailing)):
        pad += [0, target - size]
    return torch.nn.functional.pad(t, pad)


@dataclass
class MetaBatch:
    """One outer step: support and query sets of the same T tasks.

    ``tasks[t]`` names task t (a speaker id, an accent, ...).
    """

    support: TaskBatch
    query: TaskBatch
    tasks: list[str] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return self.support.num_tasks

    def chunks(self, size: int) -> list["MetaBatch"]:
        """The meta-batch as consecutive groups of at most ``size`` tasks."""
        return [
            MetaBatch(self.support.tasks_between(start, start + size), self.query.tasks_between(start, start + size),
                      self.tasks[start : start + size])
            for start in range(0, self.num_tasks, size)
        ]


@dataclass
class EvaluationBatch:
    """One held-out task for evaluation: an adaptation ``pool`` and a disjoint ``evaluation`` set.

    Both are :class:`TaskBatch` objects with a single task (``T = 1``); k-shot
    adaptation uses ``pool.take(k)``. ``oracle`` is the speaker oracle's large pool
    of the same task (it contains ``pool``, never ``evaluation``), or None.
    """

    pool: TaskBatch
    evaluation: TaskBatch
    task: str
    oracle: TaskBatch | None = None
