"""The label-free rows of the test protocol: adapting held-out speakers without their transcripts.

Why a Callback beside the supervised protocol: the k x s table (:mod:`~metaspeech.evaluation.protocol`) adapts on
transcribed utterances. :class:`LabelFreeEvaluation` adds, for the same speakers and the same first k
pool utterances, the rows a deployed recognizer could reach with their audio only:

- one row set per label-free objective (``entropy``, ``pseudo_label``, ...): adapt on the k pool
  utterances without their transcripts, score the evaluation utterances at every s;
- a **transductive** row set: every evaluation utterance adapts on *itself* (no transcript is read),
  single-utterance test-time adaptation as in SUTA (Lin et al. 2022). Each utterance starts from the
  unadapted weights (a reset per utterance, not one adaptation per speaker); the utterances of a speaker
  run side by side as tasks of one batch, which gives the same weights as one after the other. Its
  shot count is reported as k = 0.

The label-free learning rate and step count are chosen on meta-val speakers only, before any test
speaker is read (:func:`choose_on_meta_val`; meta-val transcripts score the candidates). The collapse
guard of the module (:mod:`~metaspeech.evaluation.collapse_guard`) checks every label-free adaptation; the rows
report the share of adaptations it refused and the share of speakers made worse. Everything goes into
``protocol_settings["label_free"]``, so the test report's JSON carries it and ``compare`` tabulates it
(:mod:`metaspeech.evaluation.label_free_report`).

    trainer:
      callbacks:
        - class_path: metaspeech.training.label_free.LabelFreeEvaluation
          init_args: {objectives: [entropy, pseudo_label], learning_rates: [0.01, 0.05, 0.2]}
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback

from metaspeech.datamodules.contract import HeldOutSpeakers
from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.batch import EvaluationBatch
from metaspeech.errors import ConfigError
from metaspeech.evaluation.scoring import SEEN_SPEAKERS, AdaptationReport, UtteranceRecord, score_utterance
from metaspeech.speech.objectives import LABEL_FREE, SUPERVISED
from metaspeech.training.loss_scaling import grad_scaler, loss_scale

TRANSDUCTIVE = "transductive"
TRANSDUCTIVE_SHOTS = 0
"""The k of transductive rows: no separate adaptation set, each utterance adapts on itself."""


@dataclass(frozen=True)
class LabelFreeRow:
    """One label-free row set: an objective, adapting on the k pool utterances or transductively."""

    objective: str
    transductive: bool = False

    @property
    def name(self) -> str:
        return f"{TRANSDUCTIVE} {self.objective}" if self.transductive else self.objective


@contextlib.contextmanager
def test_time_learning_rate(algorithm: MetaAlgorithm, learning_rate: float | None) -> Iterator[None]:
    """The algorithm's ``eval_inner_lr`` set to ``learning_rate`` (None: unchanged) inside the block."""
    saved = algorithm.eval_inner_lr
    if learning_rate is not None:
        algorithm.eval_inner_lr = learning_rate
    try:
        yield
    finally:
        algorithm.eval_inner_lr = saved


def learns_its_step_size(algorithm: MetaAlgorithm) -> bool:
    """Whether the plugin learns its inner learning rates (Meta-SGD): then there is none to choose."""
    return type(algorithm).step_size is not MetaAlgorithm.step_size


@dataclass
class SpeakerResult:
    """One speaker (``task``) under one row set: records at every (k, s), the adaptations the guard refused per
    (k, s) (count, out of ``adaptations``) and the seconds spent adapting and of speech adapted on."""

    task: str
    records: list[UtteranceRecord]
    refused: dict[tuple[int, int], int]
    adaptations: dict[tuple[int, int], int]
    adapt_seconds: float
    speech_seconds: float


def evaluate_speaker(module: L.LightningModule, item: EvaluationBatch, row: LabelFreeRow, shots: Sequence[int],
                     steps: Sequence[int]) -> SpeakerResult:
    """Adapt ``module`` (a :class:`~metaspeech.training.module.MetaSpeechModule`) label-free to one held-out speaker
    and score its evaluation utterances at every (k, s); transcripts are read only to score.

    ``s = 0`` records are the unadapted decoding (the baseline of every k). Transductive rows ignore
    ``shots`` and adapt each evaluation utterance on itself. ``row.objective`` may be ``supervised`` (the
    reference the label-free rows are compared with, e.g. in ``benchmarks/label_free.py``), never transductively.
    """
    if row.transductive and row.objective == SUPERVISED:
        raise ValueError("a transductive row adapts on the evaluation utterances: it must not read their transcripts")
    references = item.evaluation.texts[0]
    ids = item.evaluation.ids[0] if item.evaluation.ids else [str(i) for i in range(len(references))]
    counts = sorted(set(steps) | {0})
    scale = loss_scale(grad_scaler(module._trainer))
    frame_seconds = module.feature_config.frame_shift_seconds
    result = SpeakerResult(item.task, [], {}, {}, 0.0, 0.0)
    supports = [(TRANSDUCTIVE_SHOTS, item.evaluation.per_utterance())] if row.transductive else \
        [(k, item.pool.take(min(k, item.pool.examples_per_task))) for k in shots]
    for k, support in supports:
        support = support if row.objective == SUPERVISED else support.without_transcripts()
        start = time.perf_counter()
        if row.objective == SUPERVISED:
            adapted = module.adapter.adapt_along(support, counts, scale, SUPERVISED)
            kept = {c: torch.ones(support.num_tasks, dtype=torch.bool) for c in counts}
        else:
            adapted, kept = module.adapter.adapt_label_free(support, counts, row.objective, scale)
        result.adapt_seconds += time.perf_counter() - start
        result.speech_seconds += float(support.inputs[1].sum()) * frame_seconds
        for s in counts:
            hypotheses = [task[0] for task in module.transcribe(support, adapted[s])] if row.transductive \
                else module.transcribe(item.evaluation, adapted[s])[0]
            result.records += [score_utterance(item.task, k, s, u, r, h) for u, r, h in zip(ids, references, hypotheses)]
            result.refused[(k, s)] = int((~kept[s]).sum()) if s else 0
            result.adaptations[(k, s)] = support.num_tasks
    return result


def choose_on_meta_val(module: L.LightningModule, loader: Iterable[EvaluationBatch], row: LabelFreeRow, shots: int,
                       learning_rates: Sequence[float], steps: Sequence[int]) -> dict[str, Any]:
    """The (learning rate, steps) of ``row`` with the lowest corpus WER over the meta-val speakers of ``loader``.

    Why meta-val: choosing on test speakers would leak their transcripts into a label-free number. Each
    candidate learning rate runs one adaptation read at every step count. A plugin that learns its step
    sizes (Meta-SGD) keeps them: only the steps are chosen. Ties go to fewer steps, then the smaller rate.
    """
    algorithm = module.algorithm
    rates: list[float | None] = [None] if learns_its_step_size(algorithm) else [float(lr) for lr in learning_rates]
    errors: dict[tuple[float | None, int], int] = {(lr, s): 0 for lr in rates for s in steps}
    words = 0
    was_training = module.training
    module.eval()
    try:
        for item in loader:
            item = move_data_to_device(item, module.device)
            for lr in rates:
                with test_time_learning_rate(algorithm, lr):
                    result = evaluate_speaker(module, item, row, [shots], steps)
                for s in steps:
                    errors[(lr, s)] += sum(r.word_errors for r in result.records if r.steps == s)
            words += sum(r.words for r in result.records if r.steps == 0)
    finally:
        module.train(was_training)
    wer = {key: count / max(words, 1) for key, count in errors.items()}
    lr, s = min(wer, key=lambda key: (wer[key], key[1], key[0] or 0.0))
    return {"row": row.name, "objective": row.objective, "setting": TRANSDUCTIVE if row.transductive else "support",
            "learning_rate": lr if lr is not None else "learned by the algorithm", "steps": s, "shots": shots,
            "meta_val_wer": {f"lr={key[0]} s={key[1]}": value for key, value in wer.items()}}


def report_rows(row: LabelFreeRow, choice: dict[str, Any], results: list[SpeakerResult],
                groups: dict[str, str] | None) -> list[dict[str, Any]]:
    """One row per (speaker group, k, s > 0) of ``row``: WER, its reduction vs the unadapted model, speakers
    made worse, adaptations refused by the guard, and adaptation seconds per second of speech adapted on."""
    report = AdaptationReport([r for result in results for r in result.records], groups=groups)
    rows = []
    for group, part in [("all", report)] + [(g, report.subset(g)) for g in report.group_names()]:
        members = [r for r in results if r.task in {record.task for record in part.records}]
        if group == "all":  # as AdaptationReport.conditions: training speakers on new sentences are not held out
            members = [r for r in members if report.groups.get(r.task) != SEEN_SPEAKERS]
        refused = {key: sum(r.refused.get(key, 0) for r in members) for key in members[0].refused} if members else {}
        adaptations = {key: sum(r.adaptations.get(key, 0) for r in members) for key in refused}
        speech = sum(r.speech_seconds for r in members)
        cost = sum(r.adapt_seconds for r in members) / speech if speech else float("nan")
        cells = {(c.shots, c.steps): c for c in part.conditions()}
        for (shots, steps), c in cells.items():
            if steps == 0:
                continue
            rows.append({
                "row": row.name, "objective": row.objective, "setting": choice["setting"], "group": group,
                "shots": shots, "steps": steps, "selected": steps == choice["steps"],
                "learning_rate": choice["learning_rate"], "wer": c.wer, "cer": c.cer,
                "unadapted_wer": cells[(shots, 0)].wer, "relative_wer_reduction": c.relative_wer_reduction,
                "speakers_worse": c.speakers_worse, "speakers": c.speakers, "utterances": c.utterances,
                "guard_refused": refused.get((shots, steps), 0) / max(adaptations.get((shots, steps), 0), 1),
                "adapt_seconds_per_speech_second": cost,
            })
    return rows


class LabelFreeEvaluation(Callback):
    """Add label-free and transductive rows to the test report (see the module docstring).

    Args:
        objectives: label-free objectives adapted on the k pool utterances, without their transcripts.
        transductive: objectives of the transductive rows (each evaluation utterance adapts on itself).
        learning_rates, steps: the candidates searched on meta-val speakers for every row set.
        val_shots: pool utterances per meta-val speaker for the non-transductive search (default: the
            module's ``val_shots``).

    It reads the data module's own loaders at test start; under DDP every rank runs it whole and gets
    the same numbers.
    """

    def __init__(self, objectives: list[str] | None = None, transductive: list[str] | None = None,
                 learning_rates: list[float] | None = None, steps: list[int] | None = None,
                 val_shots: int | None = None) -> None:
        self.rows = [LabelFreeRow(o) for o in (objectives if objectives is not None else ["entropy", "pseudo_label"])]
        self.rows += [LabelFreeRow(o, True) for o in (transductive if transductive is not None else ["entropy"])]
        for row in self.rows:
            if row.objective not in LABEL_FREE:
                raise ConfigError(f"LabelFreeEvaluation: {row.objective!r} is not a label-free objective; use one of {LABEL_FREE}")
        self.learning_rates = [float(lr) for lr in (learning_rates or [0.01, 0.05, 0.2])]
        self.steps = sorted(set(steps or [1, 5, 10]))
        if any(lr <= 0 for lr in self.learning_rates) or any(s < 1 for s in self.steps):
            raise ConfigError(f"LabelFreeEvaluation: learning_rates must be > 0 and steps >= 1, got "
                              f"{self.learning_rates} and {self.steps}")
        self.val_shots = val_shots
        self.result: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Choose on meta-val, then adapt every test speaker label-free; the rows go to ``protocol_settings``."""
        data = trainer.datamodule
        shots = self.val_shots or pl_module.hparams.val_shots
        choices = [choose_on_meta_val(pl_module, data.val_dataloader(), row, shots, self.learning_rates, self.steps)
                   for row in self.rows]
        for choice in choices:
            pl_module.print(f"label-free {choice['row']}: learning rate {choice['learning_rate']}, {choice['steps']} "
                            f"steps, chosen on meta-val speakers")
        groups = data.task_groups("test") if isinstance(data, HeldOutSpeakers) else None
        results: dict[str, list[SpeakerResult]] = {row.name: [] for row in self.rows}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for item in data.test_dataloader():
                item = move_data_to_device(item, pl_module.device)
                for row, choice in zip(self.rows, choices):
                    lr = choice["learning_rate"] if isinstance(choice["learning_rate"], float) else None
                    with test_time_learning_rate(pl_module.algorithm, lr):
                        steps = sorted(set(pl_module.test_steps) | {choice["steps"]})
                        results[row.name].append(evaluate_speaker(pl_module, item, row, pl_module.test_shots, steps))
        finally:
            pl_module.train(was_training)
        self.result = {
            "selection": choices,
            "rows": [r for row, choice in zip(self.rows, choices) for r in report_rows(row, choice, results[row.name], groups)],
            "records": [{"row": name, **asdict(r)} for name, parts in results.items() for part in parts for r in part.records],
        }
        pl_module.protocol_settings["label_free"] = self.result
