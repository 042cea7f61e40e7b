"""Progress display: done, total and time left for every long phase.

Why a custom Lightning progress bar: meta-training is bounded by outer steps
(``trainer.max_steps``), and an "epoch" is only ``batches_per_epoch`` meta-batches
of an endless episode sampler. Lightning's bar counts batches per epoch and reads
``Epoch 0/-2`` when ``max_epochs`` is unset; :class:`MetaTrainingProgressBar` shows one
bar over the whole run instead: ``Meta-training step 120/500``, with the time left.
Validation and the test protocol keep Lightning's bars (held-out speakers done / total).

:func:`progress` is the same display for work outside a Trainer (corpus synthesis).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetaTrainingProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting outer steps over the whole run when ``max_steps`` bounds it."""

    def _step_bounded(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_bounded() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._step_bounded():
            return "Meta-training (outer steps)"
        epochs = self.trainer.max_epochs
        return f"Epoch {current_epoch + 1}/{epochs}" if epochs is not None and epochs > 0 else f"Epoch {current_epoch + 1}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._step_bounded() and self.train_progress_bar_id is not None:
            return  # one bar for the whole run: do not reset it at every sampler epoch
        super().on_train_epoch_start(trainer, pl_module)
        if self._step_bounded():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._step_bounded():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-run
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


def bar_columns() -> tuple[ProgressColumn, ...]:
    """The columns of every progress display outside a Trainer: what, bar, done/total, elapsed, time left."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn())


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar for ``total`` units of work; yields ``advance(n)``."""
    with Progress(*bar_columns()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
