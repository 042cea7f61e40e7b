"""Episode sampler and evaluation splits: determinism, disjointness, DDP sharding, resume."""

from __future__ import annotations

import itertools
import warnings

import pytest

from metaspeech.datamodules.sampler import SpeakerEpisodeSampler, make_evaluation_tasks


def make_tasks(sizes: dict[str, int]) -> dict[str, list[int]]:
    """Task name -> consecutive, non-overlapping dataset indices."""
    tasks, start = {}, 0
    for name, size in sizes.items():
        tasks[name] = list(range(start, start + size))
        start += size
    return tasks


TASKS = make_tasks({f"spk{i:02d}": 10 + i for i in range(12)})
OWNER = {row: name for name, rows in TASKS.items() for row in rows}


def sampler(**overrides) -> SpeakerEpisodeSampler:
    args = dict(task_to_indices=TASKS, k_shot=2, q_query=3, tasks_per_batch=4, batches_per_epoch=6, seed=7)
    args.update(overrides)
    return SpeakerEpisodeSampler(**args)


def episodes(batch: list[int], per_task: int = 5) -> list[list[int]]:
    return [batch[i : i + per_task] for i in range(0, len(batch), per_task)]


def test_same_seed_and_epoch_give_identical_batches() -> None:
    first, second = sampler(), sampler()
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    assert list(first) == list(first)  # re-iterating an epoch does not depend on the previous pass


def test_different_epoch_or_seed_changes_batches() -> None:
    base = list(sampler())
    other_epoch = sampler()
    other_epoch.set_epoch(1)
    assert list(other_epoch) != base
    assert list(sampler(seed=8)) != base
    assert len(set(map(tuple, base))) == len(base)  # batches within an epoch differ


def test_batch_layout_support_query_disjoint_single_task_distinct_tasks() -> None:
    s = sampler()
    assert len(s) == 6
    for batch in s:
        assert len(batch) == 4 * 5
        owners = []
        for episode in episodes(batch):
            support, query = episode[:2], episode[2:]
            assert not set(support) & set(query)
            assert len(set(episode)) == 5
            assert len({OWNER[row] for row in episode}) == 1
            owners.append(OWNER[episode[0]])
        assert len(set(owners)) == 4


def test_small_tasks_excluded_with_warning_naming_them() -> None:
    tasks = dict(TASKS, tiny=[1000, 1001, 1002])
    with pytest.warns(UserWarning, match=r"speaker 'tiny' has 3 utterances, k_shot\+q_query needs 5"):
        s = SpeakerEpisodeSampler(tasks, k_shot=2, q_query=3, tasks_per_batch=4, batches_per_epoch=20)
    assert "tiny" not in s.task_names
    assert not {1000, 1001, 1002} & set(itertools.chain.from_iterable(s))


def test_too_few_tasks_raise_with_a_fix() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(sampler(k_shot=10, q_query=5).task_names) == 7  # spk05..spk11 have >= 15 utterances
        with pytest.raises(ValueError, match="only 7 speaker.*lower tasks_per_batch"):
            sampler(k_shot=10, q_query=5, world_size=2)  # needs 4 * 2 = 8 distinct tasks
    with pytest.raises(ValueError, match=r"tasks_per_batch\*world_size=7\*2=14"):
        sampler(tasks_per_batch=7, world_size=2, rank=1)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="k_shot"):
        sampler(k_shot=0)
    with pytest.raises(ValueError, match="rank"):
        sampler(rank=2, world_size=2)


def test_ddp_ranks_are_disjoint_and_concatenate_to_the_single_process_batch() -> None:
    single = list(sampler(tasks_per_batch=6))
    rank0 = list(sampler(tasks_per_batch=3, rank=0, world_size=2))
    rank1 = list(sampler(tasks_per_batch=3, rank=1, world_size=2))
    assert len(rank0) == len(rank1) == len(single)
    for a, b, whole in zip(rank0, rank1, single):
        assert len(a) == len(b) == 15
        assert not {OWNER[row] for row in a} & {OWNER[row] for row in b}
        assert a + b == whole


def test_resume_mid_epoch_yields_the_remaining_batches_then_a_fresh_epoch() -> None:
    reference = sampler()
    reference.set_epoch(2)
    epoch2 = list(reference)
    reference.set_epoch(3)
    epoch3 = list(reference)

    interrupted = sampler()
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    consumed = [next(iterator) for _ in range(3)]
    state = interrupted.state_dict()
    assert consumed == epoch2[:3]
    assert state == {"epoch": 2, "batches_done": 3}

    resumed = sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning re-announces the loaded epoch: the offset survives
    assert list(resumed) == epoch2[3:]
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 6}
    resumed.set_epoch(3)
    assert list(resumed) == epoch3


def test_skip_applies_to_one_iteration_only() -> None:
    s = sampler()
    full = list(s)
    s.skip(4)
    assert list(s) == full[4:]
    assert list(s) == full


def test_evaluation_split_pool_and_eval_disjoint_and_deterministic() -> None:
    tasks = make_evaluation_tasks(TASKS, pool_size=5, eval_size=4, seed=3)
    again = make_evaluation_tasks(TASKS, pool_size=5, eval_size=4, seed=3)
    other = make_evaluation_tasks(TASKS, pool_size=5, eval_size=4, seed=4)
    assert tasks == again
    assert [t.pool for t in tasks] != [t.pool for t in other]
    assert [t.name for t in tasks] == sorted(TASKS)
    for task in tasks:
        assert len(task.pool) == 5 and len(task.evaluation) == 4
        assert not set(task.pool) & set(task.evaluation)
        assert set(task.pool) | set(task.evaluation) <= set(TASKS[task.name])


def test_evaluation_split_of_a_task_does_not_depend_on_other_tasks() -> None:
    alone = make_evaluation_tasks({"spk03": TASKS["spk03"]}, pool_size=5, eval_size=None, seed=3)
    among = {t.name: t for t in make_evaluation_tasks(TASKS, pool_size=5, eval_size=None, seed=3)}
    assert alone[0] == among["spk03"]
    assert sorted(alone[0].pool + alone[0].evaluation) == TASKS["spk03"]  # eval_size=None: all the rest


def test_evaluation_skips_small_tasks_with_warning() -> None:
    tasks = dict(TASKS, tiny=[1000, 1001])
    with pytest.warns(UserWarning, match=r"speaker 'tiny' has 2 utterances, pool_size\+1 needs 3"):
        split = make_evaluation_tasks(tasks, pool_size=2, eval_size=None, seed=0)
    assert "tiny" not in {t.name for t in split}


def test_evaluation_sharding_is_complete_without_duplicates() -> None:
    single = make_evaluation_tasks(TASKS, pool_size=5, eval_size=3, seed=1)
    shards = [make_evaluation_tasks(TASKS, pool_size=5, eval_size=3, seed=1, rank=r, world_size=5) for r in range(5)]
    names = [t.name for shard in shards for t in shard]
    assert sorted(names) == sorted(TASKS) and len(names) == len(set(names))
    assert [len(shard) for shard in shards] == [3, 3, 2, 2, 2]  # uneven, no padding
    by_name = {t.name: t for t in single}
    assert all(t == by_name[t.name] for shard in shards for t in shard)
