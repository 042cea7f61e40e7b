"""fp16 loss scaling of the inner loop, on the Lightning side: the Trainer's GradScaler decides the scale.

Why the Trainer's scaler: under ``16-mixed`` Lightning's GradScaler already tracks a scale
at which the outer gradients neither underflow nor overflow; the inner loop uses the same
one (passed explicitly, :class:`~metaspeech.engine.inner_loop.InnerLoop`). A training
step whose inner gradients overflow is skipped and backs the scale off as GradScaler does
on an overflowing outer step (:func:`back_off`); test-time adaptation cannot skip, so it
halves the scale until the inner gradients are finite (:func:`metaspeech.engine.inner_loop.retry_at_smaller_scales`).
In float32, float64 and bf16 there is no scaler and the scale is 1.
"""

from __future__ import annotations

from typing import Any

import torch


def grad_scaler(trainer: Any | None) -> torch.amp.GradScaler | None:
    """The fp16 loss scaler of a ``16-mixed`` Trainer; None in float32, float64 and bf16 (or without a Trainer)."""
    plugin = trainer.precision_plugin if trainer is not None else None
    scaler = getattr(plugin, "scaler", None)  # only Lightning's MixedPrecision plugin has one
    return scaler if scaler is not None and scaler.is_enabled() else None


def loss_scale(scaler: torch.amp.GradScaler | None) -> float:
    """The scale the inner loop multiplies its support loss by: the scaler's, else 1."""
    return scaler.get_scale() if scaler is not None else 1.0


def back_off(scaler: torch.amp.GradScaler) -> None:
    """Lower the scale by the scaler's backoff factor and restart its growth count, as GradScaler does on overflow."""
    state = scaler.state_dict()
    scaler.load_state_dict({**state, "scale": state["scale"] * state["backoff_factor"], "_growth_tracker": 0})


