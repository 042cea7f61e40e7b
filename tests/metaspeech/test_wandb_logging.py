"""Dashboards: what a short fit + test sends to W&B (offline) and to the CSV fallback.

The W&B test reads the offline run file ``run-<id>.wandb`` itself. wandb 0.31 no
longer ships a Python reader for it (``wandb.sdk.internal.datastore`` is gone;
the Go core writes the file), so :func:`read_wandb_records` implements the
format, checked against the installed wandb 0.31: a 7-byte file header
``":W&B" | 0xBEE1 (uint16 LE) | version 0``, then LevelDB-log style records in
32 KiB blocks, each ``crc32 (uint32 LE) | length (uint16 LE) | type (uint8)`` +
payload, the crc being zlib's CRC-32 of the payload seeded with the CRC-32 of the
type byte; the payloads are wandb's own ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import csv
import json
import struct
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metaspeech.algorithms import FOMAML
from metaspeech.training.reporting import last_test_report

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
TEST_SHOTS, TEST_STEPS = [1, 3], [0, 2]


def read_wandb_records(path: Path) -> list[Any]:
    """Every ``Record`` of an offline run file (format of wandb 0.31, see the module docstring)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert FILE_HEADER.unpack_from(data, 0) == (b":W&B", 0xBEE1, 0), f"{path} is not a wandb 0.31 transaction log"
    position, pending, records = FILE_HEADER.size, b"", []
    while position + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < RECORD_HEADER.size:  # block trailer: zero padding
            position += left_in_block
            continue
        checksum, length, kind = RECORD_HEADER.unpack_from(data, position)
        position += RECORD_HEADER.size
        payload = data[position : position + length]
        position += length
        if len(payload) < length:  # a record still being written
            break
        if kind == 0 and length == 0:  # zero-filled tail of the last block
            continue
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, f"bad checksum in {path}"
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_finished_run(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of a finished run. wandb's core process may still be writing the file when
    ``finish()`` returns; the run is complete once its ``exit`` record is in the file."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path) if path.is_file() else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _key(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def history_values(records: list[Any]) -> dict[str, list[Any]]:
    """Every logged history value by key; nested values (tables, media) as ``{field: value}`` dicts."""
    values: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        nested: dict[str, dict[str, Any]] = defaultdict(dict)
        for item in record.history.item:
            key = _key(item)
            if len(key) == 1:
                values[key[0]].append(json.loads(item.value_json))
            else:
                nested[key[0]]["/".join(key[1:])] = json.loads(item.value_json)
        for key, fields in nested.items():
            values[key].append(fields)
    return dict(values)


def run_config(records: list[Any]) -> dict[str, Any]:
    """The run's config: the run record's plus every later config update."""
    config: dict[str, Any] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            config["/".join(_key(item))] = json.loads(item.value_json)
    return config


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No account, no network, nothing written outside ``tmp_path``."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    return tmp_path


@pytest.fixture
def fit_and_test(tiny_data, tiny_module, tiny_trainer, tmp_path: Path):
    """Four FOMAML steps with validation every two, then the test protocol, with ``logger``; the Trainer."""

    def run(logger):
        module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=TEST_SHOTS, test_steps=TEST_STEPS,
                             results_dir=str(tmp_path / "results"))
        data = tiny_data(batches_per_epoch=4)
        trainer = tiny_trainer(max_steps=4, logger=logger, log_every_n_steps=1, val_check_interval=2, limit_val_batches=1)
        trainer.fit(module, datamodule=data)
        trainer.test(module, datamodule=data, verbose=False)
        return trainer

    return run


def test_offline_wandb_run_holds_curves_tables_audio_and_hyperparameters(wandb_env: Path, fit_and_test) -> None:
    import wandb

    from metaspeech.training.loggers import WandbLogger

    logger = WandbLogger(project="metaspeech-test", save_dir=str(wandb_env / "runs"), offline=True)
    try:
        trainer = fit_and_test(logger)
        run_dir = Path(logger.experiment.dir).parent
    finally:
        logger.experiment.finish()
        wandb.teardown()
    records = read_finished_run(run_dir / f"run-{logger.version}.wandb")
    assert records[-1].WhichOneof("record_type") == "exit"
    history = history_values(records)

    # training and validation curves
    assert len(history["train/outer_loss"]) == 4 and len(history["val/wer_post"]) == 2
    expected = {"train/query_loss_pre", "train/adaptation_gain", "train/grad_norm", "train/lr", "train/inner_grad_norm_step0",
                "val/wer_pre", "val/loss_post"}
    assert expected <= set(history)
    # the headline numbers, one per (k, s)
    assert {f"test/wer_k{k}_s{s}" for k in TEST_SHOTS for s in TEST_STEPS} <= set(history)

    # tables: logged as table files the run directory holds
    report = last_test_report(trainer)
    speakers = {r.task for r in report.records}
    expected_rows = {"test/adaptation_table": len(TEST_SHOTS) * len(TEST_STEPS),
                     "test/speaker_table": len(speakers) * len(TEST_SHOTS) * len(TEST_STEPS),
                     "test/adaptation_curve": len(TEST_SHOTS) * len(TEST_STEPS)}
    for key, rows in expected_rows.items():
        (entry,) = history[key]
        assert entry["_type"] == "table-file" and entry["nrows"] == rows
        table = json.loads((run_dir / "files" / entry["path"]).read_text())
        assert len(table["data"]) == rows
        if key == "test/speaker_table":
            assert table["columns"] == ["speaker", "k", "s", "wer", "cer", "words"]
            assert {row[0] for row in table["data"]} == speakers
    assert history["test/decomposition_table"][0]["nrows"] >= len(TEST_SHOTS) * len(TEST_STEPS)
    adaptation = json.loads((run_dir / "files" / history["test/adaptation_table"][0]["path"]).read_text())
    assert {"shots", "steps", "wer", "cer", "relative_wer_reduction"} <= set(adaptation["columns"])

    # the WER-vs-steps chart: wandb 0.31 stores a line_series custom chart as the table
    # "<key>_table" (one line per k) plus the chart spec in the config under _wandb/visualize/<key>
    (chart,) = history["test/wer_vs_steps_table"]
    chart_table = json.loads((run_dir / "files" / chart["path"]).read_text())
    line_of = chart_table["columns"].index("lineKey")
    assert {row[line_of] for row in chart_table["data"]} == {f"k={k}" for k in TEST_SHOTS}
    assert len(chart_table["data"]) == len(TEST_SHOTS) * len(TEST_STEPS)

    # audio examples: the most adapted condition, captioned with reference and hypothesis
    (audio,) = history["test/audio_examples"]
    assert audio["_type"] == "audio" and audio["count"] == 4 and len(audio["captions"]) == 4
    references = {r.reference for r in report.records}
    for caption in audio["captions"]:
        assert f"k={max(TEST_SHOTS)} s={max(TEST_STEPS)} | ref: " in caption and " / hyp: " in caption
        assert caption.split("ref: ")[1].split(" / hyp: ")[0] in references
    assert len(list((run_dir / "files" / "media" / "audio").rglob("*.wav"))) == 4

    # hyperparameters: save_hyperparameters' and what it leaves out (recognizer, algorithm, scope)
    config = run_config(records)
    assert config["lr"] == pytest.approx(3e-3) and config["scope"] == ["lin", "lhuc", "head"]
    assert config["algorithm"]["class_path"].endswith("FOMAML")
    assert config["recognizer"]["class_path"].endswith("BiLSTMCTC")
    assert config["test_shots"] == TEST_SHOTS
    assert "_wandb/visualize/test/wer_vs_steps" in config


def test_csv_logger_fallback_gets_metrics_and_tables_without_wandb(tmp_path: Path, fit_and_test) -> None:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path / "csv"), name="run")
    fit_and_test(logger)
    log_dir = Path(logger.log_dir)
    with (log_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    assert {"train/outer_loss", "val/wer_post"} <= columns
    assert {f"test/wer_k{k}_s{s}" for k in TEST_SHOTS for s in TEST_STEPS} <= columns
    assert sum(1 for r in rows if r["train/outer_loss"]) == 4

    tables = log_dir / "tables"
    with (tables / "test_speaker_table.csv").open() as handle:
        speakers = list(csv.DictReader(handle))
    assert list(speakers[0]) == ["speaker", "k", "s", "wer", "cer", "words"]
    assert {(int(r["k"]), int(r["s"])) for r in speakers} == {(k, s) for k in TEST_SHOTS for s in TEST_STEPS}
    with (tables / "test_adaptation_curve.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(TEST_SHOTS) * len(TEST_STEPS)
    assert (tables / "test_adaptation_table.csv").is_file()
    assert "FOMAML" in (log_dir / "hparams.yaml").read_text()


def _hand_made_report():
    from metaspeech.evaluation.scoring import AdaptationReport, score_utterance

    records = [
        score_utterance(speaker, k, s, f"{speaker}-{i}", "the cat sat", "the cat sat" if s else "the dog")
        for speaker in ("spk-a", "spk-b") for k in (1, 3) for s in (0, 2) for i in range(2)
    ]
    return AdaptationReport(records)


def test_report_tables_curves_and_audio_captions_from_records() -> None:
    from metaspeech.training.loggers import example_clips, report_tables

    report = _hand_made_report()
    tables = report_tables(report)
    assert len(tables["adaptation_table"]) == 4 and len(tables["speaker_table"]) == 8
    assert [r["condition"] for r in tables["decomposition_table"]] == ["k=1 s=0", "k=1 s=2", "k=3 s=0", "k=3 s=2"]
    assert tables["speaker_table"][0] == {"speaker": "spk-a", "k": 1, "s": 0, "wer": pytest.approx(2 / 3), "cer": pytest.approx(7 / 11),
                                          "words": 6}
    assert report.curves() == {1: [(0, pytest.approx(2 / 3)), (2, 0.0)], 3: [(0, pytest.approx(2 / 3)), (2, 0.0)]}
    assert [r["s"] for r in tables["adaptation_curve"]] == [0, 2, 0, 2]

    # examples: the most adapted condition (k=3, s=2), one per speaker first, each with its s=0 decoding
    examples = report.examples(3)
    assert [(r.utterance, r.shots, r.steps) for r, _ in examples] == [("spk-a-0", 3, 2), ("spk-b-0", 3, 2), ("spk-a-1", 3, 2)]
    assert all(before is not None and before.hypothesis == "the dog" for _, before in examples)

    waveform = np.zeros(160, dtype=np.float32)
    clips = example_clips(report, lambda utterance: None if utterance.startswith("spk-b") else waveform, 3)
    assert len(clips) == 2, "an utterance without audio is left out"
    assert clips[0][1] == "spk-a k=3 s=2 | ref: the cat sat / hyp: the cat sat / hyp without adaptation: the dog"
    assert example_clips(report, None, 3) == []


def test_report_goes_to_csv_tables_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from metaspeech.training.loggers import log_adaptation_report

    report = _hand_made_report()
    logger = CSVLogger(save_dir=str(tmp_path), name="run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    log_adaptation_report([logger], report)
    assert not (tmp_path / "run").exists(), "a rank other than 0 wrote tables"
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    log_adaptation_report([logger], report)
    with (Path(logger.log_dir) / "tables" / "test_speaker_table.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8


def test_testing_a_checkpoint_logs_into_the_wandb_run_of_its_fit(wandb_env: Path, tiny_cli_args) -> None:
    """``fit`` then ``test --ckpt_path``: one W&B run (resumed by the id the checkpoint records)."""
    import wandb

    from metaspeech.cli.main import build_cli

    arguments = [a for a in tiny_cli_args("fomaml.yaml") if a != "--trainer.logger=false"]
    logger = ["--trainer.logger=metaspeech.training.loggers.WandbLogger", f"--trainer.logger.save_dir={wandb_env / 'runs'}",
              "--trainer.logger.project=metaspeech-test"]
    try:
        fit = build_cli(["fit", *arguments, *logger, "--trainer.max_steps=2", "--trainer.limit_val_batches=0"])
        run_id = fit.trainer.logger.version
        fit.trainer.logger.experiment.finish()
        checkpoint = sorted(wandb_env.rglob("*.ckpt"))[-1]
        assert torch_load(checkpoint)["metaspeech"]["wandb_run_id"] == run_id
        test = build_cli(["test", *arguments, *logger, f"--model.results_dir={wandb_env}", f"--ckpt_path={checkpoint}"])
        assert test.trainer.logger.version == run_id
        test.trainer.logger.experiment.finish()
    finally:
        wandb.teardown()


def torch_load(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
