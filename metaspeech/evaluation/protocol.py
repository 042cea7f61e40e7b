"""The k x s adaptation protocol for one held-out task, as a plain object.

Why apart from the LightningModule: the protocol (adapt on the first k pool utterances
for s steps, decode the evaluation set, score every utterance) is the heart of every
reported number, and it must be testable with any adapt / transcribe functions,
without a Trainer. :class:`~metaspeech.training.module.MetaSpeechModule` gives it its own.
"""

from __future__ import annotations

from typing import Callable, Sequence

from metaspeech.engine.batch import EvaluationBatch, TaskBatch
from metaspeech.engine.learner import FastWeights
from metaspeech.errors import ConfigError
from metaspeech.evaluation.guard import Adapt, Loss
from metaspeech.evaluation.oracle import OracleFit
from metaspeech.evaluation.scoring import UtteranceRecord, score_utterance, word_errors

AdaptAlong = Callable[[TaskBatch, Sequence[int]], dict[int, FastWeights]]
"""``adapt_along(support, steps)`` -> fast weights ``[T, ...]`` after each step count in ``steps``
(:meth:`metaspeech.evaluation.adapter.FewShotAdapter.adapt_along`: one inner loop read at every count)."""
Transcribe = Callable[[TaskBatch, FastWeights], list[list[str]]]
"""``transcribe(batch, fast)`` -> hypotheses ``[T][B]``."""
Oracle = Callable[[TaskBatch, TaskBatch], tuple[list[str], OracleFit]]
"""``oracle(oracle_pool, evaluation)`` -> (hypotheses ``[B]`` of the speaker-dependent model, its fit)."""
AccentOracle = Callable[[TaskBatch, list[TaskBatch], TaskBatch], tuple[list[str], OracleFit]]
"""``accent_oracle(oracle_pool, mates_pools, evaluation)`` -> (hypotheses ``[B]`` of the accent-dependent model, its fit)."""


class AdaptationEvaluator:
    """Score one task for every shot count k in ``shots`` and step count s in ``steps``.

    Supports are nested: the k-shot support is the first k pool utterances, so the
    1-shot support lies inside the 5-shot one. Steps are nested too: every s of one k is read
    off one adaptation of ``max(steps)`` steps (``adapt_along``). ``seconds`` records, per ``(task, k)``, how
    much speech the k utterances hold (``frame_shift_seconds`` per feature frame).
    """

    def __init__(self, shots: list[int], steps: list[int], frame_shift_seconds: float) -> None:
        self.shots, self.steps = list(shots), list(steps)
        self.frame_shift_seconds = frame_shift_seconds
        self.seconds: dict[tuple[str, int], float] = {}

    def evaluate(self, item: EvaluationBatch, adapt_along: AdaptAlong, transcribe: Transcribe) -> list[UtteranceRecord]:
        """Per-utterance records of ``item``'s evaluation set under every (k, s)."""
        ids, references = _ids_and_references(item)
        records = []
        for k in self.shots:
            if k > item.pool.examples_per_task:
                raise ConfigError(
                    f"model.test_shots asks for k={k} adaptation utterances but speaker {item.task!r} has an adaptation "
                    f"pool of {item.pool.examples_per_task}: raise data.init_args.eval_pool_size or lower model.test_shots"
                )
            support = item.pool.take(k)
            self.seconds[(item.task, k)] = float(support.inputs[1].sum()) * self.frame_shift_seconds
            adapted = adapt_along(support, self.steps)
            for s in self.steps:
                hypotheses = transcribe(item.evaluation, adapted[s])[0]
                records += [score_utterance(item.task, k, s, u, r, h) for u, r, h in zip(ids, references, hypotheses)]
        return records


def evaluate_oracle(item: EvaluationBatch, oracle: Oracle) -> tuple[list[UtteranceRecord], list[str]]:
    """Records of ``item``'s evaluation set under the speaker oracle, and the scope it chose (none without an oracle pool).

    ``shots`` is the size of the oracle pool, ``steps`` the fine-tuning steps it chose.
    """
    if item.oracle is None:
        return [], []
    ids, references = _ids_and_references(item)
    hypotheses, fit = oracle(item.oracle, item.evaluation)
    shots = item.oracle.examples_per_task
    return [score_utterance(item.task, shots, fit.steps, u, r, h) for u, r, h in zip(ids, references, hypotheses)], [fit.scope]


def evaluate_accent_oracle(item: EvaluationBatch, mates: list[TaskBatch], oracle: AccentOracle) -> list[UtteranceRecord]:
    """Records of ``item``'s evaluation set under the accent oracle, fine-tuned on the oracle pools ``mates`` of the
    other held-out speakers of its accent and on its own; none without an oracle pool or accent mates.

    ``shots`` is the number of utterances it trained on, ``steps`` the fine-tuning steps it chose.
    """
    if item.oracle is None or not mates:
        return []
    ids, references = _ids_and_references(item)
    hypotheses, fit = oracle(item.oracle, mates, item.evaluation)
    return [score_utterance(item.task, fit.training_utterances, fit.steps, u, r, h) for u, r, h in zip(ids, references, hypotheses)]


def validation_scores(item: EvaluationBatch, shots: int, steps: int, adapt: Adapt, loss: Loss,
                      transcribe: Transcribe | None) -> dict[str, tuple[float, int]]:
    """One meta-val task before (``pre``) and after (``post``) ``steps`` inner steps on its first ``shots`` pool
    utterances: ``val/loss_{tag}`` and, given ``transcribe``, ``val/wer_{tag}``, each with its weight (tasks, words)."""
    support = item.pool.take(min(shots, item.pool.examples_per_task))
    scores = {}
    for count, tag in ((0, "pre"), (steps, "post")):
        fast = adapt(support, count)
        scores[f"val/loss_{tag}"] = (float(loss(item.evaluation, fast).mean()), 1)
        if transcribe is not None:
            errors, words = evaluation_word_errors(item, fast, transcribe)
            scores[f"val/wer_{tag}"] = (errors / max(words, 1), words)
    return scores


def evaluation_word_errors(item: EvaluationBatch, fast: FastWeights, transcribe: Transcribe) -> tuple[int, int]:
    """``(word errors, reference words)`` of ``item``'s evaluation utterances decoded with ``fast`` weights ``[1, ...]``:
    the one place a meta-val WER after adaptation is counted (meta-validation and test-time selection)."""
    return word_errors(item.evaluation.texts[0], transcribe(item.evaluation, fast)[0])


def _ids_and_references(item: EvaluationBatch) -> tuple[list[str], list[str]]:
    references = item.evaluation.texts[0]
    ids = item.evaluation.ids[0] if item.evaluation.ids else [str(i) for i in range(len(references))]
    return ids, references
