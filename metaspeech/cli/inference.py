"""Using a trained model: load it, adapt it to one speaker, save the adaptation, transcribe.

A *speaker adaptation* is small: the adapted fast weights of the scope (e.g.
LHUC scales, the input transform, the head) plus metadata, saved with
``torch.save`` and loadable with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaspeech.engine.batch import TaskBatch
from metaspeech.engine.learner import Learner
from metaspeech.errors import DataError
from metaspeech.speech.audio import load_audio
from metaspeech.speech.features import FeatureConfig, FeatureExtractor
from metaspeech.speech.objectives import SUPERVISED
from metaspeech.speech.text import normalize_text
from metaspeech.speech.tokenizer import CharTokenizer, UnknownCharacterError
from metaspeech.training.checkpoint_io import (
    CheckpointError,
    load_checkpoint_file,
    read_metaspeech_section,
    save_atomically,  # noqa: F401 -- re-exported: adaptation files are saved with it
)
from metaspeech.training.module import MetaSpeechModule

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def load_module(checkpoint_path: str | Path) -> MetaSpeechModule:
    """Rebuild a trained :class:`MetaSpeechModule` from a metaspeech checkpoint (no pickled code), in eval mode.

    Lightning's ``load_from_checkpoint`` does the rebuilding (hyperparameters, ``on_load_checkpoint``,
    strict weights); the checkpoint's ``metaspeech`` section gives it the recognizer and algorithm the
    hyperparameters leave out, the scope and the features it was trained on. Reading the section
    first turns a missing, unreadable or non-metaspeech file into a :class:`CheckpointError`.
    """
    section = read_metaspeech_section(checkpoint_path)
    try:
        module = MetaSpeechModule.load_from_checkpoint(
            checkpoint_path, map_location="cpu", weights_only=True, **section.module_arguments()
        )
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint_path}: weights do not fit the model recorded in it: {err}") from err
    module.use_front_end(module.tokenizer, section.feature_config())
    return module.eval()


@dataclass
class Recording:
    """One audio file, with its transcript when known."""

    path: Path
    text: str | None


def find_recordings(source: str | Path, require_text: bool) -> list[Recording]:
    """Audio files of a folder (``x.wav`` + optional ``x.txt``) or of a JSONL manifest."""
    source = Path(source)
    if source.is_file() and source.suffix == ".jsonl":
        from metaspeech.datamodules.manifest import read_manifest

        return [Recording(Path(r.audio_filepath), r.text) for r in read_manifest(source)]
    if source.is_file():
        return [Recording(source, _transcript_of(source))]
    if not source.exists():
        raise DataError(f"{source} does not exist: give an audio file, a folder of recordings or a .jsonl manifest")
    if not source.is_dir():
        raise DataError(f"{source} is neither an audio file, a folder of recordings nor a .jsonl manifest")
    audio = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not audio:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {source}")
    recordings = [Recording(p, _transcript_of(p)) for p in audio]
    missing = [str(r.path) for r in recordings if r.text is None]
    if require_text and missing:
        raise DataError(
            f"{len(missing)} recording(s) have no transcript, e.g. {missing[0]}: "
            f"put the text in {Path(missing[0]).with_suffix('.txt').name} next to it, use a JSONL manifest, "
            "or adapt without transcripts with --objective entropy (docs/label_free.md)"
        )
    return recordings


def _transcript_of(audio: Path) -> str | None:
    text_file = audio.with_suffix(".txt")
    return text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else None


def featurize(recordings: list[Recording], config: FeatureConfig, tokenizer: CharTokenizer | None) -> TaskBatch:
    """Recordings of one speaker -> a :class:`TaskBatch` with ``T = 1``."""
    from metaspeech.datamodules.collate import collate_tasks
    from metaspeech.datamodules.dataset import UtteranceItem

    extractor = FeatureExtractor(config)
    items = []
    for recording in recordings:
        features, statistics = extractor.extract(load_audio(recording.path, config.sample_rate))
        text = normalize_text(recording.text or "")
        tokens: list[int] = []
        if tokenizer is not None and recording.text is not None:
            try:
                tokens = tokenizer.encode(text)
            except UnknownCharacterError as err:
                raise DataError(f"{recording.path}: {err}") from err
        items.append(UtteranceItem(features.float(), torch.tensor(tokens, dtype=torch.long), text, recording.path.stem,
                                   statistics=statistics.float()))
    return collate_tasks([items])


def adapt_speaker(module: MetaSpeechModule, recordings: list[Recording], steps: int,
                  objective: str = SUPERVISED) -> dict[str, Any]:
    """Adapt ``module`` to one speaker; returns the saveable adaptation (fast weights + metadata).

    ``objective`` is what the inner steps minimize: ``supervised`` reads the transcripts; a label-free one
    (``entropy``, ``pseudo_label``: :mod:`metaspeech.speech.objectives`) only the audio, and its adaptation is kept
    only if the collapse guard passes it (``guard_kept``). The support losses are the objective's.
    """
    support = featurize(recordings, module.feature_config, module.tokenizer)
    start = module.adapter.unadapted(1)
    before = float(module.adapter.loss(support, start, objective).mean())
    kept = True
    if objective == SUPERVISED:
        fast = module.adapt(support, steps, objective)
    else:
        adapted, guard = module.adapter.adapt_label_free(support, [steps], objective)
        fast, kept = adapted[steps], bool(guard[steps].all())
    after = float(module.adapter.loss(support, fast, objective).mean())
    return {
        "fast_weights": {name: w[0].clone() for name, w in fast.items()},
        "scope": list(module.test_time.scope or module.scope),
        "model": module.model.init_config,
        "steps": steps,
        "objective": objective,
        "guard_kept": kept,
        "utterances": len(recordings),
        "seconds": float(support.inputs[1].sum()) * module.feature_config.frame_shift_seconds,
        "support_loss_before": before,
        "support_loss_after": after,
    }


def load_adaptation(path: str | Path, module: MetaSpeechModule) -> dict[str, Tensor]:
    """Fast weights ``[1, ...]`` of a saved adaptation, checked against ``module``: any scope of its recognizer
    (``metaspeech adapt --scope``), each weight of its parameter's shape."""
    data = load_checkpoint_file(path, what="speaker adaptation", hint="create it with `metaspeech adapt`")
    if data.get("model") != module.model.init_config:
        raise CheckpointError(
            f"{path} was adapted from a different model ({data.get('model', {}).get('class_path')}); "
            "use the checkpoint it was created from"
        )
    parameters = dict(module.model.named_parameters())
    saved = data.get("fast_weights", {})
    misfit = sorted(n for n, w in saved.items() if n not in parameters or tuple(w.shape) != tuple(parameters[n].shape))
    if misfit or not saved:
        raise CheckpointError(f"{path} holds no adapted weights of this model's parameters ({misfit[:3]}): "
                              "create it with `metaspeech adapt` from this checkpoint")
    return {name: saved[name].unsqueeze(0).to(parameters[name]) for name in parameters if name in saved}


def transcribe_files(module: MetaSpeechModule, recordings: list[Recording], adaptation: dict[str, Tensor] | None) -> list[str]:
    """Transcripts of ``recordings`` by the recognizer's decoder (with a speaker adaptation of any scope if given)."""
    batch = featurize(recordings, module.feature_config, None)
    if adaptation is None:
        return module.transcribe(batch)[0]
    return module.transcribe(batch, adaptation, Learner(module.model, module.model.loss, list(adaptation)))[0]


def transcribe_transductive(module: MetaSpeechModule, recordings: list[Recording], steps: int, objective: str,
                            chunk: int = 16) -> list[str]:
    """Transcripts of ``recordings``, each decoded after ``steps`` label-free inner steps on *itself*.

    Why: single-utterance test-time adaptation (SUTA, Lin et al. 2022) needs no transcript and no enrolment;
    on the demo corpus it lowers WER by ~9 % (BENCHMARKS.md §2). Every recording starts from the unadapted
    weights; ``chunk`` recordings at a time run side by side as tasks ``[T = chunk, B = 1, ...]``, which gives the
    weights of one after the other. The collapse guard keeps a recording's unadapted weights where it fails.
    """
    texts: list[str] = []
    for first in range(0, len(recordings), chunk):
        batch = featurize(recordings[first:first + chunk], module.feature_config, None).per_utterance()
        adapted, _ = module.adapter.adapt_label_free(batch, [steps], objective)
        texts += [task[0] for task in module.transcribe(batch, adapted[steps])]
    return texts
