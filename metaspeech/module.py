"""``MetaSpeechModule``: the outer loop of meta-learning as a LightningModule, and test-time adaptation.

One training step is one meta-batch of T speaker-tasks: the plugin adapts on every support set and
returns one outer loss; the module backpropagates it once (per task chunk, :mod:`~metaspeech.meta_gradient`),
skips non-finite steps, passes the fp16 loss scale in (:mod:`~metaspeech.loss_scaling`), steps and logs.
Dropout draws from a generator seeded by ``(run seed, global step, skipped steps, rank)``, with the
global RNG forked around it, so a resumed run repeats the uninterrupted one. ``adapt`` / ``transcribe``
are the test-time API; the test protocol is :mod:`~metaspeech.protocol`, its report :mod:`~metaspeech.reporting`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ContextManager

import lightning as L
import torch
from torch import Tensor

from metaspeech.adaptation_guard import check_guard, guarded_adapt
from metaspeech.algorithms.base import MetaAlgorithm, OuterResult
from metaspeech.algorithms.inner_loop import InnerLoop
from metaspeech.augmentation import EpisodeAugmentation
from metaspeech.batch import EvaluationBatch, MetaBatch, TaskBatch
from metaspeech.checkpoint_io import load_recognizer_weights, restore_module_section, save_module_section
from metaspeech.data_contract import SpeechFrontEnd
from metaspeech.errors import ConfigError
from metaspeech.evaluation import AdaptationReport, word_errors
from metaspeech.features import FeatureConfig
from metaspeech.learner import FastWeights, Learner
from metaspeech.loggers import log_run_config
from metaspeech.loss_scaling import back_off, grad_scaler, loss_scale, retry_at_smaller_scales
from metaspeech.meta_gradient import SkipStep, backward_in_chunks, check_chunk_size, check_finite_gradients, gradient_norm
from metaspeech.models.recognizer import Recognizer
from metaspeech.oracle import SpeakerOracle
from metaspeech.protocol import AdaptationEvaluator, evaluate_oracle
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
        lr: outer (meta) learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup in outer steps.
        lr_decay: after the warmup, ``constant``, ``cosine`` or ``wsd`` (constant, then linear over the last
            20 % of the steps), both of the latter to ``min_lr_ratio * lr`` at ``trainer.max_steps``.
        min_lr_ratio: the final learning rate of the decay, as a fraction of ``lr``.
        max_grad_norm: clip the meta-gradient to this global norm (None: no clipping).
        val_shots: adaptation utterances per meta-val speaker.
        val_steps: inner steps for validation.
        test_shots: shot counts k of the evaluation protocol.
        test_steps: inner step counts s of the evaluation protocol (0 = no adaptation; always run).
        results_dir: where ``test`` writes the table (JSON/CSV); default: the logger's folder.
        init_from: a metaspeech checkpoint whose recognizer weights (not its optimizer) start this fit.
        augmentation: training-time augmentation of each meta-batch (task frequency warping, SpecAugment).
        adaptation_guard: ``none``, or ``cross_validation``: keep a task's adaptation only where it
            generalizes within its support set (:mod:`metaspeech.adaptation_guard`).
        tasks_per_chunk: backpropagate each meta-batch this many tasks at a time (less memory, same
            meta-gradient, one optimizer step). None: all at once.
        oracle: the test report's speaker oracle (:class:`~metaspeech.oracle.SpeakerOracle`), run on every
            test speaker with an oracle pool (``data.init_args.oracle_pool_size``); None: default settings.
    """

    def __init__(
        self, recognizer: Recognizer, algorithm: MetaAlgorithm, scope: list[str] | None = None, lr: float = 1e-3,
        weight_decay: float = 1e-4, warmup_steps: int = 100, lr_decay: str = "constant", min_lr_ratio: float = 0.05,
        max_grad_norm: float | None = 5.0, val_shots: int = 5, val_steps: int = 5, test_shots: list[int] | None = None,
        test_steps: list[int] | None = None, results_dir: str | None = None, init_from: str | None = None,
        augmentation: EpisodeAugmentation | None = None, adaptation_guard: str = "none", tasks_per_chunk: int | None = None,
        oracle: SpeakerOracle | None = None,
    ) -> None:
        super().__init__()
        self.adaptation_guard = check_guard(adaptation_guard)
        check_decay(lr_decay)
        check_chunk_size(tasks_per_chunk)
        # Evaluation and output settings are not model hyperparameters: a checkpoint must not
        # override them when a user tests it with other shots, steps or an output folder.
        self.save_hyperparameters(ignore=["recognizer", "algorithm", "test_shots", "test_steps", "results_dir",
                                          "init_from", "augmentation", "adaptation_guard", "oracle"])
        self.automatic_optimization = False
        self.model, self.algorithm, self.augmentation = recognizer, algorithm, augmentation
        self.tasks_per_chunk, self.results_dir, self.init_from = tasks_per_chunk, results_dir, init_from
        self.oracle = oracle if oracle is not None else SpeakerOracle()
        self.scope = list(scope) if scope is not None else ["lin", "lhuc", "head"]
        self.learner = Learner(recognizer, recognizer.loss, self.scope)
        self.algorithm.setup(self.learner)
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
        if stage == "fit" and self.init_from:
            load_recognizer_weights(self.init_from, self.model)
            self._initialized_from = self.init_from
        elif self.init_from and self._initialized_from != self.init_from:  # a test right after this fit is fine
            raise ConfigError(
                f"model.init_from={self.init_from} initializes meta-training (fit) only and would be ignored by "
                f"{getattr(stage, 'value', stage)}: to evaluate that checkpoint pass --ckpt_path={self.init_from} instead"
            )
        data = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(data, SpeechFrontEnd):
            self.use_front_end(data.tokenizer, data.feature_config)

    def use_front_end(self, tokenizer: Tokenizer | None, features: FeatureConfig) -> None:
        """The tokenizer and features this recognizer reads speech and writes text with (data module or checkpoint)."""
        self.tokenizer, self.feature_config = tokenizer, features

    def configure_callbacks(self) -> list[L.Callback]:
        """The test report (:mod:`metaspeech.reporting`), unless a fit on this Trainer installed it already."""
        return [] if any(isinstance(c, AdaptationReportWriter) for c in self.trainer.callbacks) else [AdaptationReportWriter()]

    def on_fit_start(self) -> None:
        """Log the configuration ``save_hyperparameters`` leaves out (at fit and at test start)."""
        log_run_config(self.loggers, self)

    on_test_start = on_fit_start

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
        if self.rng_seed is None:
            self.rng_seed = torch.initial_seed()
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
        post = result.query_losses.mean()
        logs = {"train/outer_loss": result.loss.detach(), "train/query_loss_post": post,
                "train/lr": torch.tensor(self.lr_schedulers().get_last_lr()[0])}
        logs.update({f"train/inner_loss_step{step}": losses.mean() for step, losses in enumerate(result.inner_losses)})
        logs.update({f"train/inner_grad_norm_step{step}": n.mean() for step, n in enumerate(result.inner_grad_norms)})
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            with torch.no_grad():
                pre = self.evaluation_loss(batch.query, self._unadapted(batch.query.num_tasks)).mean()
            logs.update({"train/query_loss_pre": pre, "train/adaptation_gain": pre - post})
        self.log_dict(logs, prog_bar=False, batch_size=batch.num_tasks)
        self.log("loss", post, prog_bar=True, logger=False, batch_size=batch.num_tasks)

    # ----------------------------------------------------- test-time adaptation
    def adapt(self, support: TaskBatch, steps: int) -> FastWeights:
        """Adapt to the tasks in ``support`` for ``steps`` inner steps; detached fast weights ``[T, ...]``."""
        if self.adaptation_guard == "none":
            return self._adapt(support, steps)
        return guarded_adapt(support, steps, self._adapt, self.evaluation_loss)

    def _adapt(self, support: TaskBatch, steps: int) -> FastWeights:
        """The plugin's inner loop, first order; under ``16-mixed`` at the GradScaler's scale, halved until finite."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("test-time adaptation needs gradients, but the Trainer runs evaluation in inference mode: "
                               "set trainer.inference_mode=false (the metaspeech CLI does this by default)")
        with torch.enable_grad():
            with torch.no_grad():
                prepared = self.learner.prepare(support)
            loop = InnerLoop(steps, create_graph=False)
            adaptation = retry_at_smaller_scales(lambda scale: self.algorithm.adapt(self.learner, prepared, loop.at_scale(scale)),
                                                 loss_scale(grad_scaler(self._trainer)))
        return {name: w.detach() for name, w in adaptation.fast.items()}

    def _unadapted(self, num_tasks: int) -> FastWeights:
        return self.learner.expand(self.learner.init_weights(), num_tasks)

    @torch.no_grad()
    def transcribe(self, batch: TaskBatch, fast: FastWeights | None = None, learner: Learner | None = None) -> list[list[str]]:
        """Transcripts ``[T][B]`` of ``batch`` by the recognizer's decoder, with ``fast`` weights (default:
        unadapted) of ``learner``'s scope (default: the adaptation scope; the speaker oracle passes its own)."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: attach a datamodule or load the module from a metaspeech checkpoint")
        learner = learner or self.learner
        prepared = learner.prepare(batch)
        unadapted = learner.expand(learner.init_weights(), batch.num_tasks)
        output = learner.outputs(fast if fast is not None else unadapted, prepared)
        texts = [self.tokenizer.decode(ids) for ids in self.model.decode(output)]
        per_task = len(texts) // batch.num_tasks
        return [texts[t * per_task : (t + 1) * per_task] for t in range(batch.num_tasks)]

    @torch.no_grad()
    def evaluation_loss(self, batch: TaskBatch, fast: FastWeights) -> Tensor:
        """The recognizer's mean loss ``[T]`` of ``batch`` under ``fast`` weights."""
        return self.learner.losses(fast, self.learner.prepare(batch))

    # ------------------------------------------------------- validation, test
    def validation_step(self, item: EvaluationBatch, batch_idx: int) -> None:
        support = item.pool.take(min(self.hparams.val_shots, item.pool.examples_per_task))
        for steps, tag in ((0, "pre"), (self.hparams.val_steps, "post")):
            fast = self.adapt(support, steps)
            self.log(f"val/loss_{tag}", self.evaluation_loss(item.evaluation, fast).mean(), batch_size=1, sync_dist=True)
            if self.tokenizer is not None:
                errors, words = word_errors(item.evaluation.texts[0], self.transcribe(item.evaluation, fast)[0])
                self.log(f"val/wer_{tag}", errors / max(words, 1), batch_size=words, sync_dist=True)

    def test_step(self, item: EvaluationBatch, batch_idx: int) -> TaskScores:
        """The k x s protocol on one held-out task; the report callback collects, gathers and reports the scores."""
        evaluator = AdaptationEvaluator(self.test_shots, self.test_steps, self.feature_config.frame_shift_seconds)
        records = evaluator.evaluate(item, self.adapt, self.transcribe)
        scopes: list[str] = []
        oracle = evaluate_oracle(item, partial(self.speaker_oracle, chosen_scopes=scopes))
        return TaskScores(records, evaluator.seconds, oracle, scopes)

    def speaker_oracle(self, pool: TaskBatch, evaluation: TaskBatch, chosen_scopes: list[str] | None = None) -> tuple[list[str], int]:
        """Transcripts ``[B]`` of ``evaluation`` by the recognizer fine-tuned on one speaker's large ``pool``
        (:mod:`metaspeech.oracle`) and the step count its early stopping chose; the scope goes to ``chosen_scopes``."""
        fit = self.oracle.fit(self.model, self.model.loss, pool)
        if chosen_scopes is not None:
            chosen_scopes.append(fit.scope)
        return self.transcribe(evaluation, fit.fast, fit.learner)[0], fit.steps

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_module_section(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_module_section(self, checkpoint)
