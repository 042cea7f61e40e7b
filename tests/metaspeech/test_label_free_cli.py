"""``metaspeech adapt`` on a folder of audio without transcripts, through the console script."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.metaspeech.test_console_script import QUIET, REPO, TINY, assert_one_line_error, run, tiny_data


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus_root, feature_cache) -> Path:
    """A tiny FOMAML model fitted for 3 steps through the console script."""
    root = tmp_path_factory.mktemp("label-free-fit")
    result = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
                 f"--trainer.default_root_dir={root}", "--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(root.rglob("*.ckpt"))[-1]


@pytest.fixture
def audio_only(corpus_root: Path, tmp_path: Path) -> Path:
    """Five recordings of one held-out speaker, without any transcript."""
    manifest = next(corpus_root.glob("tiny-seed0/manifest.jsonl"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    speaker = next(r["speaker"] for r in rows if r["split"] == "test")
    folder = tmp_path / "speaker"
    folder.mkdir()
    for row in [r for r in rows if r["speaker"] == speaker][:5]:
        shutil.copy(manifest.parent / row["audio_filepath"], folder)
    return folder


def test_label_free_adapt_on_audio_only_changes_the_transcripts(checkpoint: Path, audio_only: Path, tmp_path: Path) -> None:
    adaptation = tmp_path / "speaker.pt"
    adapted = run("adapt", "--checkpoint", str(checkpoint), "--data", str(audio_only), "--output", str(adaptation),
                  "--objective", "entropy", "--steps", "3", "--lr", "1.0")
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    assert "objective entropy" in adapted.stdout
    saved = torch.load(adaptation, weights_only=True)
    assert saved["objective"] == "entropy" and saved["guard_kept"] and saved["utterances"] == 5
    assert saved["support_loss_after"] < saved["support_loss_before"]
    plain = run("transcribe", "--checkpoint", str(checkpoint), str(audio_only))
    with_adaptation = run("transcribe", "--checkpoint", str(checkpoint), "--adaptation", str(adaptation), str(audio_only))
    assert plain.returncode == 0 and with_adaptation.returncode == 0, with_adaptation.stderr[-3000:]
    before, after = plain.stdout.splitlines(), with_adaptation.stdout.splitlines()
    assert len(before) == len(after) == 5
    assert [line.split("\t")[0] for line in before] == [line.split("\t")[0] for line in after]
    assert before != after


def test_supervised_adapt_on_audio_only_is_a_one_line_error_naming_the_option(checkpoint: Path, audio_only: Path,
                                                                              tmp_path: Path) -> None:
    result = run("adapt", "--checkpoint", str(checkpoint), "--data", str(audio_only), "--output", str(tmp_path / "a.pt"))
    assert_one_line_error(result, "no transcript", "--objective entropy")
    assert not (tmp_path / "a.pt").exists()


def test_a_model_meta_trained_label_free_adapts_label_free_by_default(corpus_root, feature_cache, audio_only: Path,
                                                                      tmp_path: Path) -> None:
    """``configs/fomaml_entropy.yaml`` learns a start for entropy adaptation: ``adapt`` without ``--objective`` uses it."""
    fitted = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml_entropy.yaml"), *TINY,
                 *QUIET, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2", "--trainer.limit_val_batches=0")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    adapted = run("adapt", "--checkpoint", str(sorted(tmp_path.rglob("*.ckpt"))[-1]), "--data", str(audio_only),
                  "--output", str(tmp_path / "speaker.pt"), "--steps", "2")
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    assert "objective entropy" in adapted.stdout
    assert torch.load(tmp_path / "speaker.pt", weights_only=True)["objective"] == "entropy"


def test_transductive_transcription_adapts_each_recording_on_itself(checkpoint: Path, audio_only: Path) -> None:
    """``transcribe --transductive``: no transcript, no enrolment; every recording is decoded after adapting on itself,
    as the protocol's transductive row does, so one recording alone gets the transcript it gets among the others."""
    plain = run("transcribe", "--checkpoint", str(checkpoint), str(audio_only))
    adapted = run("transcribe", "--checkpoint", str(checkpoint), "--transductive", "--steps", "3", "--lr", "1.0", str(audio_only))
    assert plain.returncode == 0 and adapted.returncode == 0, adapted.stderr[-3000:]
    before, after = plain.stdout.splitlines(), adapted.stdout.splitlines()
    assert len(after) == 5 and [line.split("\t")[0] for line in before] == [line.split("\t")[0] for line in after]
    assert before != after
    first = sorted(audio_only.iterdir())[0]
    alone = run("transcribe", "--checkpoint", str(checkpoint), "--transductive", "--steps", "3", "--lr", "1.0", str(first))
    assert alone.returncode == 0 and alone.stdout.splitlines() == [line for line in after if line.startswith(str(first))]


def test_transductive_transcription_starts_from_a_speaker_adaptation(checkpoint: Path, audio_only: Path, tmp_path: Path) -> None:
    """``--adaptation`` with ``--transductive``: each recording adapts on itself from the enrolled speaker's weights."""
    adaptation = tmp_path / "speaker.pt"
    adapted = run("adapt", "--checkpoint", str(checkpoint), "--data", str(audio_only), "--output", str(adaptation),
                  "--objective", "entropy", "--steps", "3", "--lr", "1.0")
    assert adapted.returncode == 0, adapted.stderr[-3000:]
    enrolled = run("transcribe", "--checkpoint", str(checkpoint), "--adaptation", str(adaptation), str(audio_only))
    barely = run("transcribe", "--checkpoint", str(checkpoint), "--adaptation", str(adaptation), "--transductive",
                 "--steps", "1", "--lr", "1e-12", str(audio_only))
    assert enrolled.returncode == 0 and barely.returncode == 0, barely.stderr[-3000:]
    assert barely.stdout == enrolled.stdout  # a vanishing step leaves each recording at the speaker's adaptation
    both = run("transcribe", "--checkpoint", str(checkpoint), "--adaptation", str(adaptation), "--transductive",
               "--steps", "3", "--lr", "1.0", str(audio_only))
    alone = run("transcribe", "--checkpoint", str(checkpoint), "--transductive", "--steps", "3", "--lr", "1.0", str(audio_only))
    assert both.returncode == 0 and alone.returncode == 0, both.stderr[-3000:]
    assert len(both.stdout.splitlines()) == 5 and both.stdout not in (alone.stdout, enrolled.stdout)


def test_transductive_transcription_names_a_missing_speaker_adaptation(checkpoint: Path, audio_only: Path,
                                                                        tmp_path: Path) -> None:
    result = run("transcribe", "--checkpoint", str(checkpoint), "--transductive", "--adaptation", str(tmp_path / "a.pt"),
                 str(audio_only))
    assert_one_line_error(result, "a.pt")


def test_transductive_transcription_refuses_steps_or_a_rate_that_cannot_adapt(checkpoint: Path, audio_only: Path) -> None:
    for option, value in (("--steps", "0"), ("--lr", "-1")):
        result = run("transcribe", "--checkpoint", str(checkpoint), "--transductive", option, value, str(audio_only))
        assert_one_line_error(result, option)


def test_a_model_meta_trained_for_transductive_steps_takes_them_with_its_learned_rates(
        checkpoint: Path, corpus_root, feature_cache, audio_only: Path, tmp_path: Path) -> None:
    """``configs/metasgd_transductive.yaml`` over a trained model: ``transcribe --transductive`` uses its learned rates
    unless ``--lr`` replaces them, and the recognizer without adaptation stays the model it started from."""
    fitted = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/metasgd_transductive.yaml"),
                 *TINY, *QUIET, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2",
                 "--trainer.limit_val_batches=0", f"--model.init_from={checkpoint}", "--model.algorithm.init_args.inner_lr=2.0")
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    learned = sorted(tmp_path.rglob("*.ckpt"))[-1]
    plain = run("transcribe", "--checkpoint", str(learned), str(audio_only))
    assert plain.returncode == 0 and plain.stdout == run("transcribe", "--checkpoint", str(checkpoint), str(audio_only)).stdout
    own = run("transcribe", "--checkpoint", str(learned), "--transductive", "--steps", "3", str(audio_only))
    replaced = run("transcribe", "--checkpoint", str(learned), "--transductive", "--steps", "1", "--lr", "1e-12", str(audio_only))
    assert own.returncode == 0 and replaced.returncode == 0, own.stderr[-3000:]
    assert replaced.stdout == plain.stdout and own.stdout != plain.stdout
