"""MAML (Finn et al., 2017) and first-order MAML."""

from __future__ import annotations

from typing import Sequence

from metaspeech.engine.algorithm import MetaAlgorithm


class MAML(MetaAlgorithm):
    """Second-order MAML: the meta-gradient backpropagates through the inner loop.

    With a head-only scope (``scope: [head]``) this is ANIL (Raghu et al., 2020).
    ``second_order_steps=m`` differentiates through the last m inner steps only
    (truncated backpropagation: memory of m steps, not ``inner_steps``).
    """

    def __init__(
        self,
        inner_steps: int = 5,
        inner_lr: float | Sequence[float] = 0.1,
        second_order: bool = True,
        eval_inner_lr: float | None = None,
        second_order_steps: int | None = None,
        inner_objective: str = "supervised",
        transductive: bool = False,
        inner_optimizer: str = "sgd",
    ) -> None:
        super().__init__(inner_steps, inner_lr, second_order, eval_inner_lr, second_order_steps, inner_objective, transductive,
                         inner_optimizer)


class FOMAML(MetaAlgorithm):
    """First-order MAML: inner gradients are treated as constants (no ``create_graph``)."""

    def __init__(
        self,
        inner_steps: int = 5,
        inner_lr: float | Sequence[float] = 0.1,
        eval_inner_lr: float | None = None,
        inner_objective: str = "supervised",
        transductive: bool = False,
        inner_optimizer: str = "sgd",
    ) -> None:
        super().__init__(inner_steps, inner_lr, second_order=False, eval_inner_lr=eval_inner_lr, inner_objective=inner_objective,
                         transductive=transductive, inner_optimizer=inner_optimizer)
