"""``TestTimeAdaptation``: how a trained model adapts to a new speaker, in one explicit place.

Why a value of its own: the scope, the inner optimizer and the learning rate of test-time adaptation
are choices made after training, on meta-val speakers (:mod:`~metaspeech.evaluation.selection`), and joint
training + fine-tuning must get exactly the same choices as the meta-learners. The module holds one
``TestTimeAdaptation`` (``model.test_time``); the adapter (:class:`~metaspeech.evaluation.adapter.FewShotAdapter`)
reads it and nothing else, and the report records it.

    model:
      test_time: {scope: [all], optimizer: adam, lr: 0.0003}
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.inner_loop import INNER_OPTIMIZERS, InnerLoop
from metaspeech.engine.learner import Learner
from metaspeech.errors import ConfigError


@dataclass(frozen=True)
class TestTimeAdaptation:
    """The test-time inner loop's settings.

    Args:
        scope: the adapted parameters (presets or name globs, as ``model.scope``); None: the training scope.
            A plugin with meta-parameters tied to its training scope adapts the scopes its ``adapts_scope`` allows:
            Meta-SGD (learned rates) its training scope only, HyperInit (generators) any scope that contains it.
        optimizer: ``sgd`` or ``adam`` (:meth:`~metaspeech.engine.inner_loop.InnerLoop.update`); None: the plugin's own
            (its ``inner_optimizer``, SGD unless it was meta-trained with Adam).
        lr: the learning rate of every inner step; None: the plugin's own (``eval_inner_lr``, or Meta-SGD's learned rates).
    """

    __test__ = False  # not a pytest test class, despite the name

    scope: list[str] | None = None
    optimizer: str | None = None
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in INNER_OPTIMIZERS:
            raise ConfigError(f"model.test_time.optimizer must be one of {INNER_OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"model.test_time.lr must be positive (or null for the plugin's own), got {self.lr}")
        if self.scope is not None and not self.scope:
            raise ConfigError("model.test_time.scope must name at least one preset or glob (or be null for the training scope)")

    def resolved(self, algorithm: MetaAlgorithm) -> "TestTimeAdaptation":
        """These settings with the optimizer made explicit (the plugin's ``inner_optimizer`` where None), so that
        reports name the optimizer that ran."""
        return replace(self, optimizer=self.optimizer or algorithm.inner_optimizer)

    def learner(self, training: Learner, algorithm: MetaAlgorithm) -> Learner:
        """The learner whose scope is adapted: ``training``'s, unless this asks for another one."""
        if self.scope is None:
            return training
        learner = Learner(training.model, training.loss, list(self.scope))
        if learner.adapted_names == training.adapted_names:
            return training
        if not algorithm.adapts_scope(training, learner):
            raise ConfigError(
                f"model.test_time.scope={self.scope}: {type(algorithm).__name__} has meta-parameters tied to its training "
                "scope (model.scope: learned learning rates or generated weights) and cannot adapt this one: leave "
                "model.test_time.scope unset (HyperInit also adapts a scope that contains its training scope, e.g. [all])"
            )
        return learner

    def loop(self, algorithm: MetaAlgorithm, steps: int, record: tuple[int, ...], objective: str = "supervised") -> InnerLoop:
        """The plugin's own inner loop (``algorithm.inner_loop``, so an override holds at test time), first order,
        recording ``record``, with this optimizer and learning rate, minimizing ``objective``."""
        own = algorithm.inner_loop(steps)
        return replace(own, create_graph=False, record=record, optimizer=self.optimizer or own.optimizer, lr=self.lr,
                       objective=objective)

    def describe(self) -> dict[str, object]:
        """The settings as plain values (for the report)."""
        return {"scope": "training scope" if self.scope is None else ",".join(self.scope),
                "optimizer": self.optimizer or "the algorithm's own",
                "lr": "the algorithm's own" if self.lr is None else self.lr}

