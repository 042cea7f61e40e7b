"""A plugin defined outside the package, selected by its import path from the CLI, trains."""

from __future__ import annotations

from metaspeech.algorithms import MetaAlgorithm
from metaspeech.cli.main import main

CALLS = {"step_size": 0}


class HalvingLR(MetaAlgorithm):
    """A user's algorithm: MAML-style, inner learning rate halves every step."""

    def __init__(self, inner_steps: int = 2, inner_lr: float = 0.5) -> None:
        super().__init__(inner_steps, inner_lr, second_order=False)

    def step_size(self, step: int, name: str) -> float:
        CALLS["step_size"] += 1
        return self.inner_lr * 0.5**step


def test_user_defined_plugin_is_selected_by_import_path_and_trains(tiny_cli_args) -> None:
    main([
        "fit", *tiny_cli_args("maml.yaml"),
        f"--model.algorithm.class_path={__name__}.HalvingLR", "--model.algorithm.init_args.inner_steps=2",
        "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
    ])
    assert CALLS["step_size"] > 0
