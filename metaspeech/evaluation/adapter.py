"""``FewShotAdapter``: test-time adaptation of a learner's scope, and transcription with the adapted weights.

Why a plain object: the k x s protocol (:mod:`~metaspeech.evaluation.protocol`), the meta-val selection
(:mod:`~metaspeech.evaluation.selection`), the speaker oracle and ``metaspeech adapt`` all need the same three
operations: adapt on a support set, score a batch, transcribe it. None of them needs a Trainer, so
they live here; :class:`~metaspeech.training.module.MetaSpeechModule` hands in what only it knows (the fp16
loss scale, the tokenizer).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor, nn

from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.inner_loop import InnerLoop, retry_at_smaller_scales
from metaspeech.engine.learner import FastWeights, Learner, PreparedTasks
from metaspeech.evaluation.collapse_guard import CollapseGuard
from metaspeech.evaluation.guard import check_guard, guarded_adapt
from metaspeech.evaluation.oracle import OracleFit, SpeakerOracle
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.models.recognizer import Recognizer
from metaspeech.speech.objectives import SUPERVISED
from metaspeech.speech.tokenizer import Tokenizer


class FewShotAdapter:
    """Adapt a scope with ``algorithm``'s inner loop, first order, and decode with ``recognizer``.

    Args:
        recognizer: the model the learner wraps; it brings the decoder.
        learner: the functional view of ``recognizer`` with the training scope.
        algorithm: the plugin whose ``inner_loop`` and ``adapt`` hooks make the inner loop.
        guard: ``none`` or ``cross_validation`` (:mod:`~metaspeech.evaluation.guard`), for supervised adaptation.
        test_time: the scope, inner optimizer and learning rate of test-time adaptation (default: the training
            scope, SGD at the plugin's own rate). ``self.learner`` is the learner of that scope.
        objective: what test-time adaptation minimizes by default: ``supervised`` (needs transcripts) or a
            label-free objective of the recognizer (``entropy``, ``pseudo_label``: :mod:`~metaspeech.speech.objectives`).
        collapse_guard: checks every label-free adaptation (:mod:`~metaspeech.evaluation.collapse_guard`); None: off.
        from_model: start every adaptation at the recognizer's own weights, not at the plugin's generated start
            (``InnerLoop.from_model``): for a recognizer holding a speaker's adaptation (:func:`write_adapted_weights`).
    """

    def __init__(self, recognizer: Recognizer, learner: Learner, algorithm: MetaAlgorithm, guard: str = "none",
                 test_time: TestTimeAdaptation | None = None, objective: str = SUPERVISED,
                 collapse_guard: CollapseGuard | None = CollapseGuard(), from_model: bool = False) -> None:
        self.recognizer, self.algorithm, self.from_model = recognizer, algorithm, from_model
        self.test_time = test_time if test_time is not None else TestTimeAdaptation()
        self.learner = self.test_time.learner(learner, algorithm)
        self.guard = check_guard(guard)
        self.objective, self.collapse_guard = objective, collapse_guard

    def adapt(self, support: TaskBatch, steps: int, loss_scale: float = 1.0, objective: str | None = None) -> FastWeights:
        """Detached fast weights ``[T, ...]`` after ``steps`` inner steps on each task of ``support``.

        Under ``16-mixed`` the inner gradients are scaled by ``loss_scale`` and the loop retries at half the
        scale until they are finite; with the guard on, a task whose adaptation does not generalize keeps its start.
        ``objective`` (default: the adapter's) is what the inner steps minimize.
        """
        return self.adapt_along(support, [steps], loss_scale, objective)[steps]

    def adapt_along(self, support: TaskBatch, steps: Sequence[int], loss_scale: float = 1.0,
                    objective: str | None = None) -> dict[int, FastWeights]:
        """Detached fast weights ``[T, ...]`` after each step count in ``steps``, as :meth:`adapt` gives them.

        Why: the test protocol scores s = 0, 1, 5, 10, 20 for every k. Inner SGD on a fixed support set is
        deterministic, so the weights after 5 steps of a 20-step run are those of a 5-step run: one run of
        ``max(steps)`` recording its trajectory replaces one run per s (36 inner steps -> 20 for that grid).
        A plugin whose ``adapt`` does not record (``InnerLoop.record``), and the guard, run once per count.
        """
        counts = sorted(set(steps))
        objective = objective or self.objective
        if objective != SUPERVISED:
            return self.adapt_label_free(support, counts, objective, loss_scale)[0]
        if self.guard != "none":
            def unguarded(batch: TaskBatch, count: int) -> FastWeights:
                return self._adapt(batch, [count], loss_scale)[count]

            return {s: guarded_adapt(support, s, unguarded, self.loss) for s in counts}
        return self._adapt(support, counts, loss_scale)

    def adapt_label_free(self, support: TaskBatch, steps: Sequence[int], objective: str,
                         loss_scale: float = 1.0) -> tuple[dict[int, FastWeights], dict[int, Tensor]]:
        """:meth:`adapt_along` minimizing the label-free ``objective`` (``support`` needs no transcripts), and,
        per step count, which tasks the collapse guard let keep their adaptation (``[T]`` bool; all without a guard)."""
        counts = sorted(set(steps))
        trajectory = self._adapt(support, counts, loss_scale, objective)
        if self.collapse_guard is None:
            return trajectory, {s: torch.ones(support.num_tasks, dtype=torch.bool) for s in counts}
        with torch.no_grad():
            prepared = self.learner.prepare(support)
            start = {n: w.detach() for n, w in self._start(prepared).items()}
            before = self.learner.outputs(start, prepared)
            before_ids = self.recognizer.decode(before)
            guarded, kept = {}, {}
            for s in counts:
                after = self.learner.outputs(trajectory[s], prepared)
                keep = self.collapse_guard.keep(before, after, before_ids, self.recognizer.decode(after), support.num_tasks,
                                                getattr(self.recognizer, "blank", 0)).to(prepared.state[0].device)
                guarded[s] = {n: torch.where(keep.view(-1, *[1] * (w.dim() - 1)), w, start[n]) for n, w in trajectory[s].items()}
                kept[s] = keep.cpu()
        return guarded, kept

    def _adapt(self, support: TaskBatch, counts: list[int], loss_scale: float,
               objective: str = SUPERVISED) -> dict[int, FastWeights]:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("test-time adaptation needs gradients, but the Trainer runs evaluation in inference mode: "
                               "set trainer.inference_mode=false (the metaspeech CLI does this by default)")
        with torch.enable_grad():
            with torch.no_grad():
                prepared = self.learner.prepare(support)
            loop = self._loop(max(counts), tuple(counts), objective)
            trajectory = self._run(prepared, loop, loss_scale)
            for missing in [s for s in counts if s not in trajectory]:  # an adapt override that does not record
                trajectory[missing] = self._run(prepared, self._loop(missing, (), objective), loss_scale)[missing]
        return {s: trajectory[s] for s in counts}

    def _loop(self, steps: int, record: tuple[int, ...], objective: str) -> InnerLoop:
        return replace(self.test_time.loop(self.algorithm, steps, record, objective), from_model=self.from_model)

    def _start(self, prepared: PreparedTasks) -> FastWeights:
        """Where this adapter's adaptations start (see ``from_model``), ``[T, ...]``."""
        return self.algorithm.start(self.learner, prepared, self._loop(0, (), SUPERVISED))

    def _run(self, prepared: PreparedTasks, loop: InnerLoop, loss_scale: float) -> dict[int, FastWeights]:
        """One inner loop: its recorded trajectory, and the detached final weights under ``loop.steps``."""
        adaptation = retry_at_smaller_scales(
            lambda scale: self.algorithm.adapt(self.learner, prepared, loop.at_scale(scale)), loss_scale)
        final = {name: w.detach() for name, w in adaptation.fast.items()}
        return {**adaptation.trajectory, loop.steps: final}

    def unadapted(self, num_tasks: int, learner: Learner | None = None) -> FastWeights:
        """The start weights of ``learner``'s scope (default: the adaptation scope), expanded to ``[T, ...]``."""
        learner = learner or self.learner
        return learner.expand(learner.init_weights(), num_tasks)

    @torch.no_grad()
    def loss(self, batch: TaskBatch, fast: FastWeights, objective: str = SUPERVISED) -> Tensor:
        """The mean loss ``[T]`` of ``batch`` under ``fast`` weights: the recognizer's training loss, or the
        label-free ``objective`` (its targets, e.g. pseudo-labels, taken from the start weights as adaptation does)."""
        prepared = self.learner.prepare(batch)
        if objective != SUPERVISED:
            prepared = self.learner.for_objective(prepared, self._start(prepared), objective)
        return self.learner.losses(fast, prepared, objective=objective)

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
        (:mod:`~metaspeech.evaluation.oracle`: every candidate scope, early-stopped), and that fit."""
        fit = oracle.fit(self.recognizer, self.recognizer.loss, pool)
        return self.transcribe(evaluation, tokenizer, fit.fast, fit.learner)[0], fit

    def accent_oracle(self, oracle: SpeakerOracle, pool: TaskBatch, others: list[TaskBatch], evaluation: TaskBatch,
                      tokenizer: Tokenizer) -> tuple[list[str], OracleFit]:
        """Transcripts ``[B]`` of ``evaluation`` by the recognizer fine-tuned on the oracle pools of the speaker's
        accent mates ``others`` and its own ``pool`` (:meth:`SpeakerOracle.fit_accent`), and that fit."""
        fit = oracle.fit_accent(self.recognizer, self.recognizer.loss, pool, others)
        return self.transcribe(evaluation, tokenizer, fit.fast, fit.learner)[0], fit


@torch.no_grad()
def write_adapted_weights(recognizer: nn.Module, fast: FastWeights, task: int = 0) -> None:
    """Write task ``task``'s adapted weights (``fast[name][task]``, ``fast`` as ``[T, ...]``) into ``recognizer``'s
    parameters, in place: its shared init becomes that task's adaptation.

    Why: an adaptation that starts where a speaker's supervised adaptation ended (each of an enrolled speaker's
    recordings adapted on itself, without a transcript) needs those weights as its start, and every learner
    reads its start, and the weights outside its scope, from the model. Copy the recognizer first to keep it.
    """
    parameters = dict(recognizer.named_parameters())
    unknown = sorted(set(fast) - set(parameters))
    if unknown:
        raise KeyError(f"adapted weights {unknown[:3]} are not parameters of {type(recognizer).__name__}")
    for name, weights in fast.items():
        parameters[name].copy_(weights[task])
