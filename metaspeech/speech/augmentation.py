"""Training-time augmentation of meta-batches: new speakers from old ones, and SpecAugment.

Task augmentation (Zhu et al., ICASSP 2022) multiplies meta-training tasks
cheaply: warping the frequency axis of all of a task's utterances by one factor
imitates a speaker with a different vocal-tract length, so every meta-batch
shows the meta-learner speakers it has not met. The warp is drawn per task and
applied to its support *and* query sets, so a task stays one consistent speaker.
SpecAugment then masks each utterance independently.

Both draw from the global RNG; :class:`~metaspeech.training.module.MetaSpeechModule` calls
them inside its per-step seeded RNG, so augmented runs stay reproducible and
resume exactly.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.speech.features import SpecAugment


class FrequencyWarp(nn.Module):
    """Warp log-mel features along frequency by one random factor per task; identity in eval mode.

    ``forward(features [T, B, frames, F])`` -> ``[T, B, frames, F]``. Output bin ``f`` takes the
    value at (fractional) input bin ``f / alpha_t``, linearly interpolated and clamped to the
    band edges, with ``alpha_t`` uniform in ``[1 - max_warp, 1 + max_warp]``: ``alpha > 1``
    moves spectral structure up, like a shorter vocal tract. Warping mel bins linearly is the
    usual cheap approximation of VTLP's warp of linear frequency (features are cached as log-mel).
    """

    def __init__(self, max_warp: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= max_warp < 1.0:
            raise ValueError(f"max_warp is a fraction in [0, 1), got {max_warp}")
        self.max_warp = max_warp

    def factors(self, num_tasks: int, device: torch.device) -> Tensor:
        """``[T]`` warp factors drawn from the global RNG."""
        return 1.0 + self.max_warp * (2.0 * torch.rand(num_tasks, device=device) - 1.0)

    def forward(self, features: Tensor, alpha: Tensor | None = None) -> Tensor:
        if not self.training or self.max_warp == 0.0:
            return features
        alpha = self.factors(features.shape[0], features.device) if alpha is None else alpha
        return warp_frequency(features, alpha)


def warp_frequency(features: Tensor, alpha: Tensor) -> Tensor:
    """``features [T, ..., F]`` with output bin ``f`` read at input bin ``f / alpha[t]`` (linear interpolation)."""
    num_bins = features.shape[-1]
    bins = torch.arange(num_bins, device=features.device, dtype=features.dtype)
    source = (bins / alpha.to(features.dtype).reshape(-1, 1)).clamp(0, num_bins - 1)  # [T, F]
    low = source.floor().long()
    high = (low + 1).clamp(max=num_bins - 1)
    frac = source - low.to(features.dtype)
    view = (features.shape[0],) + (1,) * (features.dim() - 2) + (num_bins,)
    low, high, frac = low.reshape(view), high.reshape(view), frac.reshape(view)
    gathered_low = torch.gather(features, -1, low.expand_as(features))
    gathered_high = torch.gather(features, -1, high.expand_as(features))
    return gathered_low + frac * (gathered_high - gathered_low)


class EpisodeAugmentation(nn.Module):
    """Augment a meta-batch for training: per-task frequency warp, then per-utterance SpecAugment.

    Args:
        max_warp: largest relative frequency warp of a task (0 disables it).
        spec_augment: masking settings (None disables SpecAugment).
    """

    def __init__(self, max_warp: float = 0.1, spec_augment: SpecAugment | None = None) -> None:
        super().__init__()
        self.warp = FrequencyWarp(max_warp)
        self.spec_augment = spec_augment

    def describe(self) -> dict[str, object]:
        """The settings as plain values (for the run's logged configuration)."""
        masks = self.spec_augment
        spec = None if masks is None else {
            "freq_masks": masks.freq_masks, "freq_width": masks.freq_width,
            "time_masks": masks.time_masks, "time_width": masks.time_width, "mask_value": masks.mask_value,
        }
        return {"max_warp": self.warp.max_warp, "spec_augment": spec}

    def forward(self, batch: MetaBatch) -> MetaBatch:
        if not self.training:
            return batch
        features = batch.support.inputs[0]
        alpha = self.warp.factors(features.shape[0], features.device)
        return replace(batch, support=self._augment(batch.support, alpha), query=self._augment(batch.query, alpha))

    def _augment(self, part: TaskBatch, alpha: Tensor) -> TaskBatch:
        features, lengths, *rest = part.inputs
        features = self.warp(features, alpha)
        if self.spec_augment is not None:
            flat = self.spec_augment(features.flatten(0, 1), lengths.flatten())
            features = flat.reshape(features.shape)
        return replace(part, inputs=(features, lengths, *rest))
