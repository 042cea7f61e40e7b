"""The ``metaspeech`` checkpoint section: one format, written and read by ``metaspeech.training.checkpoint_io`` only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metaspeech.algorithms import FOMAML
from metaspeech.cli.inference import load_adaptation
from metaspeech.errors import ConfigError
from metaspeech.speech.features import FeatureConfig
from metaspeech.speech.tokenizer import CharTokenizer
from metaspeech.training.checkpoint_io import (
    SECTION,
    CheckpointError,
    MetaSpeechSection,
    load_checkpoint_file,
    load_recognizer_weights,
    read_metaspeech_section,
)


def test_the_module_hooks_round_trip_the_section(tiny_module) -> None:
    saved = tiny_module(FOMAML())
    saved.use_front_end(CharTokenizer.from_texts(["a cab"]), FeatureConfig(hop_ms=20.0))
    saved.skipped_steps, saved.rng_seed = 3, 1234
    checkpoint: dict = {}
    saved.on_save_checkpoint(checkpoint)
    assert set(checkpoint[SECTION]) == {"model", "algorithm", "scope", "tokenizer", "features", "skipped_steps",
                                        "rng_seed", "wandb_run_id", "log_version"}
    section = MetaSpeechSection.of(checkpoint)
    assert section.model == saved.model.init_config and section.scope == saved.scope
    assert section.feature_config() == FeatureConfig(hop_ms=20.0)

    restored = tiny_module(FOMAML())
    restored.on_load_checkpoint(checkpoint)
    assert restored.tokenizer.to_dict() == saved.tokenizer.to_dict()
    assert (restored.skipped_steps, restored.rng_seed) == (3, 1234)


def test_a_checkpoint_without_the_section_restores_no_run_state(tiny_module) -> None:
    module = tiny_module(FOMAML())
    module.skipped_steps, module.rng_seed = 2, 7
    module.on_load_checkpoint({"state_dict": {}})
    assert (module.skipped_steps, module.rng_seed, module.tokenizer) == (0, 7, None)
    assert MetaSpeechSection.of({}) is None
    with pytest.raises(CheckpointError, match="x.ckpt is not a metaspeech checkpoint"):
        MetaSpeechSection.required({}, "x.ckpt")


def test_an_older_section_reads_with_defaults_and_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({SECTION: {"model": {"class_path": "M"}, "algorithm": {}, "scope": ["head"], "features": {"hop_ms": 5.0,
                                                                                                      "gone": 1},
                          "retired_key": True}}, path)
    section = read_metaspeech_section(path)
    assert (section.skipped_steps, section.rng_seed, section.tokenizer) == (0, None, None)
    assert section.feature_config() == FeatureConfig(hop_ms=5.0) and section.restore_tokenizer() is None


def test_missing_files_name_what_they_are(tmp_path: Path, tiny_module) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint .*none.ckpt does not exist; pass the .ckpt"):
        load_checkpoint_file(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match=r"speaker adaptation .*none.pt does not exist; create it with `metaspeech adapt`"):
        load_adaptation(tmp_path / "none.pt", tiny_module(FOMAML()))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read speaker adaptation"):
        load_adaptation(tmp_path / "bad.pt", tiny_module(FOMAML()))


def test_init_from_takes_only_the_recognizer_weights(tmp_path: Path, tiny_module) -> None:
    source = tiny_module(FOMAML())
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(1.0)
    path = tmp_path / "base.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = tiny_module(FOMAML())
    load_recognizer_weights(path, target.model)
    for (name, a), b in zip(source.model.state_dict().items(), target.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    torch.save({"state_dict": {"model.unknown": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match="model.init_from=.*does not match"):
        load_recognizer_weights(path, target.model)
