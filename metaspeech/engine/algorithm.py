"""The algorithm plugin API.

A plugin is a small ``nn.Module`` (so it can own meta-parameters: learned
learning rates, a hypernetwork). The base class implements a complete MAML-style
algorithm out of four overridable pieces; a new algorithm overrides one or two:

- :meth:`MetaAlgorithm.initial_weights` -- where the inner loop starts (HyperInit generates it);
- :meth:`MetaAlgorithm.step_size` -- the inner learning rate per step and parameter (Meta-SGD learns it);
- :meth:`MetaAlgorithm.adapt` -- the inner loop: support set and :class:`InnerLoop` -> fast weights
  (an override that ignores ``InnerLoop.record`` still works: the test protocol then runs once per s);
- :meth:`MetaAlgorithm.outer_loss` -- the scalar whose gradient is the meta-gradient
  (Reptile and joint training replace it).

The outer loss is always a *loss*, never gradients written into ``.grad``: the
Lightning module calls ``manual_backward`` on it exactly once per step, which is
what makes DDP average meta-gradients across ranks (hand-written ``.grad`` is
not synchronized). Plugins that must write ``.grad`` themselves call
:meth:`MetaAlgorithm.all_reduce_gradients` afterwards.

Precision is an argument, never plugin state: ``outer_loss`` receives the fp16 loss
scale and every inner loop an :class:`~metaspeech.engine.inner_loop.InnerLoop`
(:mod:`metaspeech.engine.inner_loop`).

Nothing here knows about speech: algorithms see a :class:`~metaspeech.engine.learner.Learner`
and :class:`~metaspeech.engine.batch.TaskBatch` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.config import RecordsInitArgs, check_at_least, check_positive
from metaspeech.engine.inner_loop import INNER_OPTIMIZERS, InnerGradientOverflowError, InnerLoop, NonFiniteLossError
from metaspeech.engine.learner import FastWeights, Learner, PreparedTasks
from metaspeech.errors import ConfigError

__all__ = ["Adaptation", "InnerGradientOverflowError", "InnerLoop", "MetaAlgorithm", "NonFiniteLossError", "OuterResult"]


@dataclass
class Adaptation:
    """Result of an inner loop: fast weights ``[T, ...]``; per inner step, the support loss ``[T]``
    before the step and the norm ``[T]`` of each task's inner gradient (both detached, for logging);
    ``trajectory``: the detached fast weights after each step count the loop was asked to record
    (``InnerLoop.record``)."""

    fast: FastWeights
    inner_losses: list[Tensor] = field(default_factory=list)
    inner_grad_norms: list[Tensor] = field(default_factory=list)
    trajectory: dict[int, FastWeights] = field(default_factory=dict)

    def keep(self, steps_done: int, loop: InnerLoop) -> None:
        """Record the current fast weights as those after ``steps_done`` steps, if ``loop`` asks for them."""
        if steps_done in loop.record:
            self.trajectory[steps_done] = {name: w.detach() for name, w in self.fast.items()}


@dataclass
class OuterResult:
    """What one outer step produced.

    ``loss`` is the scalar to backpropagate; ``query_losses [T]`` the post-adaptation query losses (detached)
    for logging, ``[T * Q]`` for a transductive plugin (one per query utterance); ``inner_losses`` /
    ``inner_grad_norms`` as in :class:`Adaptation`.
    """

    loss: Tensor
    query_losses: Tensor
    inner_losses: list[Tensor] = field(default_factory=list)
    inner_grad_norms: list[Tensor] = field(default_factory=list)

    @staticmethod
    def merge(parts: list[tuple["OuterResult", float]]) -> "OuterResult":
        """One result from the results of task chunks and their weights (task shares); the loss is detached."""
        if len(parts) == 1:
            return parts[0][0]
        results = [r for r, _ in parts]
        return OuterResult(
            loss=sum(w * r.loss.detach() for r, w in parts),
            query_losses=torch.cat([r.query_losses for r in results]),
            inner_losses=[torch.cat(step) for step in zip(*(r.inner_losses for r in results))],
            inner_grad_norms=[torch.cat(step) for step in zip(*(r.inner_grad_norms for r in results))],
        )

    def metrics(self) -> dict[str, Tensor]:
        """The training logs of this step: outer and post-adaptation query loss, and per inner step the mean
        inner loss and gradient norm over the tasks (``train/inner_loss_step{i}``, ``train/inner_grad_norm_step{i}``)."""
        logs = {"train/outer_loss": self.loss.detach(), "train/query_loss_post": self.query_losses.mean()}
        logs.update({f"train/inner_loss_step{step}": losses.mean() for step, losses in enumerate(self.inner_losses)})
        logs.update({f"train/inner_grad_norm_step{step}": n.mean() for step, n in enumerate(self.inner_grad_norms)})
        return logs


class MetaAlgorithm(RecordsInitArgs, nn.Module):
    """Base class: MAML-style inner loop of SGD steps on the support set, query loss outside.

    Every inner loop runs under an explicit :class:`~metaspeech.engine.inner_loop.InnerLoop`
    (steps, second order, fp16 loss scale); :meth:`inner_loop` gives the meta-training one.
    The plugin holds no precision state: under ``16-mixed`` the Lightning module passes the
    GradScaler's scale into :meth:`outer_loss` and test-time :meth:`adapt` at every call.

    Args:
        inner_steps: inner SGD steps during meta-training.
        inner_lr: inner learning rate, or one per step (a list of length ``inner_steps``).
        second_order: backpropagate through the inner loop (``create_graph=True``).
        eval_inner_lr: learning rate for test-time adaptation (default: ``inner_lr``'s last value).
        second_order_steps: truncated second order: only the last this-many inner steps are
            differentiated through, earlier ones are first-order. Memory then grows with this
            number instead of ``inner_steps``. ``None``: all steps.
        inner_objective: what the meta-training inner loop minimizes on the support set:
            ``supervised``, or a label-free objective of the learner (``entropy``, ``pseudo_label``);
            the outer loss stays the supervised query loss, so the meta-learned start is one that
            label-free adaptation improves (MT3, Bartler et al. 2022).
        transductive: the inner loop adapts every query utterance on itself, without its transcript (a label-free
            ``inner_objective``), and the outer loss is that utterance's supervised loss after its own steps. Why:
            it meta-trains for per-utterance test-time adaptation (``metaspeech transcribe --transductive``),
            where the adaptation set *is* the utterance to transcribe; the support set is not read.
        inner_optimizer: the meta-training inner loop's update rule, ``sgd`` or ``adam`` (functional, state reset
            per task). Why: a test-time search that picks Adam (``model.test_time``) can be meta-trained for.
    """

    learns_inner_lr: ClassVar[bool] = False
    """True for a plugin whose ``step_size`` is meta-learned (Meta-SGD): test-time selection then keeps its rates
    instead of searching a learning rate. A hand-written ``step_size`` (a schedule) leaves it False, and is searched."""

    def __init__(
        self,
        inner_steps: int = 5,
        inner_lr: float | Sequence[float] = 0.1,
        second_order: bool = False,
        eval_inner_lr: float | None = None,
        second_order_steps: int | None = None,
        inner_objective: str = "supervised",
        transductive: bool = False,
        inner_optimizer: str = "sgd",
    ) -> None:
        super().__init__()
        key = "model.algorithm.init_args."
        check_at_least(key + "inner_steps", inner_steps, 0)
        check_positive(key + "inner_lr", inner_lr, "the inner loop's step size (e.g. 0.1)")
        check_positive(key + "eval_inner_lr", eval_inner_lr, "the test-time step size, or null for inner_lr")
        if isinstance(inner_lr, (list, tuple)) and len(inner_lr) != inner_steps:
            raise ConfigError(f"{key}inner_lr has {len(inner_lr)} values but inner_steps is {inner_steps}: give one per step")
        if second_order_steps is not None and second_order_steps < 0:
            raise ConfigError(f"{key}second_order_steps must be >= 0 (or null for all steps), got {second_order_steps}")
        self.inner_steps = inner_steps
        self.inner_lr = list(inner_lr) if isinstance(inner_lr, (list, tuple)) else float(inner_lr)
        self.second_order = second_order
        self.eval_inner_lr = eval_inner_lr
        self.second_order_steps = second_order_steps
        self.inner_objective = inner_objective
        self.transductive = transductive
        self._check_transductive()
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"{key}inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {inner_optimizer!r}")
        self.inner_optimizer = inner_optimizer

    def _check_transductive(self) -> None:
        key = "model.algorithm.init_args."
        if not self.transductive:
            return
        if self.inner_objective == "supervised":
            raise ConfigError(f"{key}transductive adapts each query utterance on itself, so it cannot read its transcript: "
                              f"set {key}inner_objective to a label-free objective (entropy, pseudo_label)")
        if type(self).outer_loss is not MetaAlgorithm.outer_loss:
            raise ConfigError(f"{key}transductive: {type(self).__name__} has an outer loss of its own, which adapts on the "
                              "support set; use maml, fomaml, metasgd or hyperinit")

    def setup(self, learner: Learner) -> None:
        """Create meta-parameters that depend on the adaptation scope (called once, before training)."""

    def adapts_scope(self, training: Learner, test: Learner) -> bool:
        """Whether test-time adaptation may adapt ``test``'s scope after meta-training on ``training``'s.

        Why a hook: meta-parameters shaped by the training scope (Meta-SGD's learned rates, HyperInit's
        generators) say nothing about other weights. The default allows any scope to a plugin without
        meta-parameters, and only the training scope to one with them; a plugin whose meta-parameters
        still make sense inside a wider scope (HyperInit) overrides this.
        """
        return test.adapted_names == training.adapted_names or not any(True for _ in self.parameters())

    def inner_loop(self, steps: int | None = None, loss_scale: float = 1.0) -> InnerLoop:
        """The meta-training inner loop: ``inner_steps`` (or ``steps``) steps, second order and objective as configured."""
        return InnerLoop(self.inner_steps if steps is None else steps, self.second_order, loss_scale,
                         objective=self.inner_objective, optimizer=self.inner_optimizer)

    def initial_weights(self, learner: Learner, prepared: PreparedTasks) -> FastWeights:
        """Where the inner loop starts for each task: the shared init, ``[T, *shape]``."""
        return learner.expand(learner.init_weights(), prepared.num_tasks)

    def start(self, learner: Learner, prepared: PreparedTasks, loop: InnerLoop) -> FastWeights:
        """Where ``loop`` starts: :meth:`initial_weights`, or the model's own weights if ``loop.from_model``."""
        if loop.from_model:
            return learner.expand(learner.init_weights(), prepared.num_tasks)
        return self.initial_weights(learner, prepared)

    def step_size(self, step: int, name: str) -> float | Tensor:
        """Inner learning rate for ``name`` at inner step ``step`` (scalar or parameter-shaped)."""
        if self.training:
            return self.inner_lr[step] if isinstance(self.inner_lr, list) else self.inner_lr
        if self.eval_inner_lr is not None:
            return self.eval_inner_lr
        return self.inner_lr[-1] if isinstance(self.inner_lr, list) else self.inner_lr

    def adapt(self, learner: Learner, support: TaskBatch | PreparedTasks, loop: InnerLoop | None = None) -> Adaptation:
        """The inner loop: ``loop.steps`` steps (``loop.update``: SGD unless the loop asks for Adam) on the support
        loss of every task at once.

        ``loop`` defaults to :meth:`inner_loop`. With ``loop.create_graph=False`` inner gradients
        are constants, so the fast weights still depend on the initialization with an identity
        Jacobian: the first-order meta-gradient. With ``second_order_steps`` only the last steps
        create a graph. Gradients come from ``loop.gradients``, which raises
        :class:`NonFiniteLossError` on a NaN/inf support loss. The steps minimize ``loop.objective``,
        whose targets are taken once from the start weights (``Learner.for_objective``: pseudo-labels).
        """
        loop = loop if loop is not None else self.inner_loop()
        prepared = support if isinstance(support, PreparedTasks) else learner.prepare(support)
        first_second_order_step = 0 if self.second_order_steps is None else loop.steps - self.second_order_steps
        fast = self.start(learner, prepared, loop)
        if loop.steps:
            prepared = learner.for_objective(prepared, fast, loop.objective)
        adaptation = Adaptation(fast=fast)
        adaptation.keep(0, loop)
        optimizer_state = None
        for step in range(loop.steps):
            step_graph = loop.create_graph and step >= first_second_order_step
            losses = learner.losses(fast, prepared, create_graph=step_graph, objective=loop.objective)
            grads = loop.gradients(losses, fast, step, create_graph=step_graph)
            adaptation.inner_losses.append(losses.detach())
            adaptation.inner_grad_norms.append(_per_task_norm(grads, prepared.num_tasks))
            fast, optimizer_state = loop.update(fast, grads, step, self.step_size, optimizer_state)
            adaptation.fast = fast
            adaptation.keep(step + 1, loop)
        return adaptation

    def outer_loss(self, learner: Learner, batch: MetaBatch, loss_scale: float = 1.0) -> OuterResult:
        """MAML objective: mean query loss of the adapted fast weights over the T tasks.

        ``loss_scale`` is the fp16 inner-loop loss scale of this step: pass it on to every inner loop. With
        ``transductive``, the T x Q query utterances are T * Q tasks ``[T * Q, 1, ...]``, each adapted on its own
        audio, and the loss is their mean.
        """
        if self.transductive:
            query = batch.query.per_utterance()
            adaptation = self.adapt(learner, query.without_transcripts(), self.inner_loop(loss_scale=loss_scale))
        else:
            query = batch.query
            adaptation = self.adapt(learner, batch.support, self.inner_loop(loss_scale=loss_scale))
        query_losses = learner.losses(adaptation.fast, learner.prepare(query))
        return OuterResult(query_losses.mean(), query_losses.detach(), adaptation.inner_losses, adaptation.inner_grad_norms)

    @staticmethod
    def all_reduce_gradients(parameters: Sequence[nn.Parameter]) -> None:
        """Average ``.grad`` across DDP ranks, for plugins that write gradients by hand.

        A no-op outside distributed training. Gradients produced by
        ``LightningModule.manual_backward`` are already averaged: do not call this for them.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(world)


def _per_task_norm(grads: Sequence[Tensor | None], num_tasks: int) -> Tensor:
    """L2 norm ``[T]`` of each task's slice of the inner gradients (each ``[T, ...]``), detached."""
    squares = [g.detach().reshape(num_tasks, -1).pow(2).sum(1) for g in grads if g is not None]
    return torch.stack(squares).sum(0).sqrt() if squares else torch.zeros(num_tasks)
