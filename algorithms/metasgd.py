"""Meta-SGD (Li et al., 2017): a learned inner learning rate for every adapted weight."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.learner import Learner


class MetaSGD(MetaAlgorithm):
    """MAML whose inner step is ``w - alpha * g`` with ``alpha`` a meta-learned tensor shaped like ``w``.

    ``alpha`` starts at ``inner_lr`` and one set is learned per inner step when
    ``per_step=True``. It gets a gradient even without second-order terms, since the
    fast weights depend on it directly.
    """

    learns_inner_lr = True

    def __init__(
        self,
        inner_steps: int = 5,
        inner_lr: float = 0.1,
        second_order: bool = True,
        per_step: bool = False,
        second_order_steps: int | None = None,
        inner_objective: str = "supervised",
        transductive: bool = False,
    ) -> None:
        super().__init__(inner_steps, inner_lr, second_order, second_order_steps=second_order_steps,
                         inner_objective=inner_objective, transductive=transductive)
        self.per_step = per_step
        self.learning_rates = nn.ParameterDict()

    def setup(self, learner: Learner) -> None:
        copies = self.inner_steps if self.per_step else 1
        for name, w in learner.init_weights().items():
            for step in range(copies):
                key = self._key(name, step)
                if key not in self.learning_rates:
                    self.learning_rates[key] = nn.Parameter(torch.full_like(w.detach(), float(self.inner_lr)))

    def step_size(self, step: int, name: str) -> Tensor:
        index = min(step, self.inner_steps - 1) if self.per_step else 0
        return self.learning_rates[self._key(name, index)]

    @staticmethod
    def _key(name: str, step: int) -> str:
        return f"{name.replace('.', '__')}__step{step}"
