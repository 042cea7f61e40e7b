"""Choose test-time adaptation on meta-val speakers, never on test speakers.

Why: the scope, inner optimizer, learning rate and step count of test-time adaptation decide how much
of the speaker gap an algorithm can close, and choosing them on test speakers would flatter every number
in the report. :class:`TestTimeSelection` adapts every meta-val speaker (``model.val_shots`` utterances)
with every candidate :class:`~metaspeech.evaluation.test_time.TestTimeAdaptation`, scores WER after each step count
of one inner loop (all s read off one trajectory, as the test protocol does) and returns the best
``(candidate, s)``. It changes nothing: the module asks for the choice before the test
(``model.test_time_selection``) and keeps it as its ``test_time``; the report records the whole search.

Joint training + fine-tuning gets exactly the same search as the meta-learners. A plugin that learns its
inner learning rates (``learns_inner_lr``, Meta-SGD) keeps them and its training scope: only the steps are
chosen. A plugin with other scope-bound meta-parameters is searched over the scopes its ``adapts_scope`` allows
(HyperInit: those that contain its training scope, such as ``all``).

    model:
      test_time_selection:
        candidates:
          - {optimizer: sgd, lr: 0.1}
          - {scope: [all], optimizer: adam, lr: 0.0003}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.batch import EvaluationBatch
from metaspeech.engine.inner_loop import NonFiniteLossError
from metaspeech.engine.learner import Learner
from metaspeech.errors import ConfigError
from metaspeech.evaluation.adapter import FewShotAdapter
from metaspeech.evaluation.protocol import evaluation_word_errors
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.models.recognizer import Recognizer
from metaspeech.speech.tokenizer import Tokenizer

DEFAULT_CANDIDATES = (TestTimeAdaptation(optimizer="sgd", lr=0.1), TestTimeAdaptation(optimizer="sgd", lr=0.3),
                      TestTimeAdaptation(optimizer="adam", lr=3e-3))


@dataclass(frozen=True)
class Selection:
    """The outcome of a search: the chosen settings and step count, and the meta-val WER of every (candidate, s)."""

    test_time: TestTimeAdaptation
    steps: int
    shots: int
    meta_val_wer: dict[str, dict[int, float | None]]
    """WER per candidate name and s; None where the candidate diverged."""
    speakers: int

    def describe(self) -> dict[str, Any]:
        """Plain values for the report (``settings.test_time_selection``)."""
        return {"chosen": self.test_time.describe(), "steps": self.steps, "shots": self.shots, "speakers": self.speakers,
                "meta_val_wer": {name: {str(s): wer for s, wer in by_steps.items()} for name, by_steps in self.meta_val_wer.items()}}


class TestTimeSelection:
    """A small grid of test-time settings, searched on meta-val speakers.

    Args:
        candidates: the :class:`TestTimeAdaptation` settings to try (scope, optimizer, learning rate).
        steps: the step counts to read off each candidate's inner loop (default: the test protocol's
            ``model.test_steps``); s = 0, no adaptation, is always among them.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, candidates: list[TestTimeAdaptation] | None = None, steps: list[int] | None = None) -> None:
        self.candidates = list(candidates) if candidates is not None else list(DEFAULT_CANDIDATES)
        if not self.candidates:
            raise ConfigError("model.test_time_selection.candidates is empty: give at least one test-time setting")
        if steps is not None and any(s < 0 for s in steps):
            raise ConfigError(f"model.test_time_selection.steps must be >= 0, got {steps}")
        self.steps = steps

    def candidates_for(self, algorithm: MetaAlgorithm, learner: Learner) -> list[TestTimeAdaptation]:
        """The candidates ``algorithm``, meta-trained on ``learner``'s scope, can run: its own learned rates only if
        it learns them; only the scopes its ``adapts_scope`` allows (else every candidate on the training scope)."""
        if algorithm.learns_inner_lr:
            return [TestTimeAdaptation().resolved(algorithm)]
        usable = [c for c in self.candidates
                  if c.scope is None or algorithm.adapts_scope(learner, Learner(learner.model, learner.loss, list(c.scope)))]
        usable = usable or [TestTimeAdaptation(optimizer=c.optimizer, lr=c.lr) for c in self.candidates]
        return [c.resolved(algorithm) for c in usable]

    def select(self, recognizer: Recognizer, learner: Learner, algorithm: MetaAlgorithm, tokenizer: Tokenizer,
               tasks: Iterable[EvaluationBatch], shots: int, steps: list[int], guard: str = "none",
               loss_scale: float = 1.0, reduce: Callable[[list[float]], list[float]] = lambda counts: counts) -> Selection:
        """Adapt every meta-val task in ``tasks`` on its first ``shots`` pool utterances with every candidate and
        return the (candidate, s) of lowest corpus WER over them (ties: the earlier candidate, the fewer steps).
        A candidate whose inner loop diverges (a non-finite loss) on any meta-val task is out of the search: its
        cells are reported as None and it cannot be chosen, so one unstable setting does not end the test.

        ``steps``: the test protocol's step counts (used unless the selection has its own). ``reduce`` sums the
        flat error counts over DDP ranks, so every rank makes the same choice.
        """
        candidates = self.candidates_for(algorithm, learner)
        counts_of = sorted(set(self.steps if self.steps is not None else steps) | {0})
        adapters = [FewShotAdapter(recognizer, learner, algorithm, guard, c) for c in candidates]
        cells = 2 * len(candidates) * len(counts_of)
        counts = [0.0] * (cells + len(candidates) + 1)  # (errors, words) per (candidate, s); diverged per candidate; speakers
        for item in tasks:
            counts[-1] += 1
            support = item.pool.take(min(shots, item.pool.examples_per_task))
            for i, adapter in enumerate(adapters):
                try:
                    adapted = adapter.adapt_along(support, counts_of, loss_scale)
                except NonFiniteLossError:
                    counts[cells + i] += 1
                    continue
                for j, s in enumerate(counts_of):
                    errors, words = evaluation_word_errors(
                        item, adapted[s], lambda batch, fast: adapter.transcribe(batch, tokenizer, fast))
                    index = 2 * (i * len(counts_of) + j)
                    counts[index] += errors
                    counts[index + 1] += words
        counts = reduce(counts)
        wer = {(i, s): counts[2 * (i * len(counts_of) + j)] / max(counts[2 * (i * len(counts_of) + j) + 1], 1)
               for i in range(len(candidates)) for j, s in enumerate(counts_of) if not counts[cells + i]}
        if not wer:
            raise ConfigError("model.test_time_selection: every candidate's inner loop diverged (a non-finite loss) on "
                              "meta-val speakers; give smaller learning rates in model.test_time_selection.candidates")
        best_i, best_s = min(wer, key=lambda key: (wer[key], key))
        table = {_name(c): {s: wer.get((i, s)) for s in counts_of} for i, c in enumerate(candidates)}
        return Selection(candidates[best_i], best_s, shots, table, int(counts[-1]))


def _name(candidate: TestTimeAdaptation) -> str:
    described = candidate.describe()
    return f"{described['scope']} / {described['optimizer']} / lr {described['lr']}"
