"""``MetaSpeechModule``: the outer loop of meta-learning as a LightningModule, and test-time adaptation.

One training step is one meta-batch of T speaker-tasks: the plugin adapts on every support set and returns one
outer loss; :meth:`MetaSpeechModule.training_step` backpropagates it once per task chunk
(:mod:`~metaspeech.training.meta_gradient`), skips non-finite steps (and stops after ``max_consecutive_skips`` in a row),
passes the fp16 loss scale in (:mod:`~metaspeech.training.loss_scaling`), clips, steps and logs. Dropout draws from a
generator seeded by ``(run seed, global step, skipped steps, rank)``, so a resumed run repeats the uninterrupted
one. ``adapt`` and ``transcribe`` are the test-time API (:mod:`~metaspeech.evaluation.adapter`); the test protocol is
:mod:`~metaspeech.evaluation.protocol`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial
from typing import Any, ContextManager, Iterable, Iterator

import lightning as L
import torch
from torch import Tensor

from metaspeech.datamodules.contract import SpeechFrontEnd
from metaspeech.engine.algorithm import MetaAlgorithm, OuterResult
from metaspeech.engine.batch import EvaluationBatch, MetaBatch, TaskBatch
from metaspeech.engine.config import check_at_least, check_positive
from metaspeech.engine.learner import FastWeights, Learner
from metaspeech.engine.randomness import seeded_rng
from metaspeech.errors import ConfigError, TrainingStalledError
from metaspeech.evaluation.adapter import FewShotAdapter
from metaspeech.evaluation.collapse_guard import CollapseGuard
from metaspeech.evaluation.oracle import OracleFit, SpeakerOracle
from metaspeech.evaluation.protocol import AdaptationEvaluator, evaluate_accent_oracle, evaluate_oracle, validation_scores
from metaspeech.evaluation.scoring import word_errors
from metaspeech.evaluation.selection import TestTimeSelection
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.models.recognizer import Recognizer, check_recognizer
from metaspeech.speech.augmentation import EpisodeAugmentation
from metaspeech.speech.features import FeatureConfig
from metaspeech.speech.objectives import check_objective
from metaspeech.speech.tokenizer import Tokenizer
from metaspeech.training.checkpoint_io import initialize_from, restore_module_section, save_module_section
from metaspeech.training.loggers import RunConfigLogger
from metaspeech.training.loss_scaling import back_off, grad_scaler, loss_scale
from metaspeech.training.meta_gradient import check_chunk_size, gradient_norm, gradient_sync, non_finite_gradient, outer_result, task_chunks
from metaspeech.training.predictions import HypothesisWriter
from metaspeech.training.reporting import AdaptationReportWriter, TaskScores, gather_objects
from metaspeech.training.schedule import check_decay, lr_factor


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
            generalizes within its support set (:mod:`metaspeech.evaluation.guard`).
        tasks_per_chunk: backpropagate each meta-batch this many tasks at a time (less memory, same
            meta-gradient, one optimizer step). None: all at once.
        oracle: the test report's speaker oracle (:class:`~metaspeech.evaluation.oracle.SpeakerOracle`), run on every
            test speaker with an oracle pool (``data.init_args.oracle_pool_size``); None: default settings.
        test_time: how test-time adaptation runs (:class:`~metaspeech.evaluation.test_time.TestTimeAdaptation`: scope,
            inner optimizer, learning rate); None: the training scope, SGD at the plugin's own rate.
        test_time_selection: search test-time settings on meta-val speakers before the test
            (:class:`~metaspeech.evaluation.selection.TestTimeSelection`); the choice replaces ``test_time``.
        freeze_body: meta-train only the adaptation machinery: the adapted scope's init and the plugin's
            meta-parameters (learned rates, a hypernetwork). Every other recognizer weight stays as loaded.
        freeze_recognizer: meta-train only the plugin's meta-parameters (Meta-SGD's learned rates, HyperInit's
            hypernetwork); every recognizer weight, the scope's init included, stays as loaded. Why: the model
            without adaptation is then exactly the loaded one (e.g. joint training's), so meta-learning can only
            change how adaptation steps from it. Needs a plugin with meta-parameters.
        max_consecutive_skips: stop the fit with a :class:`~metaspeech.errors.TrainingStalledError` after this
            many non-finite outer steps in a row (a run that cannot make progress must not run forever).
        test_objective: what test-time adaptation (``adapt``, the k x s protocol, ``metaspeech adapt``) minimizes:
            ``supervised`` (CTC on transcripts), or label-free ``entropy``, ``entropy_mcc`` or ``pseudo_label``
            (:mod:`metaspeech.speech.objectives`; docs/label_free.md).
        label_free_guard: keep a label-free adaptation only where the collapse guard passes it
            (:mod:`metaspeech.evaluation.collapse_guard`).
    """

    def __init__(
        self, recognizer: Recognizer, algorithm: MetaAlgorithm, scope: list[str] | None = None, lr: float = 1e-3,
        weight_decay: float = 1e-4, warmup_steps: int = 100, lr_decay: str = "constant", min_lr_ratio: float = 0.05,
        max_grad_norm: float | None = 5.0, val_shots: int = 5, val_steps: int = 5, test_shots: list[int] | None = None,
        test_steps: list[int] | None = None, results_dir: str | None = None, init_from: str | None = None,
        augmentation: EpisodeAugmentation | None = None, adaptation_guard: str = "none", tasks_per_chunk: int | None = None,
        oracle: SpeakerOracle | None = None, test_time: TestTimeAdaptation | None = None,
        test_time_selection: TestTimeSelection | None = None, freeze_body: bool = False, freeze_recognizer: bool = False,
        max_consecutive_skips: int = 20, test_objective: str = "supervised", label_free_guard: bool = True,
    ) -> None:
        super().__init__()
        check_decay(lr_decay)
        check_chunk_size(tasks_per_chunk)
        check_recognizer(recognizer)
        check_positive("model.lr", lr, "the outer (meta) optimizer's learning rate, e.g. 0.001")
        check_positive("model.max_grad_norm", max_grad_norm, "or null for no clipping")
        check_at_least("model.warmup_steps", warmup_steps, 0)
        check_at_least("model.val_shots", val_shots, 1)
        check_at_least("model.val_steps", val_steps, 0)
        check_at_least("model.test_shots", test_shots, 1)
        check_at_least("model.test_steps", test_steps, 0)
        if max_consecutive_skips < 1:
            raise ConfigError(f"model.max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        # Evaluation, output and run-control settings are not model hyperparameters: a checkpoint must not
        # override them when a user tests it with other shots, steps or an output folder, or resumes it.
        self.save_hyperparameters(ignore=["recognizer", "algorithm", "test_shots", "test_steps", "results_dir",
                                          "init_from", "augmentation", "adaptation_guard", "oracle",
                                          "test_time", "test_time_selection", "max_consecutive_skips",
                                          "test_objective", "label_free_guard"])
        self.automatic_optimization = False
        self.model, self.algorithm, self.augmentation = recognizer, algorithm, augmentation
        self.tasks_per_chunk, self.results_dir, self.init_from = tasks_per_chunk, results_dir, init_from
        self.oracle = oracle if oracle is not None else SpeakerOracle()
        self.scope = list(scope) if scope is not None else ["lin", "lhuc", "head"]
        check_objective(algorithm.inner_objective, "model.algorithm.init_args.inner_objective")
        self.learner = Learner(recognizer, recognizer.loss, self.scope, objectives=recognizer.objective)
        self.algorithm.setup(self.learner)
        if freeze_recognizer and not any(True for _ in algorithm.parameters()):
            raise ConfigError(
                f"model.freeze_recognizer: {type(algorithm).__name__} has no meta-parameters of its own (learned rates or a "
                "hypernetwork), so nothing would train; use model.freeze_body to meta-train the scope's init, or metasgd / hyperinit"
            )
        self.test_time_selection = test_time_selection
        self.test_objective = check_objective(test_objective, "model.test_objective")
        self.collapse_guard = CollapseGuard() if label_free_guard else None
        self.use_test_time(test_time if test_time is not None else TestTimeAdaptation(), adaptation_guard)
        self._accent_mates: dict[str, list[TaskBatch]] = {}  # test task -> oracle pools of its accent mates
        self.test_shots = list(test_shots) if test_shots is not None else [1, 5, 10]
        self.test_steps = sorted(set(test_steps if test_steps is not None else [0, 1, 5, 10]) | {0})
        self.tokenizer: Tokenizer | None = None
        self.feature_config = FeatureConfig()
        self.skipped_steps = 0
        self.max_consecutive_skips = max_consecutive_skips
        self.consecutive_skips = 0  # skips since the last optimizer step; not checkpointed
        self.rng_seed: int | None = None  # base seed of training-step randomness; set at fit start or from a checkpoint
        self._initialized_from: str | None = None
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
        """The test report (:mod:`metaspeech.training.reporting`), the predict writer (:mod:`metaspeech.training.predictions`) and the
        run configuration log, unless a fit installed them."""
        installed = {type(c) for c in self.trainer.callbacks}
        return [kind() for kind in (AdaptationReportWriter, HypothesisWriter, RunConfigLogger) if kind not in installed]

    def configure_optimizers(self) -> dict[str, Any]:
        trained = self.parameters()
        if self.hparams.get("freeze_recognizer"):  # the recognizer is left out of the optimizer: it stays bit-identical
            trained = list(self.algorithm.parameters())
        elif self.hparams.get("freeze_body"):  # the body is left out: only the scope's init and the plugin train
            trained = [*self.algorithm.parameters(), *self.learner.init_weights().values()]
        optimizer = torch.optim.AdamW(trained, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        total = self.trainer.max_steps if self._trainer is not None else None
        return lr_factor(step, self.hparams.warmup_steps, self.hparams.lr_decay, total, self.hparams.min_lr_ratio)

    # -------------------------------------------------------------- training
    def training_step(self, batch: MetaBatch, batch_idx: int) -> None:
        """One outer step, in order: task chunks, one backward per chunk, skip decision, fp16 loss scale, clip,
        optimizer step, log. Gradient norm and clipping run in :meth:`on_before_optimizer_step`, which
        Lightning calls inside ``optimizer.step()`` after unscaling fp16 gradients."""
        with self._step_rng():
            optimizer, scaler, strategy = self.optimizers(), grad_scaler(self._trainer), self.trainer.strategy
            # Clear gradients before the plugin runs: a plugin may write ``.grad`` by hand in
            # ``outer_loss`` (then calling ``MetaAlgorithm.all_reduce_gradients``); those must survive.
            optimizer.zero_grad(set_to_none=True)
            if self.augmentation is not None:
                batch = self.augmentation(batch)  # inside the step's seeded RNG: reproducible, resumes exactly
            chunks, results = task_chunks(batch, self.tasks_per_chunk), []
            for index, (chunk, weight) in enumerate(chunks):
                outcome = outer_result(self.algorithm, self.learner, chunk, loss_scale(scaler))
                if not strategy.reduce_boolean_decision(outcome.finite, all=True):  # the ranks skip together
                    return self._skip_step(scaler, outcome.why or "a non-finite outer step on another rank")
                with gradient_sync(strategy, last=index == len(chunks) - 1):
                    self.manual_backward(outcome.result.loss * weight)  # weight 1.0 without chunks
                results.append((outcome.result, weight))
            why = non_finite_gradient(self.parameters()) if scaler is None else ""  # fp16: GradScaler skips itself
            if why:
                return self._skip_step(scaler, why)
            optimizer.step()  # fp16 unscaling, then on_before_optimizer_step (norm, clip), then the step
            self.lr_schedulers().step()
            self.consecutive_skips = 0
            self._log_training(batch, OuterResult.merge(results), batch_idx)

    def _step_rng(self) -> ContextManager[None]:
        return seeded_rng(f"train-step:{self.rng_seed}:{self.global_step}:{self.skipped_steps}:{self.global_rank}", self.device)

    def _skip_step(self, scaler: torch.amp.GradScaler | None, why: str) -> None:
        """Skip this outer step (every rank decides alike); under fp16 also back off the loss scale, as GradScaler
        does. Stop the run after ``max_consecutive_skips`` skips in a row: it cannot make progress."""
        self.print(f"skipping outer step {self.global_step}: {why}")
        self.skipped_steps += 1
        self.consecutive_skips += 1
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)
        if scaler is not None:
            back_off(scaler)
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise TrainingStalledError(
                f"outer step {self.global_step} was skipped {self.consecutive_skips} times in a row (the last: {why}); "
                f"lower model.algorithm.init_args.inner_lr (or model.lr), or set trainer.precision=32 "
                f"if it is 16-mixed; the last checkpoint saved before this step is kept")

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

    # ------------------------------------------- test-time adaptation (metaspeech.evaluation.adapter)
    def use_test_time(self, settings: TestTimeAdaptation, guard: str | None = None) -> None:
        """Adapt with ``settings`` from now on (the one place test-time settings live: ``self.test_time``)."""
        settings = settings.resolved(self.algorithm)
        self.test_time = settings
        guard = guard if guard is not None else self.adapter.guard
        self.adapter = FewShotAdapter(self.model, self.learner, self.algorithm, guard, settings, self.test_objective,
                                      self.collapse_guard)

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

    def on_test_start(self) -> None:
        """Before the test, on meta-val speakers only: choose test-time adaptation (``test_time_selection``) and,
        where the test data has oracle pools, the oracle's (scope, lr); gather the accent oracle's pools.
        The seconds each search took go into ``protocol_settings["seconds"]`` (what the protocol costs, and where)."""
        scale = loss_scale(grad_scaler(self._trainer))
        self.protocol_settings["seconds"] = {}  # this test's own parts only (``_timed`` adds to it)
        if self.test_time_selection is not None:
            with self._timed("test_time_selection"):
                selection = self.test_time_selection.select(
                    self.model, self.learner, self.algorithm, self.tokenizer, self._meta_val_tasks(), self.hparams.val_shots,
                    self.test_steps, self.adapter.guard, scale, self._sum_over_ranks)
            self.use_test_time(selection.test_time)
            self.protocol_settings["test_time_selection"] = selection.describe()
            self.print(f"test-time adaptation {selection.test_time.describe()}, best at s = {selection.steps}: "
                       f"chosen on meta-val speakers ({selection.speakers})")
        self.protocol_settings["test_time"] = self.test_time.describe()
        data = self.trainer.datamodule
        if getattr(data, "oracle_pool_size", 0):
            with self._timed("oracle_search"):
                chosen = self.oracle.choose(self.model, self.model.loss, ((i.pool, i.evaluation) for i in self._meta_val_tasks()),
                                            self._oracle_errors, self._sum_over_ranks)
            if chosen is not None:
                edge = self.oracle.chosen_at_grid_edge()
                hint = f" (the {edge} rate of model.oracle.init_args.learning_rates: rates beyond it were not tried)" if edge else ""
                self.print(f"speaker oracle: scope {chosen.name}, Adam lr {chosen.lr:g}, chosen on meta-val speakers{hint}")
            if self.oracle.accent and hasattr(data, "task_accents"):
                self._accent_mates = self._accent_pools(data.task_accents("test"), data.test_dataloader())

    def _meta_val_tasks(self) -> Iterator[EvaluationBatch]:
        for item in self.trainer.datamodule.val_dataloader():
            yield self.transfer_batch_to_device(item, self.device, 0)

    def _sum_over_ranks(self, counts: list[float]) -> list[float]:
        total = self.trainer.strategy.reduce(torch.tensor(counts, dtype=torch.float64, device=self.device), reduce_op="sum")
        return total.tolist()

    def _oracle_errors(self, fit: OracleFit, evaluation: TaskBatch) -> tuple[int, int]:
        return word_errors(evaluation.texts[0], self.transcribe(evaluation, fit.fast, fit.learner)[0])

    def _accent_pools(self, accents: dict[str, str], loader: Iterable[EvaluationBatch]) -> dict[str, list[TaskBatch]]:
        """For every test task, the oracle pools (never the evaluation sets) of the other test tasks of its accent."""
        local = [(item.task, item.oracle) for item in loader if item.oracle is not None and item.task in accents]
        pools = gather_objects(self.trainer, local)
        return {task: [self.transfer_batch_to_device(pool, self.device, 0) for other, pool in pools
                       if other != task and accents[other] == accents[task]] for task, _ in pools}

    def test_step(self, item: EvaluationBatch, batch_idx: int) -> TaskScores:
        """The k x s protocol on one held-out task; the report callback collects, gathers and reports the scores.
        The seconds of each part add up over this process's tasks in ``protocol_settings["seconds"]``
        (``protocol``, ``oracle``, ``accent_oracle``), beside those of the meta-val searches."""
        evaluator = AdaptationEvaluator(self.test_shots, self.test_steps, self.feature_config.frame_shift_seconds)
        with self._timed("protocol"):
            records = evaluator.evaluate(item, self.adapt_along, self.transcribe)
        with self._timed("oracle"):
            oracle, scopes = evaluate_oracle(item, partial(self.adapter.speaker_oracle, self.oracle, tokenizer=self.tokenizer))
        with self._timed("accent_oracle"):
            accent = evaluate_accent_oracle(item, self._accent_mates.get(item.task, []),
                                            partial(self.adapter.accent_oracle, self.oracle, tokenizer=self.tokenizer))
        return TaskScores(records, evaluator.seconds, oracle, scopes, accent)

    @contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        """Add the seconds the block takes to ``protocol_settings["seconds"][part]`` (what the test costs, and where)."""
        start = time.perf_counter()
        yield
        seconds = self.protocol_settings.setdefault("seconds", {})
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start

    def predict_step(self, item: EvaluationBatch, batch_idx: int) -> list[dict[str, Any]]:
        """Adapt to one held-out speaker on ``max(test_shots)`` utterances of its adaptation pool (at most the pool)
        for ``max(test_steps)`` inner steps; one row per evaluation utterance, written by
        :class:`~metaspeech.training.predictions.HypothesisWriter`."""
        shots, steps = min(max(self.test_shots), item.pool.examples_per_task), max(self.test_steps)
        hypotheses = self.transcribe(item.evaluation, self.adapt(item.pool.take(shots), steps))[0]
        return [{"speaker": item.task, "id": utterance, "reference": reference, "hypothesis": hypothesis,
                 "shots": shots, "steps": steps}
                for utterance, reference, hypothesis in zip(item.evaluation.ids[0], item.evaluation.texts[0], hypotheses)]

    # ------------------------------------------------------------ checkpoints: the metaspeech section
    on_save_checkpoint = save_module_section
    on_load_checkpoint = restore_module_section
