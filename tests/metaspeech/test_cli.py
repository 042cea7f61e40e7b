"""The ``metaspeech`` command end to end: every shipped config, fit/test, adapt/transcribe, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaspeech.cli.main import main

REPO = Path(__file__).resolve().parents[2]
ALGORITHM_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
DATA_CONFIGS = sorted(p.name for p in (REPO / "configs/data").glob("*.yaml"))
TRAINER_CONFIGS = sorted(p.name for p in (REPO / "configs/trainer").glob("*.yaml"))


@pytest.mark.parametrize("config", ALGORITHM_CONFIGS)
def test_every_algorithm_config_runs_a_fast_dev_run(config: str, tiny_cli_args: list[str]) -> None:
    assert main(["fit", *tiny_cli_args(config), "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize("config", DATA_CONFIGS)
def test_every_data_config_parses(config: str, tmp_path: Path) -> None:
    from metaspeech.cli.main import build_cli

    args = ["--config", str(REPO / "configs/maml.yaml"), "--config", str(REPO / "configs/data" / config), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args])
    assert exit_info.value.code in (0, None)


@pytest.mark.parametrize("config", TRAINER_CONFIGS)
def test_every_trainer_config_parses(config: str, capsys) -> None:
    from metaspeech.cli.main import build_cli

    args = ["--config", str(REPO / "configs/trainer" / config), "--config", str(REPO / "configs/maml.yaml"),
            "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--print_config"]
    with pytest.raises(SystemExit):
        build_cli(["fit", *args])
    printed = capsys.readouterr().out
    assert "trainer:" in printed and "inference_mode: false" in printed


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, corpus_root, feature_cache) -> Path:
    """A FOMAML model meta-trained for a few steps on the tiny corpus, via the CLI."""
    root = tmp_path_factory.mktemp("fit")
    assert main([
        "fit", "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--config", str(REPO / "configs/fomaml.yaml"),
        f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
        "--model.recognizer.init_args.d_model=48", "--model.recognizer.init_args.hidden_dim=48",
        "--model.recognizer.init_args.num_layers=2", f"--trainer.default_root_dir={root}", "--trainer.max_steps=6",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=3", "--trainer.check_val_every_n_epoch=null",
    ]) == 0
    checkpoints = sorted(root.rglob("*.ckpt"))
    assert checkpoints, "fit wrote no checkpoint"
    return checkpoints[-1]


def test_fit_then_test_prints_and_writes_the_adaptation_table(trained_checkpoint, corpus_root, feature_cache, tmp_path, capsys) -> None:
    """The recognizer is rebuilt from the checkpoint: the config's d_model 192 does not have to be overridden."""
    assert main([
        "test", "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--config", str(REPO / "configs/fomaml.yaml"),
        f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
        f"--model.results_dir={tmp_path}", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
        f"--ckpt_path={trained_checkpoint}",
    ]) == 0
    out = capsys.readouterr().out
    assert "adaptation on held-out speakers" in out
    result = json.loads((tmp_path / "adaptation_fomaml.json").read_text())
    cells = {(c["shots"], c["steps"]) for c in result["conditions"]}
    assert cells == {(k, s) for k in (1, 3, 5) for s in (0, 1, 3)}
    assert {r["task"] for r in result["records"]} and all(0 <= c["wer"] for c in result["conditions"])


def test_checkpoint_loads_with_weights_only(trained_checkpoint) -> None:
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["metaspeech"]["model"]["class_path"].endswith("BiLSTMCTC")
    assert checkpoint["metaspeech"]["tokenizer"] is not None


def _held_out_speaker(corpus_root: Path, tmp_path: Path) -> Path:
    """Copy one meta-test speaker's recordings into a folder of x.wav + x.txt files."""
    from metaspeech.datamodules.manifest import read_manifest

    rows = [r for r in read_manifest(next(corpus_root.glob("tiny-seed0/manifest.jsonl"))) if r.labels["split"] == "test"]
    speaker = rows[0].speaker
    folder = tmp_path / speaker
    folder.mkdir()
    for row in [r for r in rows if r.speaker == speaker][:5]:
        target = folder / Path(row.audio_filepath).name
        target.write_bytes(Path(row.audio_filepath).read_bytes())
        target.with_suffix(".txt").write_text(row.text)
    return folder


def test_adapt_and_transcribe_a_held_out_speaker(trained_checkpoint, corpus_root, tmp_path, capsys) -> None:
    folder = _held_out_speaker(corpus_root, tmp_path)
    adaptation = tmp_path / "speaker.pt"
    assert main(["adapt", "--checkpoint", str(trained_checkpoint), "--data", str(folder), "--output", str(adaptation), "--steps", "3"]) == 0
    saved = torch.load(adaptation, weights_only=True)
    assert saved["support_loss_after"] < saved["support_loss_before"]
    assert saved["utterances"] == 5 and set(saved["fast_weights"])
    capsys.readouterr()
    wavs = sorted(str(p) for p in folder.glob("*.wav"))
    assert main(["transcribe", "--checkpoint", str(trained_checkpoint), "--adaptation", str(adaptation), *wavs]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line.split("\t")[0] for line in lines] == wavs


def test_adapt_the_whole_model_with_adam_then_transcribe_with_it(trained_checkpoint, corpus_root, tmp_path, capsys) -> None:
    """``adapt --scope all --optimizer adam``: the test-time setting the benchmark's meta-val search chooses, from the CLI."""
    from metaspeech.cli.inference import Recording, load_adaptation, load_module, transcribe_files
    from metaspeech.evaluation.adapter import write_adapted_weights

    folder = _held_out_speaker(corpus_root, tmp_path)
    adaptation = tmp_path / "speaker.pt"
    assert main(["adapt", "--checkpoint", str(trained_checkpoint), "--data", str(folder), "--output", str(adaptation),
                 "--steps", "3", "--scope", "all", "--optimizer", "adam", "--lr", "1e-3"]) == 0
    assert "adapted all (adam)" in capsys.readouterr().out
    saved = torch.load(adaptation, weights_only=True)
    module = load_module(trained_checkpoint)
    assert saved["scope"] == ["all"] and set(saved["fast_weights"]) == {n for n, _ in module.model.named_parameters()}
    assert saved["support_loss_after"] < saved["support_loss_before"]
    wavs = sorted(folder.glob("*.wav"))
    assert main(["transcribe", "--checkpoint", str(trained_checkpoint), "--adaptation", str(adaptation), *map(str, wavs)]) == 0
    heard = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines() if line]
    recordings = [Recording(path, None) for path in wavs]
    assert heard != transcribe_files(module, recordings, None)
    write_adapted_weights(module.model, load_adaptation(adaptation, module))  # the adapted model, written out
    assert heard == transcribe_files(module, recordings, None)
    assert main(["adapt", "--checkpoint", str(trained_checkpoint), "--data", str(folder), "--output", str(tmp_path / "x.pt"),
                 "--scope", "no_such_layer.*"]) == 2
    err = capsys.readouterr().err
    assert "no_such_layer" in err and "Traceback" not in err and not (tmp_path / "x.pt").exists()


def test_adapt_without_transcripts_is_a_one_line_error(trained_checkpoint, corpus_root, tmp_path, capsys) -> None:
    folder = _held_out_speaker(corpus_root, tmp_path)
    next(folder.glob("*.txt")).unlink()
    assert main(["adapt", "--checkpoint", str(trained_checkpoint), "--data", str(folder), "--output", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "no transcript" in err and ".txt" in err and "Traceback" not in err


def test_unknown_algorithm_class_path_is_a_clear_error(tiny_cli_args, capsys) -> None:
    assert main(["fit", *tiny_cli_args("maml.yaml"), "--model.algorithm.class_path=nowhere.NoSuchAlgorithm",
                 "--trainer.fast_dev_run=true"]) == 2
    assert "nowhere.NoSuchAlgorithm" in capsys.readouterr().err


def test_incompatible_checkpoint_is_a_clear_error(trained_checkpoint, tmp_path, capsys) -> None:
    broken = torch.load(trained_checkpoint, weights_only=True)
    broken["metaspeech"]["model"]["init_args"]["hidden_dim"] = 7
    path = tmp_path / "broken.ckpt"
    torch.save(broken, path)
    assert main(["transcribe", "--checkpoint", str(path), str(tmp_path)]) == 2
    assert "do not fit the model" in capsys.readouterr().err


def test_a_config_without_data_defaults_to_the_embedded_corpus(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/maml.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: metaspeech.datamodules.EmbeddedCorpus" in printed and "preset: small" in printed


def test_task_augmentation_is_configured_from_the_command_line(tiny_cli_args) -> None:
    from metaspeech.cli.main import build_cli

    cli = build_cli(["fit", *tiny_cli_args("fomaml.yaml"), "--trainer.fast_dev_run=true",
                "--model.augmentation=metaspeech.speech.augmentation.EpisodeAugmentation",
                "--model.augmentation.max_warp=0.15", "--model.augmentation.spec_augment=SpecAugment"])
    augmentation = cli.model.augmentation
    assert augmentation.warp.max_warp == 0.15 and augmentation.spec_augment is not None
