"""The Lightning CLI behind ``metaspeech fit | validate | test | predict``.

:class:`MetaSpeechCLI` is LightningCLI with the links that keep model and data
consistent, crash-safe checkpoints, a progress bar that counts outer steps, and
evaluation of a checkpoint that rebuilds the model from it. :func:`build_cli` is
how the console script (:mod:`metaspeech.cli.main`) and the experiment runner
(:mod:`metaspeech.cli.experiment`) construct it.
"""

from __future__ import annotations

import argparse
import inspect
import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metaspeech.cli.config_errors import readable_config_error
from metaspeech.datamodules.episodic import EpisodicDataModule
from metaspeech.engine.config import import_class
from metaspeech.errors import ConfigError, MetaSpeechError
from metaspeech.training.checkpoint_io import MetaSpeechSection, read_metaspeech_section, use_atomic_checkpoint_io
from metaspeech.training.module import MetaSpeechModule
from metaspeech.training.progress import MetaTrainingProgressBar

LIGHTNING_SUBCOMMANDS = {
    "fit": "meta-train a recognizer (an episodic outer loop over speaker-tasks)",
    "validate": "meta-validate a checkpoint: adapt to each meta-val speaker and score",
    "test": "run the k-shot x s-step adaptation protocol on the held-out speakers",
    "predict": "adapt to and transcribe the held-out speakers",
}
FROM_CHECKPOINT = ("validate", "test", "predict")
"""Subcommands that evaluate a trained model: with ``--ckpt_path`` the model is rebuilt from the checkpoint."""
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc")
"""``--ckpt_path`` values that Lightning resolves itself (a checkpoint callback's file, SLURM's)."""


class RunInterrupted(Exception):
    """A run that Lightning stopped cleanly on SIGTERM or SIGINT; the console script exits with ``128 + signal``.

    Why: Lightning ends a run on SIGTERM with ``SystemExit(None)`` (exit status 0) and on Ctrl-C with
    ``sys.exit(1)``; a scheduler or CI must not read either as a success or a crash. The run has stopped
    after its current batch, so every checkpoint written before the signal is complete.
    """

    def __init__(self, signum: signal.Signals, step: int) -> None:
        super().__init__(f"stopped by {signum.name} after {step} outer step(s); checkpoints written before it are kept "
                         "(resume with --ckpt_path=<its last.ckpt>)")
        self.signum, self.step = signum, step

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)


class MetaSpeechArgumentParser(LightningArgumentParser):
    """Lightning's argument parser, whose errors are one readable line (:mod:`metaspeech.cli.config_errors`).

    A refused command line or config raises a :class:`~metaspeech.errors.ConfigError` naming the key, its
    value and the closest valid key or class, instead of printing the usage; ``--help`` prints the usage.
    Abbreviated options are refused: ``--trainer.max_step`` is a typo to point out, not ``max_steps``.
    Parsers that jsonargparse builds internally (``exit_on_error=False``) keep their behaviour.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.command_line: list[str] = sys.argv[1:]  # where an offending key's value is looked up

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        readable = readable_config_error(message, self.command_line, _option_strings(self))
        raise ConfigError(f"{readable} (--help lists the options)") from ex


def _option_strings(parser: argparse.ArgumentParser) -> Iterator[str]:
    """Every option string of ``parser`` and of its subcommands' parsers."""
    for action in parser._actions:
        yield from (option for option in action.option_strings if option.startswith("--"))
        if isinstance(action.choices, dict):
            for subparser in action.choices.values():
                if isinstance(subparser, argparse.ArgumentParser):
                    yield from _option_strings(subparser)


class MetaSpeechCLI(LightningCLI):
    """LightningCLI with the links that keep model and data consistent, and crash-safe checkpoints.

    The vocabulary size and the feature dimension come from the data module, so a
    config never states them twice: they are the recognizer's constructor arguments, linked
    here; the tokenizer and feature settings reach the model at setup instead
    (:mod:`metaspeech.datamodules.contract`, docs/architecture.md "What the model takes from the data"). Checkpoints are written atomically
    (:class:`~metaspeech.training.checkpoint_io.AtomicCheckpointIO`): a job killed while saving
    keeps its previous ``last.ckpt``. ``validate`` / ``test`` / ``predict`` with
    ``--ckpt_path`` rebuild the recognizer, algorithm, scope, features and tokenizer
    from the checkpoint, so no architecture flag of the fit has to be repeated.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        self.command_line: list[str] = [str(a) for a in (given if given is not None else sys.argv[1:])]
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        if isinstance(parser, MetaSpeechArgumentParser):
            parser.command_line = self.command_line
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from jsonargparse import lazy_instance

        from metaspeech.datamodules import EmbeddedCorpus

        parser.set_defaults({"data": lazy_instance(EmbeddedCorpus)})  # a config without data runs on the embedded corpus
        parser.link_arguments("data.vocab_size", "model.recognizer.init_args.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.feature_dim", "model.recognizer.init_args.input_dim", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then read ``--ckpt_path`` with metaspeech's checkpoint reader.

        Why here: Lightning loads that file next (for its hyperparameters), and its loader turns a
        missing, damaged or hostile file into a traceback that advises ``weights_only=False``.
        :func:`~metaspeech.training.checkpoint_io.read_metaspeech_section` refuses such a file first, in one
        line. Lightning's own names (``last``, ``best``, ``hpc``, ``registry...``) and remote URLs are
        left to Lightning.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._checkpoint_section: MetaSpeechSection | None = None
        if path and str(path) not in LIGHTNING_CHECKPOINT_NAMES and not str(path).startswith("registry") and "://" not in str(path):
            self._checkpoint_section = read_metaspeech_section(path)

    def instantiate_classes(self) -> None:
        """Lightning's, but a refused value (a :class:`MetaSpeechError` raised by a constructor) stays that error.

        Why: jsonargparse wraps an error raised while it builds a class of a Union type (``data`` may be
        None) into a ValueError with the whole configuration as its message.
        """
        try:
            super().instantiate_classes()
        except Exception as err:  # noqa: BLE001 -- re-raised unless a user-facing error caused it
            cause = _user_facing_cause(err)
            if cause is None or cause is err:
                raise
            raise cause from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand in FROM_CHECKPOINT and config.get("ckpt_path"):
            self._rebuild_from_checkpoint(config, str(config.ckpt_path))
        if self.subcommand == "fit" and self._checkpoint_section is not None:
            _continue_logging(config, self._checkpoint_section)

    def _rebuild_from_checkpoint(self, config: Namespace, path: str) -> None:
        """Take the model's construction record from the checkpoint; refuse command-line overrides that contradict it."""
        section = self._checkpoint_section or read_metaspeech_section(path)
        recorded = {
            "model.recognizer": section.model,
            "model.algorithm": section.algorithm,
            "model.scope": section.scope,
        }
        if section.features and "features" in config.data.get("init_args", {}):
            recorded["data.init_args.features"] = section.features
        for key, value in recorded.items():
            self._check_overrides(key, value, path)
            config[key] = _to_namespace(value)
        if "tokenizer_from" in config.data.get("init_args", {}) and not config.data.init_args.tokenizer_from:
            config.data.init_args.tokenizer_from = path
        _resume_wandb_run(config, section.wandb_run_id)

    def _check_overrides(self, key: str, recorded: Any, path: str) -> None:
        """Refuse ``--<key>...`` arguments whose value differs from what the checkpoint recorded for ``key``.

        The values are read from the command line itself: Lightning has already merged the
        checkpoint's hyperparameters into the config by now.
        """
        for part, argument, value in _overridden_parts(self.command_line, key):
            if part.rsplit(".", 1)[-1] in ("vocab_size", "input_dim"):
                continue  # link targets: set from the data module
            for name, expected in _differences(value, _lookup(recorded, part), part):
                raise ConfigError(
                    f"{argument} contradicts checkpoint {path}, which was trained with {key}{name}={expected!r}: "
                    "the model is rebuilt from the checkpoint, so drop the override (or fit a new model)"
                )

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a stop on SIGTERM or SIGINT (Lightning's clean shutdown) becomes :class:`RunInterrupted`."""
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as stop:
            trainer = getattr(self, "trainer", None)
            if isinstance(stop, SIGTERMException):
                raise RunInterrupted(signal.SIGTERM, trainer.global_step if trainer else 0) from None
            if trainer is not None and trainer.interrupted and stop.code == 1:  # Lightning's exit after KeyboardInterrupt
                raise RunInterrupted(signal.SIGINT, trainer.global_step) from None
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured Trainer, writing checkpoints atomically (see :mod:`metaspeech.training.checkpoint_io`).

        Unless the config names a progress bar (or disables it), it is
        :class:`~metaspeech.training.progress.MetaTrainingProgressBar`, which counts outer steps.
        Atomic checkpoint IO is installed here rather than as a ``trainer.plugins`` default so that a config listing
        its own plugins (a cluster environment, a precision plugin) keeps crash-safe checkpoints;
        a config naming a ``CheckpointIO`` other than Lightning's ``TorchCheckpointIO`` keeps it.
        """
        trainer_config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, MetaTrainingProgressBar()]  # outer steps done / max_steps, time left
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoint_io(trainer)
        return trainer


def _user_facing_cause(err: BaseException) -> MetaSpeechError | None:
    """The first :class:`MetaSpeechError` in the chain of causes of ``err`` (``err`` itself included)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MetaSpeechError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _continue_logging(config: Namespace, section: MetaSpeechSection) -> None:
    """A resumed fit logs into the W&B run or log version of the checkpoint's fit (unless the config names one).

    Why: ``ModelCheckpoint``'s default folder is inside the logger's version folder, and it reloads its
    best-so-far score (``best_model_score``) only when the folder is unchanged; in a new ``version_N`` the
    resumed run would pick its "best" checkpoint among its own steps only.
    """
    logger = config.trainer.get("logger")
    if not isinstance(logger, Namespace) or section.log_version is None:
        return
    if str(logger.get("class_path", "")).endswith("WandbLogger"):
        _resume_wandb_run(config, section.wandb_run_id)
        return
    init_args = logger.get("init_args") or Namespace()
    if "version" in _parameter_names(str(logger.get("class_path", ""))) and init_args.get("version") is None:
        init_args.version = section.log_version
        logger.init_args = init_args


def _parameter_names(class_path: str) -> set[str]:
    try:
        return set(inspect.signature(import_class(class_path)).parameters)
    except (MetaSpeechError, ValueError, TypeError):
        return set()


def _resume_wandb_run(config: Namespace, run_id: str | None) -> None:
    """Log an evaluation of a checkpoint into the W&B run of its fit (unless the config names a run id)."""
    logger = config.trainer.get("logger")
    if not run_id or not isinstance(logger, Namespace) or not str(logger.get("class_path", "")).endswith("WandbLogger"):
        return
    init_args = logger.get("init_args") or Namespace()
    if init_args.get("id"):
        return
    init_args.id = run_id
    logger.init_args = init_args
    logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "resume": "allow"}


def _overridden_parts(command_line: list[str], key: str) -> Iterator[tuple[str, str, Any]]:
    """``(sub-key, argument, value)`` for every ``--key...`` argument (``--k=v`` or ``--k v``).

    The sub-key is ``""`` for ``--key`` itself and ``".init_args.d_model"`` for
    ``--model.recognizer.init_args.d_model`` or its short form ``--model.recognizer.d_model``.
    """
    for index, argument in enumerate(command_line):
        name, has_value, text = argument.partition("=")
        if not (name == f"--{key}" or name.startswith(f"--{key}.")):
            continue
        if not has_value:
            text = command_line[index + 1] if index + 1 < len(command_line) else ""
            argument = f"{argument} {text}"
        part = name[len(key) + 2:]
        if part and key in ("model.recognizer", "model.algorithm") and not part.startswith((".init_args", ".class_path")):
            part = ".init_args" + part
        yield part, argument, yaml.safe_load(text) if text else None


def _lookup(recorded: Any, part: str) -> Any:
    for name in [p for p in part.split(".") if p]:
        recorded = recorded.get(name) if isinstance(recorded, dict) else None
    return recorded


def _to_namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return Namespace(**{k: _to_namespace(v) for k, v in value.items()})
    return value


def _differences(given: Any, recorded: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, recorded value)`` wherever a command-line value ``given`` disagrees with ``recorded``."""
    if isinstance(given, dict) and isinstance(recorded, dict):
        for name, value in given.items():
            yield from _differences(value, recorded.get(name), f"{prefix}.{name}")
    elif isinstance(given, str) and isinstance(recorded, dict) and "class_path" in recorded:
        yield from _differences(given, recorded["class_path"], f"{prefix}.class_path")  # --model.recognizer=ConformerCTC
    elif isinstance(given, str) and prefix.endswith("class_path") and isinstance(recorded, str):
        if given.rsplit(".", 1)[-1] != recorded.rsplit(".", 1)[-1] or ("." in given and import_class(given) is not import_class(recorded)):
            yield prefix, recorded
    elif given != recorded and not (
        isinstance(given, (list, tuple)) and isinstance(recorded, (list, tuple)) and list(given) == list(recorded)
    ):
        yield prefix, recorded


@contextmanager
def _arguments_from(args: list[str] | None) -> Iterator[None]:
    """Make ``args`` the only command line LightningCLI sees.

    Why: LightningCLI warns when it is given ``args`` while the process has command-line
    arguments of its own, a guard against mixing the two. ``compare`` and ``demo`` build
    each run from a complete argument list, so the process's own arguments (``demo ...``)
    are not an input of those runs and are hidden from the parser while it runs. (A DDP
    launcher that re-runs ``sys.argv`` for the other ranks therefore cannot be used from
    ``compare`` / ``demo``; ``metaspeech fit`` keeps the real command line for it.)
    """
    if args is None:
        yield
        return
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def build_cli(args: list[str] | None = None, run: bool = True) -> MetaSpeechCLI:
    """Construct (and by default run) the Lightning CLI in-process; ``args=None`` reads ``sys.argv``."""
    with _arguments_from(args):
        return MetaSpeechCLI(
            MetaSpeechModule,
            EpisodicDataModule,
            subclass_mode_data=True,
            trainer_defaults={"inference_mode": False, "use_distributed_sampler": False},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=MetaSpeechArgumentParser,
            parser_kwargs={"description": "metaspeech: meta-learning for fast speaker adaptation (Lightning CLI)"},
            args=args,
            run=run,
        )
