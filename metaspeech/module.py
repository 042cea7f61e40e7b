"""``MetaSpeechModule``: the outer loop of meta-learning as a LightningModule.

One training step is one meta-batch of T speaker-tasks. The algorithm plugin
adapts on every support set and returns one outer loss; this module owns
everything around it: the single ``manual_backward`` (so DDP averages
meta-gradients exactly once), gradient clipping, optimizer and scheduler,
skipping steps with non-finite losses or meta-gradients, passing the fp16 loss
scale into the inner loop (an argument, :mod:`metaspeech.loss_scaling`), logging, the evaluation protocol and what goes into a checkpoint.

Randomness in a training step (dropout) comes from a generator seeded by
``(run seed, global step, skipped steps, rank)`` inside the step, with the global
RNG state forked around it. A step's random numbers therefore do not depend on
what else drew from the global RNG before it (data loaders, validation), and a
run resumed from a mid-epoch checkpoint repeats the uninterrupted run exactly:
the run seed is saved in the checkpoint next to the sampler position.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, ContextManager

import lightning as L
import torch
from torch import Tensor

from metaspeech.algorithms.base import MetaAlgorithm, NonFiniteLossError, OuterResult
from metaspeech.algorithms.inner_loop import InnerLoop
from metaspeech.augmentation import EpisodeAugmentation
from metaspeech.batch import EvaluationBatch, MetaBatch, TaskBatch
from metaspeech.ctc import greedy_decode
from metaspeech.errors import ConfigError
from metaspeech.evaluation import AdaptationReport, UtteranceRecord, score_utterance
from metaspeech.features import FeatureConfig
from metaspeech.learner import FastWeights, Learner
from metaspeech.loss_scaling import back_off, grad_scaler, loss_scale, retry_at_smaller_scales
from metaspeech.losses import CTCLoss
from metaspeech.models.staged import StagedModel
from metaspeech.protocol import AdaptationEvaluator
from metaspeech.randomness import seeded_rng
from metaspeech.tokenizer import Tokenizer, tokenizer_from_dict

ADAPTATION_GUARDS = ("none", "cross_validation")
LR_DECAYS = ("constant", "cosine")
GUARD_FOLDS = 5

INFERENCE_MODE_HELP = (
    "test-time adaptation needs gradients, but the Trainer runs evaluation in inference mode: "
    "set trainer.inference_mode=false (the metaspeech CLI does this by default)"
)


class MetaSpeechModule(L.LightningModule):
    """Meta-train a CTC recognizer to adapt to new speakers.

    Args:
        recognizer: a :class:`~metaspeech.models.StagedModel` CTC recognizer (e.g. ``BiLSTMCTC``).
        algorithm: the meta-learning plugin (``MAML``, ``FOMAML``, ``Reptile``, ``HyperInit``, ...).
        scope: adaptation scope (presets ``all, lhuc, lin, adapters, norm, head`` or name globs).
        lr: outer (meta) learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup in outer steps.
        lr_decay: after the warmup, ``constant`` or ``cosine`` (down to ``min_lr_ratio * lr`` at
            ``trainer.max_steps``). A short run that ends at a small learning rate converges
            much further than one that stops at its peak rate.
        min_lr_ratio: the final learning rate of the cosine decay, as a fraction of ``lr``.
        max_grad_norm: clip the meta-gradient to this global norm (None: no clipping).
        val_shots: adaptation utterances per meta-val speaker.
        val_steps: inner steps for validation.
        test_shots: shot counts k of the evaluation protocol.
        test_steps: inner step counts s of the evaluation protocol (0 = no adaptation).
        results_dir: where ``test`` writes the table (JSON/CSV); default: the logger's folder.
        tasks_per_chunk: process each meta-batch this many tasks at a time, accumulating the
            meta-gradient (one optimizer step; memory falls with the chunk size). None: all at once.
        init_from: a metaspeech checkpoint whose recognizer weights initialize this run (e.g. a
            joint-trained base model that meta-training starts from); optimizer state is not taken.
        augmentation: training-time augmentation of each meta-batch (task frequency warping,
            SpecAugment); None: none.
        adaptation_guard: ``none``, or ``cross_validation``: test-time adaptation keeps a task's
            adapted weights only if adapting on part of its support lowers the loss on the rest
            (up to 5 folds); otherwise the task keeps its unadapted start. A guard against
            harmful adaptation; it costs one extra adaptation per fold.
    """

    def __init__(
        self,
        recognizer: StagedModel,
        algorithm: MetaAlgorithm,
        scope: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay: str = "constant",
        min_lr_ratio: float = 0.05,
        max_grad_norm: float | None = 5.0,
        val_shots: int = 5,
        val_steps: int = 5,
        test_shots: list[int] | None = None,
        test_steps: list[int] | None = None,
        results_dir: str | None = None,
        init_from: str | None = None,
        augmentation: EpisodeAugmentation | None = None,
        adaptation_guard: str = "none",
        tasks_per_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if adaptation_guard not in ADAPTATION_GUARDS:
            raise ConfigError(f"model.adaptation_guard must be one of {ADAPTATION_GUARDS}, got {adaptation_guard!r}")
        self.adaptation_guard = adaptation_guard
        if lr_decay not in LR_DECAYS:
            raise ConfigError(f"model.lr_decay must be one of {LR_DECAYS}, got {lr_decay!r}")
        if tasks_per_chunk is not None and tasks_per_chunk < 1:
            raise ConfigError(f"model.tasks_per_chunk must be >= 1 (or null for the whole meta-batch), got {tasks_per_chunk}")
        self.tasks_per_chunk = tasks_per_chunk
        # Evaluation and output settings are not model hyperparameters: a checkpoint must not
        # override them when a user tests it with other shots, steps or an output folder.
        self.save_hyperparameters(
            ignore=["recognizer", "algorithm", "test_shots", "test_steps", "results_dir", "init_from", "augmentation",
                    "adaptation_guard"]
        )
        self.augmentation = augmentation
        self.results_dir = results_dir
        self.init_from = init_from
        self.automatic_optimization = False
        self.model = recognizer
        self.algorithm = algorithm
        self.scope = list(scope) if scope is not None else ["lin", "lhuc", "head"]
        self.learner = Learner(recognizer, CTCLoss(blank=0), self.scope)
        self.algorithm.setup(self.learner)
        self.test_shots = list(test_shots) if test_shots is not None else [1, 5, 10]
        self.test_steps = sorted(set(test_steps if test_steps is not None else [0, 1, 5, 10]) | {0})
        self.tokenizer: Tokenizer | None = None
        self.feature_config = FeatureConfig()
        self.skipped_steps = 0
        self.rng_seed: int | None = None  # base seed of training-step randomness; set at fit start or from a checkpoint
        self._records: list[UtteranceRecord] = []
        self._adaptation_seconds: dict[tuple[str, int], float] = {}
        self.last_report: AdaptationReport | None = None
        self._initialized_from: str | None = None
        self.protocol_settings: dict[str, Any] = {}  # choices made for the test protocol (e.g. on meta-val), reported

    @property
    def frame_shift_seconds(self) -> float:
        """Seconds per input feature frame (to report adaptation data in seconds of speech)."""
        return self.feature_config.hop_ms / 1000.0

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.rng_seed is None:
            self.rng_seed = torch.initial_seed()  # the seed of seed_everything; a checkpoint's overrides it on resume
        if stage == "fit" and self.init_from:
            self._load_recognizer_weights(self.init_from)
            self._initialized_from = self.init_from
        elif self.init_from and self._initialized_from != self.init_from:  # a test right after this fit is fine
            raise ConfigError(
                f"model.init_from={self.init_from} initializes meta-training (fit) only and would be ignored by "
                f"{getattr(stage, 'value', stage)}: "
                f"to evaluate that checkpoint pass --ckpt_path={self.init_from} instead"
            )
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "test" and datamodule is not None:
            self._check_protocol(getattr(datamodule, "eval_pool_size", None))
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            self.tokenizer = datamodule.tokenizer
            self.feature_config = datamodule.feature_config

    def _check_protocol(self, pool_size: int | None) -> None:
        """Refuse, before any speaker is adapted, shot counts the data's adaptation pools cannot supply."""
        if pool_size is not None and max(self.test_shots) > pool_size:
            raise ConfigError(
                f"model.test_shots={self.test_shots} asks for k={max(self.test_shots)} adaptation utterances, but "
                f"data.init_args.eval_pool_size={pool_size}: raise eval_pool_size or lower model.test_shots"
            )

    def _load_recognizer_weights(self, path: str) -> None:
        from metaspeech.checkpoint_io import load_checkpoint_file

        checkpoint = load_checkpoint_file(path)
        prefix = "model."
        weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as err:
            raise ConfigError(f"model.init_from={path}: its recognizer does not match this one: {err}") from err

    def on_fit_start(self) -> None:
        self._log_run_config()

    def on_test_start(self) -> None:
        self._log_run_config()

    def _log_run_config(self) -> None:
        """What ``save_hyperparameters`` leaves out: the recognizer, the algorithm, the scope, the protocol."""
        config = {"recognizer": self.model.init_config, "algorithm": self.algorithm.init_config, "scope": self.scope,
                  "test_shots": self.test_shots, "test_steps": self.test_steps, "adaptation_guard": self.adaptation_guard,
                  "augmentation": self.augmentation.describe() if self.augmentation is not None else None}
        for logger in self.loggers:
            logger.log_hyperparams(config)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """The learning rate at outer step ``step`` as a fraction of ``lr``: linear warmup, then the decay."""
        warmup = max(1, self.hparams.warmup_steps)
        if step < warmup:
            return (step + 1) / warmup
        total = self.trainer.max_steps if self._trainer is not None else -1
        if self.hparams.lr_decay == "constant" or total is None or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        floor = self.hparams.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    # -------------------------------------------------------------- training
    def training_step(self, batch: MetaBatch, batch_idx: int) -> None:
        with self._step_rng():
            self._training_step(batch, batch_idx)

    def _step_rng(self) -> ContextManager[None]:
        if self.rng_seed is None:
            self.rng_seed = torch.initial_seed()
        return seeded_rng(f"train-step:{self.rng_seed}:{self.global_step}:{self.skipped_steps}:{self.global_rank}", self.device)

    def _training_step(self, batch: MetaBatch, batch_idx: int) -> None:
        optimizer = self.optimizers()
        # Clear gradients before the plugin runs: a plugin may write ``.grad`` by hand in
        # ``outer_loss`` (then calling ``MetaAlgorithm.all_reduce_gradients``); those must survive.
        optimizer.zero_grad(set_to_none=True)
        scaler = grad_scaler(self._trainer)
        if self.augmentation is not None:
            batch = self.augmentation(batch)  # inside the step's seeded RNG: reproducible, resumes exactly
        result = self._backward_in_chunks(batch, loss_scale(scaler))
        if result is None:
            self._skip_step(scaler)
            return
        if scaler is None and not bool(torch.isfinite(self._gradient_norm())):
            # A finite loss can still have a NaN/inf gradient; it must not reach the weights. (Under fp16
            # the GradScaler skips such a step itself.) Gradients are already averaged over ranks here,
            # so every rank takes the same decision.
            self.print(f"skipping outer step {self.global_step}: non-finite meta-gradient")
            self._skip_step(None)
            return
        optimizer.step()  # gradient norm and clipping: on_before_optimizer_step, after fp16 unscaling
        self.lr_schedulers().step()
        self._log_training(batch, result, batch_idx)

    def _backward_in_chunks(self, batch: MetaBatch, scale: float) -> OuterResult | None:
        """Outer loss and meta-gradient of ``batch``, ``tasks_per_chunk`` tasks at a time; None to skip the step.

        Why chunks: second-order inner loops hold every task's double-backward graph until the
        backward. Backpropagating each chunk's share of the loss (``loss_chunk * T_chunk / T``)
        right away frees its graph, so peak memory falls with the chunk size, and the summed
        gradient equals the unchunked one. Without ``tasks_per_chunk`` the whole meta-batch is one
        chunk: one ``manual_backward`` per step. Under DDP every chunk but the last runs under
        Lightning's ``block_backward_sync`` (``no_sync``), so gradients are averaged over ranks once.
        A chunk with a non-finite loss on any rank skips the whole step on every rank.
        """
        chunks = batch.chunks(self.tasks_per_chunk) if self.tasks_per_chunk else [batch]
        results = []
        for index, chunk in enumerate(chunks):
            result = self._outer_result(chunk, scale)
            finite = result is not None and bool(torch.isfinite(result.loss))
            if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
                return None
            weight = chunk.num_tasks / batch.num_tasks
            last = index == len(chunks) - 1
            with nullcontext() if last else self._without_gradient_sync():
                self.manual_backward(result.loss * weight)  # weight 1.0 without chunks
            results.append((result, weight))
        return OuterResult.merge(results)

    def _without_gradient_sync(self) -> ContextManager[None]:
        """Lightning's ``no_sync`` for parallel strategies; nothing to block on one device."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else nullcontext()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the gradient norm and clip it.

        Lightning calls this inside ``optimizer.step()`` after unscaling fp16 gradients; clipping
        right after ``manual_backward`` would clip the loss-scaled gradients under ``16-mixed``.
        """
        self.log("train/grad_norm", self._gradient_norm())
        if self.hparams.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")

    def _skip_step(self, scaler: torch.amp.GradScaler | None) -> None:
        """Skip this outer step on every rank; under fp16 also lower the loss scale, as GradScaler does on overflow.

        Every rank takes the same decision, so the scales stay equal across ranks.
        """
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        if scaler is not None:
            back_off(scaler)

    def _outer_result(self, batch: MetaBatch, scale: float) -> OuterResult | None:
        """The plugin's outer loss at fp16 loss scale ``scale``; None (the step is skipped) on a non-finite inner loop."""
        try:
            return self.algorithm.outer_loss(self.learner, batch, loss_scale=scale)
        except NonFiniteLossError as err:
            self.print(f"skipping outer step {self.global_step}: {err} (tasks {[batch.tasks[t] for t in err.tasks if t < len(batch.tasks)]})")
            return None

    def _gradient_norm(self) -> Tensor:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())

    def _log_training(self, batch: MetaBatch, result: OuterResult, batch_idx: int) -> None:
        post = result.query_losses.mean()
        logs = {"train/outer_loss": result.loss.detach(), "train/query_loss_post": post,
                "train/lr": torch.tensor(self.lr_schedulers().get_last_lr()[0])}
        for step, losses in enumerate(result.inner_losses):
            logs[f"train/inner_loss_step{step}"] = losses.mean()
        for step, norms in enumerate(result.inner_grad_norms):
            logs[f"train/inner_grad_norm_step{step}"] = norms.mean()
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            pre = self._query_loss_without_adaptation(batch.query)
            logs["train/query_loss_pre"] = pre
            logs["train/adaptation_gain"] = pre - post
        self.log_dict(logs, prog_bar=False, batch_size=batch.num_tasks)
        self.log("loss", post, prog_bar=True, logger=False, batch_size=batch.num_tasks)

    @torch.no_grad()
    def _query_loss_without_adaptation(self, query: TaskBatch) -> Tensor:
        prepared = self.learner.prepare(query)
        return self.learner.losses(self.learner.expand(self.learner.init_weights(), prepared.num_tasks), prepared).mean()

    # ----------------------------------------------------- test-time adaptation
    def adapt(self, support: TaskBatch, steps: int) -> FastWeights:
        """Adapt to the tasks in ``support`` for ``steps`` inner steps; detached fast weights ``[T, ...]``.

        With ``adaptation_guard="cross_validation"`` a task whose adaptation does not generalize
        within its own support set keeps its unadapted weights (see :meth:`_adaptation_helps`).
        """
        adapted = self._adapt(support, steps)
        if self.adaptation_guard == "none" or steps == 0 or support.examples_per_task < 2:
            return adapted
        keep = self._adaptation_helps(support, steps)
        start = self._adapt(support, 0)
        return {name: torch.where(keep.view(-1, *[1] * (w.dim() - 1)), w, start[name]) for name, w in adapted.items()}

    def _adaptation_helps(self, support: TaskBatch, steps: int) -> Tensor:
        """``[T]`` bool: adapting on part of each task's support lowers the loss on the held-out rest.

        Up to :data:`GUARD_FOLDS` folds; fold ``j`` holds out examples ``j, j + folds, ...``. Summed
        over folds, the held-out loss after ``steps`` inner steps must be below the one at 0 steps.
        """
        count = support.examples_per_task
        folds = min(count, GUARD_FOLDS)
        before = after = torch.zeros(support.num_tasks, device=support.inputs[0].device)
        for fold in range(folds):
            held = list(range(fold, count, folds))
            rest = [i for i in range(count) if i % folds != fold]
            held_out, train = support.select(held), support.select(rest)
            before = before + self.evaluation_loss(held_out, self._adapt(train, 0)).float()
            after = after + self.evaluation_loss(held_out, self._adapt(train, steps)).float()
        return after < before

    def _adapt(self, support: TaskBatch, steps: int) -> FastWeights:
        """The plugin's inner loop without a guard. Under ``16-mixed`` the inner loss is scaled by
        the Trainer's GradScaler scale, halved until the inner gradients are finite."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(INFERENCE_MODE_HELP)
        with torch.enable_grad():
            with torch.no_grad():
                prepared = self.learner.prepare(support)
            loop = InnerLoop(steps, create_graph=False)
            adaptation = retry_at_smaller_scales(lambda scale: self.algorithm.adapt(self.learner, prepared, loop.at_scale(scale)),
                                                 loss_scale(grad_scaler(self._trainer)))
        return {name: w.detach() for name, w in adaptation.fast.items()}

    @torch.no_grad()
    def transcribe(self, batch: TaskBatch, fast: FastWeights | None = None) -> list[list[str]]:
        """Greedy CTC transcripts ``[T][B]`` of ``batch`` with ``fast`` weights (default: unadapted)."""
        prepared = self.learner.prepare(batch)
        fast = fast if fast is not None else self.learner.expand(self.learner.init_weights(), prepared.num_tasks)
        log_probs, lengths = self.learner.outputs(fast, prepared)[:2]
        tokens = greedy_decode(log_probs, lengths)
        texts = [self._require_tokenizer().decode(ids) for ids in tokens]
        per_task = len(texts) // batch.num_tasks
        return [texts[t * per_task : (t + 1) * per_task] for t in range(batch.num_tasks)]

    @torch.no_grad()
    def evaluation_loss(self, batch: TaskBatch, fast: FastWeights) -> Tensor:
        """Mean CTC loss ``[T]`` of ``batch`` under ``fast`` weights."""
        return self.learner.losses(fast, self.learner.prepare(batch))

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: attach a datamodule or load the module from a metaspeech checkpoint")
        return self.tokenizer

    def evaluate_task(self, item: EvaluationBatch, shots: list[int], steps: list[int]) -> list[UtteranceRecord]:
        """The k x s protocol on one held-out task with this module's adaptation (:mod:`metaspeech.protocol`)."""
        evaluator = AdaptationEvaluator(shots, steps, self.frame_shift_seconds)
        records = evaluator.evaluate(item, self.adapt, self.transcribe)
        self._adaptation_seconds.update(evaluator.seconds)
        return records

    def meta_val_wer(self, loader: Any, shots: int, steps: int, inner_lr: float | None = None) -> float:
        """Corpus WER over the tasks of ``loader`` after adapting on ``shots`` utterances for ``steps`` steps,
        with ``inner_lr`` as the test-time inner learning rate (default: the algorithm's own)."""
        saved, was_training = self.algorithm.eval_inner_lr, self.training
        if inner_lr is not None:
            self.algorithm.eval_inner_lr = inner_lr
        self.eval()
        errors = words = 0
        try:
            for item in loader:
                item = self.transfer_batch_to_device(item, self.device, 0)
                support = item.pool.take(min(shots, item.pool.examples_per_task))
                hypotheses = self.transcribe(item.evaluation, self.adapt(support, steps))[0]
                for reference, hypothesis in zip(item.evaluation.texts[0], hypotheses):
                    record = score_utterance(item.task, shots, steps, "", reference, hypothesis)
                    errors, words = errors + record.word_errors, words + record.words
        finally:
            self.algorithm.eval_inner_lr = saved
            self.train(was_training)
        return errors / max(words, 1)

    # ------------------------------------------------------------ validation
    def validation_step(self, item: EvaluationBatch, batch_idx: int) -> None:
        shots = min(self.hparams.val_shots, item.pool.examples_per_task)
        support = item.pool.take(shots)
        for steps, tag in ((0, "pre"), (self.hparams.val_steps, "post")):
            fast = self.adapt(support, steps)
            loss = self.evaluation_loss(item.evaluation, fast).mean()
            self.log(f"val/loss_{tag}", loss, batch_size=1, sync_dist=True)
            if self.tokenizer is not None:
                hypotheses = self.transcribe(item.evaluation, fast)[0]
                records = [score_utterance(item.task, shots, steps, "", r, h) for r, h in zip(item.evaluation.texts[0], hypotheses)]
                words = sum(r.words for r in records)
                self.log(f"val/wer_{tag}", sum(r.word_errors for r in records) / max(words, 1), batch_size=words, sync_dist=True)

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self._records, self._adaptation_seconds = [], {}

    def test_step(self, item: EvaluationBatch, batch_idx: int) -> None:
        self._records += self.evaluate_task(item, self.test_shots, self.test_steps)

    def on_test_epoch_end(self) -> None:
        records, seconds = self._gather(self._records), self._gather([self._adaptation_seconds])
        merged_seconds = {key: value for part in seconds for key, value in part.items()}
        task_groups = getattr(getattr(self.trainer, "datamodule", None), "task_groups", None)
        report = AdaptationReport(records, merged_seconds, groups=task_groups("test") if task_groups else None,
                                  settings=dict(self.protocol_settings))
        self.last_report = report
        for c in report.conditions():
            self.log(f"test/wer_k{c.shots}_s{c.steps}", c.wer, rank_zero_only=True)
            self.log(f"test/cer_k{c.shots}_s{c.steps}", c.cer, rank_zero_only=True)

    def configure_callbacks(self) -> list[L.Callback]:
        """The test report's console table, files and logger tables (:mod:`metaspeech.reporting`)."""
        from metaspeech.reporting import AdaptationReportWriter

        if any(isinstance(c, AdaptationReportWriter) for c in self.trainer.callbacks):
            return []  # a test after a fit on the same Trainer: installed already
        return [AdaptationReportWriter()]

    def _gather(self, items: list[Any]) -> list[Any]:
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return list(items)
        gathered: list[list[Any]] = [[] for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather_object(gathered, list(items))
        return [x for part in gathered for x in part]

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["metaspeech"] = {
            "model": self.model.init_config,
            "algorithm": self.algorithm.init_config,
            "scope": self.scope,
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "features": self._feature_config(),
            "skipped_steps": self.skipped_steps,
            "rng_seed": self.rng_seed,
            "wandb_run_id": self._wandb_run_id(),
        }

    def _wandb_run_id(self) -> str | None:
        """The W&B run this fit logs to: ``test --ckpt_path`` resumes it, so one run holds fit and test."""
        from lightning.pytorch.loggers import WandbLogger

        return next((str(logger.version) for logger in self.loggers if isinstance(logger, WandbLogger)), None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("metaspeech", {})
        if info.get("tokenizer") is not None:
            self.tokenizer = tokenizer_from_dict(info["tokenizer"])
        self.skipped_steps = info.get("skipped_steps", 0)
        if info.get("rng_seed") is not None:
            self.rng_seed = int(info["rng_seed"])

    def _feature_config(self) -> dict[str, Any]:
        return dict(vars(self.feature_config))
