"""Inner-loop loss scaling for fp16 (``InnerLoop.loss_scale``), on the sine toy.

Float16's smallest subnormal is ~6e-8: a support loss whose gradients are smaller
than that gets all-zero inner gradients under fp16 autocast unless the loss is
scaled up before ``autograd.grad`` and the gradients scaled back down.
"""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, MAML, InnerGradientOverflowError, InnerLoop
from metaspeech.engine.learner import Learner
from metaspeech.engine.toy import SineMLP, mse_loss, sine_meta_batch, sine_tasks

TINY = 1e-7  # puts the per-example output gradients (~1e-8) below float16's range


def _tiny_mse(output, targets, differentiable):
    return TINY * mse_loss(output, targets, differentiable)


def _inner_gradients(scale: float, fp16: bool) -> torch.Tensor:
    torch.manual_seed(0)
    learner = Learner(SineMLP(hidden=32), _tiny_mse, scope=["all"])
    loop = InnerLoop(steps=1, create_graph=False, loss_scale=scale)
    prepared = learner.prepare(sine_tasks(4, 16, torch.Generator().manual_seed(1)))
    fast = learner.expand(learner.init_weights(), prepared.num_tasks)
    with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
        grads = loop.gradients(learner.losses(fast, prepared), fast)
    return torch.cat([g.flatten().float() for g in grads])


def _relative_error(grads: torch.Tensor, reference: torch.Tensor) -> float:
    return float((grads - reference).norm() / reference.norm())


def test_loss_scale_recovers_inner_gradients_that_underflow_in_float16() -> None:
    reference = _inner_gradients(scale=1.0, fp16=False)
    unscaled = _inner_gradients(scale=1.0, fp16=True)
    scaled = _inner_gradients(scale=2.0**16, fp16=True)
    assert _relative_error(unscaled, reference) > 0.5, "the fp16 inner gradients were expected to underflow"
    assert _relative_error(scaled, reference) < 0.02


def test_overflowing_scaled_inner_gradient_raises() -> None:
    learner = Learner(SineMLP(hidden=32), mse_loss, scope=["all"])
    algorithm = FOMAML(inner_steps=2)
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(InnerGradientOverflowError, match="loss scale"):
        algorithm.adapt(learner, sine_tasks(2, 8, torch.Generator().manual_seed(1)), algorithm.inner_loop(loss_scale=2.0**40))


def test_power_of_two_loss_scale_leaves_the_second_order_meta_gradient_unchanged() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        meta_gradients = []
        for scale in (1.0, 2.0**12):
            torch.manual_seed(0)
            model = SineMLP(hidden=16)
            algorithm = MAML(inner_steps=2, inner_lr=0.05)
            batch = sine_meta_batch(3, 5, torch.Generator().manual_seed(2))
            algorithm.outer_loss(Learner(model, mse_loss, scope=["all"]), batch, loss_scale=scale).loss.backward()
            meta_gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        torch.set_default_dtype(torch.float32)
    torch.testing.assert_close(meta_gradients[1], meta_gradients[0], rtol=1e-12, atol=0.0)
