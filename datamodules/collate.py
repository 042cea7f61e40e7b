"""Collation: utterance items -> :class:`~metaspeech.engine.batch.TaskBatch` / :class:`~metaspeech.engine.batch.MetaBatch`.

A :class:`TaskBatch` carries a leading ``[T, B]`` on every tensor so that all
tasks of a meta-batch run as one batched forward/backward:

- ``inputs  = (features [T, B, frames, F] float32, feature_lengths [T, B] long)``
- ``targets = (tokens [T, B, max_tokens] long, token_lengths [T, B] long)``

Features are zero-padded to the longest utterance across all tasks; tokens are
padded with 0 (the CTC blank, never read beyond ``token_lengths``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from metaspeech.datamodules.dataset import UtteranceDataset, UtteranceItem
from metaspeech.datamodules.sampler import EvaluationTask, SpeakerEpisodeSampler
from metaspeech.engine.batch import EvaluationBatch, MetaBatch, TaskBatch


def collate_tasks(items: Sequence[Sequence[UtteranceItem]]) -> TaskBatch:
    """``items[t][b]`` (T tasks, the same B examples each) -> one padded :class:`TaskBatch`."""
    num_tasks = len(items)
    if num_tasks == 0:
        raise ValueError("collate_tasks needs at least one task")
    per_task = {len(task) for task in items}
    if len(per_task) != 1 or 0 in per_task:
        raise ValueError(f"every task needs the same number (>= 1) of examples, got {[len(t) for t in items]}")
    flat = [item for task in items for item in task]
    _check_feature_dims(flat)
    shape = (num_tasks, len(flat) // num_tasks)
    features = pad_sequence([item.features.to(torch.float32) for item in flat], batch_first=True)
    tokens = pad_sequence([item.tokens.to(torch.long) for item in flat], batch_first=True, padding_value=0)
    feature_lengths = torch.tensor([item.features.shape[0] for item in flat], dtype=torch.long)
    token_lengths = torch.tensor([item.tokens.shape[0] for item in flat], dtype=torch.long)
    statistics = None
    if all(item.statistics is not None for item in flat):
        statistics = torch.stack([item.statistics.to(torch.float32) for item in flat]).view(*shape, -1)
    return TaskBatch(
        inputs=(features.view(*shape, *features.shape[1:]), feature_lengths.view(shape)),
        targets=(tokens.view(*shape, tokens.shape[1]), token_lengths.view(shape)),
        texts=[[item.text for item in task] for task in items],
        ids=[[item.utt_id for item in task] for task in items],
        statistics=statistics,
    )


def _check_feature_dims(flat: list[UtteranceItem]) -> None:
    dims = {int(item.features.shape[-1]) for item in flat}
    if len(dims) > 1:
        first = flat[0]
        odd = next(item for item in flat if item.features.shape[-1] != first.features.shape[-1])
        raise ValueError(
            f"feature dimensions differ within a batch: {first.utt_id!r} has {first.features.shape[-1]}, "
            f"{odd.utt_id!r} has {odd.features.shape[-1]}; were features computed with different configs?"
        )


class MetaBatchCollator:
    """``collate_fn`` for a DataLoader whose ``batch_sampler`` is a :class:`SpeakerEpisodeSampler`.

    Receives the flat, task-major list of ``T * (k_shot + q_query)`` items and
    returns a :class:`MetaBatch` (support ``[T, k_shot]``, query ``[T, q_query]``).

    Task names come from the sampler, their one owner: ``task_of_row`` is its
    :attr:`SpeakerEpisodeSampler.task_of_row`, looked up through the first item's
    ``index`` of each episode (build the collator with :meth:`for_sampler`).
    Without ``task_of_row``, ``MetaBatch.tasks`` is empty.
    """

    def __init__(self, k_shot: int, q_query: int, task_of_row: Mapping[int, str] | None = None) -> None:
        if k_shot < 1 or q_query < 1:
            raise ValueError(f"k_shot and q_query must be >= 1, got {k_shot} and {q_query}")
        self.k_shot, self.q_query = k_shot, q_query
        self.task_of_row = dict(task_of_row) if task_of_row is not None else None

    @classmethod
    def for_sampler(cls, sampler: SpeakerEpisodeSampler) -> MetaBatchCollator:
        """The collator of ``sampler``'s meta-batches: its shots, and its task names."""
        return cls(sampler.k_shot, sampler.q_query, sampler.task_of_row)

    def __call__(self, items: Sequence[UtteranceItem]) -> MetaBatch:
        per_task = self.k_shot + self.q_query
        if not items or len(items) % per_task:
            raise ValueError(
                f"a meta-batch needs a multiple of k_shot+q_query={per_task} items (task-major), got {len(items)}"
            )
        episodes = [list(items[start : start + per_task]) for start in range(0, len(items), per_task)]
        tasks = [self.task_of_row[episode[0].index] for episode in episodes] if self.task_of_row is not None else []
        return MetaBatch(
            support=collate_tasks([episode[: self.k_shot] for episode in episodes]),
            query=collate_tasks([episode[self.k_shot :] for episode in episodes]),
            tasks=tasks,
        )


def collate_evaluation_task(dataset: UtteranceDataset, task: EvaluationTask) -> EvaluationBatch:
    """One held-out task -> an :class:`EvaluationBatch`: pool, evaluation set and oracle pool, each ``T = 1``.

    k-shot adaptation uses ``pool.take(k)``.
    """
    pool = collate_tasks([[dataset[i] for i in task.pool]])
    evaluation = collate_tasks([[dataset[i] for i in task.evaluation]])
    oracle = collate_tasks([[dataset[i] for i in task.oracle]]) if task.oracle else None
    return EvaluationBatch(pool=pool, evaluation=evaluation, task=task.name, oracle=oracle)

