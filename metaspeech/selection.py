"""Choose the test-time inner learning rate on meta-val speakers, never on test speakers.

Why a Callback: the selection must happen after training and before the test protocol,
with the trained weights, on the validation split only. :class:`InnerLearningRateSelection`
runs at ``on_test_start``: for every candidate learning rate it adapts to each meta-val
speaker (``val_shots`` utterances, ``val_steps`` steps), scores WER on that speaker's
evaluation utterances, keeps the best candidate as the algorithm's ``eval_inner_lr`` and
records the whole search in the test report.

    trainer:
      callbacks:
        - class_path: metaspeech.selection.InnerLearningRateSelection
          init_args: {learning_rates: [0.05, 0.1, 0.2, 0.5]}
"""

from __future__ import annotations

from typing import Any, Iterable

import lightning as L
from lightning.pytorch.callbacks import Callback

from metaspeech.algorithms.base import MetaAlgorithm
from metaspeech.batch import EvaluationBatch
from metaspeech.errors import ConfigError
from metaspeech.evaluation import word_errors


class InnerLearningRateSelection(Callback):
    """Pick ``eval_inner_lr`` from ``learning_rates`` by meta-val WER at (val_shots, val_steps).

    Algorithms that learn their own inner learning rates (a ``step_size`` override, e.g.
    Meta-SGD) are left as they are; the report says so.
    """

    def __init__(self, learning_rates: list[float]) -> None:
        if not learning_rates or any(lr <= 0 for lr in learning_rates):
            raise ConfigError(f"InnerLearningRateSelection.learning_rates must be positive numbers, got {learning_rates}")
        self.learning_rates = [float(lr) for lr in learning_rates]
        self.result: dict[str, Any] | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        algorithm = pl_module.algorithm
        if type(algorithm).step_size is not MetaAlgorithm.step_size:
            self.result = {"eval_inner_lr": "learned by the algorithm", "meta_val_wer": {}}
        else:
            loader = trainer.datamodule.val_dataloader()
            shots, steps = pl_module.hparams.val_shots, pl_module.hparams.val_steps
            searched = {lr: meta_val_wer(pl_module, loader, shots, steps, inner_lr=lr) for lr in self.learning_rates}
            best = min(searched, key=lambda lr: (searched[lr], lr))
            algorithm.eval_inner_lr = best
            self.result = {"eval_inner_lr": best, "shots": shots, "steps": steps,
                           "meta_val_wer": {str(lr): wer for lr, wer in searched.items()}}
            pl_module.print(f"inner learning rate {best} chosen on meta-val speakers (WER by candidate: {searched})")
        pl_module.protocol_settings["inner_lr_selection"] = self.result


def meta_val_wer(module: L.LightningModule, loader: Iterable[EvaluationBatch], shots: int, steps: int,
                 inner_lr: float | None = None) -> float:
    """Corpus WER over the tasks of ``loader`` after ``module.adapt`` on ``shots`` utterances for ``steps`` steps,
    with ``inner_lr`` as the test-time inner learning rate (default: the algorithm's own).

    ``module`` is a :class:`~metaspeech.module.MetaSpeechModule`; its algorithm's learning rate and its
    train/eval mode are restored afterwards.
    """
    algorithm = module.algorithm
    saved, was_training = algorithm.eval_inner_lr, module.training
    if inner_lr is not None:
        algorithm.eval_inner_lr = inner_lr
    module.eval()
    errors = words = 0
    try:
        for item in loader:
            item = module.transfer_batch_to_device(item, module.device, 0)
            support = item.pool.take(min(shots, item.pool.examples_per_task))
            hypotheses = module.transcribe(item.evaluation, module.adapt(support, steps))[0]
            task_errors, task_words = word_errors(item.evaluation.texts[0], hypotheses)
            errors, words = errors + task_errors, words + task_words
    finally:
        algorithm.eval_inner_lr = saved
        module.train(was_training)
    return errors / max(words, 1)
