"""Task augmentation: one frequency warp per task (support and query alike), SpecAugment per utterance."""

from __future__ import annotations

import pytest
import torch

from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.speech.augmentation import EpisodeAugmentation, FrequencyWarp, warp_frequency
from metaspeech.speech.features import SpecAugment


def _peak_features(tasks: int = 2, utterances: int = 3, frames: int = 4, bins: int = 40, peak: int = 20) -> torch.Tensor:
    features = torch.zeros(tasks, utterances, frames, bins)
    features[..., peak] = 1.0
    return features


def test_warp_of_one_is_the_identity_and_a_larger_warp_moves_a_peak_up() -> None:
    features = torch.randn(2, 3, 5, 40)
    torch.testing.assert_close(warp_frequency(features, torch.ones(2)), features)
    warped = warp_frequency(_peak_features(), torch.tensor([1.1, 0.9]))
    centre = (warped * torch.arange(40.0)).sum(-1) / warped.sum(-1)  # spectral centroid per frame
    torch.testing.assert_close(centre[0], torch.full_like(centre[0], 22.0), atol=0.05, rtol=0)
    torch.testing.assert_close(centre[1], torch.full_like(centre[1], 18.0), atol=0.05, rtol=0)


def test_warp_is_identity_in_eval_mode_and_rejects_bad_settings() -> None:
    features = torch.randn(2, 3, 5, 40)
    assert FrequencyWarp(0.2).eval()(features) is features
    with pytest.raises(ValueError, match="max_warp"):
        FrequencyWarp(1.5)


def _meta_batch() -> MetaBatch:
    torch.manual_seed(0)
    features = torch.randn(3, 2, 30, 40)
    lengths = torch.tensor([[30, 20], [25, 30], [30, 10]])
    targets = (torch.ones(3, 2, 4, dtype=torch.long), torch.full((3, 2), 4))
    same = TaskBatch((features, lengths), targets, texts=[["a", "b"]] * 3, ids=[["1", "2"]] * 3)
    return MetaBatch(support=same, query=TaskBatch((features.clone(), lengths), targets), tasks=["s0", "s1", "s2"])


def test_every_task_gets_one_warp_for_its_support_and_query_and_tasks_differ() -> None:
    batch = _meta_batch()
    torch.manual_seed(1)
    alpha = FrequencyWarp(0.2).factors(3, torch.device("cpu"))  # what the augmentation draws first
    torch.manual_seed(1)
    augmented = EpisodeAugmentation(max_warp=0.2)(batch)
    assert len(set(alpha.tolist())) == 3 and ((alpha - 1).abs() <= 0.2).all()
    expected = warp_frequency(batch.support.inputs[0], alpha)
    torch.testing.assert_close(augmented.support.inputs[0], expected)
    torch.testing.assert_close(augmented.query.inputs[0], expected)  # same inputs, same warp as the support set
    assert augmented.tasks == batch.tasks and augmented.support.texts == batch.support.texts
    assert augmented.support.inputs[1] is batch.support.inputs[1]


def test_spec_augment_runs_per_utterance_inside_lengths_and_nothing_happens_in_eval() -> None:
    batch = _meta_batch()
    augmentation = EpisodeAugmentation(max_warp=0.0, spec_augment=SpecAugment(freq_masks=0, time_masks=1, time_width=0.5))
    augmented = augmentation(batch).support.inputs[0]
    masked = (augmented == 0).all(-1)  # [T, B, frames]: frames zeroed by a time mask
    assert masked.any()
    lengths = batch.support.inputs[1]
    for t in range(3):
        for b in range(2):
            assert not masked[t, b, lengths[t, b] :].any(), "a time mask reached padding"
    assert augmentation.eval()(batch) is batch
