"""Joint multi-speaker training: the baseline every meta-learning claim is measured against."""

from __future__ import annotations

from metaspeech.engine.algorithm import MetaAlgorithm, OuterResult
from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import Learner


class JointTraining(MetaAlgorithm):
    """Ordinary training on all utterances of the meta-batch, no inner loop.

    At test time the inherited :meth:`adapt` fine-tunes exactly as the
    meta-learned algorithms do (same scope, steps and learning rate), so the
    comparison isolates what meta-learning adds.
    """

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, eval_inner_lr: float | None = None) -> None:
        super().__init__(inner_steps, inner_lr, second_order=False, eval_inner_lr=eval_inner_lr)

    def outer_loss(self, learner: Learner, batch: MetaBatch, loss_scale: float = 1.0) -> OuterResult:
        """Mean loss of the unadapted weights over every utterance; no inner loop, so ``loss_scale`` is unused."""
        prepared = learner.prepare(TaskBatch.concat_examples(batch.support, batch.query))
        losses = learner.losses(learner.expand(learner.init_weights(), prepared.num_tasks), prepared)
        return OuterResult(losses.mean(), losses.detach(), [])
