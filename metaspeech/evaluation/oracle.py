"""The speaker oracle: the same recognizer made speaker-dependent, the ceiling few-shot adaptation aims at.

Why: "adaptation lowers WER by 5 %" says little alone. If the base is weak, most of its
error is generic recognition error that no speaker transform removes, and 5 % may be all
there is to gain; if the base is strong, 5 % may be a tenth of it. The oracle measures
what *is* there to gain: it fine-tunes the recognizer on a large pool of one held-out
speaker (the few-shot pool and more of that speaker's utterances, never the evaluation
set) with Adam, early-stopped on a held-out part of that pool.
The report then states the **share of the speaker gap closed**,
``(WER at s=0 - WER adapted) / (WER at s=0 - oracle WER)``, which says whether an
algorithm is good whatever the base.

A ceiling must not be beaten by a 20-utterance few-shot run, so the oracle searches: every
candidate scope (``all`` included) x every learning rate, each fine-tuned for up to a few hundred
steps with early stopping. To keep that affordable the grid is searched once, on meta-val speakers
(:meth:`SpeakerOracle.choose`: lowest meta-val WER), and each test speaker then runs only the chosen
``(scope, lr)``, still early-stopped on its own held-out pool utterances. Without a choice
(:meth:`SpeakerOracle.fit` called alone) every speaker searches the whole grid by its held-out loss.

The **accent oracle** (:meth:`SpeakerOracle.fit_accent`) bounds accent adaptation: it fine-tunes on
the oracle pools of the other held-out speakers of the target's accent plus the target's own pool,
early-stopped on the target's held-out pool utterances. The target's evaluation utterances are never
in it.

The oracle is plain supervised fine-tuning through the functional :class:`Learner`:
the recognizer's own parameters never change (its fast weights are copies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.learner import FastWeights, Learner, PreparedTasks, TaskLoss
from metaspeech.engine.staged import StagedModel

DEFAULT_SCOPES: tuple[str | tuple[str, ...], ...] = (("lin", "lhuc", "head"), "all")
DEFAULT_LEARNING_RATES: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)


@dataclass(frozen=True)
class OracleSetting:
    """One point of the oracle's grid: an adaptation scope (presets or name globs) and Adam's learning rate."""

    scope: str | list[str]
    lr: float

    @property
    def name(self) -> str:
        return self.scope if isinstance(self.scope, str) else ",".join(self.scope)


@dataclass(frozen=True)
class OracleFit:
    """The oracle of one speaker: the scope, learning rate and step count its held-out pool utterances chose."""

    learner: Learner
    fast: FastWeights
    scope: str
    steps: int
    dev_loss: float
    training_utterances: int
    lr: float = 0.0


Score = Callable[[OracleFit, TaskBatch], tuple[int, int]]
"""``score(fit, evaluation)`` -> (word errors, reference words) of ``evaluation`` under the fit."""


class SpeakerOracle:
    """Speaker-dependent fine-tuning with early stopping, one speaker at a time.

    Args:
        scopes: candidate adaptation scopes (presets or name globs, as ``model.scope``).
        learning_rates: candidate Adam learning rates.
        max_steps: full-batch Adam steps at most.
        eval_every: check the held-out loss every this many steps (and at step 0).
        dev_fraction: share of the oracle pool held out for early stopping (at least one utterance).
        patience: stop fine-tuning after this many checks without a new best held-out loss (None: always
            run ``max_steps``). With a few hundred steps at small learning rates it is what keeps the
            oracle affordable; a held-out loss that plateaus and falls again is missed, which makes the
            ceiling a little lower than it could be, never higher.
        search_speakers: meta-val speakers :meth:`choose` searches the grid on (the first ones; None: all).
        accent: also fit the accent oracle of every test speaker whose accent has other held-out speakers.
    """

    def __init__(
        self,
        scopes: list[str | list[str]] | None = None,
        learning_rates: list[float] | None = None,
        max_steps: int = 200,
        eval_every: int = 10,
        dev_fraction: float = 0.25,
        patience: int | None = 3,
        search_speakers: int | None = 8,
        accent: bool = False,
    ) -> None:
        rates = list(learning_rates) if learning_rates is not None else list(DEFAULT_LEARNING_RATES)
        if (max_steps < 0 or eval_every < 1 or not 0.0 < dev_fraction < 1.0 or (patience is not None and patience < 1)
                or not rates or any(lr <= 0 for lr in rates) or (search_speakers is not None and search_speakers < 1)):
            raise ValueError(
                f"model.oracle: max_steps >= 0, eval_every >= 1, 0 < dev_fraction < 1, patience >= 1 or null, "
                f"positive learning_rates and search_speakers >= 1 or null (got {max_steps}, {eval_every}, {dev_fraction}, "
                f"{patience}, {rates}, {search_speakers})"
            )
        self.scopes = [s if isinstance(s, str) else list(s) for s in (scopes or DEFAULT_SCOPES)]
        self.learning_rates = [float(lr) for lr in rates]
        self.max_steps, self.eval_every, self.dev_fraction = max_steps, eval_every, dev_fraction
        self.patience, self.search_speakers, self.accent = patience, search_speakers, accent
        self.chosen: OracleSetting | None = None
        self.search: dict[str, float] = {}

    @property
    def grid(self) -> list[OracleSetting]:
        """Every (scope, learning rate) candidate."""
        return [OracleSetting(scope, lr) for scope in self.scopes for lr in self.learning_rates]

    def describe(self) -> dict[str, object]:
        """The settings, and the choice made on meta-val with its search (for the report)."""
        chosen = None if self.chosen is None else {"scope": self.chosen.name, "lr": self.chosen.lr}
        return {"candidate_scopes": self.scopes, "learning_rates": self.learning_rates, "max_steps": self.max_steps,
                "eval_every": self.eval_every, "dev_fraction": self.dev_fraction, "patience": self.patience,
                "chosen_on_meta_val": chosen, "chosen_at_grid_edge": self.chosen_at_grid_edge(), "meta_val_wer": dict(self.search)}

    def chosen_at_grid_edge(self) -> str | None:
        """``"smallest"`` or ``"largest"`` where the learning rate chosen on meta-val is an end of a grid of several
        rates, else None (also with ``max_steps = 0``: no rate is used). Why: the best rate may lie beyond that end,
        so the ceiling may be understated until ``learning_rates`` is widened that way (with ``max_steps`` raised
        along with a smaller rate)."""
        if self.chosen is None or len(set(self.learning_rates)) < 2 or self.max_steps == 0:
            return None
        if self.chosen.lr == min(self.learning_rates):
            return "smallest"
        return "largest" if self.chosen.lr == max(self.learning_rates) else None

    def choose(self, model: StagedModel, loss: TaskLoss, tasks: Iterable[tuple[TaskBatch, TaskBatch]], score: Score,
               reduce: Callable[[list[float]], list[float]] = lambda counts: counts) -> OracleSetting | None:
        """Pick the grid point with the lowest corpus WER over meta-val ``tasks`` and keep it for :meth:`fit`.

        ``tasks``: ``(pool, evaluation)`` per meta-val speaker (``T = 1``); the oracle fine-tunes on ``pool`` and
        ``score`` counts its word errors on ``evaluation``. ``reduce`` sums the flat counts over DDP ranks.
        Without meta-val speakers nothing is chosen (None).
        """
        tasks = list(tasks)[: self.search_speakers]
        grid = self.grid
        counts = [0.0] * (2 * len(grid))
        for pool, evaluation in tasks:
            for index, setting in enumerate(grid):
                errors, words = score(self._fit_setting(model, loss, setting, pool), evaluation)
                counts[2 * index] += errors
                counts[2 * index + 1] += words
        counts = reduce(counts)
        if not any(counts[1::2]):  # no meta-val speakers: every test speaker searches the grid itself
            self.chosen, self.search = None, {}
            return None
        wers = [counts[2 * i] / max(counts[2 * i + 1], 1) for i in range(len(grid))]
        self.chosen = grid[min(range(len(grid)), key=lambda i: wers[i])]
        self.search = {f"{setting.name} @ {setting.lr:g}": wer for setting, wer in zip(grid, wers)}
        return self.chosen

    def fit(self, model: StagedModel, loss: TaskLoss, pool: TaskBatch) -> OracleFit:
        """Fine-tune on ``pool`` (``T = 1``, the speaker's oracle pool) with the setting chosen on meta-val, else
        with every grid point; the fit with the lowest held-out loss."""
        settings = [self.chosen] if self.chosen is not None else self.grid
        return min((self._fit_setting(model, loss, setting, pool) for setting in settings), key=lambda fit: fit.dev_loss)

    def fit_accent(self, model: StagedModel, loss: TaskLoss, pool: TaskBatch, others: list[TaskBatch]) -> OracleFit:
        """The accent oracle: fine-tune on the oracle pools ``others`` of the target's accent mates and the training
        part of the target's ``pool``, early-stopped on the target's held-out pool utterances, with the setting chosen on
        meta-val (without one: the first grid point, as a grid search over ~100 utterances per speaker is too slow)."""
        train, dev = self._split(pool)
        merged = train
        for other in others:
            merged = TaskBatch.concat_examples(merged, other)
        setting = self.chosen if self.chosen is not None else self.grid[0]
        return self._fit_scope(Learner(model, loss, setting.scope), setting, merged, dev)

    def _fit_setting(self, model: StagedModel, loss: TaskLoss, setting: OracleSetting, pool: TaskBatch) -> OracleFit:
        train, dev = self._split(pool)
        return self._fit_scope(Learner(model, loss, setting.scope), setting, train, dev)

    def _split(self, pool: TaskBatch) -> tuple[TaskBatch, TaskBatch]:
        """The training part and the held-out part (the last ``dev_fraction``) of one speaker's pool."""
        count = pool.examples_per_task
        if count < 2:
            raise ValueError(f"the speaker oracle needs at least 2 pool utterances, got {count}")
        held = max(1, math.ceil(self.dev_fraction * count))
        return pool.select(list(range(count - held))), pool.select(list(range(count - held, count)))

    def _fit_scope(self, learner: Learner, setting: OracleSetting, train: TaskBatch, dev: TaskBatch) -> OracleFit:
        with torch.no_grad():
            prepared_train, prepared_dev = learner.prepare(train), learner.prepare(dev)
        fast = {name: w.detach().clone().unsqueeze(0).requires_grad_(True) for name, w in learner.init_weights().items()}
        optimizer = torch.optim.Adam(fast.values(), lr=setting.lr)
        best = (self._dev_loss(learner, fast, prepared_dev), 0, _copy(fast))
        checks_without_gain = 0
        for step in range(1, self.max_steps + 1):
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                learner.losses(fast, prepared_train).sum().backward()
            optimizer.step()
            if step % self.eval_every == 0 or step == self.max_steps:
                dev_loss = self._dev_loss(learner, fast, prepared_dev)
                checks_without_gain = 0 if dev_loss < best[0] else checks_without_gain + 1
                if dev_loss < best[0]:
                    best = (dev_loss, step, _copy(fast))
                if self.patience is not None and checks_without_gain >= self.patience:
                    break
        return OracleFit(learner, best[2], setting.name, best[1], best[0], train.examples_per_task, setting.lr)

    @staticmethod
    @torch.no_grad()
    def _dev_loss(learner: Learner, fast: FastWeights, prepared_dev: PreparedTasks) -> float:
        value = float(learner.losses(fast, prepared_dev).sum())
        return value if math.isfinite(value) else math.inf


def _copy(fast: FastWeights) -> FastWeights:
    return {name: w.detach().clone() for name, w in fast.items()}
