"""Reptile (Nichol et al., 2018): move the initialization toward the adapted weights."""

from __future__ import annotations

from typing import Sequence

from metaspeech.engine.algorithm import MetaAlgorithm, OuterResult
from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import Learner


class Reptile(MetaAlgorithm):
    """Reptile as a surrogate loss whose gradient is the Reptile pseudo-gradient.

    The inner loop runs on all of a task's examples (support and query together,
    as in the paper). For the adapted parameters the surrogate
    ``0.5 * mean_t ||theta - phi_t||^2`` (``phi_t`` detached) has gradient
    ``theta - mean_t phi_t``: with outer SGD at learning rate ``epsilon`` this is exactly the
    interpolation ``theta <- theta + epsilon (mean phi - theta)``; with Adam it is the usual
    "pseudo-gradient to the outer optimizer" variant. Parameters outside the
    adaptation scope (the shared body) receive the gradient of the loss at the
    adapted weights, a first-order update. Because it is a loss, one
    ``manual_backward`` syncs it across DDP ranks.
    """

    def __init__(
        self,
        inner_steps: int = 5,
        inner_lr: float | Sequence[float] = 0.1,
        eval_inner_lr: float | None = None,
        inner_optimizer: str = "sgd",
    ) -> None:
        super().__init__(inner_steps, inner_lr, second_order=False, eval_inner_lr=eval_inner_lr, inner_optimizer=inner_optimizer)

    def outer_loss(self, learner: Learner, batch: MetaBatch, loss_scale: float = 1.0) -> OuterResult:
        examples = TaskBatch.concat_examples(batch.support, batch.query)
        prepared = learner.prepare(examples)
        adaptation = self.adapt(learner, prepared, self.inner_loop(loss_scale=loss_scale))
        adapted = {name: w.detach() for name, w in adaptation.fast.items()}
        surrogate = sum(
            0.5 * (theta.unsqueeze(0) - adapted[name]).pow(2).sum() / prepared.num_tasks
            for name, theta in learner.init_weights().items()
        )
        if learner.outside_scope():
            body_losses = learner.losses(adapted, prepared)
            return OuterResult(
                surrogate + body_losses.mean(), body_losses.detach(), adaptation.inner_losses, adaptation.inner_grad_norms
            )
        with_adapted = learner.losses(adapted, prepared).detach()
        return OuterResult(surrogate, with_adapted, adaptation.inner_losses, adaptation.inner_grad_norms)
