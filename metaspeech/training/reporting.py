"""The test report: collected from every held-out task, gathered from every rank, shown and stored.

Why a Callback: the LightningModule's ``test_step`` only runs the k x s protocol on one task
(:class:`~metaspeech.evaluation.protocol.AdaptationEvaluator`) and returns its :class:`TaskScores`.
Everything around it is reporting: refusing shot counts the adaptation pools cannot supply
before any speaker is adapted, collecting the scores, gathering them from every DDP rank,
building the :class:`~metaspeech.evaluation.scoring.AdaptationReport` (the callback's ``report``, read with
:func:`last_test_report`) and
logging ``test/wer_k*_s*``; on rank 0 the console table, the JSON/CSV files, the logger tables
and the audio examples. The module installs :class:`AdaptationReportWriter` by default
(``configure_callbacks``), so every Trainer writes the same outputs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Sequence, TypeVar

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from metaspeech.datamodules.contract import HeldOutSpeakers
from metaspeech.errors import ConfigError
from metaspeech.evaluation.scoring import AdaptationReport, UtteranceRecord
from metaspeech.speech.audio import AudioError, load_audio
from metaspeech.training.loggers import log_adaptation_report

T = TypeVar("T")


def last_test_report(trainer: L.Trainer) -> AdaptationReport | None:
    """The adaptation report of ``trainer``'s last ``test`` (None before one): its :class:`AdaptationReportWriter`'s."""
    writers = [c for c in trainer.callbacks if isinstance(c, AdaptationReportWriter)]
    return writers[0].report if writers else None


class TaskScores(NamedTuple):
    """What ``test_step`` returns for one held-out task: its utterance records and, per ``(task, k)``,
    the seconds of speech in its k adaptation utterances."""

    records: list[UtteranceRecord]
    seconds: dict[tuple[str, int], float]
    oracle: Sequence[UtteranceRecord] = ()  # the speaker oracle's records of this task (none without an oracle pool)
    oracle_scopes: Sequence[str] = ()  # the scope the oracle chose for it
    accent_oracle: Sequence[UtteranceRecord] = ()  # the accent oracle's records of this task (none without accent mates)


def gather_objects(trainer: L.Trainer, items: list[T]) -> list[T]:
    """Every rank's ``items``, concatenated in rank order, on every rank.

    Lightning's ``all_gather`` carries tensors only; Python objects travel by the strategy's
    ``broadcast`` (pickled), each rank's list in turn. One process: ``items`` itself.
    """
    if trainer.world_size == 1:
        return list(items)
    return [item for rank in range(trainer.world_size) for item in trainer.strategy.broadcast(list(items), src=rank)]


class AdaptationReportWriter(Callback):
    """Collect, gather and report the test protocol; print the table, write ``adaptation_<algorithm>.{json,csv}``
    and log tables and audio (rank 0).

    Files go to ``model.results_dir``, else to the logger's folder, else to ``results/``. A data
    module with :class:`~metaspeech.datamodules.contract.HeldOutSpeakers` gives the speaker groups, the
    pool size checked at setup and the audio examples.
    """

    def __init__(self) -> None:
        self.scores: list[TaskScores] = []
        self.report: AdaptationReport | None = None  # of the last test, on every rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if stage == "test" and isinstance(data, HeldOutSpeakers):
            self.check_pool_size(pl_module.test_shots, data.eval_pool_size)

    @staticmethod
    def check_pool_size(shots: list[int], pool_size: int) -> None:
        """Refuse, before any speaker is adapted, shot counts the data's adaptation pools cannot supply."""
        if max(shots) > pool_size:
            raise ConfigError(
                f"model.test_shots={shots} asks for k={max(shots)} adaptation utterances, but "
                f"data.init_args.eval_pool_size={pool_size}: raise eval_pool_size or lower model.test_shots"
            )

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scores, self.report = [], None

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.scores.append(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the report from every rank's scores (on every rank) and log its headline numbers."""
        records = gather_objects(trainer, [r for s in self.scores for r in s.records])
        local_seconds = {key: value for s in self.scores for key, value in s.seconds.items()}
        seconds = {key: value for part in gather_objects(trainer, [local_seconds]) for key, value in part.items()}
        data = trainer.datamodule
        groups = data.task_groups("test") if isinstance(data, HeldOutSpeakers) else None
        oracle = gather_objects(trainer, [r for s in self.scores for r in s.oracle])
        settings = dict(pl_module.protocol_settings)
        if oracle:
            scopes = Counter(gather_objects(trainer, [scope for s in self.scores for scope in s.oracle_scopes]))
            settings["oracle"] = {**pl_module.oracle.describe(), "chosen_scopes": dict(scopes)}
        accent_oracle = gather_objects(trainer, [r for s in self.scores for r in s.accent_oracle])
        report = self.report = AdaptationReport(records, seconds, groups=groups, settings=settings, oracle=oracle,
                                                accent_oracle=accent_oracle)
        for c in report.conditions():
            pl_module.log(f"test/wer_k{c.shots}_s{c.steps}", c.wer, rank_zero_only=True)
            pl_module.log(f"test/cer_k{c.shots}_s{c.steps}", c.cer, rank_zero_only=True)
            if c.steps and c.gap_closed == c.gap_closed:
                pl_module.log(f"test/gap_closed_k{c.shots}_s{c.steps}", c.gap_closed, rank_zero_only=True)
        if oracle:
            pl_module.log("test/oracle_wer", report.conditions()[0].oracle_wer, rank_zero_only=True)
        if accent_oracle:  # over the speakers that have accent mates
            wer = sum(r.word_errors for r in accent_oracle) / max(sum(r.words for r in accent_oracle), 1)
            pl_module.log("test/accent_oracle_wer", wer, rank_zero_only=True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = self.report
        if report is None:
            return
        directory = self.results_dir(trainer, pl_module)  # on every rank: Trainer.log_dir is a broadcast
        if not trainer.is_global_zero:
            return
        name = type(pl_module.algorithm).__name__
        pl_module.print(report.render(title=f"{name}: adaptation on held-out speakers"))
        paths = report.write(directory, name=f"adaptation_{name.lower()}")
        pl_module.print(f"results written to {paths['json']} and {paths['csv']}")
        sample_rate = pl_module.feature_config.sample_rate
        log_adaptation_report(trainer.loggers, report, audio=lambda u: self.example_audio(trainer, u, sample_rate),
                              sample_rate=sample_rate)

    @staticmethod
    def results_dir(trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        """``model.results_dir``, else the logger's folder, else ``results/``. Call it on every rank (see ``log_dir``)."""
        if pl_module.results_dir:
            return Path(pl_module.results_dir)
        return Path(trainer.log_dir) if trainer.log_dir else Path("results")

    @staticmethod
    def example_audio(trainer: L.Trainer, utterance: str, sample_rate: int) -> np.ndarray | None:
        """The waveform of a test utterance, when the data module knows its file."""
        data = trainer.datamodule
        path = data.audio_path(utterance) if isinstance(data, HeldOutSpeakers) else None
        if path is None:
            return None
        try:
            return load_audio(path, sample_rate).numpy()
        except AudioError as err:
            rank_zero_warn(f"no audio example for {utterance}: {err}")
            return None
