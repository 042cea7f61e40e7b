"""CTC loss with a double backward, the fast built-in one, and greedy decoding.

PyTorch's ``F.ctc_loss`` has no double backward (``aten::_ctc_loss_backward`` is
not differentiable, PyTorch issue 70108), so second-order MAML through CTC needs
the loss written in differentiable torch ops: the log-space forward (alpha)
recursion, batched over utterances and extended-label positions, looping only
over time. It is slower than the built-in kernel, so :func:`ctc_loss` uses it
only when asked (``differentiable=True``, i.e. where ``create_graph=True``).

Layout everywhere in this module is batch first: ``log_probs [N, T, V]``.

A note on gradients: for frames inside an utterance, ``F.ctc_loss`` returns
``exp(log_probs) - occupancy`` as the gradient w.r.t. ``log_probs`` — the
gradient w.r.t. the *logits* of a log-softmax, a shortcut of its kernel — while
:func:`differentiable_ctc_loss` returns the true gradient ``-occupancy``. Both
give the same gradient once backpropagated through ``log_softmax`` (which is how
every model here produces ``log_probs``), and the losses are identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metaspeech.speech.precision import full_precision

_LOG_ZERO = -1.0e30
"""A finite "log 0" for unreachable states: ``-inf - (-inf)`` would turn gradients into NaN."""
_REDUCTIONS = ("none", "sum", "mean")


def differentiable_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "none",
    zero_infinity: bool = False,
) -> Tensor:
    """CTC negative log-likelihood in plain torch ops, so it supports double backward.

    Same value as ``F.ctc_loss`` (on time-first input) for every reduction.

    Args:
        log_probs: ``[N, T, V]`` log-softmax outputs, batch first. Half-precision
            input is computed in float32 (the finite log-zero does not fit in fp16).
        targets: ``[N, S]`` label ids, padded with anything past ``target_lengths``.
        input_lengths: ``[N]`` valid frames per utterance (``<= T``).
        target_lengths: ``[N]`` labels per utterance (``<= S``; ``0`` is allowed).
        blank: id of the CTC blank.
        reduction: ``none`` -> ``[N]``; ``sum`` -> scalar; ``mean`` -> each loss
            divided by its target length (clamped to >= 1), then averaged (as
            ``F.ctc_loss`` does).
        zero_infinity: impossible alignments (too few frames for the labels)
            give loss 0 and zero gradient instead of ``inf``.
    """
    _check_inputs(log_probs, targets, input_lengths, target_lengths, reduction)
    log_probs = full_precision(log_probs)
    input_lengths = input_lengths.to(log_probs.device).long()
    target_lengths = target_lengths.to(log_probs.device).long()
    ext = _extended_targets(targets.to(log_probs.device).long(), target_lengths, blank)
    alpha = _forward_variables(log_probs, ext, input_lengths, blank)
    log_likelihood = _final_log_likelihood(alpha, target_lengths)
    loss = _handle_impossible(-log_likelihood, input_lengths, target_lengths, zero_infinity)
    return _reduce(loss, target_lengths, reduction)


def _check_inputs(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, reduction: str) -> None:
    """Fail loudly on shapes ``F.ctc_loss`` would reject (or silently misread)."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [N, T, V] (batch first), got shape {tuple(log_probs.shape)}")
    if targets.dim() != 2 or targets.shape[0] != log_probs.shape[0]:
        raise ValueError(f"targets must be padded [N, S] with N={log_probs.shape[0]}, got shape {tuple(targets.shape)}")
    if input_lengths.numel() and int(input_lengths.max()) > log_probs.shape[1]:
        raise ValueError(f"input_lengths exceed the {log_probs.shape[1]} frames of log_probs")
    if target_lengths.numel() and int(target_lengths.max()) > targets.shape[1]:
        raise ValueError(f"target_lengths exceed the {targets.shape[1]} columns of targets")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _extended_targets(targets: Tensor, target_lengths: Tensor, blank: int) -> Tensor:
    """``[N, S] -> [N, 2S + 1]``: blank, y1, blank, y2, ..., blank; padding replaced by blank.

    ``S`` is raised to at least 1 so the shifted views in the recursion always exist.
    """
    n, s = targets.shape
    if s == 0:
        targets = targets.new_full((n, 1), blank)
        s = 1
    valid = torch.arange(s, device=targets.device) < target_lengths.unsqueeze(1)
    ext = targets.new_full((n, 2 * s + 1), blank)
    ext[:, 1::2] = torch.where(valid, targets, blank)
    return ext


def _forward_variables(log_probs: Tensor, ext: Tensor, input_lengths: Tensor, blank: int) -> Tensor:
    """Log-space alpha at each utterance's last frame: ``[N, T, V], [N, W] -> [N, W]``.

    The recursion runs over time only; each step is a ``logsumexp`` over the three
    allowed predecessors (stay, advance by one, skip a blank between different
    labels). An utterance's alpha stops changing after its own last frame.
    """
    n, steps, _ = log_probs.shape
    width = ext.shape[1]
    emit = log_probs.gather(2, ext.unsqueeze(1).expand(n, steps, width))  # [N, T, W]
    can_skip = torch.zeros_like(ext, dtype=torch.bool)
    can_skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    active = torch.arange(steps, device=ext.device) < input_lengths.unsqueeze(1)  # [N, T]
    log_zero = emit.new_tensor(_LOG_ZERO)
    starts = torch.arange(width, device=ext.device) < 2
    alpha = torch.where(starts, emit[:, 0], log_zero)
    for t in range(1, steps):
        advance = F.pad(alpha[:, :-1], (1, 0), value=_LOG_ZERO)
        skip = torch.where(can_skip, F.pad(alpha[:, :-2], (2, 0), value=_LOG_ZERO), log_zero)
        new = torch.logsumexp(torch.stack([alpha, advance, skip]), dim=0) + emit[:, t]
        alpha = torch.where(active[:, t : t + 1], new, alpha)
    return alpha


def _final_log_likelihood(alpha: Tensor, target_lengths: Tensor) -> Tensor:
    """log p(y|x): a path ends on the last label or on the blank after it. ``[N, W] -> [N]``."""
    last = (2 * target_lengths).unsqueeze(1)
    end_blank = alpha.gather(1, last).squeeze(1)
    end_label = alpha.gather(1, (last - 1).clamp(min=0)).squeeze(1)
    end_label = torch.where(target_lengths > 0, end_label, alpha.new_tensor(_LOG_ZERO))
    # Not torch.logaddexp: its double backward is NaN when one side is the finite log-zero
    # and the other is not (an utterance with exactly the minimum number of frames).
    return torch.logsumexp(torch.stack([end_blank, end_label]), dim=0)


def _handle_impossible(loss: Tensor, input_lengths: Tensor, target_lengths: Tensor, zero_infinity: bool) -> Tensor:
    """Map unreachable alignments (loss near ``-_LOG_ZERO``) to ``inf`` or 0; empty inputs too."""
    empty_input = input_lengths == 0
    loss = torch.where(empty_input, torch.zeros_like(loss), loss)
    impossible = (loss > -_LOG_ZERO / 2) | (empty_input & (target_lengths > 0))
    replacement = torch.zeros_like(loss) if zero_infinity else torch.full_like(loss, float("inf"))
    return torch.where(impossible, replacement, loss)


def _reduce(loss: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    """``F.ctc_loss``'s reductions of a per-utterance loss ``[N]``."""
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return (loss / target_lengths.clamp(min=1).to(loss.dtype)).mean()
    return loss


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "none",
    differentiable: bool = False,
) -> Tensor:
    """CTC loss on batch-first ``log_probs [N, T, V]``, ``targets [N, S]``, lengths ``[N]``.

    ``differentiable=False`` runs the fast built-in ``F.ctc_loss``;
    ``differentiable=True`` runs :func:`differentiable_ctc_loss`, which supports
    double backward (second-order meta-gradients). Both use ``zero_infinity=True``:
    an utterance too short for its transcript adds no loss and no gradient.
    Returns ``[N]`` for ``reduction="none"``, else a scalar.
    """
    if differentiable:
        return differentiable_ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity=True
        )
    return F.ctc_loss(
        full_precision(log_probs).transpose(0, 1), targets, input_lengths, target_lengths,
        blank=blank, reduction=reduction, zero_infinity=True,
    )


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    ``log_probs [N, T, V]`` (batch first) and valid frames ``lengths [N]`` ->
    one list of label ids per utterance.
    """
    best = log_probs.argmax(dim=-1).cpu()
    decoded = []
    for row, length in zip(best, lengths.cpu().tolist()):
        ids = row[: int(length)]
        changed = torch.ones_like(ids, dtype=torch.bool)
        changed[1:] = ids[1:] != ids[:-1]
        decoded.append([int(i) for i in ids[changed & (ids != blank)]])
    return decoded
