"""The outer learning-rate schedule: linear warmup, then constant or cosine decay to a floor.

Why a decay: a short run that ends at a small learning rate converges much further than one
that stops at its peak rate. A pure function of the step, so a resumed run continues the
same curve (``LambdaLR`` restores its step from the checkpoint).
"""

from __future__ import annotations

import math

from metaspeech.errors import ConfigError

LR_DECAYS = ("constant", "cosine")


def check_decay(name: str) -> str:
    """``name`` if it is a known decay, else a :class:`ConfigError` that names the setting."""
    if name not in LR_DECAYS:
        raise ConfigError(f"model.lr_decay must be one of {LR_DECAYS}, got {name!r}")
    return name


def lr_factor(step: int, warmup_steps: int, decay: str, total_steps: int | None, min_ratio: float) -> float:
    """The learning rate at outer step ``step`` as a fraction of the peak rate.

    ``(step + 1) / warmup`` during the warmup; after it 1.0 (``constant``, or no known
    ``total_steps`` past the warmup), or a cosine from 1.0 down to ``min_ratio`` at ``total_steps``.
    """
    warmup = max(1, warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total_steps is None or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
