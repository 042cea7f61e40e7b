"""Episodic sampling: meta-training batches of tasks, and held-out evaluation splits.

Meta-training (:class:`SpeakerEpisodeSampler`) draws, for every outer step, T
distinct tasks (speakers by default) and from each task k support plus q query
utterances. Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``,
so training is reproducible, resumable mid-epoch, and shardable over DDP ranks
so that the ranks together see exactly the meta-batch one process would.

Meta-val / meta-test (:func:`make_evaluation_tasks`) split every held-out task
once into an adaptation pool and a disjoint evaluation set, and shard whole
tasks over ranks without padding (``DistributedSampler`` pads with duplicates,
which biases corpus-level WER).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from metaspeech.engine.randomness import seeded_generator
from metaspeech.errors import ConfigError

_MAX_NAMED = 20  # tasks named in one warning before "and N more"


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")


def _split_by_size(
    task_to_indices: Mapping[str, Sequence[int]], minimum: int, task_key: str, requirement: str, consequence: str
) -> dict[str, list[int]]:
    """Tasks with at least ``minimum`` utterances, sorted by name; warn naming the others.

    Sorting makes the task order independent of how the mapping was built, so
    every rank and every run agrees on which task is task ``j``.
    """
    kept: dict[str, list[int]] = {}
    dropped: list[str] = []
    for name in sorted(task_to_indices, key=str):
        indices = list(task_to_indices[name])
        if len(indices) >= minimum:
            kept[str(name)] = indices
        else:
            dropped.append(f"{task_key} {str(name)!r} has {len(indices)} utterances, {requirement} needs {minimum}")
    if dropped:
        named = "; ".join(dropped[:_MAX_NAMED])
        more = f"; and {len(dropped) - _MAX_NAMED} more" if len(dropped) > _MAX_NAMED else ""
        warnings.warn(f"{consequence} {len(dropped)} {task_key}(s) with too few utterances: {named}{more}", stacklevel=3)
    return kept


def _task_of_row(tasks: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """Dataset row -> the name of its task; a row listed under two tasks is an error (episodes would mix tasks)."""
    owner: dict[int, str] = {}
    for name, rows in tasks.items():
        for row in rows:
            if owner.setdefault(row, name) != name:
                raise ValueError(f"dataset row {row} belongs to two tasks: {owner[row]!r} and {name!r}")
    return owner


class SpeakerEpisodeSampler:
    """Batch sampler for meta-training: each item is one meta-batch of dataset indices.

    Use it as a DataLoader's ``batch_sampler`` with
    :class:`~metaspeech.datamodules.collate.MetaBatchCollator`. Each yielded list
    holds ``T * (k_shot + q_query)`` indices, task-major: for task ``t``, its
    ``k_shot`` support indices, then its ``q_query`` query indices (disjoint,
    drawn without replacement from that task). The T tasks are distinct.

    DDP: batch ``i`` draws one global meta-batch of ``T * world_size`` distinct
    tasks; rank ``r`` takes tasks ``[r*T, (r+1)*T)``. The union over ranks is
    exactly what one process with ``tasks_per_batch = T * world_size`` yields.

    Resuming: :meth:`state_dict` records the epoch and how many batches of it
    were yielded; after :meth:`load_state_dict` the next iteration continues at
    that batch and yields what an uninterrupted run would have. Later epochs
    (after :meth:`set_epoch`) start at batch 0. ``__len__`` stays
    ``batches_per_epoch`` even for a resumed, shortened epoch. With DataLoader
    workers the sampler runs ahead of training by the prefetched batches, so a
    checkpoint should record how many batches training *processed* (Lightning's
    batch progress) rather than this sampler's own count.

    Lightning: DDP needs ``Trainer(use_distributed_sampler=False)`` (this
    sampler shards itself; Lightning cannot inject a ``DistributedSampler``
    into a custom batch sampler). Lightning calls ``set_epoch`` on
    ``batch_sampler.sampler``, which is why :attr:`sampler` returns this object.

    Task names: the sampler owns them. A DataLoader passes only indices on, so
    :attr:`task_of_row` (dataset row -> task name) is what the collator names each
    episode with (``MetaBatchCollator.for_sampler``).

    Args:
        task_to_indices: task name (a speaker, an accent, ...) -> its dataset indices.
        k_shot: support utterances per task.
        q_query: query utterances per task.
        tasks_per_batch: tasks T per meta-batch on this rank.
        batches_per_epoch: meta-batches per epoch.
        seed: base seed; batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``.
        rank / world_size: this process's DDP rank and the number of ranks.
        task_key: what a task is, for messages (``speaker``, ``accent``, ...).
    """

    def __init__(
        self,
        task_to_indices: Mapping[str, Sequence[int]],
        k_shot: int,
        q_query: int,
        tasks_per_batch: int,
        batches_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        task_key: str = "speaker",
    ) -> None:
        _check_positive(k_shot=k_shot, q_query=q_query, tasks_per_batch=tasks_per_batch, batches_per_epoch=batches_per_epoch)
        _check_rank(rank, world_size)
        self.k_shot, self.q_query = k_shot, q_query
        self.tasks_per_batch, self.batches_per_epoch = tasks_per_batch, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.tasks = _split_by_size(
            task_to_indices, k_shot + q_query, task_key, "k_shot+q_query", "SpeakerEpisodeSampler excludes"
        )
        self.task_names = list(self.tasks)
        self.task_of_row = _task_of_row(self.tasks)
        self._check_enough_tasks(task_key)
        self.epoch = 0
        self.batches_done = 0
        self._start = 0

    def _check_enough_tasks(self, task_key: str) -> None:
        needed = self.tasks_per_batch * self.world_size
        if len(self.tasks) < needed:
            raise ConfigError(
                f"k_shot={self.k_shot} + q_query={self.q_query}: only {len(self.tasks)} {task_key}(s) have at least "
                f"k_shot+q_query={self.k_shot + self.q_query} "
                f"utterances, but a meta-batch needs tasks_per_batch*world_size={self.tasks_per_batch}*{self.world_size}"
                f"={needed} distinct {task_key}s; lower tasks_per_batch (or k_shot/q_query), or add {task_key}s"
            )

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def sampler(self) -> SpeakerEpisodeSampler:
        """This sampler: Lightning's per-epoch ``set_epoch`` reaches ``batch_sampler.sampler`` only."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a different epoch drops any pending resume offset.

        Setting the epoch that was just loaded (as Lightning does on resume) keeps the offset.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches_done = 0
            self._start = 0

    def skip(self, n: int) -> None:
        """Start the next iteration of the current epoch at batch ``n``."""
        if not 0 <= n <= self.batches_per_epoch:
            raise ValueError(f"can skip 0..{self.batches_per_epoch} batches, got {n}")
        self._start = n
        self.batches_done = n

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_done"}``: enough to continue exactly where iteration stopped."""
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.skip(int(state["batches_done"]))

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        self.batches_done = start
        for index in range(start, self.batches_per_epoch):
            batch = self.batch(self.epoch, index)
            self.batches_done = index + 1
            yield batch

    def batch(self, epoch: int, index: int) -> list[int]:
        """This rank's batch ``index`` of ``epoch``: ``T * (k + q)`` dataset indices, task-major."""
        episodes = self.global_episodes(epoch, index)
        mine = episodes[self.rank * self.tasks_per_batch : (self.rank + 1) * self.tasks_per_batch]
        return [row for _, rows in mine for row in rows]

    def global_episodes(self, epoch: int, index: int) -> list[tuple[str, list[int]]]:
        """All ranks' episodes of one step: ``T * world_size`` pairs (task name, k+q indices).

        Every rank draws the whole global meta-batch from the same generator, so
        what a rank gets does not depend on the number of ranks beyond its slice.
        """
        generator = seeded_generator("episode", self.seed, epoch, index)
        count = self.tasks_per_batch * self.world_size
        chosen = torch.randperm(len(self.task_names), generator=generator)[:count].tolist()
        episodes = []
        for task in chosen:
            name = self.task_names[task]
            rows = self.tasks[name]
            picks = torch.randperm(len(rows), generator=generator)[: self.k_shot + self.q_query].tolist()
            episodes.append((name, [rows[p] for p in picks]))
        return episodes


@dataclass(frozen=True)
class EvaluationTask:
    """One held-out task: an adaptation ``pool`` and a disjoint ``evaluation`` set (dataset indices).

    The pool is in a seeded random order, so k-shot adaptation with the first k
    pool utterances gives nested supports (the 1-shot support is inside the
    5-shot one). The evaluation set is in dataset order. ``oracle`` is the speaker
    oracle's large pool (empty when there is none): the few-shot pool and more of
    the task's utterances, never any of the evaluation set.
    """

    name: str
    pool: list[int]
    evaluation: list[int]
    oracle: list[int] = field(default_factory=list)


def make_evaluation_tasks(
    task_to_indices: Mapping[str, Sequence[int]],
    pool_size: int,
    eval_size: int | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    task_key: str = "speaker",
    oracle_pool_size: int = 0,
) -> list[EvaluationTask]:
    """Split every held-out task into an adaptation pool and a disjoint evaluation set.

    A task's split depends only on ``(seed, task name)``, not on which other
    tasks exist. Tasks with fewer than ``pool_size + 1`` utterances are skipped
    with a warning naming them. ``eval_size=None`` evaluates on all the rest.
    ``oracle_pool_size > pool_size`` also gives every task an oracle pool of that
    many utterances (the pool first, then the next ones in the seeded order), and
    the evaluation set starts after it; tasks need ``oracle_pool_size + 1`` utterances.

    DDP: the eligible tasks, sorted by name, go to ranks round-robin (task ``j``
    to rank ``j % world_size``), whole and without duplicates, so ranks may get
    different numbers of tasks (a rank gets none when there are fewer tasks than
    ranks). Summed metric states (corpus-level WER) stay exact.
    """
    _check_positive(pool_size=pool_size)
    if eval_size is not None:
        _check_positive(eval_size=eval_size)
    _check_rank(rank, world_size)
    if oracle_pool_size and oracle_pool_size <= pool_size:
        raise ValueError(f"oracle_pool_size ({oracle_pool_size}) must exceed the adaptation pool ({pool_size}), or be 0")
    reserved = max(pool_size, oracle_pool_size)
    requirement = "oracle_pool_size+1" if oracle_pool_size else "pool_size+1"
    tasks = _split_by_size(task_to_indices, reserved + 1, task_key, requirement, "evaluation skips")
    names = list(tasks)[rank::world_size]
    return [_split_task(name, tasks[name], pool_size, oracle_pool_size, eval_size, seed) for name in names]


def _split_task(name: str, rows: list[int], pool_size: int, oracle_size: int, eval_size: int | None, seed: int) -> EvaluationTask:
    order = torch.randperm(len(rows), generator=seeded_generator("evaluation", seed, name)).tolist()
    shuffled = [rows[i] for i in order]
    start = max(pool_size, oracle_size)
    rest = shuffled[start:] if eval_size is None else shuffled[start : start + eval_size]
    return EvaluationTask(name=name, pool=shuffled[:pool_size], evaluation=sorted(rest), oracle=shuffled[:oracle_size])
