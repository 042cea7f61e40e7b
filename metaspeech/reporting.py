"""The test report's outputs: the console table, the JSON/CSV files, the logger tables and audio examples.

Why a Callback: producing outputs is not the model's job. The module computes the
report of the test protocol (``module.last_report``); :class:`AdaptationReportWriter`
shows and stores it on rank 0 when testing ends. The module installs it by default
(``configure_callbacks``), so every Trainer writes the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from metaspeech.audio import AudioError, load_audio
from metaspeech.evaluation import AdaptationReport
from metaspeech.loggers import log_adaptation_report


class AdaptationReportWriter(Callback):
    """Print the adaptation table, write ``adaptation_<algorithm>.{json,csv}`` and log tables and audio (rank 0).

    Files go to ``model.results_dir``, else to the logger's folder, else to ``results/``.
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report: AdaptationReport | None = getattr(pl_module, "last_report", None)
        if report is None or not trainer.is_global_zero:
            return
        name = type(pl_module.algorithm).__name__
        pl_module.print(report.render(title=f"{name}: adaptation on held-out speakers"))
        paths = report.write(self.results_dir(trainer, pl_module), name=f"adaptation_{name.lower()}")
        pl_module.print(f"results written to {paths['json']} and {paths['csv']}")
        sample_rate = pl_module.feature_config.sample_rate
        log_adaptation_report(trainer.loggers, report, audio=lambda u: self.example_audio(trainer, u, sample_rate),
                              sample_rate=sample_rate)

    @staticmethod
    def results_dir(trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        if getattr(pl_module, "results_dir", None):
            return Path(pl_module.results_dir)
        return Path(trainer.log_dir) if trainer.log_dir else Path("results")

    @staticmethod
    def example_audio(trainer: L.Trainer, utterance: str, sample_rate: int) -> np.ndarray | None:
        """The waveform of a test utterance, when the data module knows its file."""
        find = getattr(getattr(trainer, "datamodule", None), "audio_path", None)
        path = find(utterance) if find is not None else None
        if path is None:
            return None
        try:
            return load_audio(path, sample_rate).numpy()
        except AudioError as err:
            rank_zero_warn(f"no audio example for {utterance}: {err}")
            return None
