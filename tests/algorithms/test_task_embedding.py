"""HyperInit's task embedding tells held-out speakers apart.

The embedding pools each utterance's feature statistics from *before* per-utterance
CMVN (``TaskBatch.statistics``). Pooled over normalized features, as before, every
speaker looked the same: the contrast is asserted too.
"""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import HyperInit
from metaspeech.datamodules.collate import collate_tasks
from metaspeech.engine.learner import Learner
from metaspeech.models import BiLSTMCTC

SHOTS = 3


def between_speaker_share(groups: list[torch.Tensor]) -> float:
    """Between-speaker share of the total variance of embeddings ``groups[speaker] [draws, E]``."""
    every = torch.cat(groups)
    total = (every - every.mean(0)).pow(2).sum()
    within = sum((g - g.mean(0)).pow(2).sum() for g in groups)
    return float(1 - within / total)


def nearest_centroid_accuracy(groups: list[torch.Tensor]) -> float:
    """Leave-one-out speaker identification: each draw against the centroids of all other draws."""
    correct, count = 0, 0
    for speaker, draws in enumerate(groups):
        for held in range(len(draws)):
            centroids = torch.stack([
                (torch.cat([g[:held], g[held + 1:]]) if s == speaker else g).mean(0) for s, g in enumerate(groups)
            ])
            correct += int((centroids - draws[held]).pow(2).sum(1).argmin() == speaker)
            count += 1
    return correct / count


@pytest.fixture(scope="module")
def held_out_embeddings(corpus_root, feature_cache) -> dict[str, list[torch.Tensor]]:
    """Per held-out speaker (meta-val and meta-test), disjoint support sets of 3 utterances, embedded three ways."""
    from metaspeech.datamodules import EmbeddedCorpus

    data = EmbeddedCorpus(preset="tiny", root=str(corpus_root), cache_dir=str(feature_cache), k_shot=3, q_query=3,
                          tasks_per_batch=2, eval_pool_size=5, seed=0)
    data.setup("fit")
    torch.manual_seed(0)
    model = BiLSTMCTC(vocab_size=data.vocab_size, input_dim=80, d_model=16, hidden_dim=16, num_layers=1)
    learner = Learner(model, model.loss, ["lhuc", "head"])
    hyper = HyperInit()
    hyper.setup(learner)
    kinds: dict[str, list[torch.Tensor]] = {"statistics": [], "embedding": [], "after CMVN": []}
    for split in ("val", "test"):
        dataset = data.datasets[split]
        for rows in data.task_indices[split].values():
            draws = [rows[i : i + SHOTS] for i in range(0, len(rows) - SHOTS + 1, SHOTS)]
            prepared = learner.prepare(collate_tasks([[dataset[i] for i in draw] for draw in draws]))
            with torch.no_grad():
                statistics = learner.task_statistics(prepared)
                kinds["statistics"].append(statistics)
                kinds["embedding"].append(hyper.encoder(statistics))
                kinds["after CMVN"].append(model.task_statistics(prepared.inputs, prepared.targets, prepared.num_tasks))
    return kinds


@pytest.mark.parametrize("kind", ["statistics", "embedding"])
def test_the_task_embedding_is_informative_on_held_out_speakers(held_out_embeddings, kind: str) -> None:
    groups = held_out_embeddings[kind]
    chance = 1 / len(groups)
    assert len(groups) >= 6 and all(len(g) >= 3 for g in groups)
    assert between_speaker_share(groups) >= 0.8
    assert nearest_centroid_accuracy(groups) >= max(0.8, 3 * chance)


def test_statistics_pooled_after_per_utterance_cmvn_do_not_tell_speakers_apart(held_out_embeddings) -> None:
    groups = held_out_embeddings["after CMVN"]
    assert between_speaker_share(groups) < 0.5
    assert nearest_centroid_accuracy(groups) < 0.5
