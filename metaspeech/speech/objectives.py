"""Adaptation objectives of a CTC recognizer: the supervised loss and two label-free ones.

Why label-free objectives: a deployed recognizer has a new speaker's audio, rarely its
transcripts. Both objectives here need audio only, so they adapt on untranscribed speech:

- ``entropy``: the mean frame-level entropy of the CTC posteriors over valid frames
  (test-time entropy minimization, SUTA, Lin et al. 2022). ``entropy_mcc`` adds SUTA's
  minimum class confusion and its temperature (``0.3 * entropy + 0.7 * MCC`` at T = 2.5).
- ``pseudo_label``: CTC against the unadapted model's own greedy transcripts. Utterances whose
  mean max-posterior (over valid frames) is below ``min_confidence`` get weight 0.

Every objective is a :class:`~metaspeech.engine.learner.TaskObjective`: ``targets(output, targets)``
is called once with the *unadapted* output before the inner loop (the pseudo-labels become the
support's targets; the supervised and entropy objectives keep the batch's own), then
``objective(output, targets, differentiable) -> [N]`` at every inner step.

Double backward: the entropy objectives are plain torch ops and have one. The pseudo-label
objective is CTC, like the supervised loss: ``differentiable=True`` runs the twice-differentiable
CTC of :mod:`metaspeech.speech.ctc` (``F.ctc_loss`` has no double backward), otherwise the built-in one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaspeech.errors import ConfigError
from metaspeech.speech.ctc import greedy_decode
from metaspeech.speech.losses import CTCLoss

SUPERVISED = "supervised"
OBJECTIVES = (SUPERVISED, "entropy", "entropy_mcc", "pseudo_label")
LABEL_FREE = OBJECTIVES[1:]


def check_objective(name: str, key: str) -> str:
    """``name`` if it is a known objective, else a :class:`ConfigError` naming the setting ``key``."""
    if name not in OBJECTIVES:
        raise ConfigError(f"{key} must be one of {OBJECTIVES}, got {name!r}")
    return name


def valid_frames(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """``[N, frames]`` mask (in ``log_probs``' dtype) of the frames inside each utterance."""
    frames = torch.arange(log_probs.shape[1], device=log_probs.device)
    return (frames[None, :] < lengths.to(log_probs.device)[:, None]).to(log_probs.dtype)


def frame_entropy(log_probs: Tensor, lengths: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean entropy of the per-frame posteriors over each utterance's valid frames: ``[N, frames, V] -> [N]``."""
    if temperature != 1.0:
        log_probs = torch.log_softmax(log_probs / temperature, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    mask = valid_frames(log_probs, lengths)
    return (entropy * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def class_confusion(log_probs: Tensor, lengths: Tensor, temperature: float = 1.0) -> Tensor:
    """Minimum class confusion (Jin et al. 2020, as SUTA uses it) per utterance: ``[N, frames, V] -> [N]``.

    ``C = P^T P`` over the valid frames' posteriors ``P [frames, V]``, each row divided by its sum;
    the loss is the off-diagonal mass ``(sum C - trace C) / V``: low when frames agree on few classes.
    """
    probs = torch.softmax(log_probs / temperature, dim=-1) * valid_frames(log_probs, lengths).unsqueeze(-1)
    confusion = probs.transpose(1, 2) @ probs  # [N, V, V]
    confusion = confusion / confusion.sum(dim=2, keepdim=True).clamp(min=1e-12)
    vocabulary = log_probs.shape[-1]
    return (confusion.sum(dim=(1, 2)) - confusion.diagonal(dim1=1, dim2=2).sum(1)) / vocabulary


class EntropyObjective:
    """Frame-level entropy of the CTC posteriors, optionally mixed with minimum class confusion.

    ``loss = entropy_weight * entropy + (1 - entropy_weight) * MCC``, both at ``temperature``.
    ``output = (log_probs [N, frames, V], frame_lengths [N])``; targets are ignored.
    """

    def __init__(self, entropy_weight: float = 1.0, temperature: float = 1.0) -> None:
        self.entropy_weight, self.temperature = entropy_weight, temperature

    def targets(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return targets

    def __call__(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        log_probs, lengths = output[0], output[1]
        loss = self.entropy_weight * frame_entropy(log_probs, lengths, self.temperature)
        if self.entropy_weight < 1.0:
            loss = loss + (1.0 - self.entropy_weight) * class_confusion(log_probs, lengths, self.temperature)
        return loss


def mean_confidence(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """Mean over valid frames of the largest posterior of each frame: ``[N, frames, V] -> [N]``."""
    mask = valid_frames(log_probs, lengths)
    return (log_probs.max(dim=-1).values.exp() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class PseudoLabelObjective:
    """CTC against the unadapted model's greedy transcripts, confident utterances only.

    :meth:`targets` turns the unadapted output into ``(tokens [N, S], token_lengths [N], weight [N])``:
    the best-path transcripts, and weight 1 where the mean max-posterior reaches ``min_confidence``
    (else 0: a dropped utterance adds no loss and no gradient).
    """

    def __init__(self, blank: int = 0, min_confidence: float = 0.5) -> None:
        self.blank, self.min_confidence = blank, min_confidence
        self.loss = CTCLoss(blank)

    @torch.no_grad()
    def targets(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        log_probs, lengths = output[0], output[1]
        labels = greedy_decode(log_probs, lengths, self.blank)
        width = max(1, max(len(ids) for ids in labels))
        tokens = torch.full((len(labels), width), self.blank, dtype=torch.long, device=log_probs.device)
        for row, ids in enumerate(labels):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        token_lengths = torch.tensor([len(ids) for ids in labels], dtype=torch.long, device=log_probs.device)
        weight = (mean_confidence(log_probs, lengths) >= self.min_confidence).to(log_probs.dtype)
        return tokens, token_lengths, weight

    def __call__(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        return self.loss(output, targets[:2], differentiable) * targets[2]


def ctc_objective(name: str, blank: int = 0) -> EntropyObjective | PseudoLabelObjective:
    """The label-free objective called ``name`` (one of :data:`LABEL_FREE`) for a CTC recognizer with blank ``blank``."""
    if name == "entropy":
        return EntropyObjective()
    if name == "entropy_mcc":
        return EntropyObjective(entropy_weight=0.3, temperature=2.5)
    if name == "pseudo_label":
        return PseudoLabelObjective(blank)
    raise ConfigError(f"unknown adaptation objective {name!r}: use one of {OBJECTIVES}")
