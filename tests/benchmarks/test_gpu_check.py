"""The GPU check rehearses on CPU (``--device cpu --quick``) end to end in under two minutes, so it cannot rot
before a GPU is there; failing cells, an exhausted budget and the scale search are recorded, not fatal."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The rehearsal exactly as documented: the file run in a fresh process from the repository root."""
    output = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--output", str(output),
               "--work_dir", str(output / "work")]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    return {"done": done, "seconds": time.perf_counter() - start, "output": output,
            "report": json.loads((output / "gpu_check.json").read_text()) if (output / "gpu_check.json").exists() else {}}


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def test_quick_cpu_run_passes_in_under_two_minutes(quick_run: dict[str, Any]) -> None:
    done = quick_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert quick_run["report"]["failures"] == []
    assert quick_run["seconds"] < 120, f"the CPU rehearsal took {quick_run['seconds']:.0f} s"


def test_engine_speed_measures_every_cell_of_both_implementations(quick_run: dict[str, Any]) -> None:
    rows = quick_run["report"]["sections"]["engine_speed"]["rows"]
    cells = {(r["algorithm"], r["scope"], r["precision"]) for r in rows}
    assert cells == {(a, s, p) for a in gpu_check.ALGORITHMS for s in gpu_check.ENGINE_SCOPES for p in gpu_check.ENGINE_PRECISIONS}
    for row in rows:
        for implementation in ("engine", "reference"):
            result = row[implementation]
            assert _finite(result["seconds_per_step"], result["tasks_per_second"], result["peak_memory_mb"]), row
            assert result["tasks_per_second"] > 0 and result["repeats"] >= 1
        assert _finite(row["speedup"], row["memory_ratio"])


def test_every_fit_has_finite_losses_and_adaptation_lowers_the_query_loss(quick_run: dict[str, Any]) -> None:
    rows = quick_run["report"]["sections"]["fit"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {(m, p) for m in gpu_check.FIT_MODELS for p in gpu_check.FIT_PRECISIONS}
    for row in rows:
        assert row["losses_finite"] and row["skipped_steps"] == 0 and row["steps"] == 2, row
        assert _finite(row["query_loss_pre"], row["query_loss_post"], row["adaptation_gain"], row["seconds"])
        assert row["adaptation_lowers_query_loss"], row
        # Lightning runs 16-mixed as bf16-mixed on a CPU; the report says what actually ran.
        assert row["precision_ran"] == "bf16-mixed" and not row["grad_scaler"]


def test_scale_finds_the_cap_for_both_variants(quick_run: dict[str, Any]) -> None:
    rows = quick_run["report"]["sections"]["scale"]["rows"]
    assert [r["second_order_steps"] for r in rows] == [None, 1]
    for row in rows:
        assert row["largest_fitting_tasks"] == 4 and row["bounded_by"] == "cap"
        assert [p["tasks"] for p in row["probes"]] == [1, 2, 4]
        assert all(_finite(p["seconds"], p["peak_memory_mb"]) for p in row["probes"])


def test_markdown_tables_and_a_wheel_set_that_covers_what_ran(quick_run: dict[str, Any]) -> None:
    text = (quick_run["output"] / "gpu_check.md").read_text()
    for heading in ("## Engine vs per-task loop", "## Second-order MAML fits", "## Scale: largest T"):
        assert heading in text
    assert "| maml | lhuc | 2 | fp32 |" in text and "| ConformerCTC | 16-mixed | bf16-mixed |" in text
    environment = quick_run["report"]["environment"]
    assert environment["not_in_gpu_wheels"] == [], "imported but neither preinstalled on the GPU machine nor in gpu-wheels"
    assert environment["stale_sources"] == []


def test_wheel_requirements_pin_every_package_from_the_lock() -> None:
    pins = gpu_check.wheel_requirements(REPO / "requirements.lock")
    assert [p.split("==")[0] for p in pins] == list(gpu_check.GPU_WHEEL_PACKAGES)
    assert "pycparser==3.12" in pins and "rapidfuzz==3.14.6" in pins  # the Python >= 3.11 pins, not the 3.10 ones


def test_an_exhausted_budget_records_every_cell_as_skipped(tmp_path: Path) -> None:
    assert gpu_check.main(["--device", "cpu", "--quick", "--budget_s", "0", "--output", str(tmp_path),
                           "--work_dir", str(tmp_path / "work")]) == 0
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert [len(sections[name]["rows"]) for name in gpu_check.SECTIONS] == [16, 4, 2]
    assert all(r["skipped"].startswith("budget") for name in gpu_check.SECTIONS for r in sections[name]["rows"])


def test_a_failing_cell_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_step = gpu_check.build_step

    def failing_for_reptile(args, model_kwargs=None):
        if args.algorithm == "reptile":
            raise RuntimeError("no kernel for this")
        return build_step(args, model_kwargs)

    monkeypatch.setattr(gpu_check, "build_step", failing_for_reptile)
    status = gpu_check.main(["--device", "cpu", "--quick", "--sections", "engine_speed", "--output", str(tmp_path),
                             "--work_dir", str(tmp_path / "work")])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert status == 1 and len(report["failures"]) == 4
    rows = report["sections"]["engine_speed"]["rows"]
    failed = [r for r in rows if r["algorithm"] == "reptile"]
    assert all(r["engine"]["error"] == "RuntimeError: no kernel for this" and "speedup" not in r for r in failed)
    assert all("speedup" in r for r in rows if r["algorithm"] != "reptile")


def test_the_scale_search_doubles_then_bisects_to_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe(settings, tasks, second_order_steps):
        fits = tasks <= 37
        return {"tasks": tasks, "fits": fits, "out_of_memory": not fits, "seconds": 0.01, "peak_memory_mb": 10.0 * tasks}

    monkeypatch.setattr(gpu_check, "probe_tasks", probe)
    result = gpu_check.largest_tasks(gpu_check.Settings(device="cpu"), None, deadline=time.perf_counter() + 60)
    assert [p["tasks"] for p in result["probes"]] == [8, 16, 32, 64, 48, 40, 36]
    assert (result["largest_fitting_tasks"], result["first_failing_tasks"], result["bounded_by"]) == (36, 40, "out of memory")
    assert result["peak_memory_mb_at_largest"] == 360.0


def test_slow_steps_are_timed_fewer_times_and_the_slowest_by_their_warm_up() -> None:
    import torch

    model = torch.nn.Linear(1, 1)
    fast = gpu_check.time_step(lambda: None, model, gpu_check.Settings(device="cpu", repeats=5, cell_s=0.5))
    assert fast["repeats"] == 5
    slow = gpu_check.time_step(lambda: time.sleep(0.03), model, gpu_check.Settings(device="cpu", repeats=5, cell_s=0.05))
    assert slow["repeats"] == 1 and slow["seconds_per_step"] >= 0.03
    slowest = gpu_check.time_step(lambda: time.sleep(0.03), model, gpu_check.Settings(device="cpu", repeats=5, cell_s=0.01))
    assert slowest["repeats"] == 0 and slowest["seconds_per_step"] == slowest["warmup_seconds"]
