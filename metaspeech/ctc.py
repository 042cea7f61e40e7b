"""CTC loss with a double backward, the fast built-in one, and greedy decoding.

PyTorch's ``F.ctc_loss`` has no double backward (``aten::_ctc_loss_backward`` is
not differentiable, PyTorch issue 70108), so second-order MAML through CTC needs
the loss written in differentiable torch ops: the log-space forward (alpha)
recursion, batched over utterances and extended-label positions, looping only
over time. It is used only where ``create_graph=True`` requires it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_NEG = -1.0e30  # a finite "log zero": keeps gradients free of inf - inf = NaN


def differentiable_ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "none",
    zero_infinity: bool = False,
) -> Tensor:
    """CTC negative log-likelihood, twice differentiable.

    Args:
        log_probs: ``[N, T, V]`` log-softmax outputs (batch first).
        targets: ``[N, S]`` label ids, padded.
        input_lengths / target_lengths: ``[N]``.
        reduction: ``none`` -> ``[N]``; ``sum``; ``mean`` (each loss divided by its target length, then averaged,
            as ``F.ctc_loss`` does).
        zero_infinity: impossible alignments give 0 instead of ``inf``.
    """
    if log_probs.dtype in (torch.float16, torch.bfloat16):
        log_probs = log_probs.float()  # the -1e30 "log zero" does not fit in half precision
    n, steps, _ = log_probs.shape
    ext = _extended_targets(targets, blank)
    width = ext.shape[1]
    emit = log_probs.gather(2, ext.unsqueeze(1).expand(n, steps, width))
    skip = torch.zeros_like(ext, dtype=torch.bool)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    neg = emit.new_full((n, 1), _NEG)
    alpha = torch.cat([emit[:, 0, :2], emit.new_full((n, width - 2), _NEG)], dim=1) if width > 1 else emit[:, 0, :1]
    for t in range(1, steps):
        stay = alpha
        step = torch.cat([neg, alpha[:, :-1]], dim=1)
        jump = torch.where(skip, torch.cat([neg, neg, alpha[:, :-2]], dim=1), emit.new_full((), _NEG))
        new = torch.logsumexp(torch.stack([stay, step, jump]), dim=0) + emit[:, t]
        alpha = torch.where((t < input_lengths).unsqueeze(1), new, alpha)
    last = (2 * target_lengths).unsqueeze(1)
    end_blank = alpha.gather(1, last).squeeze(1)
    end_label = alpha.gather(1, (last - 1).clamp(min=0)).squeeze(1)
    end_label = torch.where(target_lengths > 0, end_label, emit.new_full((), _NEG))
    loss = -torch.logaddexp(end_blank, end_label)
    impossible = loss > -_NEG / 2
    loss = torch.where(impossible, torch.zeros_like(loss) if zero_infinity else torch.full_like(loss, float("inf")), loss)
    return _reduce(loss, target_lengths, reduction)


def _extended_targets(targets: Tensor, blank: int) -> Tensor:
    """``[N, S] -> [N, 2S + 1]``: blank, y1, blank, y2, ..., blank."""
    n, s = targets.shape
    ext = targets.new_full((n, 2 * s + 1), blank)
    ext[:, 1::2] = targets
    return ext


def _reduce(loss: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return (loss / target_lengths.clamp(min=1).to(loss.dtype)).mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "none",
    differentiable: bool = False,
) -> Tensor:
    """CTC loss on batch-first ``log_probs [N, T, V]``; ``differentiable=True`` gives a double backward.

    Both paths use ``zero_infinity=True``: an utterance too short for its transcript adds no loss.
    """
    if differentiable:
        return differentiable_ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity=True)
    return F.ctc_loss(
        log_probs.float().transpose(0, 1), targets, input_lengths, target_lengths,
        blank=blank, reduction=reduction, zero_infinity=True,
    )


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, collapse repeats, drop blanks. ``[N, T, V] -> N id lists``."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for row, length in zip(best, lengths.cpu().tolist()):
        ids = row[:length]
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        out.append([int(i) for i in ids[keep] if i != blank])
    return out
