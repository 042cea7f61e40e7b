"""Meta-gradients checked against independent computations (float64)."""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, MAML, HyperInit, MetaSGD, NonFiniteLossError, Reptile
from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.learner import Learner
from metaspeech.engine.toy import SineMLP, mse_loss, sine_meta_batch

LR = 0.05
STEPS = 2


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _setup(tasks: int = 3):
    torch.manual_seed(0)
    model = SineMLP(hidden=6)
    learner = Learner(model, mse_loss, scope=["all"])
    batch = sine_meta_batch(tasks, 4, torch.Generator().manual_seed(7))
    return model, learner, batch


def _functional_loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same MLP written out by hand: an independent reference forward pass."""
    w0, b0, w1, b1, w2, b2 = params
    h = torch.relu(x @ w0.T + b0)
    h = torch.relu(h @ w1.T + b1)
    return ((h @ w2.T + b2) - y).pow(2).mean()


def _hand_unrolled_objective(params, batch, detach_inner: bool, steps: int = STEPS, second_order_steps: int | None = None):
    """MAML's objective unrolled by hand; inner steps before the last ``second_order_steps`` are first-order."""
    first_second_order = 0 if second_order_steps is None else steps - second_order_steps
    total = 0.0
    for t in range(batch.num_tasks):
        fast = list(params)
        xs, ys = batch.support.inputs[0][t], batch.support.targets[0][t]
        for step in range(steps):
            detach = detach_inner or step < first_second_order
            grads = torch.autograd.grad(_functional_loss(fast, xs, ys), fast, create_graph=not detach)
            fast = [w - LR * (g.detach() if detach else g) for w, g in zip(fast, grads)]
        total = total + _functional_loss(fast, batch.query.inputs[0][t], batch.query.targets[0][t])
    return total / batch.num_tasks


def _engine_gradient(algorithm, model, learner, batch) -> list[torch.Tensor]:
    model.zero_grad()
    algorithm.outer_loss(learner, batch).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_gradient_matches_hand_unrolled_reference(first_order: bool) -> None:
    model, learner, batch = _setup()
    algorithm = (FOMAML if first_order else MAML)(inner_steps=STEPS, inner_lr=LR)
    engine = _engine_gradient(algorithm, model, learner, batch)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    reference = torch.autograd.grad(_hand_unrolled_objective(params, batch, detach_inner=first_order), params)
    for got, want in zip(engine, reference):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("second_order_steps", [0, 1, 2, 3])
def test_truncated_second_order_matches_hand_unrolled_reference(second_order_steps: int) -> None:
    model, learner, batch = _setup()
    algorithm = MAML(inner_steps=3, inner_lr=LR, second_order_steps=second_order_steps)
    engine = _engine_gradient(algorithm, model, learner, batch)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    objective = _hand_unrolled_objective(params, batch, detach_inner=False, steps=3, second_order_steps=second_order_steps)
    reference = torch.autograd.grad(objective, params)
    for got, want in zip(engine, reference):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    if second_order_steps == 0:
        for got, want in zip(engine, _engine_gradient(FOMAML(inner_steps=3, inner_lr=LR), model, learner, batch)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


def test_maml_gradient_matches_finite_differences() -> None:
    model, learner, batch = _setup(tasks=2)
    engine = _engine_gradient(MAML(inner_steps=STEPS, inner_lr=LR), model, learner, batch)
    base = [p.detach().clone() for p in model.parameters()]
    eps = 1e-6

    def objective(index: int, j: int, delta: float) -> float:
        params = [p.clone() for p in base]
        params[index].view(-1)[j] += delta
        return _hand_unrolled_objective([p.requires_grad_() for p in params], batch, False).item()

    for index, p in enumerate(base):
        for j in range(0, p.numel(), max(1, p.numel() // 5)):
            numeric = (objective(index, j, eps) - objective(index, j, -eps)) / (2 * eps)
            assert engine[index].view(-1)[j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_fomaml_differs_from_maml() -> None:
    model, learner, batch = _setup()
    second = _engine_gradient(MAML(inner_steps=STEPS, inner_lr=LR), model, learner, batch)
    first = _engine_gradient(FOMAML(inner_steps=STEPS, inner_lr=LR), model, learner, batch)
    assert any(not torch.allclose(a, b) for a, b in zip(second, first))


def test_reptile_one_task_one_step_closed_form() -> None:
    model, learner, batch = _setup(tasks=1)
    reptile = Reptile(inner_steps=1, inner_lr=LR)
    engine = _engine_gradient(reptile, model, learner, batch)
    merged = TaskBatch.concat_examples(batch.support, batch.query)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    grads = torch.autograd.grad(_functional_loss(params, merged.inputs[0][0], merged.targets[0][0]), params)
    # theta - phi = theta - (theta - lr * g) = lr * g
    for got, g in zip(engine, grads):
        torch.testing.assert_close(got, LR * g, rtol=1e-9, atol=1e-12)


def test_task_batched_and_per_task_loop_agree() -> None:
    model, learner, batch = _setup()
    algorithm = MAML(inner_steps=STEPS, inner_lr=LR)
    batched = _engine_gradient(algorithm, model, learner, batch)
    learner.task_batched = False
    looped = _engine_gradient(algorithm, model, learner, batch)
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)


def test_cached_prefix_gives_the_same_gradient_as_full_recompute() -> None:
    """A head-only scope caches the body; the gradient must equal the uncached computation."""
    model, _, batch = _setup()
    head_only = Learner(model, mse_loss, scope=["stages.head.*"])
    assert head_only.first_stage == 4
    cached = _engine_gradient(MAML(inner_steps=STEPS, inner_lr=LR), model, head_only, batch)
    head_only.first_stage = 0
    uncached = _engine_gradient(MAML(inner_steps=STEPS, inner_lr=LR), model, head_only, batch)
    for a, b in zip(cached, uncached):
        torch.testing.assert_close(a, b)


def test_per_step_learning_rates_are_used() -> None:
    model, learner, batch = _setup(tasks=1)
    lrs = MAML(inner_steps=2, inner_lr=[0.05, 0.0])
    one_step = MAML(inner_steps=1, inner_lr=0.05)
    a = lrs.adapt(learner, batch.support).fast
    b = one_step.adapt(learner, batch.support).fast
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_metasgd_learns_its_learning_rates() -> None:
    model, learner, batch = _setup()
    algorithm = MetaSGD(inner_steps=1, inner_lr=LR)
    algorithm.setup(learner)
    algorithm.outer_loss(learner, batch).loss.backward()
    grads = [p.grad for p in algorithm.learning_rates.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_hyperinit_starts_at_the_shared_init_and_trains_its_generator() -> None:
    model, learner, batch = _setup()
    algorithm = HyperInit(inner_steps=0)
    algorithm.setup(learner)
    fast = algorithm.adapt(learner, batch.support).fast
    for name, theta in learner.init_weights().items():
        torch.testing.assert_close(fast[name], theta.unsqueeze(0).expand_as(fast[name]))
    algorithm.outer_loss(learner, batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algorithm.generators.parameters())


def test_non_finite_inner_loss_is_reported_with_the_task() -> None:
    model, learner, batch = _setup()
    batch.support.targets[0][1, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError) as info:
        MAML(inner_steps=1, inner_lr=LR).adapt(learner, batch.support)
    assert info.value.tasks == [1]


def test_inner_gradient_norms_are_each_tasks_own() -> None:
    model, learner, batch = _setup(tasks=3)
    adaptation = FOMAML(inner_steps=2, inner_lr=LR).adapt(learner, batch.support)
    assert len(adaptation.inner_grad_norms) == 2 and adaptation.inner_grad_norms[0].shape == (3,)
    for t in range(3):
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        loss = _functional_loss(params, batch.support.inputs[0][t], batch.support.targets[0][t])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, params)))
        torch.testing.assert_close(adaptation.inner_grad_norms[0][t], norm)
