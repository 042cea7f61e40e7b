"""Dataset items and collation into TaskBatch / MetaBatch, end to end through a DataLoader."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from metaspeech.datamodules.collate import (
    MetaBatchCollator,
    collate_evaluation_task,
    collate_tasks,
)
from metaspeech.datamodules.dataset import UtteranceDataset, UtteranceItem
from metaspeech.datamodules.sampler import SpeakerEpisodeSampler, make_evaluation_tasks
from metaspeech.engine.batch import MetaBatch, TaskBatch

F = 4
SPEAKERS = 5
PER_SPEAKER = 6


def item(frames: int, tokens: list[int], name: str, index: int = -1) -> UtteranceItem:
    return UtteranceItem(torch.randn(frames, F), torch.tensor(tokens, dtype=torch.long), f"text {name}", name, index)


@pytest.fixture
def dataset() -> UtteranceDataset:
    """SPEAKERS x PER_SPEAKER utterances; row r has 3 + r % 7 frames (float16) and 1 + r % 4 tokens."""
    rows = range(SPEAKERS * PER_SPEAKER)
    return UtteranceDataset(
        features=[torch.full((3 + r % 7, F), float(r)).half() for r in rows],
        tokens=[[1 + r % 5] * (1 + r % 4) for r in rows],
        texts=[f"utterance {r}" for r in rows],
        ids=[f"spk{r // PER_SPEAKER}-{r}" for r in rows],
    )


def speakers() -> dict[str, list[int]]:
    return {f"spk{s}": list(range(s * PER_SPEAKER, (s + 1) * PER_SPEAKER)) for s in range(SPEAKERS)}


def test_dataset_items_are_float32_with_long_tokens_and_transform(dataset: UtteranceDataset) -> None:
    got = dataset[9]
    assert got.features.dtype == torch.float32 and got.features.shape == (3 + 9 % 7, F)
    assert got.tokens.dtype == torch.long and got.tokens.tolist() == [5, 5]
    assert (got.text, got.utt_id, got.index) == ("utterance 9", "spk1-9", 9)
    centered = UtteranceDataset(dataset.features, dataset.tokens, dataset.texts, dataset.ids, transform=lambda x: x - 9.0)
    assert torch.equal(centered[9].features, torch.zeros(5, F))


def test_dataset_rejects_mismatched_fields() -> None:
    with pytest.raises(ValueError, match="one entry per utterance"):
        UtteranceDataset([torch.zeros(2, F)], [[1], [2]], ["a"], ["a"])


def test_the_sampler_owns_the_task_of_every_row_and_rejects_overlaps() -> None:
    sampler = SpeakerEpisodeSampler({"b": [1, 3], "a": [0, 2]}, k_shot=1, q_query=1, tasks_per_batch=2, batches_per_epoch=1)
    assert sampler.task_of_row == {0: "a", 1: "b", 2: "a", 3: "b"}
    with pytest.raises(ValueError, match="row 0 belongs to two tasks"):
        SpeakerEpisodeSampler({"a": [0, 2], "b": [0, 1]}, k_shot=1, q_query=1, tasks_per_batch=2, batches_per_epoch=1)


def test_collate_tasks_shapes_padding_and_lengths() -> None:
    items = [[item(3, [1, 2], "a0"), item(5, [3], "a1")], [item(2, [], "b0"), item(4, [4, 5, 6], "b1")]]
    batch = collate_tasks(items)
    features, feature_lengths = batch.inputs
    tokens, token_lengths = batch.targets
    assert features.shape == (2, 2, 5, F) and features.dtype == torch.float32
    assert feature_lengths.tolist() == [[3, 5], [2, 4]]
    assert token_lengths.tolist() == [[2, 1], [0, 3]]
    assert tokens.shape == (2, 2, 3) and tokens.dtype == torch.long
    assert tokens[0, 0].tolist() == [1, 2, 0] and tokens[1, 0].tolist() == [0, 0, 0]
    assert torch.equal(features[1, 0, :2], items[1][0].features)
    assert features[1, 0, 2:].abs().sum() == 0  # padded with zeros
    assert batch.ids == [["a0", "a1"], ["b0", "b1"]]
    assert batch.texts[1][1] == "text b1"
    assert (batch.num_tasks, batch.examples_per_task) == (2, 2)


def test_collate_tasks_rejects_ragged_tasks_and_mixed_feature_dims() -> None:
    with pytest.raises(ValueError, match="same number"):
        collate_tasks([[item(3, [1], "a")], [item(3, [1], "b"), item(3, [1], "c")]])
    odd = UtteranceItem(torch.zeros(3, F + 1), torch.tensor([1]), "", "odd")
    with pytest.raises(ValueError, match="'odd' has 5"):
        collate_tasks([[item(3, [1], "a"), odd]])


def test_meta_batch_collator_splits_support_and_query_and_names_tasks() -> None:
    task_of_row = {i: "x" if i < 3 else "y" for i in range(6)}
    flat = [item(2 + i, [i + 1], f"u{i}", index=i) for i in range(6)]
    batch = MetaBatchCollator(k_shot=1, q_query=2, task_of_row=task_of_row)(flat)
    assert isinstance(batch, MetaBatch) and batch.tasks == ["x", "y"]
    assert batch.support.ids == [["u0"], ["u3"]]
    assert batch.query.ids == [["u1", "u2"], ["u4", "u5"]]
    assert batch.query.inputs[0].shape == (2, 2, 7, F)
    assert MetaBatchCollator(1, 2)(flat).tasks == []
    with pytest.raises(ValueError, match="multiple of"):
        MetaBatchCollator(1, 2)(flat[:4])


def test_dataloader_end_to_end_yields_meta_batches(dataset: UtteranceDataset) -> None:
    tasks = speakers()
    sampler = SpeakerEpisodeSampler(tasks, k_shot=2, q_query=2, tasks_per_batch=3, batches_per_epoch=4, seed=1)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=MetaBatchCollator.for_sampler(sampler), num_workers=0
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    for batch in batches:
        assert isinstance(batch, MetaBatch) and len(set(batch.tasks)) == 3
        assert batch.support.inputs[0].shape[:2] == (3, 2) and batch.query.inputs[0].shape[:2] == (3, 2)
        for t, name in enumerate(batch.tasks):
            ids = batch.support.ids[t] + batch.query.ids[t]
            assert all(i.startswith(name + "-") for i in ids) and len(set(ids)) == 4
    assert sampler.state_dict() == {"epoch": 0, "batches_done": 4}


def test_lightning_set_epoch_reaches_the_batch_sampler(dataset: UtteranceDataset) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch  # what Lightning's fit loop calls every epoch

    sampler = SpeakerEpisodeSampler(speakers(), k_shot=2, q_query=2, tasks_per_batch=3, batches_per_epoch=2)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=MetaBatchCollator(2, 2))
    _set_sampler_epoch(loader, 5)
    assert sampler.epoch == 5


def test_collate_evaluation_task(dataset: UtteranceDataset) -> None:
    task = make_evaluation_tasks(speakers(), pool_size=2, eval_size=None, seed=0)[1]
    item = collate_evaluation_task(dataset, task)
    pool, evaluation = item.pool, item.evaluation
    assert item.task == "spk1" and isinstance(pool, TaskBatch) and item.oracle is None
    assert (pool.num_tasks, pool.examples_per_task) == (1, 2)
    assert (evaluation.num_tasks, evaluation.examples_per_task) == (1, PER_SPEAKER - 2)
    assert not set(pool.ids[0]) & set(evaluation.ids[0])


def test_the_oracle_pool_holds_the_few_shot_pool_and_more_never_the_evaluation_set(dataset: UtteranceDataset) -> None:
    plain = make_evaluation_tasks(speakers(), pool_size=2, eval_size=None, seed=0)[1]
    task = make_evaluation_tasks(speakers(), pool_size=2, eval_size=None, seed=0, oracle_pool_size=4)[1]
    assert task.pool == plain.pool and task.oracle[:2] == task.pool and len(task.oracle) == 4
    assert not set(task.oracle) & set(task.evaluation) and len(task.evaluation) == PER_SPEAKER - 4
    item = collate_evaluation_task(dataset, task)
    assert item.oracle is not None and item.oracle.examples_per_task == 4
    assert item.oracle.ids[0][:2] == item.pool.ids[0]
    with pytest.raises(ValueError, match="oracle_pool_size"):
        make_evaluation_tasks(speakers(), pool_size=2, eval_size=None, seed=0, oracle_pool_size=2)
