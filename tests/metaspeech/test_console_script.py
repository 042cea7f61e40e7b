"""The installed ``metaspeech`` console script: exit status, help, fit && test, and one-line errors.

Each test runs the console script in a subprocess, as a shell, a Makefile or CI does,
so ``sys.exit(main())`` and the exit status are what is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    assert debug.returncode == 2 and "Traceback" in debug.stderr


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


def _held_out_speaker(corpus_root: Path, folder: Path) -> Path:
    """Three recordings + transcripts (x.wav + x.txt) of one meta-test speaker of the tiny corpus, in ``folder``."""
    from metaspeech.datamodules.manifest import read_manifest

    rows = [r for r in read_manifest(next(corpus_root.glob("tiny-seed0/manifest.jsonl"))) if r.labels["split"] == "test"]
    folder.mkdir(parents=True)
    for row in [r for r in rows if r.speaker == rows[0].speaker][:3]:
        target = folder / Path(row.audio_filepath).name
        target.write_bytes(Path(row.audio_filepath).read_bytes())
        target.with_suffix(".txt").write_text(row.text)
    return folder


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
    speaker = _held_out_speaker(corpus_root, tmp_path / "speaker")
    for algorithm in ("fomaml", "joint"):  # the demo leaves both trained models, ready to adapt and transcribe with
        checkpoint = tmp_path / algorithm / "seed0" / "final.ckpt"
        adapted = run("adapt", "--checkpoint", str(checkpoint), "--data", str(speaker), "--output", str(tmp_path / f"{algorithm}.pt"),
                      "--steps", "2")
        assert adapted.returncode == 0 and "saved" in adapted.stdout, adapted.stderr[-3000:]
        wav = str(next(speaker.glob("*.wav")))
        heard = run("transcribe", "--checkpoint", str(checkpoint), "--adaptation", str(tmp_path / f"{algorithm}.pt"), wav)
        assert heard.returncode == 0 and heard.stdout.startswith(wav + "\t"), heard.stderr[-3000:]


# ------------------------------------------------------------------ reliability at the edges (docs/reliability.md)
def bad_checkpoints(folder: Path) -> dict[str, Path]:
    """A checkpoint of random bytes, one that would run code when unpickled, and a missing one."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt, hostile = folder / "corrupt.ckpt", folder / "hostile.ckpt"
    corrupt.write_bytes(bytes(range(256)) * 8)
    hostile.write_bytes(HOSTILE_PICKLE)
    return {"corrupt": corrupt, "hostile": hostile, "missing": folder / "missing.ckpt"}


# pickle protocol 2 of {"state_dict": os.system("touch pwned")}: loading it with weights_only=False runs the command
HOSTILE_PICKLE = b"\x80\x02}q\x00X\n\x00\x00\x00state_dictq\x01cposix\nsystem\nq\x02X\x0b\x00\x00\x00touch pwnedq\x03\x85q\x04Rq\x05s."
WHAT_IT_IS_NOT = {"corrupt": "is not a PyTorch checkpoint", "hostile": "holds pickled Python objects (posix.system)",
                  "missing": "does not exist"}


def assert_refused_checkpoint(result: subprocess.CompletedProcess, kind: str, path: Path) -> None:
    assert_one_line_error(result, "CheckpointError", str(path), WHAT_IT_IS_NOT[kind], "pass the .ckpt written by `metaspeech fit`")
    assert "Re-running" not in result.stderr and "weights_only set to False" not in result.stderr


@pytest.mark.parametrize("command, kind", [("fit", "corrupt"), ("fit", "hostile"), ("fit", "missing"), ("test", "corrupt"),
                                           ("test", "hostile"), ("validate", "corrupt"), ("predict", "hostile")])
def test_a_bad_ckpt_path_is_one_line_before_lightning_reads_it(command, kind, corpus_root, feature_cache, tmp_path) -> None:
    path = bad_checkpoints(tmp_path)[kind]
    result = run(command, *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
                 f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={path}", cwd=tmp_path)
    assert_refused_checkpoint(result, kind, path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["corrupt", "hostile"])
def test_adapt_and_transcribe_say_what_a_bad_checkpoint_is_not(kind, fitted, tmp_path) -> None:
    path = bad_checkpoints(tmp_path)[kind]
    adapt = run("adapt", "--checkpoint", str(path), "--data", str(tmp_path), "--output", str(tmp_path / "a.pt"), cwd=tmp_path)
    assert_refused_checkpoint(adapt, kind, path)
    transcribe = run("transcribe", "--checkpoint", str(fitted[1]), "--adaptation", str(path), str(tmp_path), cwd=tmp_path)
    assert_one_line_error(transcribe, "CheckpointError", "speaker adaptation", WHAT_IT_IS_NOT[kind], "`metaspeech adapt`")
    assert "Re-running" not in transcribe.stderr and not (tmp_path / "pwned").exists()


def test_transcribe_says_when_the_audio_path_does_not_exist(fitted, tmp_path) -> None:
    result = run("transcribe", "--checkpoint", str(fitted[1]), str(tmp_path / "nowhere.wav"))
    assert_one_line_error(result, "DataError", str(tmp_path / "nowhere.wav"), "does not exist")


@pytest.mark.parametrize("arguments, expected", [
    (["--model.algorithm.init_args.inner_stpes=3"], "model.algorithm.init_args.inner_stpes=3 is not an option of "
                                                    "metaspeech.algorithms.FOMAML; did you mean inner_steps?"),
    (["--trainer.max_step=3"], "unknown option --trainer.max_step=3; did you mean --trainer.max_steps?"),
    (["--model.algorithm=metaspeech.algorithms.MAMLL"], "model.algorithm=metaspeech.algorithms.MAMLL: no such class; "
                                                        "did you mean metaspeech.algorithms.MAML?"),
    (["--data=Embeddedcorpus"], "did you mean metaspeech.datamodules.EmbeddedCorpus?"),
    (["--model.algorithm.init_args.inner_lr=nan"], "model.algorithm.init_args.inner_lr=nan is not a valid value: expected a number"),
    (["--model.algorithm.init_args.inner_lr=.nan"], "model.algorithm.init_args.inner_lr=nan: must be a finite number > 0"),
    (["--model.algorithm.init_args.inner_lr=-0.1"], "model.algorithm.init_args.inner_lr=-0.1: must be a finite number > 0"),
    (["--model.algorithm.init_args.inner_steps=-1"], "model.algorithm.init_args.inner_steps=-1: must be an integer >= 0"),
    (["--model.lr=0"], "model.lr=0.0: must be a finite number > 0"),
    (["--data.init_args.k_shot=50"], "k_shot=50 + q_query=3: only 0 speaker(s) have at least k_shot+q_query=53 utterances"),
])
def test_a_configuration_error_names_the_key_its_value_and_the_closest_valid_one(arguments, expected, corpus_root, feature_cache,
                                                                                 tmp_path) -> None:
    result = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
                 f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1", *arguments)
    assert_one_line_error(result, "ConfigError", expected)
    assert "usage:" not in result.stderr


def test_a_typo_in_a_yaml_key_is_suggested_within_the_first_two_lines(corpus_root, feature_cache, tmp_path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  algorithm:\n    init_args:\n      inner_stpes: 3\n")
    result = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), "--config", str(config),
                 *QUIET, f"--trainer.default_root_dir={tmp_path}")
    assert result.returncode == 2
    assert "did you mean inner_steps?" in "\n".join(result.stderr.splitlines()[:2]), result.stderr[-3000:]
    assert "usage:" not in result.stderr
    assert "usage:" in run("fit", "--help").stdout


def test_debug_keeps_the_exit_status_and_shows_the_traceback(corpus_root, feature_cache, tmp_path) -> None:
    result = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *QUIET,
                 "--model.lr=-1", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr and "model.lr=-1.0" in result.stderr.splitlines()[-1]


def test_raise_stops_on_a_training_speaker_with_too_few_utterances(corpus_root, tmp_path) -> None:
    def short_speaker(rows):
        spk003 = [row for row in rows if row["speaker"] == "spk003"]
        return [row for row in rows if row["speaker"] != "spk003"] + spk003[:2]

    data = manifest_corpus(tmp_path, corpus_root, short_speaker)
    result = run("fit", *data, "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET, "--data.init_args.on_bad_input=raise",
                 "--trainer.fast_dev_run=true")
    assert_one_line_error(result, "DataError", "speaker 'spk003' has 2 utterances but k_shot+q_query needs 6", "on_bad_input=skip")
    skipped = run("fit", *data, "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET, "--trainer.fast_dev_run=true")
    assert skipped.returncode == 0 and "speaker 'spk003' has 2 utterances" in skipped.stderr


def test_a_stereo_recording_is_averaged_to_mono_and_counted_in_the_warning(corpus_root, tmp_path) -> None:
    import soundfile as sf

    def one_stereo(rows):
        wave, rate = sf.read(rows[0]["audio_filepath"])
        rows[0]["audio_filepath"] = str(tmp_path / "stereo.wav")
        sf.write(rows[0]["audio_filepath"], [[x, x] for x in wave], rate)
        return rows

    result = run("fit", *manifest_corpus(tmp_path, corpus_root, one_stereo), "--config", str(REPO / "configs/fomaml.yaml"), *TINY,
                 *QUIET, "--data.init_args.on_bad_input=raise", "--trainer.fast_dev_run=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"averaging 1 multi-channel utterance(s) to mono (e.g. {tmp_path / 'stereo.wav'})" in result.stderr


def torch_load(path: Path) -> dict:
    from metaspeech.training.checkpoint_io import load_checkpoint_file

    return load_checkpoint_file(path)


def checkpoint_every_step(path: Path, checkpoints: Path | None, logger: Path | None = None) -> Path:
    """A config: last.ckpt every step in ``checkpoints`` (None: the logger's folder) [and a CSVLogger in ``logger``]."""
    folder = f"dirpath: '{checkpoints}', " if checkpoints is not None else ""
    lines = ["trainer:", "  callbacks:", "    - class_path: metaspeech.training.checkpoint_io.ModelCheckpoint",
             f"      init_args: {{{folder}save_last: true, every_n_train_steps: 1}}"]
    if logger is not None:
        lines += ["  logger:", "    class_path: lightning.pytorch.loggers.CSVLogger", f"    init_args: {{save_dir: '{logger}'}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_running_fit_with_a_nonzero_status_and_keeps_last_ckpt(signum, status, corpus_root, feature_cache,
                                                                                tmp_path) -> None:
    last = tmp_path / "ckpt" / "last.ckpt"
    command = [str(METASPEECH), "fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"),
               "--config", str(checkpoint_every_step(tmp_path / "every_step.yaml", last.parent)), *TINY, *QUIET,
               f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=100000", "--trainer.limit_val_batches=0"]
    # A shell starts background jobs with SIGINT ignored, and a child inherits that: restore the default so that the
    # fit sees the signal however the test suite itself was launched.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "WANDB_MODE": "disabled"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-3000:]
        process.send_signal(signum)
        stderr = process.communicate(timeout=300)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, stderr[-3000:]
    assert f"metaspeech fit: stopped by {signum.name} after" in stderr and "Traceback" not in stderr
    assert torch_load(last)["global_step"] >= 1


def test_a_resumed_fit_logs_into_the_same_version(corpus_root, feature_cache, tmp_path) -> None:
    """Checkpoints in the logger's version folder (ModelCheckpoint's default): the resumed fit must find them there."""
    config = checkpoint_every_step(tmp_path / "csv.yaml", None, logger=tmp_path / "logs")
    fit = ["fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), "--config", str(config), *TINY,
           "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}"]
    assert run(*fit, "--trainer.max_steps=2").returncode == 0
    version = tmp_path / "logs" / "lightning_logs" / "version_0"
    resumed = run(*fit, "--trainer.max_steps=3", f"--ckpt_path={version / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in version.parent.iterdir()] == ["version_0"]
    assert "dirpath has changed" not in resumed.stderr  # Lightning's warning that best_model_score is not reloaded
    assert torch_load(version / "checkpoints" / "last.ckpt")["global_step"] == 3
