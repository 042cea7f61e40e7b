"""``FewShotAdapter``: test-time adaptation of a learner's scope, and transcription with the adapted weights.

Why a plain object: the k x s protocol (:mod:`~metaspeech.protocol`), the meta-val selection
(:mod:`~metaspeech.selection`), the speaker oracle and ``metaspeech adapt`` all need the same three
operations: adapt on a support set, score a batch, transcribe it. None of them needs a Trainer, so
they live here; :class:`~metaspeech.module.MetaSpeechModule` hands in what only it knows (the fp16
loss scale, the tokenizer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaspeech.adaptation_guard import check_guard, guarded_adapt
from metaspeech.algorithms.base import MetaAlgorithm
from metaspeech.algorithms.inner_loop import InnerLoop
from metaspeech.batch import TaskBatch
from metaspeech.learner import FastWeights, Learner
from metaspeech.loss_scaling import retry_at_smaller_scales
from metaspeech.models.recognizer import Recognizer
from metaspeech.oracle import OracleFit, SpeakerOracle
from metaspeech.tokenizer import Tokenizer


class FewShotAdapter:
    """Adapt ``learner``'s scope with ``algorithm``'s inner loop, first order, and decode with ``recognizer``.

    Args:
        recognizer: the model the learner wraps; it brings the decoder.
        learner: the functional view of ``recognizer`` whose adaptation scope is adapted.
        algorithm: the plugin whose ``adapt`` hook is the inner loop.
        guard: ``none`` or ``cross_validation`` (:mod:`~metaspeech.adaptation_guard`).
    """

    def __init__(self, recognizer: Recognizer, learner: Learner, algorithm: MetaAlgorithm, guard: str = "none") -> None:
        self.recognizer, self.learner, self.algorithm = recognizer, learner, algorithm
        self.guard = check_guard(guard)

    def adapt(self, support: TaskBatch, steps: int, loss_scale: float = 1.0) -> FastWeights:
        """Detached fast weights ``[T, ...]`` after ``steps`` inner steps on each task of ``support``.

        Under ``16-mixed`` the inner gradients are scaled by ``loss_scale`` and the loop retries at half the
        scale until they are finite; with the guard on, a task whose adaptation does not generalize keeps its start.
        """
        def unguarded(batch: TaskBatch, count: int) -> FastWeights:
            return self._adapt(batch, count, loss_scale)

        return unguarded(support, steps) if self.guard == "none" else guarded_adapt(support, steps, unguarded, self.loss)

    def _adapt(self, support: TaskBatch, steps: int, loss_scale: float) -> FastWeights:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("test-time adaptation needs gradients, but the Trainer runs evaluation in inference mode: "
                               "set trainer.inference_mode=false (the metaspeech CLI does this by default)")
        with torch.enable_grad():
            with torch.no_grad():
                prepared = self.learner.prepare(support)
            loop = InnerLoop(steps, create_graph=False)
            adaptation = retry_at_smaller_scales(
                lambda scale: self.algorithm.adapt(self.learner, prepared, loop.at_scale(scale)), loss_scale)
        return {name: w.detach() for name, w in adaptation.fast.items()}

    def unadapted(self, num_tasks: int, learner: Learner | None = None) -> FastWeights:
        """The start weights of ``learner``'s scope (default: the adaptation scope), expanded to ``[T, ...]``."""
        learner = learner or self.learner
        return learner.expand(learner.init_weights(), num_tasks)

    @torch.no_grad()
    def loss(self, batch: TaskBatch, fast: FastWeights) -> Tensor:
        """The recognizer's mean loss ``[T]`` of ``batch`` under ``fast`` weights."""
        return self.learner.losses(fast, self.learner.prepare(batch))

    @torch.no_grad()
    def transcribe(self, batch: TaskBatch, tokenizer: Tokenizer, fast: FastWeights | None = None,
                   learner: Learner | None = None) -> list[list[str]]:
        """Transcripts ``[T][B]`` of ``batch`` with ``fast`` weights (default: unadapted) of ``learner``'s scope
        (default: the adaptation scope; the speaker oracle passes its own)."""
        learner = learner or self.learner
        prepared = learner.prepare(batch)
        output = learner.outputs(fast if fast is not None else self.unadapted(batch.num_tasks, learner), prepared)
        texts = [tokenizer.decode(ids) for ids in self.recognizer.decode(output)]
        per_task = len(texts) // batch.num_tasks
        return [texts[t * per_task : (t + 1) * per_task] for t in range(batch.num_tasks)]

    def speaker_oracle(self, oracle: SpeakerOracle, pool: TaskBatch, evaluation: TaskBatch,
                       tokenizer: Tokenizer) -> tuple[list[str], OracleFit]:
        """Transcripts ``[B]`` of ``evaluation`` by the recognizer fine-tuned on one speaker's large ``pool``
        (:mod:`~metaspeech.oracle`: every candidate scope, early-stopped), and that fit."""
        fit = oracle.fit(self.recognizer, self.recognizer.loss, pool)
        return self.transcribe(evaluation, tokenizer, fit.fast, fit.learner)[0], fit
