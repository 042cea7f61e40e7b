"""How one inner loop runs, passed in as an argument: its steps, second order, the fp16 loss scale and its update rule.

Why an argument and not plugin state: the loss scale belongs to the run (the Trainer's
GradScaler at this outer step), not to the algorithm. An :class:`InnerLoop` is handed to
every inner loop (``MetaAlgorithm.adapt``) and ``outer_loss`` receives the scale, so
nothing is set on the plugin behind its back. The loop's gradients come from
:meth:`InnerLoop.gradients`, which scales and unscales them and checks them; a plugin
that overrides ``adapt`` takes its gradients there too and keeps fp16 working.

The update rule (:meth:`InnerLoop.update`) is SGD by default, the rule every meta-learner trains
with. Test-time adaptation may ask for Adam instead (``optimizer="adam"``), in the same functional
style: its moments are explicit tensors ``[T, ...]`` next to the fast weights, so task t's slice
only ever sees task t's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

import torch
from torch import Tensor

from metaspeech.engine.learner import FastWeights

T = TypeVar("T")


class NonFiniteLossError(FloatingPointError):
    """An inner-loop loss was NaN/inf; ``tasks`` lists the offending task indices."""

    def __init__(self, step: int, tasks: list[int], message: str | None = None) -> None:
        super().__init__(message or f"non-finite inner-loop loss at inner step {step} for task(s) {tasks}")
        self.step = step
        self.tasks = tasks


class InnerGradientOverflowError(NonFiniteLossError):
    """A loss-scaled inner-loop gradient overflowed (fp16): run the loop again with a smaller ``loss_scale``."""

    def __init__(self, step: int, scale: float) -> None:
        super().__init__(step, [], f"inner-loop gradient overflowed at inner step {step} with loss scale {scale:g}")
        self.scale = scale


@dataclass(frozen=True)
class InnerLoop:
    """One inner loop's settings.

    Args:
        steps: inner SGD steps.
        create_graph: differentiate through the inner steps (second order); the algorithm may
            truncate it to its last steps (``second_order_steps``).
        loss_scale: multiplies the support loss before ``autograd.grad``; the gradients are
            divided by it after (PyTorch's AMP recipe for gradients of gradients), so small
            inner gradients do not underflow in float16. The Trainer's GradScaler scale under
            ``16-mixed``; 1.0 in float32, float64 and bf16.
        record: step counts (0 to ``steps``) after which the loop keeps a detached copy of the fast
            weights in ``Adaptation.trajectory``: one 20-step run then also gives the weights after
            1, 5 and 10 steps, which is how the test protocol reads every s of a k at once.
        optimizer: ``sgd`` (``w - lr * g``) or ``adam`` (Kingma & Ba, bias-corrected, betas 0.9/0.999).
        lr: the learning rate of every step and weight; None: the plugin's own ``step_size``
            (learned or scheduled). Test-time adaptation sets it to the rate chosen on meta-val.
        objective: the learner's objective the inner steps minimize (``Learner.objective``):
            ``supervised`` (the training loss), or a label-free one such as ``entropy``, which
            needs no targets, so the support set may be untranscribed.
        from_model: start at the model's own weights of the scope instead of the plugin's
            ``initial_weights`` (HyperInit's generated start). Why: a model into which a speaker's
            adaptation was written already holds that speaker's start; generating on top of it
            would apply the hypernetwork twice.
    """

    steps: int
    create_graph: bool = False
    loss_scale: float = 1.0
    record: tuple[int, ...] = ()
    optimizer: str = "sgd"
    lr: float | None = None
    objective: str = "supervised"
    from_model: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner optimizer must be one of {INNER_OPTIMIZERS}, got {self.optimizer!r}")

    def at_scale(self, loss_scale: float) -> "InnerLoop":
        """This loop with another loss scale (the fp16 retry after an overflow)."""
        return replace(self, loss_scale=loss_scale)

    def gradients(
        self, losses: Tensor, fast: FastWeights, step: int = 0, create_graph: bool | None = None
    ) -> list[Tensor | None]:
        """Gradient of ``losses.sum()`` (``[T]``) w.r.t. every fast weight ``[T, ...]``: task t's lands in slice t.

        ``create_graph`` (default: the loop's) says whether this step is differentiated through.
        Raises :class:`NonFiniteLossError` on a NaN/inf loss and :class:`InnerGradientOverflowError`
        when a loss-scaled gradient is not finite.
        """
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            raise NonFiniteLossError(step, torch.nonzero(~finite).flatten().tolist())
        graph = self.create_graph if create_graph is None else create_graph
        scale = self.loss_scale
        total = losses.sum() if scale == 1.0 else losses.sum() * scale
        grads = torch.autograd.grad(total, list(fast.values()), create_graph=graph, allow_unused=True)
        if scale == 1.0:
            return list(grads)
        grads = [None if g is None else g * (1.0 / scale) for g in grads]
        present = [g for g in grads if g is not None]
        if present and not bool(torch.stack([torch.isfinite(g).all() for g in present]).all()):
            raise InnerGradientOverflowError(step, scale)
        return grads

    def update(
        self, fast: FastWeights, grads: list[Tensor | None], step: int, step_size: Callable[[int, str], float | Tensor],
        state: "AdamState | None" = None,
    ) -> tuple[FastWeights, "AdamState | None"]:
        """One inner step: new fast weights ``[T, ...]`` from ``grads`` (in ``fast``'s order), and the optimizer state.

        ``step_size(step, name)`` is the plugin's learning rate, used unless the loop sets ``lr``. SGD keeps no
        state; Adam starts from ``state=None`` and returns its moments for the next step. A weight without a
        gradient (``None``) stays as it is.
        """
        rate = step_size if self.lr is None else (lambda _step, _name: self.lr)
        if self.optimizer == "sgd":
            return {name: w if g is None else w - rate(step, name) * g for (name, w), g in zip(fast.items(), grads)}, None
        state = state if state is not None else AdamState()
        updated = {}
        for (name, w), g in zip(fast.items(), grads):
            updated[name] = w if g is None else w - rate(step, name) * state.direction(name, g, step + 1)
        return updated, state


INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class AdamState:
    """Adam's moments, one ``[T, ...]`` tensor per fast weight: task t's slice holds task t's running averages."""

    first: dict[str, Tensor] = field(default_factory=dict)
    second: dict[str, Tensor] = field(default_factory=dict)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def direction(self, name: str, grad: Tensor, count: int) -> Tensor:
        """The bias-corrected step direction ``m_hat / (sqrt(v_hat) + eps)`` after the ``count``-th gradient of ``name``."""
        b1, b2 = self.betas
        first = self.first.get(name, torch.zeros_like(grad)) * b1 + (1 - b1) * grad
        second = self.second.get(name, torch.zeros_like(grad)) * b2 + (1 - b2) * grad * grad
        self.first[name], self.second[name] = first, second
        return (first / (1 - b1**count)) / ((second / (1 - b2**count)).sqrt() + self.eps)


def retry_at_smaller_scales(run: Callable[[float], T], scale: float) -> T:
    """``run(scale)``, halving ``scale`` (down to 1) after every :class:`InnerGradientOverflowError`.

    At scale 1 nothing is scaled, so an overflow there is a real one and propagates.
    """
    while True:
        try:
            return run(scale)
        except InnerGradientOverflowError:
            if scale <= 1.0:
                raise
            scale = max(1.0, scale / 2)
