"""``UtteranceDataset``: precomputed features and transcripts, one item per utterance.

Features are computed once (and cached on disk) before training, so an item is
a cheap lookup: no audio is decoded in the training loop. Features may be kept
in float16 to halve host memory; items always come out as float32.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

FeatureTransform = Callable[[Tensor], Tensor]


class UtteranceItem(NamedTuple):
    """One utterance as the collate functions expect it.

    ``features`` is float32 ``[frames, F]``; ``tokens`` is long ``[L]`` (``L`` may
    be 0 when there is no transcript). ``index`` is the row in its dataset
    (-1 when the item was built outside a dataset); :class:`MetaBatchCollator`
    uses it to name each item's task. ``statistics`` (``[2F]``, optional) are the
    mean and std of the features before normalization, for task embeddings.
    """

    features: Tensor
    tokens: Tensor
    text: str
    utt_id: str
    index: int = -1
    statistics: Tensor | None = None


class UtteranceDataset(Dataset):
    """Utterances with precomputed features.

    Args:
        features: per utterance a ``[frames, F]`` float16 or float32 tensor.
        tokens: per utterance its token ids (a list of ints or a 1-D tensor).
        texts: per utterance its normalized transcript.
        ids: per utterance a unique id (used in reports).
        transform: applied to the float32 features of every item (e.g. global CMVN).
        statistics: per utterance its feature statistics before normalization ``[2F]`` (optional).
    """

    def __init__(
        self,
        features: Sequence[Tensor],
        tokens: Sequence[Sequence[int] | Tensor],
        texts: Sequence[str],
        ids: Sequence[str],
        transform: FeatureTransform | None = None,
        statistics: Sequence[Tensor] | None = None,
    ) -> None:
        lengths = {"features": len(features), "tokens": len(tokens), "texts": len(texts), "ids": len(ids)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"UtteranceDataset needs one entry per utterance in every field, got {lengths}")
        for row, feats in enumerate(features):
            if feats.dim() != 2:
                raise ValueError(f"features of utterance {ids[row]!r} must be [frames, F], got shape {tuple(feats.shape)}")
        self.features = list(features)
        self.tokens = list(tokens)
        self.texts = list(texts)
        self.ids = list(ids)
        self.transform = transform
        self.statistics = list(statistics) if statistics is not None else None
        if self.statistics is not None and len(self.statistics) != len(self.features):
            raise ValueError(f"UtteranceDataset got {len(self.statistics)} statistics for {len(self.features)} utterances")

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> UtteranceItem:
        features = self.features[index].to(torch.float32)
        if self.transform is not None:
            features = self.transform(features)
        tokens = torch.as_tensor(self.tokens[index], dtype=torch.long).reshape(-1)
        statistics = self.statistics[index] if self.statistics is not None else None
        return UtteranceItem(features, tokens, self.texts[index], self.ids[index], index, statistics)

    @property
    def feature_dim(self) -> int | None:
        """``F`` of the features, or None for an empty dataset."""
        return int(self.features[0].shape[1]) if self.features else None
