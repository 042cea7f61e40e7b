"""The ``metaspeech`` command.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own CLI
(:class:`MetaSpeechCLI`): configuration is YAML, any recognizer, algorithm or
data module (including a user's, by import path) is selected with
``class_path`` / ``init_args``. The practitioner's and housekeeping commands
(``adapt``, ``transcribe``, ``generate``, ``compare``, ``demo``) live in
:mod:`metaspeech.commands`.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from metaspeech.datamodules.episodic import EpisodicDataModule
from metaspeech.module import MetaSpeechModule

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class MetaSpeechCLI(LightningCLI):
    """LightningCLI with the links that keep model and data consistent.

    The vocabulary size and the feature dimension come from the data module, so a
    config never states them twice.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.recognizer.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.feature_dim", "model.recognizer.init_args.input_dim", apply_on="instantiate")


def build_cli(args: list[str] | None = None, run: bool = True) -> MetaSpeechCLI:
    """Construct (and by default run) the Lightning CLI in-process."""
    return MetaSpeechCLI(
        MetaSpeechModule,
        EpisodicDataModule,
        subclass_mode_data=True,
        trainer_defaults={"inference_mode": False, "use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> Any:
    """Entry point of the ``metaspeech`` console script (tests call ``main([...])``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] not in LIGHTNING_SUBCOMMANDS and not argv[0].startswith("-"):
        from metaspeech.commands import run_command

        return run_command(argv)
    return build_cli(argv)


if __name__ == "__main__":
    main()
