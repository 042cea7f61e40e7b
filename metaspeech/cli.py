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

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from metaspeech.checkpoint_io import use_atomic_checkpoint_io
from metaspeech.datamodules.episodic import EpisodicDataModule
from metaspeech.module import MetaSpeechModule

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class MetaSpeechCLI(LightningCLI):
    """LightningCLI with the links that keep model and data consistent, and crash-safe checkpoints.

    The vocabulary size and the feature dimension come from the data module, so a
    config never states them twice. Checkpoints are written atomically
    (:class:`~metaspeech.checkpoint_io.AtomicCheckpointIO`): a job killed while saving
    keeps its previous ``last.ckpt``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from jsonargparse import lazy_instance

        from metaspeech.datamodules import EmbeddedCorpus

        parser.set_defaults({"data": lazy_instance(EmbeddedCorpus)})  # a config without data runs on the embedded corpus
        parser.link_arguments("data.vocab_size", "model.recognizer.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.feature_dim", "model.recognizer.init_args.input_dim", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured Trainer, writing checkpoints atomically (see :mod:`metaspeech.checkpoint_io`).

        Installed here rather than as a ``trainer.plugins`` default so that a config listing
        its own plugins (a cluster environment, a precision plugin) keeps crash-safe checkpoints;
        a config naming a ``CheckpointIO`` other than Lightning's ``TorchCheckpointIO`` keeps it.
        """
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoint_io(trainer)
        return trainer


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
    return build_cli(argv if args is not None else None)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
