"""The label-free collapse guard: refuse an adaptation whose output drifts into a degenerate solution.

Why: entropy minimization has trivial minima. The posteriors of every frame can become one-hot
on the CTC blank (zero entropy, empty transcripts), and pseudo-labelling can reinforce its own
errors. Without transcripts the cross-validation guard (:mod:`metaspeech.evaluation.guard`) has
no loss to check, so this guard compares, on the adaptation audio itself, the adapted greedy
output with the unadapted one, per task:

- the **blank ratio** (share of valid frames whose best class is the blank) may rise by at most
  ``max_blank_increase``;
- the **agreement** with the unadapted transcripts (1 - token edit distance / the longer length,
  averaged over utterances) must stay at least ``min_agreement``.

A task failing either keeps its unadapted start. An all-blank collapse fails both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metaspeech.speech.objectives import valid_frames


def blank_ratio(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> Tensor:
    """Share of each utterance's valid frames whose best class is ``blank``: ``[N, frames, V] -> [N]``."""
    mask = valid_frames(log_probs, lengths)
    blanks = (log_probs.argmax(dim=-1) == blank).to(mask.dtype) * mask
    return blanks.sum(1) / mask.sum(1).clamp(min=1.0)


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token sequences."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def agreement(before: list[list[int]], after: list[list[int]]) -> Tensor:
    """Per utterance ``1 - edit distance / max(len(before), len(after), 1)``: 1 for identical outputs. ``[N]``."""
    return torch.tensor([1.0 - edit_distance(a, b) / max(len(a), len(b), 1) for a, b in zip(before, after)])


@dataclass(frozen=True)
class CollapseGuard:
    """Keep a task's label-free adaptation only while its output stays sane (see the module docstring).

    Args:
        max_blank_increase: largest allowed rise of the task's mean blank ratio (0.1 = 10 points).
        min_agreement: smallest allowed mean agreement with the unadapted transcripts.
    """

    max_blank_increase: float = 0.1
    min_agreement: float = 0.3

    def keep(self, before: tuple[Tensor, ...], after: tuple[Tensor, ...], before_ids: list[list[int]],
             after_ids: list[list[int]], num_tasks: int, blank: int = 0) -> Tensor:
        """``[T]`` bool: which tasks keep their adaptation.

        ``before`` / ``after``: the output states ``(log_probs [T*B, frames, V], lengths [T*B])`` of the
        unadapted and adapted weights on the adaptation audio; ``*_ids``: their decoded tokens (``T*B`` lists).
        """
        rise = (blank_ratio(*after[:2], blank) - blank_ratio(*before[:2], blank)).reshape(num_tasks, -1).mean(1)
        agree = agreement(before_ids, after_ids).reshape(num_tasks, -1).mean(1)
        return (rise.cpu() <= self.max_blank_increase) & (agree >= self.min_agreement)
