"""Per-utterance losses in the :class:`~metaspeech.engine.learner.TaskLoss` form."""

from __future__ import annotations

from torch import Tensor

from metaspeech.speech.ctc import ctc_loss


class CTCLoss:
    """CTC negative log-likelihood per utterance, divided by its target length.

    ``output = (log_probs [N, frames, V], frame_lengths [N])``,
    ``targets = (tokens [N, S], token_lengths [N])`` -> ``[N]``.
    With ``differentiable=True`` the twice-differentiable CTC in torch ops runs
    (PyTorch's ``ctc_loss`` has no double backward); otherwise the fast built-in one.
    """

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank

    def __call__(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        log_probs, frame_lengths = output[0], output[1]
        tokens, token_lengths = targets[0], targets[1]
        losses = ctc_loss(
            log_probs, tokens, frame_lengths, token_lengths, blank=self.blank, reduction="none", differentiable=differentiable
        )
        return losses / token_lengths.clamp(min=1).to(losses.dtype)
