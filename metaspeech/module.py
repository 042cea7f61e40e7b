"""``MetaSpeechModule``: the outer loop of meta-learning as a LightningModule, and test-time adaptation.

One training step is one meta-batch of T speaker-tasks: the plugin adapts on every support set and returns one
outer loss; the module backpropagates it once (per task chunk, :mod:`~metaspeech.meta_gradient`), skips non-finite
steps, passes the fp16 loss scale in (:mod:`~metaspeech.loss_scaling`), steps and logs. Dropout draws from a generator
seeded by ``(run seed, global step, skipped steps, rank)``, so a resumed run repeats the uninterrupted one. ``adapt``
and ``transcribe`` are the test-time API (:mod:`~metaspeech.adapter`); the test protocol is :mod:`~metaspeech.protocol`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ContextManager

import lightning as L
import torch
from torch import Tensor

from metaspeech.adapter import FewShotAdapter
from metaspeech.algorithms.base import MetaAlgorithm, OuterResult
from metaspeech.augmentation import EpisodeAugmentation
from metaspeech.batch import EvaluationBatch, MetaBatch, TaskBatch
from metaspeech.checkpoint_io import initialize_from, restore_module_section, save_module_section
from metaspeech.collapse_guard import CollapseGuard
from metaspeech.data_contract import SpeechFrontEnd
from metaspeech.evaluation import AdaptationReport
from metaspeech.features import FeatureConfig
from metaspeech.learner import FastWeights, Learner
from metaspeech.loggers import RunConfigLogger
from metaspeech.loss_scaling import back_off, grad_scaler, loss_scale
from metaspeech.meta_gradient import SkipStep, backward_in_chunks, check_chunk_size, check_finite_gradients, gradient_norm
from metaspeech.models.recognizer import Recognizer
from metaspeech.objectives import check_objective
from metaspeech.oracle import SpeakerOracle
from metaspeech.protocol import AdaptationEvaluator, evaluate_oracle, validation_scores
from metaspeech.randomness import seeded_rng
from metaspeech.reporting import AdaptationReportWriter, TaskScores
from metaspeech.schedule import check_decay, lr_factor
from metaspeech.tokenizer import Tokenizer


class MetaSpeechModule(L.LightningModule):
    """Meta-train a speech recognizer to adapt to new speakers.

    Args:
        recognizer: a :class:`~metaspeech.models.Recognizer` (e.g. ``BiLSTMCTC``); it brings its own
            training loss and decoder.
        algorithm: the meta-learning plugin (``MAML``, ``FOMAML``, ``Reptile``, ``HyperInit``, ...).
        scope: adaptation scope (presets ``all, lhuc, lin, adapters, norm, head`` or name globs).
        lr, weight_decay: the outer (meta) optimizer's, AdamW; ``warmup_steps`` of linear warmup first.
        lr_decay: after the warmup, ``constant``, ``cosine`` or ``wsd`` (constant, then linear over the last
            20 % of the steps), both of the latter to ``min_lr_ratio * lr`` at ``trainer.max_steps``.
        max_grad_norm: clip the meta-gradient to this global norm (None: no clipping).
        val_shots, val_steps: adaptation utterances and inner steps per meta-val speaker.
        test_shots, test_steps: the k and s of the test protocol (s = 0, no adaptation, always runs).
        results_dir: where ``test`` writes the table (JSON/CSV); default: the logger's folder.
        init_from: a metaspeech checkpoint whose recognizer weights (not its optimizer) start this fit.
        augmentation: training-time augmentation of each meta-batch (task frequency warping, SpecAugment).
        adaptation_guard: ``none``, or ``cross_validation``: keep a task's adaptation only where it
            generalizes within its support set (:mod:`metaspeech.adaptation_guard`).
        tasks_per_chunk: backpropagate each meta-batch this many tasks at a time (less memory, same
            meta-gradient, one optimizer step). None: all at once.
        oracle: the test report's speaker oracle (:class:`~metaspeech.oracle.SpeakerOracle`), run on every
            test speaker with an oracle pool (``data.init_args.oracle_pool_size``); None: default settings.
        test_objective: what test-time adaptation (``adapt``, the k x s protocol, ``metaspeech adapt``) minimizes:
            ``supervised`` (CTC on transcripts), or label-free ``entropy``, ``entropy_mcc`` or ``pseudo_label``
            (:mod:`metaspeech.objectives`; docs/label_free.md).
        label_free_guard: keep a label-free adaptation only where the collapse guard passes it
            (:mod:`metaspeech.collapse_guard`).
    """

    def __init__(
        self, recognizer: Recognizer, algorithm: MetaAlgorithm, scope: list[str] | None = None, lr: float = 1e-3,
        weight_decay: float = 1e-4, warmup_steps: int = 100, lr_decay: str = "constant", min_lr_ratio: float = 0.05,
        max_grad_norm: float | None = 5.0, val_shots: int = 5, val_steps: int = 5, test_shots: list[int] | None = None,
        test_steps: list[int] | None = None, results_dir: str | None = None, init_from: str | None = None,
        augmentation: EpisodeAugmentation | None = None, adaptation_guard: str = "none", tasks_per_chunk: int | None = None,
        oracle: SpeakerOracle | None = None, test_objective: str = "supervised", label_free_guard: bool = True,
    ) -> None:
        super().__init__()
        check_decay(lr_decay)
        check_chunk_size(tasks_per_chunk)
        # Evaluation and output settings are not model hyperparameters: a checkpoint must not
        # override them when a user tests it with other shots, steps or an output folder.
        self.save_hyperparameters(ignore=["recognizer", "algorithm", "test_shots", "test_steps", "results_dir",
                                          "init_from", "augmentation", "adaptation_guard", "oracle",
                                          "test_objective", "label_free_guard"])
        self.automatic_optimization = False
        self.model, self.algorithm, self.augmentation = recognizer, algorithm, augmentation
        self.tasks_per_chunk, self.results_dir, self.init_from = tasks_per_chunk, results_dir, init_from
        self.oracle = oracle if oracle is not None else SpeakerOracle()
        self.scope = list(scope) if scope is not None else ["lin", "lhuc", "head"]
        check_objective(algorithm.inner_objective, "model.algorithm.init_args.inner_objective")
        self.learner = Learner(recognizer, recognizer.loss, self.scope, objectives=recognizer.objective)
        self.algorithm.setup(self.learner)
        self.adapter = FewShotAdapter(recognizer, self.learner, algorithm, adaptation_guard,
                                      check_objective(test_objective, "model.test_objective"),
                                      CollapseGuard() if label_free_guard else None)
        self.test_shots = list(test_shots) if test_shots is not None else [1, 5, 10]
        self.test_steps = sorted(set(test_steps if test_steps is not None else [0, 1, 5, 10]) | {0})
        self.tokenizer: Tokenizer | None = None
        self.feature_config = FeatureConfig()
        self.skipped_steps = 0
        self.rng_seed: int | None = None  # base seed of training-step randomness; set at fit start or from a checkpoint
        self._initialized_from: str | None = None
        self.last_report: AdaptationReport | None = None  # set by the report callback when a test ends
        self.protocol_settings: dict[str, Any] = {}  # choices made for the test protocol (e.g. on meta-val), reported

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.rng_seed is None:
            self.rng_seed = torch.initial_seed()  # the seed of seed_everything; a checkpoint's overrides it on resume
        if self.init_from:
            self._initialized_from = initialize_from(self.init_from, self.model, stage, self._initialized_from)
        data = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(data, SpeechFrontEnd):
            self.use_front_end(data.tokenizer, data.feature_config)

    def use_front_end(self, tokenizer: Tokenizer | None, features: FeatureConfig) -> None:
        """The tokenizer and features this recognizer reads speech and writes text with (data module or checkpoint)."""
        self.tokenizer, self.feature_config = tokenizer, features

    def configure_callbacks(self) -> list[L.Callback]:
        """The test report (:mod:`metaspeech.reporting`) and the run configuration log, unless a fit installed them."""
        installed = {type(c) for c in self.trainer.callbacks}
        return [kind() for kind in (AdaptationReportWriter, RunConfigLogger) if kind not in installed]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        total = self.trainer.max_steps if self._trainer is not None else None
        return lr_factor(step, self.hparams.warmup_steps, self.hparams.lr_decay, total, self.hparams.min_lr_ratio)

    # -------------------------------------------------------------- training
    def training_step(self, batch: MetaBatch, batch_idx: int) -> None:
        with self._step_rng():
            optimizer, scaler = self.optimizers(), grad_scaler(self._trainer)
            # Clear gradients before the plugin runs: a plugin may write ``.grad`` by hand in
            # ``outer_loss`` (then calling ``MetaAlgorithm.all_reduce_gradients``); those must survive.
            optimizer.zero_grad(set_to_none=True)
            if self.augmentation is not None:
                batch = self.augmentation(batch)  # inside the step's seeded RNG: reproducible, resumes exactly
            outer_loss = partial(self.algorithm.outer_loss, self.learner, loss_scale=loss_scale(scaler))
            try:
                result = backward_in_chunks(batch, self.tasks_per_chunk, outer_loss, self.manual_backward, self.trainer.strategy)
                if scaler is None:  # under fp16 the GradScaler skips a non-finite step itself
                    check_finite_gradients(self.parameters())
            except SkipStep as skip:
                self._skip_step(scaler, str(skip))
                return
            optimizer.step()  # gradient norm and clipping: on_before_optimizer_step, after fp16 unscaling
            self.lr_schedulers().step()
            self._log_training(batch, result, batch_idx)

    def _step_rng(self) -> ContextManager[None]:
        return seeded_rng(f"train-step:{self.rng_seed}:{self.global_step}:{self.skipped_steps}:{self.global_rank}", self.device)

    def _skip_step(self, scaler: torch.amp.GradScaler | None, why: str) -> None:
        """Skip this outer step (every rank decides alike); under fp16 also back off the loss scale, as GradScaler does."""
        if why:
            self.print(f"skipping outer step {self.global_step}: {why}")
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        if scaler is not None:
            back_off(scaler)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the gradient norm and clip: Lightning calls this after unscaling fp16 gradients."""
        self.log("train/grad_norm", gradient_norm(self.parameters()))
        if self.hparams.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    def _log_training(self, batch: MetaBatch, result: OuterResult, batch_idx: int) -> None:
        logs = {**result.metrics(), "train/lr": torch.tensor(self.lr_schedulers().get_last_lr()[0])}
        post = logs["train/query_loss_post"]
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            pre = self.evaluation_loss(batch.query, self.adapter.unadapted(batch.query.num_tasks)).mean()
            logs.update({"train/query_loss_pre": pre, "train/adaptation_gain": pre - post})
        self.log_dict(logs, prog_bar=False, batch_size=batch.num_tasks)
        self.log("loss", post, prog_bar=True, logger=False, batch_size=batch.num_tasks)

    # ------------------------------------------- test-time adaptation (metaspeech.adapter)
    def adapt(self, support: TaskBatch, steps: int, objective: str | None = None) -> FastWeights:
        """Adapt to the tasks in ``support`` for ``steps`` inner steps minimizing ``objective`` (default:
        ``test_objective``); detached fast weights ``[T, ...]``."""
        return self.adapter.adapt(support, steps, loss_scale(grad_scaler(self._trainer)), objective)

    def adapt_along(self, support: TaskBatch, steps: list[int]) -> dict[int, FastWeights]:
        """:meth:`adapt` for every step count in ``steps`` at once (one inner loop, read along the way)."""
        return self.adapter.adapt_along(support, steps, loss_scale(grad_scaler(self._trainer)))

    def transcribe(self, batch: TaskBatch, fast: FastWeights | None = None, learner: Learner | None = None) -> list[list[str]]:
        """Transcripts ``[T][B]`` of ``batch`` with ``fast`` weights (default: unadapted) of ``learner``'s scope."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: attach a datamodule or load the module from a metaspeech checkpoint")
        return self.adapter.transcribe(batch, self.tokenizer, fast, learner)

    def evaluation_loss(self, batch: TaskBatch, fast: FastWeights) -> Tensor:
        """The recognizer's mean loss ``[T]`` of ``batch`` under ``fast`` weights."""
        return self.adapter.loss(batch, fast)

    # ------------------------------------------------------- validation, test
    def validation_step(self, item: EvaluationBatch, batch_idx: int) -> None:
        transcribe = self.transcribe if self.tokenizer is not None else None
        scores = validation_scores(item, self.hparams.val_shots, self.hparams.val_steps, self.adapt, self.evaluation_loss, transcribe)
        for name, (value, weight) in scores.items():
            self.log(name, value, batch_size=weight, sync_dist=True)

    def test_step(self, item: EvaluationBatch, batch_idx: int) -> TaskScores:
        """The k x s protocol on one held-out task; the report callback collects, gathers and reports the scores."""
        evaluator = AdaptationEvaluator(self.test_shots, self.test_steps, self.feature_config.frame_shift_seconds)
        records = evaluator.evaluate(item, self.adapt_along, self.transcribe)
        oracle, scopes = evaluate_oracle(item, partial(self.adapter.speaker_oracle, self.oracle, tokenizer=self.tokenizer))
        return TaskScores(records, evaluator.seconds, oracle, scopes)

    # ------------------------------------------------------------ checkpoints: the metaspeech section
    on_save_checkpoint = save_module_section
    on_load_checkpoint = restore_module_section
