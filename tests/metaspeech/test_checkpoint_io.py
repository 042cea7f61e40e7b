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
    ModelCheckpoint,
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


def test_a_monitored_checkpoint_carries_the_score_of_its_own_weights(tiny_data, tiny_module, tiny_trainer, tmp_path) -> None:
    from lightning.pytorch.callbacks import Callback

    class Scores(Callback):
        """The monitored meta-val loss after every validation, by the step whose weights it scored."""

        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_validation_end(self, trainer, pl_module) -> None:
            self.by_step[trainer.global_step] = float(trainer.callback_metrics["val/loss_post"])

    scores = Scores()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss_post", mode="min", save_top_k=-1,
                                  save_last=True, every_n_train_steps=2, filename="step{step}-loss{val/loss_post:.6f}",
                                  auto_insert_metric_name=False)
    trainer = tiny_trainer(max_steps=6, val_check_interval=2, limit_val_batches=2, enable_checkpointing=True,
                           callbacks=[scores, checkpoints])
    trainer.fit(tiny_module(FOMAML(inner_steps=1, inner_lr=0.5)), datamodule=tiny_data())
    assert len(set(scores.by_step.values())) == 3  # the weights change, so a stale score would show
    saved = {}
    for path in (tmp_path / "ckpt").glob("step*.ckpt"):  # step{N}-loss{score}.ckpt
        step, score = path.stem.removeprefix("step").split("-loss")
        assert torch.load(path, weights_only=False)["global_step"] == int(step)
        assert float(score) == pytest.approx(scores.by_step[int(step)], abs=1e-6), path.name
        saved[int(step)] = path
    assert sorted(saved) == sorted(scores.by_step) == [2, 4, 6]
    assert Path(checkpoints.best_model_path) == saved[min(scores.by_step, key=scores.by_step.get)]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 6
