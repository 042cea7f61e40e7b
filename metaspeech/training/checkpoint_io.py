"""Checkpoint files: written crash-safely, read safely.

Reading: :func:`load_checkpoint_file` is the one place that opens a checkpoint
(``torch.load(weights_only=True)``: no pickled code) and turns a missing or
unreadable file into a :class:`CheckpointError` that names it.

The format: besides Lightning's own keys, a metaspeech checkpoint carries a
``metaspeech`` section, :class:`MetaSpeechSection`, the one place that knows its keys:
the construction record (model, algorithm, scope, tokenizer, features) and the run
state of an exact resume. The module's checkpoint hooks write and read it
(:func:`save_module_section`, :func:`restore_module_section`),
:func:`read_metaspeech_section` reads it from a file (``test --ckpt_path``,
``tokenizer_from``, ``metaspeech adapt``), :meth:`MetaSpeechSection.module_arguments`
gives Lightning's ``load_from_checkpoint`` what the hyperparameters lack
(:func:`metaspeech.cli.inference.load_module`), and :func:`load_recognizer_weights` takes
the recognizer's weights from ``state_dict`` (``model.init_from``).

Writing: a checkpoint on disk is always either the old one or the new one, never half of one.

Lightning 2.6's ``TorchCheckpointIO`` serializes a checkpoint into memory, then
writes it inside an fsspec transaction, which for a local path writes a
temporary file in the *system* temp folder and ``shutil.move``\\ s it over the
target. When the temp folder and the checkpoint folder are on different file
systems (``/tmp`` on tmpfs, checkpoints on a network or scratch disk: the usual
cluster layout) that move is a copy, so a job killed mid-copy (a SLURM time
limit, an OOM kill) leaves a truncated ``last.ckpt`` and no way to resume; the
data is never ``fsync``\\ ed either, so a node crash can lose a checkpoint that
was reported as saved.

:func:`save_atomically` writes a temporary file *in the target's folder*,
flushes and ``fsync``\\ s it, ``os.replace``\\ s it over the target (atomic on
POSIX and Windows) and ``fsync``\\ s the folder. :class:`AtomicCheckpointIO` is
the Lightning plugin that uses it for local paths (remote URLs keep
Lightning's own handling); the ``metaspeech`` CLI installs it in every Trainer
whose checkpoint IO is Lightning's default (:func:`use_atomic_checkpoint_io`).
``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` with a full save
through this plugin, so ``last.ckpt`` is atomic too (``save_last="link"``
instead removes and re-creates a symlink, which is not).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from torch import nn

from metaspeech.atomic_files import TEMP_SUFFIX, remove_abandoned_temporaries, save_atomically, temporary_name  # noqa: F401
from metaspeech.engine.config import instantiate
from metaspeech.errors import ConfigError, MetaSpeechError
from metaspeech.speech.features import FeatureConfig
from metaspeech.speech.tokenizer import Tokenizer, tokenizer_from_dict
from metaspeech.training.loggers import log_version, wandb_run_id

SECTION = "metaspeech"
RECOGNIZER_PREFIX = "model."
"""Where the recognizer's weights sit in ``state_dict``: the LightningModule's ``model`` attribute."""


class CheckpointError(MetaSpeechError, ValueError):
    """A checkpoint or adaptation file cannot be used; the message says why and what to do."""


def load_checkpoint_file(
    path: str | Path, what: str = "checkpoint", hint: str = "pass the .ckpt written by `metaspeech fit`"
) -> dict[str, Any]:
    """The checkpoint dictionary at ``path``, loaded on the CPU without unpickling code.

    ``what`` names the file in errors and ``hint`` says where a missing one comes from (a saved
    speaker adaptation is read here too).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {hint}")
    try:
        with warnings.catch_warnings():  # a plain pickle of another protocol: refused below, the warning adds nothing
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch raises many types for bad files
        raise CheckpointError(f"cannot read {what} {path}: {_why_unreadable(path, err)}; {hint}") from None


def _why_unreadable(path: Path, err: Exception) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is not, in one phrase.

    Why not torch's own message: it advises re-running with ``weights_only=False``, which is wrong
    for a damaged file and unsafe for a hostile one (unpickling arbitrary objects runs their code).
    """
    message = str(err)
    if path.stat().st_size == 0:
        return "the file is empty"
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), not only tensors, and loading those could run code, "
                "so it is refused (do not load it with weights_only=False)")
    return "it is not a PyTorch checkpoint (truncated, damaged or another format)"


@dataclass(frozen=True)
class MetaSpeechSection:
    """The ``metaspeech`` section of a checkpoint; its fields are the section's keys.

    ``model`` and ``algorithm`` (each ``class_path`` + ``init_args``), ``scope``, ``tokenizer``
    (``Tokenizer.to_dict``) and ``features`` (``FeatureConfig`` fields) rebuild the model without
    unpickling code. ``skipped_steps`` and ``rng_seed`` make a resumed run repeat the
    uninterrupted one; ``wandb_run_id`` lets ``test --ckpt_path`` log into the fit's W&B run;
    ``log_version`` (the first logger's version) lets ``fit --ckpt_path`` continue in the same log
    folder, where Lightning's ``ModelCheckpoint`` finds its best-so-far score again.
    """

    model: dict[str, Any]
    algorithm: dict[str, Any]
    scope: list[str]
    tokenizer: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    skipped_steps: int = 0
    rng_seed: int | None = None
    wandb_run_id: str | None = None
    log_version: int | str | None = None

    def write_into(self, checkpoint: dict[str, Any]) -> None:
        """Store this section in a checkpoint dictionary (``on_save_checkpoint``)."""
        checkpoint[SECTION] = asdict(self)

    @classmethod
    def required(cls, checkpoint: dict[str, Any], path: str | Path) -> "MetaSpeechSection":
        """The section of the checkpoint loaded from ``path``; a :class:`CheckpointError` when it has none."""
        section = cls.of(checkpoint)
        if section is None:
            raise CheckpointError(f"{path} is not a metaspeech checkpoint (no 'metaspeech' section)")
        return section

    @classmethod
    def of(cls, checkpoint: dict[str, Any]) -> "MetaSpeechSection | None":
        """The section of a loaded checkpoint; None when it has none (a plain Lightning checkpoint)."""
        info = checkpoint.get(SECTION)
        if not info:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in info.items() if key in known})

    def module_arguments(self) -> dict[str, Any]:
        """The module's constructor arguments for ``load_from_checkpoint``: the recognizer and the algorithm,
        which its saved hyperparameters leave out (rebuilt from their records, weights untrained), and the scope."""
        return {"recognizer": instantiate(self.model), "algorithm": instantiate(self.algorithm), "scope": list(self.scope)}

    def feature_config(self) -> FeatureConfig:
        """The recorded feature settings (defaults where the section predates a setting)."""
        known = {f.name for f in fields(FeatureConfig)}
        return FeatureConfig(**{key: value for key, value in (self.features or {}).items() if key in known})

    def restore_tokenizer(self) -> Tokenizer | None:
        """The recorded tokenizer, of whatever kind it was; None when none was recorded."""
        return tokenizer_from_dict(self.tokenizer) if self.tokenizer is not None else None


def save_module_section(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_save_checkpoint`` of a :class:`~metaspeech.training.module.MetaSpeechModule`: record how to rebuild it and its run state."""
    tokenizer, features = module.tokenizer, module.feature_config
    MetaSpeechSection(
        model=module.model.init_config, algorithm=module.algorithm.init_config, scope=list(module.scope),
        tokenizer=tokenizer.to_dict() if tokenizer is not None else None, features=dict(vars(features)),
        skipped_steps=module.skipped_steps, rng_seed=module.rng_seed, wandb_run_id=wandb_run_id(module.loggers),
        log_version=log_version(module.loggers),
    ).write_into(checkpoint)


def restore_module_section(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_load_checkpoint`` of a :class:`~metaspeech.training.module.MetaSpeechModule`: its tokenizer and the run state
    of an exact resume (skipped steps, run seed). A checkpoint without a section restores no skipped steps."""
    section = MetaSpeechSection.of(checkpoint)
    module.skipped_steps = section.skipped_steps if section is not None else 0
    if section is not None and section.tokenizer is not None:
        module.tokenizer = section.restore_tokenizer()
    if section is not None and section.rng_seed is not None:
        module.rng_seed = int(section.rng_seed)


def read_metaspeech_section(path: str | Path) -> MetaSpeechSection:
    """The ``metaspeech`` section of the checkpoint at ``path``; a :class:`CheckpointError` when it has none."""
    return MetaSpeechSection.required(load_checkpoint_file(path), path)


def load_recognizer_weights(path: str | Path, recognizer: nn.Module) -> None:
    """Initialize ``recognizer`` with the recognizer weights of the checkpoint at ``path`` (``model.init_from``).

    Only the recognizer is taken: no algorithm meta-parameters, no optimizer state.
    """
    state = load_checkpoint_file(path)["state_dict"]
    weights = {k[len(RECOGNIZER_PREFIX):]: v for k, v in state.items() if k.startswith(RECOGNIZER_PREFIX)}
    try:
        recognizer.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"model.init_from={path}: its recognizer does not match this one: {err}") from err


def initialize_from(path: str, recognizer: nn.Module, stage: str, initialized: str | None) -> str:
    """``model.init_from`` at ``stage``: at fit, load ``path``'s recognizer weights; returns what was loaded.

    Any other stage would silently ignore it (a test right after the fit that loaded it is fine), so that
    is a :class:`ConfigError` that points to ``--ckpt_path``.
    """
    if stage == "fit":
        load_recognizer_weights(path, recognizer)
        return path
    if initialized != path:
        raise ConfigError(
            f"model.init_from={path} initializes meta-training (fit) only and would be ignored by "
            f"{getattr(stage, 'value', stage)}: to evaluate that checkpoint pass --ckpt_path={path} instead"
        )
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with crash-safe local writes (:func:`save_atomically`).

    Loading and removal are Lightning's; remote paths (``s3://``, ...) are saved by Lightning.
    Use it explicitly with ``Trainer(plugins=[AtomicCheckpointIO()])``; the ``metaspeech`` CLI
    installs it by default.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        local = str(path)
        if storage_options is not None or get_protocol(local) not in ("file", "local"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_atomically(checkpoint, local.split("://", 1)[1] if "://" in local else local)


def use_atomic_checkpoint_io(trainer: Any) -> CheckpointIO:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` where it would use Lightning's default ``TorchCheckpointIO``.

    Any other checkpoint IO (a user's plugin, XLA's, a sharded strategy's) is left alone; an
    ``AsyncCheckpointIO`` wrapper around the default gets the atomic plugin inside. Returns the
    strategy's checkpoint IO afterwards.
    """
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(current, _WrappingCheckpointIO):
        inner = current.checkpoint_io
        if inner is None:
            current.checkpoint_io = AtomicCheckpointIO()
        elif type(inner) is TorchCheckpointIO:
            current._checkpoint_io = AtomicCheckpointIO()
    return strategy.checkpoint_io


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, whose scores describe the weights saved with them, without its warning
    about manual optimization.

    Why the scores: with ``every_n_train_steps`` Lightning saves at the end of a training batch, before the
    validation of that step has run, so a monitored score (``val/wer_post``) would be the *previous*
    validation's, attached to newer weights: ``step200-wer0.310.ckpt`` would hold step 200's weights and step
    100's WER, and "the best checkpoint" would be chosen one validation late. While validation is on, this
    callback leaves the monitored metric out at the batch end, so Lightning defers that save to the end of the
    validation that follows, where weights and score belong to the same step (``last.ckpt`` is written there too).

    With ``every_n_train_steps`` and manual optimization, Lightning warns that a checkpoint
    holds the state *after* the optimizer step. That is the state a metaspeech checkpoint
    must hold: it matches ``global_step``, the optimizer and the sampler position, which
    is what makes resuming exact. The warning is silenced around this callback's own
    saving only; every other warning is left alone.
    """

    _at_batch_end = False

    def on_train_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        self._at_batch_end = self.monitor is not None and trainer.enable_validation
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)
                super().on_train_batch_end(trainer, *args, **kwargs)
        finally:
            self._at_batch_end = False

    def _monitor_candidates(self, trainer: Any) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        if self._at_batch_end:
            candidates.pop(self.monitor, None)  # stale until this step's validation has run
        return candidates
