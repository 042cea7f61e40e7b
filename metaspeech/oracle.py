"""The speaker oracle: the same recognizer made speaker-dependent, the ceiling few-shot adaptation aims at.

Why: "adaptation lowers WER by 5 %" says little alone. If the base is weak, most of its
error is generic recognition error that no speaker transform removes, and 5 % may be all
there is to gain; if the base is strong, 5 % may be a tenth of it. The oracle measures
what *is* there to gain: it fine-tunes the recognizer on a large pool of one held-out
speaker (the few-shot pool and more of that speaker's utterances, never the evaluation
set) for every candidate scope, with Adam, early-stopped on a held-out part of that pool.
The report then states the **share of the speaker gap closed**,
``(WER at s=0 - WER adapted) / (WER at s=0 - oracle WER)``, which says whether an
algorithm is good whatever the base.

The oracle is plain supervised fine-tuning through the functional :class:`Learner`:
the recognizer's own parameters never change (its fast weights are copies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metaspeech.batch import TaskBatch
from metaspeech.learner import FastWeights, Learner, PreparedTasks, TaskLoss
from metaspeech.models.staged import StagedModel

DEFAULT_SCOPES: tuple[str | tuple[str, ...], ...] = (("lin", "lhuc", "head"), "all")


@dataclass(frozen=True)
class OracleFit:
    """The oracle of one speaker: the scope and step count its held-out pool utterances chose."""

    learner: Learner
    fast: FastWeights
    scope: str
    steps: int
    dev_loss: float
    training_utterances: int


class SpeakerOracle:
    """Speaker-dependent fine-tuning with early stopping, one speaker at a time.

    Args:
        scopes: candidate adaptation scopes (presets or name globs, as ``model.scope``); the
            one with the lowest held-out loss wins, per speaker.
        max_steps: full-batch Adam steps at most.
        lr: Adam's learning rate.
        eval_every: check the held-out loss every this many steps (and at step 0).
        dev_fraction: share of the oracle pool held out for early stopping (at least one utterance).
        patience: stop a scope's fine-tuning after this many checks without a new best held-out
            loss (None, the default: always run ``max_steps``). It saves time where a scope over-fits
            early (``all`` often does within 5-10 steps, and the oracle is most of the test protocol's
            time), but a held-out loss that plateaus and falls again is missed: on the demo's joint model
            patience 3 raised the oracle's held-out WER from 25.5 % to 26.0 % (BENCHMARKS.md §2), which
            flatters the share of the gap closed.
    """

    def __init__(
        self,
        scopes: list[str | list[str]] | None = None,
        max_steps: int = 40,
        lr: float = 1e-3,
        eval_every: int = 5,
        dev_fraction: float = 0.25,
        patience: int | None = None,
    ) -> None:
        if max_steps < 0 or eval_every < 1 or not 0.0 < dev_fraction < 1.0 or (patience is not None and patience < 1):
            raise ValueError(
                f"model.oracle: max_steps >= 0, eval_every >= 1, 0 < dev_fraction < 1 and patience >= 1 or null "
                f"(got {max_steps}, {eval_every}, {dev_fraction}, {patience})"
            )
        self.scopes = [s if isinstance(s, str) else list(s) for s in (scopes or DEFAULT_SCOPES)]
        self.max_steps, self.lr, self.eval_every, self.dev_fraction = max_steps, lr, eval_every, dev_fraction
        self.patience = patience

    def describe(self) -> dict[str, object]:
        """The settings as plain values (for the report)."""
        return {"candidate_scopes": self.scopes, "max_steps": self.max_steps, "lr": self.lr, "eval_every": self.eval_every,
                "dev_fraction": self.dev_fraction, "patience": self.patience}

    def fit(self, model: StagedModel, loss: TaskLoss, pool: TaskBatch) -> OracleFit:
        """Fine-tune on ``pool`` (``T = 1``, the speaker's oracle pool) for every scope; the best fit."""
        count = pool.examples_per_task
        if count < 2:
            raise ValueError(f"the speaker oracle needs at least 2 pool utterances, got {count}")
        held = max(1, math.ceil(self.dev_fraction * count))
        train, dev = pool.select(list(range(count - held))), pool.select(list(range(count - held, count)))
        fits = [self._fit_scope(Learner(model, loss, scope), scope, train, dev) for scope in self.scopes]
        return min(fits, key=lambda fit: fit.dev_loss)

    def _fit_scope(self, learner: Learner, scope: str | list[str], train: TaskBatch, dev: TaskBatch) -> OracleFit:
        with torch.no_grad():
            prepared_train, prepared_dev = learner.prepare(train), learner.prepare(dev)
        fast = {name: w.detach().clone().unsqueeze(0).requires_grad_(True) for name, w in learner.init_weights().items()}
        optimizer = torch.optim.Adam(fast.values(), lr=self.lr)
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
        name = scope if isinstance(scope, str) else ",".join(scope)
        return OracleFit(learner, best[2], name, best[1], best[0], train.examples_per_task)

    @staticmethod
    @torch.no_grad()
    def _dev_loss(learner: Learner, fast: FastWeights, prepared_dev: PreparedTasks) -> float:
        value = float(learner.losses(fast, prepared_dev).sum())
        return value if math.isfinite(value) else math.inf


def _copy(fast: FastWeights) -> FastWeights:
    return {name: w.detach().clone() for name, w in fast.items()}
