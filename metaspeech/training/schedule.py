"""The outer learning-rate schedule: linear warmup, then constant, cosine or warmup-stable-decay.

Why a decay: a short run that ends at a small learning rate converges much further than one
that stops at its peak rate. Why ``wsd`` (warmup, stable, decay) besides ``cosine``: a CTC
recognizer spends its first few hundred steps on the blank plateau, and a cosine lowers the
rate before it has left it; ``wsd`` keeps the peak rate and decays linearly only over the last
``WSD_DECAY_FRACTION`` of the run. A pure function of the step, so a resumed run continues
the same curve (``LambdaLR`` restores its step from the checkpoint).
"""

from __future__ import annotations

import math

from metaspeech.errors import ConfigError

LR_DECAYS = ("constant", "cosine", "wsd")
WSD_DECAY_FRACTION = 0.2
"""Share of the steps after the warmup over which ``wsd`` decays linearly to ``min_ratio``."""


def check_decay(name: str) -> str:
    """``name`` if it is a known decay, else a :class:`ConfigError` that names the setting."""
    if name not in LR_DECAYS:
        raise ConfigError(f"model.lr_decay must be one of {LR_DECAYS}, got {name!r}")
    return name


def lr_factor(step: int, warmup_steps: int, decay: str, total_steps: int | None, min_ratio: float) -> float:
    """The learning rate at outer step ``step`` as a fraction of the peak rate.

    ``(step + 1) / warmup`` during the warmup; after it 1.0 (``constant``, or no known
    ``total_steps`` past the warmup), a cosine from 1.0 down to ``min_ratio`` at ``total_steps``
    (``cosine``), or 1.0 then a linear fall to ``min_ratio`` over the last ``WSD_DECAY_FRACTION``
    of the steps after the warmup (``wsd``).
    """
    warmup = max(1, warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total_steps is None or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    if decay == "wsd":
        tail = min(1.0, max(0.0, (progress - (1.0 - WSD_DECAY_FRACTION)) / WSD_DECAY_FRACTION))
        return 1.0 - (1.0 - min_ratio) * tail
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
