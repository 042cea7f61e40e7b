"""The speed benchmark runs end to end (tiny cell), records ratios, and survives a failing cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    output = tmp_path / "speed.json"
    command = [sys.executable, "-m", "benchmarks.engine_speed", "--algorithms", "fomaml", "--scopes", "head",
               "--tasks", "2", "--steps", "1", "--shots", "1", "--frames", "60", "--repeats", "1", "--threads", "1",
               "--output", str(output), *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return done, json.loads(output.read_text()) if output.exists() else {}


def test_one_cell_writes_engine_and_loop_measurements_with_the_body_trained_and_frozen(tmp_path: Path) -> None:
    done, result = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    rows = result["rows"]
    assert [row["body"] for row in rows] == ["trained", "frozen"]
    for row in rows:
        assert (row["algorithm"], row["scope"], row["tasks"], row["steps"]) == ("fomaml", "head", 2, 1)
        for implementation in ("engine", "reference"):
            assert row[implementation]["tasks_per_second"] > 0 and row[implementation]["peak_memory_mb"] > 0
        assert row["speedup"] == row["engine"]["tasks_per_second"] / row["reference"]["tasks_per_second"]
    assert "speedup x" in done.stdout and "body=frozen" in done.stdout


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path: Path) -> None:
    done, result = _run(tmp_path, "--device", "no-such-device", "--bodies", "trained")
    assert done.returncode == 0, done.stderr
    (row,) = result["rows"]
    assert row["engine"]["error"].startswith("exit 1") and "speedup" not in row
    assert "no ratio" in done.stdout


def test_the_task_chunking_benchmark_writes_memory_and_speed_per_chunk_size(tmp_path: Path) -> None:
    output = tmp_path / "chunks.json"
    command = [sys.executable, "-m", "benchmarks.task_chunking", "--tasks", "2", "--chunks", "1", "2", "4", "--steps", "1",
               "--shots", "1", "--frames", "40", "--repeats", "1", "--threads", "1", "--output", str(output)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(output.read_text())["rows"]
    assert [(r["tasks"], r["chunk"]) for r in rows] == [(2, 1), (2, 2)]  # c > T is skipped
    assert all(r["tasks_per_second"] > 0 and r["peak_memory_mb"] >= 0 for r in rows)


def test_the_step_profile_groups_all_cpu_time_into_families(tmp_path: Path) -> None:
    output = tmp_path / "profile.json"
    command = [sys.executable, "-m", "benchmarks.profile_step", "--tasks", "1", "--steps", "1", "--shots", "1",
               "--frames", "40", "--threads", "1", "--output", str(output)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(output.read_text())["rows"]
    assert {"lstm", "other"} <= {r["family"] for r in rows}
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-9
