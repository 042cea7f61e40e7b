"""The inner loop's explicit context: settings passed in (never stored on the plugin), scaled gradients, the fp16 retry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaspeech.algorithms import FOMAML, Adaptation, InnerGradientOverflowError, InnerLoop, MetaAlgorithm, NonFiniteLossError
from metaspeech.engine.inner_loop import retry_at_smaller_scales
from metaspeech.engine.learner import Learner, PreparedTasks
from metaspeech.engine.toy import SineMLP, mse_loss, sine_meta_batch, sine_tasks

TINY = 1e-7  # puts the per-example output gradients (~1e-8) below float16's range


def _tiny_mse(output, targets, differentiable):
    return TINY * mse_loss(output, targets, differentiable)


class OwnLoop(MetaAlgorithm):
    """A user's plugin with its own inner loop (plain SGD, written out), gradients taken through the loop it is given."""

    def adapt(self, learner, support, loop=None) -> Adaptation:
        loop = loop if loop is not None else self.inner_loop()
        prepared = support if isinstance(support, PreparedTasks) else learner.prepare(support)
        fast = self.initial_weights(learner, prepared)
        for step in range(loop.steps):
            grads = loop.gradients(learner.losses(fast, prepared), fast, step)
            self.taken = torch.cat([g.flatten().float() for g in grads])
            fast = {name: w - self.step_size(step, name) * g for (name, w), g in zip(fast.items(), grads)}
        return Adaptation(fast=fast)


def test_the_loop_is_frozen_and_a_retry_gets_a_new_one() -> None:
    loop = InnerLoop(steps=3, create_graph=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loop.loss_scale = 8.0
    assert loop.at_scale(8.0) == InnerLoop(3, True, 8.0) and loop.loss_scale == 1.0


def test_the_plugin_holds_no_precision_state() -> None:
    algorithm = FOMAML()
    assert not hasattr(algorithm, "inner_loss_scale")
    assert algorithm.inner_loop(loss_scale=4.0) == InnerLoop(algorithm.inner_steps, False, 4.0)


def test_a_power_of_two_scale_gives_exactly_the_unscaled_gradients_in_float64() -> None:
    torch.manual_seed(0)
    learner = Learner(SineMLP(hidden=8).double(), mse_loss, scope=["all"])
    tasks = sine_tasks(3, 6, torch.Generator().manual_seed(1))
    tasks.inputs, tasks.targets = tuple(t.double() for t in tasks.inputs), tuple(t.double() for t in tasks.targets)
    prepared = learner.prepare(tasks)
    fast = learner.expand(learner.init_weights(), prepared.num_tasks)
    plain = InnerLoop(1).gradients(learner.losses(fast, prepared), fast)
    scaled = InnerLoop(1, loss_scale=2.0**20).gradients(learner.losses(fast, prepared), fast)
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_non_finite_loss_names_its_tasks() -> None:
    fast = {"w": torch.zeros(3, 2, requires_grad=True)}
    losses = (fast["w"].sum(1) + torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(NonFiniteLossError, match=r"task\(s\) \[1\]") as info:
        InnerLoop(1).gradients(losses, fast, step=2)
    assert info.value.step == 2 and info.value.tasks == [1]


def test_a_plugin_with_its_own_inner_loop_gets_the_fp16_loss_scale_passed_to_outer_loss() -> None:
    """Under fp16 the tiny support gradients underflow unless the loss scale reaches them: the scale given to
    ``outer_loss`` reaches the overriding plugin's loop, whose gradients then match float32."""
    taken = {}
    for name, scale, fp16 in (("float32", 1.0, False), ("fp16 unscaled", 1.0, True), ("fp16 scaled", 2.0**16, True)):
        torch.manual_seed(0)
        learner = Learner(SineMLP(hidden=32), _tiny_mse, scope=["all"])
        algorithm = OwnLoop(inner_steps=1)
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            algorithm.outer_loss(learner, sine_meta_batch(4, 16, torch.Generator().manual_seed(1)), loss_scale=scale)
        taken[name] = algorithm.taken
    error = {name: float((g - taken["float32"]).norm() / taken["float32"].norm()) for name, g in taken.items()}
    assert error["fp16 unscaled"] > 0.5, "the fp16 inner gradients were expected to underflow"
    assert error["fp16 scaled"] < 0.02


def test_retry_halves_the_scale_until_the_loop_is_finite_and_a_real_overflow_propagates() -> None:
    tried = []

    def run(scale: float) -> float:
        tried.append(scale)
        if scale > 8.0:
            raise InnerGradientOverflowError(0, scale)
        return scale

    assert retry_at_smaller_scales(run, 64.0) == 8.0 and tried == [64.0, 32.0, 16.0, 8.0]
    with pytest.raises(InnerGradientOverflowError):
        retry_at_smaller_scales(lambda scale: run(scale * 100), 1.5)


def test_an_adam_inner_loop_is_adam_written_out_per_task_in_float64() -> None:
    """``inner_optimizer="adam"``: each task's inner steps are Adam's (bias-corrected, betas 0.9/0.999), with its own
    moments; the test-time default (no optimizer given) runs the plugin's own Adam too."""
    from metaspeech.evaluation.test_time import TestTimeAdaptation

    torch.manual_seed(0)
    learner = Learner(SineMLP(hidden=8).double(), mse_loss, scope=["all"])
    tasks = sine_tasks(3, 6, torch.Generator().manual_seed(1))
    tasks.inputs, tasks.targets = tuple(t.double() for t in tasks.inputs), tuple(t.double() for t in tasks.targets)
    algorithm = FOMAML(inner_steps=2, inner_lr=0.01, inner_optimizer="adam")
    fast = algorithm.adapt(learner, tasks).fast
    for task in range(3):
        weights = {name: w.detach().clone().requires_grad_() for name, w in learner.init_weights().items()}
        first = {name: torch.zeros_like(w) for name, w in weights.items()}
        second = {name: torch.zeros_like(w) for name, w in weights.items()}
        one = learner.prepare(tasks.task(task))
        for count in (1, 2):
            loss = learner.losses({n: w.unsqueeze(0) for n, w in weights.items()}, one).sum()
            grads = torch.autograd.grad(loss, list(weights.values()))
            for (name, w), g in zip(list(weights.items()), grads):
                first[name] = 0.9 * first[name] + 0.1 * g
                second[name] = 0.999 * second[name] + 0.001 * g * g
                step = (first[name] / (1 - 0.9**count)) / ((second[name] / (1 - 0.999**count)).sqrt() + 1e-8)
                weights[name] = (w - 0.01 * step).detach().requires_grad_()
        for name, w in weights.items():
            torch.testing.assert_close(fast[name][task], w, rtol=1e-10, atol=1e-12)
    assert TestTimeAdaptation().loop(algorithm, 2, ()).optimizer == "adam"
    assert TestTimeAdaptation().loop(FOMAML(), 2, ()).optimizer == "sgd"
    assert TestTimeAdaptation(optimizer="sgd").loop(algorithm, 2, ()).optimizer == "sgd"


def test_an_unknown_inner_optimizer_is_a_config_error_naming_the_key() -> None:
    from metaspeech.errors import ConfigError

    with pytest.raises(ConfigError, match="model.algorithm.init_args.inner_optimizer"):
        FOMAML(inner_optimizer="rmsprop")
