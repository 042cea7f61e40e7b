"""Logging that works with no account and no network.

:class:`WandbLogger` runs offline unless credentials exist. :func:`log_adaptation_report`
sends the evaluation protocol's results to whatever loggers a Trainer has: W&B gets
tables, a WER-vs-steps chart and audio examples; CSV / TensorBoard loggers get the
tables as CSV files next to their metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from metaspeech.evaluation.scoring import AdaptationReport, write_csv


def wandb_has_credentials() -> bool:
    """True when an API key is configured (environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.isfile(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8").read()


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs offline unless W&B credentials exist.

    ``offline=None`` (default) picks offline mode when no API key is configured or
    ``WANDB_MODE=offline``; offline runs are uploaded later with ``wandb sync <run dir>``.
    """

    def __init__(self, project: str = "metaspeech", save_dir: str = "runs", offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_has_credentials()
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
        # Lightning always passes ``anonymous`` (None when unset); wandb 0.31 deprecates the setting and
        # warns on every run whenever it is passed at all.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def log_run_config(loggers: Iterable[Logger], module: Any) -> None:
    """Log what ``save_hyperparameters`` leaves out of a :class:`~metaspeech.training.module.MetaSpeechModule`'s
    configuration: the recognizer, the algorithm, the scope, the test protocol and the augmentation."""
    augmentation = module.augmentation.describe() if module.augmentation is not None else None
    config = {"recognizer": module.model.init_config, "algorithm": module.algorithm.init_config, "scope": module.scope,
              "test_shots": module.test_shots, "test_steps": module.test_steps,
              "adaptation_guard": module.adapter.guard, "augmentation": augmentation}
    for logger in loggers:
        logger.log_hyperparams(config)


class RunConfigLogger(Callback):
    """At fit and at test start, log what ``save_hyperparameters`` leaves out (:func:`log_run_config`)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_run_config(pl_module.loggers, pl_module)

    on_test_start = on_fit_start


def wandb_run_id(loggers: Iterable[Logger]) -> str | None:
    """The id of the W&B run among ``loggers``: a checkpoint records it, so ``test --ckpt_path`` logs into the fit's run."""
    return next((str(logger.version) for logger in loggers if isinstance(logger, _LightningWandbLogger)), None)


def log_version(loggers: Iterable[Logger]) -> int | str | None:
    """The version (log folder) of the first of ``loggers``: a checkpoint records it, so a resumed fit logs there too."""
    first = next(iter(loggers), None)
    version = first.version if first is not None else None
    return version if isinstance(version, (int, str)) else None


# ---------------------------------------------------------------- test report
AudioSource = Callable[[str], "np.ndarray | None"]


def report_tables(report: AdaptationReport) -> dict[str, list[dict[str, Any]]]:
    """The tables of a test report: conditions (the headline table), the error decomposition by speaker
    group with the oracle, per speaker, and the curves."""
    curve = [{"k": k, "s": s, "wer": wer} for k, points in report.curves().items() for s, wer in points]
    return {"adaptation_table": report.to_rows(), "decomposition_table": report.decomposition_rows(),
            "speaker_table": report.speaker_rows(), "adaptation_curve": curve}


def example_clips(report: AdaptationReport, audio: AudioSource | None, count: int) -> list[tuple[np.ndarray, str]]:
    """Up to ``count`` (waveform, caption) pairs of the most adapted condition; unreadable audio is left out."""
    clips = []
    for record, before in report.examples(count) if audio is not None else []:
        waveform = audio(record.utterance)
        if waveform is None:
            continue
        caption = f"{record.task} k={record.shots} s={record.steps} | ref: {record.reference} / hyp: {record.hypothesis}"
        if before is not None and record.steps:
            caption += f" / hyp without adaptation: {before.hypothesis}"
        clips.append((waveform, caption))
    return clips


@rank_zero_only
def log_adaptation_report(
    loggers: Iterable[Logger], report: AdaptationReport, audio: AudioSource | None = None,
    sample_rate: int = 16000, examples: int = 4,
) -> None:
    """Send a test report to every logger: W&B gets tables, a WER-vs-steps chart and audio examples;
    loggers with a ``log_dir`` (CSV, TensorBoard) get the tables as CSV files in ``<log_dir>/tables``.
    Runs on global rank 0 only (the report there already holds every rank's records)."""
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger):
            log_report_to_wandb(logger, report, example_clips(report, audio, examples), sample_rate)
        elif isinstance(getattr(logger, "log_dir", None), str):
            write_report_tables(Path(logger.log_dir) / "tables", report)


def log_report_to_wandb(
    logger: _LightningWandbLogger, report: AdaptationReport, clips: list[tuple[np.ndarray, str]], sample_rate: int
) -> None:
    """``test/<table>`` tables, the ``test/wer_vs_steps`` line chart (one line per k), ``test/audio_examples``."""
    import wandb

    for name, rows in report_tables(report).items():
        if rows:
            logger.log_table(key=f"test/{name}", columns=list(rows[0]), data=[list(r.values()) for r in rows])
    curves = report.curves()
    if curves:
        chart = wandb.plot.line_series(
            xs=[[s for s, _ in points] for points in curves.values()], ys=[[w for _, w in points] for points in curves.values()],
            keys=[f"k={k}" for k in curves], title="WER vs inner adaptation steps", xname="inner steps",
        )
        logger.experiment.log({"test/wer_vs_steps": chart})
    if clips:
        logger.log_audio(
            "test/audio_examples", [c for c, _ in clips], caption=[t for _, t in clips], sample_rate=[sample_rate] * len(clips)
        )


def write_report_tables(directory: Path, report: AdaptationReport) -> dict[str, Path]:
    """Each table of :func:`report_tables` as ``<directory>/test_<table>.csv``."""
    directory.mkdir(parents=True, exist_ok=True)
    return {name: write_csv(directory / f"test_{name}.csv", rows, empty_header=["k"]) for name, rows in report_tables(report).items()}
