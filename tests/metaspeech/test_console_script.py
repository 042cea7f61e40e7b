"""The installed ``metaspeech`` console script: exit status, help, fit && test, and one-line errors.

Each test runs the console script in a subprocess, as a shell, a Makefile or CI does,
so ``sys.exit(main())`` and the exit status are what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METASPEECH = Path(sys.executable).with_name("metaspeech")
TINY = ["--model.recognizer.init_args.d_model=48", "--model.recognizer.init_args.hidden_dim=48",
        "--model.recognizer.init_args.num_layers=2"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_MODE": "disabled"}
    environment.pop("METASPEECH_DEBUG", None)
    environment.update(env or {})
    return subprocess.run([str(METASPEECH), *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(error) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error[0], error[0]


def tiny_data(corpus_root: Path, feature_cache: Path) -> list[str]:
    return ["--config", str(REPO / "configs/data/embedded_tiny.yaml"),
            f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, corpus_root, feature_cache) -> tuple[subprocess.CompletedProcess, Path]:
    """``metaspeech fit`` of a tiny FOMAML model through the console script; its checkpoint."""
    root = tmp_path_factory.mktemp("console-fit")
    result = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
                 f"--trainer.default_root_dir={root}", "--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    checkpoints = sorted(root.rglob("*.ckpt"))
    return result, (checkpoints[-1] if checkpoints else root / "missing.ckpt")


def manifest_corpus(tmp_path: Path, corpus_root: Path, edit) -> list[str]:
    """A ManifestCorpus over a copy of the tiny corpus's rows, changed by ``edit(rows) -> rows``."""
    source = next(corpus_root.glob("tiny-seed0/manifest.jsonl"))
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for row in rows:
        row["audio_filepath"] = str((source.parent / row["audio_filepath"]).resolve())
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in edit(rows)))
    return ["--config", str(REPO / "configs/data/manifest.yaml"), f"--data.init_args.manifest={path}",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--data.init_args.k_shot=3", "--data.init_args.q_query=3",
            "--data.init_args.tasks_per_batch=2", "--data.init_args.eval_pool_size=5", "--data.init_args.eval_size=4"]


def test_help_lists_every_subcommand_with_one_line_each() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "adapt", "transcribe", "generate", "compare", "demo"):
        assert any(line.split()[:1] == [command] and len(line.split()) > 2 for line in result.stdout.splitlines()), command
    assert "Lightning Trainer command line tool" not in result.stdout


def test_no_command_and_an_unknown_command_exit_2() -> None:
    assert run().returncode == 2
    unknown = run("fitt")
    assert unknown.returncode == 2 and "unknown command 'fitt'" in unknown.stderr and "adapt" in unknown.stderr


def test_fit_and_test_exit_0_and_test_rebuilds_the_model_from_the_checkpoint(fitted, corpus_root, feature_cache, tmp_path) -> None:
    """``fit && test``: test is given no architecture flag although configs/fomaml.yaml says d_model 192."""
    fit, checkpoint = fitted
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "MetaSpeechCLI object" not in fit.stdout
    test = run("test", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
               f"--model.results_dir={tmp_path}", f"--ckpt_path={checkpoint}")
    assert test.returncode == 0, test.stderr[-3000:]
    assert "adaptation on held-out speakers" in test.stdout
    cells = {(c["shots"], c["steps"]) for c in json.loads((tmp_path / "adaptation_fomaml.json").read_text())["conditions"]}
    assert cells == {(k, s) for k in (1, 3, 5) for s in (0, 1, 3)}
    assert "LightningCLI's args parameter" not in test.stderr


def test_predict_writes_each_held_out_speakers_adapted_transcripts(fitted, corpus_root, feature_cache, tmp_path) -> None:
    predict = run("predict", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
                  f"--model.results_dir={tmp_path}", f"--ckpt_path={fitted[1]}")
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert f"hypotheses written to {tmp_path / 'hypotheses.jsonl'}" in predict.stdout
    rows = [json.loads(line) for line in (tmp_path / "hypotheses.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 4  # the tiny corpus's 3 test speakers x eval_size 4
    assert {(r["shots"], r["steps"]) for r in rows} == {(5, 3)}  # the largest k and s of configs/data/embedded_tiny.yaml
    assert all(isinstance(r["hypothesis"], str) and r["reference"] and r["id"].startswith(r["speaker"]) for r in rows)


def test_an_override_that_contradicts_the_checkpoint_is_refused(fitted, corpus_root, feature_cache) -> None:
    result = run("test", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
                 "--model.recognizer.init_args.hidden_dim=64", f"--ckpt_path={fitted[1]}")
    assert_one_line_error(result, "ConfigError", "--model.recognizer.init_args.hidden_dim=64", "hidden_dim=48")


def test_init_from_outside_fit_is_an_error(fitted, corpus_root, feature_cache) -> None:
    result = run("test", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
                 f"--model.init_from={fitted[1]}")
    assert_one_line_error(result, "model.init_from", "--ckpt_path")


def test_test_shots_beyond_the_adaptation_pool_are_refused_at_setup(fitted, corpus_root, feature_cache) -> None:
    result = run("test", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
                 "--model.test_shots=[1,8]", f"--ckpt_path={fitted[1]}")
    assert_one_line_error(result, "model.test_shots", "eval_pool_size=5")
    assert "Testing" not in result.stdout


def test_a_trained_model_tests_on_a_corpus_without_training_rows_with_its_own_tokenizer(fitted, corpus_root, tmp_path) -> None:
    """All rows ``split: test``; one transcript has digits the model's tokenizer lacks: it is skipped and named."""
    renamed = []

    def held_out_only(rows):
        rows = [{**row, "split": "test"} for row in rows if row["split"] != "train"]
        rows[0]["text"] = "naïve café #42 ok"
        renamed.append(rows[0]["audio_filepath"])
        return rows

    data = manifest_corpus(tmp_path, corpus_root, held_out_only)
    without_checkpoint = run("test", *data, "--config", str(REPO / "configs/fomaml.yaml"), *QUIET)
    assert_one_line_error(without_checkpoint, "DataError", "tokenizer", "--ckpt_path")
    result = run("test", *data, "--config", str(REPO / "configs/fomaml.yaml"), *QUIET, "--model.test_shots=[1,3]",
                 f"--model.results_dir={tmp_path}", f"--ckpt_path={fitted[1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 utterance(s) with characters ['2', '4'] outside the tokenizer of" in result.stderr
    assert renamed[0] in result.stderr  # the skipped file is named
    assert (tmp_path / "adaptation_fomaml.json").is_file()


def test_bad_audio_in_raise_mode_is_a_one_line_error_naming_the_file(corpus_root, tmp_path) -> None:
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEfmt garbage")

    def one_broken(rows):
        rows[0]["audio_filepath"] = str(broken)
        return rows

    result = run("fit", *manifest_corpus(tmp_path, corpus_root, one_broken), "--config", str(REPO / "configs/maml.yaml"),
                 *TINY, *QUIET, "--data.init_args.on_bad_input=raise", "--trainer.fast_dev_run=true")
    assert_one_line_error(result, "DataValidationError", str(broken), "on_bad_input")
    debug = run("fit", *manifest_corpus(tmp_path, corpus_root, one_broken), "--config", str(REPO / "configs/maml.yaml"),
                *TINY, *QUIET, "--data.init_args.on_bad_input=raise", "--trainer.fast_dev_run=true", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_manifest_row_without_speaker_is_a_one_line_error_in_skip_mode(corpus_root, tmp_path) -> None:
    def no_speaker(rows):
        del rows[3]["speaker"]
        return rows

    result = run("fit", *manifest_corpus(tmp_path, corpus_root, no_speaker), "--config", str(REPO / "configs/maml.yaml"),
                 *TINY, *QUIET, "--trainer.fast_dev_run=true")
    assert_one_line_error(result, "ManifestError", "manifest.jsonl:4", "speaker")


def test_a_missing_corpus_root_is_a_one_line_error(tmp_path) -> None:
    result = run("fit", "--config", str(REPO / "configs/data/librispeech.yaml"), "--config", str(REPO / "configs/maml.yaml"),
                 f"--data.init_args.root={tmp_path / 'nowhere'}", *QUIET, "--trainer.fast_dev_run=true")
    assert_one_line_error(result, "CorpusLayoutError", str(tmp_path / "nowhere"))


def test_adapt_errors_exit_2(tmp_path) -> None:
    result = run("adapt", "--checkpoint", str(tmp_path / "none.ckpt"), "--data", str(tmp_path), "--output", str(tmp_path / "a.pt"))
    assert_one_line_error(result, "CheckpointError", "none.ckpt")


def test_demo_side_by_side_from_the_console_script(corpus_root, feature_cache, tmp_path) -> None:
    """``metaspeech demo --workers 2`` spawns its workers from the console script itself and exits 0;
    ``--workers 0``, and an argument a worker's Lightning CLI refuses, are one-line errors with exit status 2."""
    refused = run("demo", "--workers", "0")
    assert refused.returncode == 2 and "--workers: must be 1 or more, got 0" in refused.stderr
    in_a_worker = run("compare", "--algorithms", "configs/fomaml.yaml", "configs/joint.yaml", "--workers", "2",
                      "--output", str(tmp_path / "refused"), *tiny_data(corpus_root, feature_cache), "--model.nonsense=3", cwd=REPO)
    assert_one_line_error(in_a_worker, "fomaml seed 0: the command line was refused", "--model.nonsense=3", "log.txt")
    result = run("demo", "--preset", "tiny", "--base_steps", "1", "--steps", "1", "--workers", "2", "--output", str(tmp_path),
                 *tiny_data(corpus_root, feature_cache), *TINY, "--model.test_shots=[1]", "--model.test_steps=[0,1]", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes side by side" in result.stdout and "fomaml WER %" in result.stdout
    assert (tmp_path / "joint" / "seed0" / "log.txt").is_file() and (tmp_path / "comparison.json").is_file()
