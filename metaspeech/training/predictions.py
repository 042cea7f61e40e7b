"""``metaspeech predict``: each held-out speaker's transcripts after adaptation, written as JSONL.

Why a Lightning prediction writer: ``predict_step`` adapts to one speaker and transcribes its
evaluation utterances (:meth:`~metaspeech.training.module.MetaSpeechModule.predict_step`); writing the rows
is Lightning's ``BasePredictionWriter`` job, batch by batch, so nothing is held until the end.
The file is ``hypotheses.jsonl`` (``hypotheses_rank<r>.jsonl`` per DDP rank) in the folder the test
report uses: ``model.results_dir``, else the logger's folder, else ``results/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from metaspeech.training.reporting import AdaptationReportWriter


class HypothesisWriter(BasePredictionWriter):
    """Append every ``predict_step`` row (speaker, id, reference, hypothesis, shots, steps) to one JSONL file."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = AdaptationReportWriter.results_dir(trainer, pl_module)  # on every rank: log_dir is a broadcast
        name = "hypotheses.jsonl" if trainer.world_size == 1 else f"hypotheses_rank{trainer.global_rank}.jsonl"
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self.path.write_text("")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: list[dict[str, Any]],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        with self.path.open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in prediction)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.print(f"hypotheses written to {self.path}")
