"""The realism benchmark: its pitch estimate, and one small run of both engines through the real recognizer."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.realism import median_pitch
from metaspeech.datamodules.embedded import kokoro_assets

REPO = Path(__file__).resolve().parents[2]
NEEDS = ("pocketsphinx", "onnxruntime", *kokoro_assets.MODEL_PACKAGES)


@pytest.mark.parametrize("f0", [95.0, 150.0, 230.0])
def test_median_pitch_finds_the_fundamental_of_a_voiced_signal(f0: float) -> None:
    t = np.arange(16000) / 16000
    voiced = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    signal = np.concatenate([np.zeros(8000), voiced, 1e-4 * np.random.default_rng(0).standard_normal(8000)])
    assert abs(median_pitch(signal.astype(np.float32)) - f0) < 0.03 * f0
    assert math.isnan(median_pitch(np.zeros(16000, np.float32)))


@pytest.mark.skipif(not all(importlib.util.find_spec(n) for n in NEEDS), reason="needs pocketsphinx (dev extra) and the kokoro extra")
def test_a_small_run_scores_both_engines(tmp_path: Path) -> None:
    if kokoro_assets.missing_voices() and shutil.which("npm") is None:
        pytest.skip(f"npm is not installed and the Kokoro voices are not in {kokoro_assets.voices_dir()}")
    output = tmp_path / "realism.json"
    command = [sys.executable, "-m", "benchmarks.realism", "--utterances", "2", "--speakers", "2", "--threads", "1",
               "--output", str(output)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["engine"]: r for r in json.loads(output.read_text())["results"]}
    assert set(results) == {"espeak", "kokoro"}
    for result in results.values():
        assert result["utterances"] == 2 and result["speakers"] == 2
        assert 0 <= result["wer_clean"] and 0 <= result["wer_channel"]
        assert 60 <= result["pitch_hz"]["min"] <= result["pitch_hz"]["max"] <= 400
        assert result["seconds_per_utterance"] > 0
    assert "| kokoro | 2 | 2 |" in done.stdout
