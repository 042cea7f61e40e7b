"""The GPU claims, measured in one short run: engine speed, mixed-precision fits, memory at scale.

GPU time is short and rare, so this check is prepared and rehearsed on CPU and runs as
one command (<= 8 minutes on one H100/H200). The GPU
machine has Python 3.12 with torch 2.11.0+cu130, torchaudio 2.11.0, lightning 2.6.6 and
torchmetrics 1.9.0 and no network; `make gpu-wheels` (here, with network) puts every other
runtime dependency and the project itself, as cp312 manylinux wheels, into build/gpu-wheels/
(it travels with the repository). On the GPU machine, from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site build/gpu-wheels/*.whl
    PYTHONPATH=/tmp/site WANDB_MODE=disabled python3 benchmarks/gpu_check.py --device cuda --output results/gpu_check

(`make gpu-check` runs the same two steps there.) `--target`: the machine's Python stays as it
is. `--no-deps`: pyproject.toml also lists wandb and matplotlib, which nothing on this path
needs (W&B is off; torchmetrics imports matplotlib only when it is there), so they do not
travel. Run the file, not `python -m`: from the repository root `-m` would import the source
tree's `metaspeech` folder (laid out for setuptools' package-dir, not importable as is)
instead of the installed wheel. The wheel is a copy: rebuild it after editing the project
(`environment.stale_sources` in the JSON lists the files where the installed copy differs).

Sections, each cell caught and recorded on its own (JSON and markdown rewritten after every cell):
  engine_speed  the engine vs the per-task loop (benchmarks/engine_speed.py, reference_loop.py),
                fp32 and bf16 autocast: MAML, FOMAML, Reptile, HyperInit; LHUC and head scopes;
                T in {8, 32}, k = 5, 5 inner steps; median of CUDA-synchronized steps after a
                warm-up, peak memory per cell (torch.cuda.max_memory_allocated, reset per cell).
  fit           `metaspeech fit` (metaspeech.cli.main.build_cli) of second-order MAML on the tiny
                embedded corpus, bf16-mixed and 16-mixed, BiLSTMCTC and ConformerCTC: losses
                finite, adaptation lowers the query loss (train/query_loss_pre vs _post), skipped steps.
  scale         the largest T that fits second-order MAML with 5 inner steps, with all steps
                second order and with `second_order_steps: 1`: T doubles until CUDA runs out of
                memory, then a few bisection steps.

`--budget_s` bounds the whole run: the sections share it (engine_speed until 45 %, fit until
70 %, scale until 100 %); a cell that would start after its section's share is recorded as
skipped. Exit status 1 when a cell failed (it is still in the JSON), else 0.

    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --output /tmp/gpu_check   # the CPU rehearsal, < 2 min
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a file: make `benchmarks` importable. Appended, so an installed metaspeech wins over the source tree.
    sys.path.append(str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from benchmarks.engine_speed import ALGORITHMS, build_step  # noqa: E402

SECTIONS = ("engine_speed", "fit", "scale")
SECTION_ENDS = {"engine_speed": 0.45, "fit": 0.70, "scale": 1.0}
"""Fraction of ``--budget_s`` by which each section's last cell must have started."""
ENGINE_SCOPES = ("lhuc", "head")
ENGINE_PRECISIONS = ("fp32", "bf16")
FIT_PRECISIONS = ("bf16-mixed", "16-mixed")
FIT_MODELS = ("BiLSTMCTC", "ConformerCTC")
SCALE_VARIANTS = {"all steps second order": None, "second_order_steps=1": 1}

GPU_PREINSTALLED = ("torch", "torchaudio", "lightning", "torchmetrics")
GPU_WHEEL_PACKAGES = (
    "cffi", "click", "docstring-parser", "espeakng-loader", "jiwer", "jsonargparse", "markdown-it-py", "mdurl",
    "pycparser", "pygments", "rapidfuzz", "rich", "soundfile", "typeshed-client",
)
"""What the check imports beyond the preinstalled packages and their requirements (`make gpu-wheels` downloads these)."""
GPU_ABSENT_OPTIONAL = ("matplotlib",)
"""Imported only where installed (torchmetrics' plotting), so left out of the wheels with their requirements."""
GPU_MARKER_ENVIRONMENT = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix",
}


@dataclass
class Settings:
    """Sizes of every cell: the engine benchmark's (T = 8, k = 5, 5 steps) on a GPU, tiny ones under ``--quick``."""

    device: str
    threads: int | None = None
    """CPU threads (None: torch's default). One in the rehearsal: spinning OpenMP threads stall on a busy machine."""
    engine_tasks: tuple[int, ...] = (8, 32)
    shots: int = 5
    frames: int = 200
    inner_steps: int = 5
    warmup: int = 1
    repeats: int = 5
    cell_s: float = 3.0
    """Timed seconds per engine cell: fewer repeats (at least one) where one step is slow."""
    engine_model: dict[str, Any] = field(default_factory=dict)
    """BiLSTMCTC arguments for engine_speed and scale; empty: the model of BENCHMARKS.md §3."""
    fit_steps: int = 20
    fit_models: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "BiLSTMCTC": {},  # configs/maml.yaml's recognizer
        "ConformerCTC": {"d_model": 144, "num_layers": 4, "heads": 4, "ffn_dim": 576, "kernel_size": 15, "adapter_dim": 32},
    })
    scale_steps: int = 5
    scale_scope: str = "lin+lhuc+head"
    scale_start: int = 8
    scale_max: int = 4096
    scale_bisections: int = 3


def quick_settings(device: str) -> Settings:
    """The CPU rehearsal: every code path, tiny sizes, one repeat."""
    return Settings(
        device=device, threads=1, engine_tasks=(2,), shots=2, frames=120, inner_steps=1, repeats=1, cell_s=0.0,
        engine_model={"d_model": 32, "hidden_dim": 32, "num_layers": 1, "adapter_dim": 8, "dropout": 0.0},
        fit_steps=2,
        fit_models={
            "BiLSTMCTC": {"d_model": 32, "hidden_dim": 32, "num_layers": 1, "adapter_dim": 8, "dropout": 0.0},
            "ConformerCTC": {"d_model": 32, "num_layers": 1, "heads": 2, "ffn_dim": 64, "kernel_size": 3, "adapter_dim": 8,
                             "dropout": 0.0},
        },
        scale_steps=2, scale_start=1, scale_max=4, scale_bisections=1,
    )


class Budget:
    """Wall-clock seconds of the whole run, shared out between the sections (``SECTION_ENDS``)."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, section: str) -> float:
        """Seconds until ``section`` must stop starting cells."""
        return SECTION_ENDS[section] * self.total_s - self.elapsed()

    def skip_reason(self, section: str) -> str | None:
        if self.left(section) > 0:
            return None
        return f"budget: {self.elapsed():.0f} s elapsed, {section} ends at {SECTION_ENDS[section] * self.total_s:.0f} s"


# ------------------------------------------------------------------ report
class Report:
    """The run's JSON (``gpu_check.json``) and markdown (``gpu_check.md``), rewritten after every cell."""

    def __init__(self, output: Path, environment: dict[str, Any], settings: Settings, budget: Budget) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.json_path, self.markdown_path = output / "gpu_check.json", output / "gpu_check.md"
        self.budget = budget
        self.data: dict[str, Any] = {
            "environment": environment, "settings": asdict(settings), "budget_s": budget.total_s,
            "sections": {name: {"rows": []} for name in SECTIONS},
        }

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.data["sections"][section]["rows"].append(row)
        print(f"[{self.budget.elapsed():5.0f} s] {section}: {ROW_SUMMARIES[section](row)}", flush=True)
        self.save()

    def note(self, section: str, **values: Any) -> None:
        self.data["sections"][section].update(values)
        self.save()

    def failures(self) -> list[str]:
        """``section: error`` of every failed cell."""
        return [f"{name}: {row_error(row)}" for name, part in self.data["sections"].items() for row in part["rows"] if row_error(row)]

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.json_path.write_text(json.dumps(self.data, indent=2, default=str))
        self.markdown_path.write_text(markdown(self.data))


def row_error(row: dict[str, Any]) -> str | None:
    """The error of a cell, or of one of its parts (an engine cell's engine or loop measurement)."""
    return row.get("error") or next((v["error"] for v in row.values() if isinstance(v, dict) and "error" in v), None)


def guarded(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``, or ``{"error", "traceback"}`` when it raises: one failing cell must not stop the check."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 -- recorded, and the next cell runs
        return {"error": describe(err), "traceback": traceback.format_exc()[-2000:]}
    finally:
        free_memory()


def describe(err: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


# ------------------------------------------------------------------ device helpers
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory() -> None:
    """Drop what the last cell left, so the next cell's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """CUDA: the cell's peak allocated memory. CPU: the process's max RSS so far (not per cell)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def autocast(device: str, precision: str) -> ContextManager[None]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``; nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ------------------------------------------------------------------ engine speed
def engine_speed(settings: Settings, budget: Budget, report: Report) -> None:
    """The engine vs the per-task loop, every (T, precision, algorithm, scope); T = 8 first, so it survives a short budget."""
    if budget.skip_reason("engine_speed") is None:
        report.note("engine_speed", warm_up=guarded(lambda: warm_up_device(settings)))
    for tasks in settings.engine_tasks:
        for precision in ENGINE_PRECISIONS:
            for algorithm in ALGORITHMS:
                for scope in ENGINE_SCOPES:
                    row = {"algorithm": algorithm, "scope": scope, "tasks": tasks, "shots": settings.shots,
                           "steps": settings.inner_steps, "precision": precision}
                    report.add("engine_speed", {**row, **engine_cell(settings, budget, row)})


def engine_cell(settings: Settings, budget: Budget, row: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for implementation in ("engine", "reference"):
        skip = budget.skip_reason("engine_speed")
        if skip:
            return {**result, "skipped": skip}
        result[implementation] = guarded(lambda: time_implementation(settings, row, implementation))
    if "error" not in result["engine"] and "error" not in result["reference"]:
        result["speedup"] = result["engine"]["tasks_per_second"] / result["reference"]["tasks_per_second"]
        result["memory_ratio"] = result["engine"]["peak_memory_mb"] / result["reference"]["peak_memory_mb"]
    return result


def time_implementation(settings: Settings, row: dict[str, Any], implementation: str) -> dict[str, Any]:
    """Median seconds of one outer step (loss + backward) of ``implementation`` on a synthetic ``[T, k, frames, 80]`` batch."""
    step, model = build_step(_step_args(settings, row, implementation), settings.engine_model)
    with autocast(settings.device, row["precision"]):
        timing = time_step(step, model, settings)
    return {**timing, "tasks_per_second": row["tasks"] / timing["seconds_per_step"]}


def _step_args(settings: Settings, row: dict[str, Any], implementation: str) -> argparse.Namespace:
    """The arguments ``benchmarks.engine_speed.build_step`` reads."""
    return argparse.Namespace(
        algorithm=row["algorithm"], scope=row["scope"], implementation=implementation, tasks=row["tasks"],
        shots=settings.shots, frames=settings.frames, steps=settings.inner_steps, second_order_steps=None,
        device=settings.device,
    )


def time_step(step: Callable[[], None], model: torch.nn.Module, settings: Settings) -> dict[str, Any]:
    """Warm up, then the median of ``step`` timed between CUDA synchronizations, and the peak memory.

    Repeats shrink (to one) when a step is slower than ``cell_s``. A step slower than 2 x ``cell_s``
    (the per-task loop at T = 32) is timed by its warm-up alone: earlier cells have warmed its kernels
    (the loop runs the same per-task shapes at every T), and a second run would cost the budget more
    than it tells.
    """
    reset_peak_memory(settings.device)
    start = time.perf_counter()
    for _ in range(settings.warmup):
        model.zero_grad(set_to_none=True)
        step()
    synchronize(settings.device)
    warm_s = (time.perf_counter() - start) / max(1, settings.warmup)
    if settings.cell_s and warm_s > 2 * settings.cell_s:
        return {"seconds_per_step": warm_s, "seconds_min": warm_s, "repeats": 0, "warmup_seconds": warm_s,
                "peak_memory_mb": peak_memory_mb(settings.device)}
    repeats = max(1, min(settings.repeats, int(settings.cell_s / max(warm_s, 1e-6))))
    model.zero_grad(set_to_none=True)
    reset_peak_memory(settings.device)
    seconds = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        synchronize(settings.device)
        begin = time.perf_counter()
        step()
        synchronize(settings.device)
        seconds.append(time.perf_counter() - begin)
    return {"seconds_per_step": statistics.median(seconds), "seconds_min": min(seconds), "repeats": repeats,
            "warmup_seconds": warm_s, "peak_memory_mb": peak_memory_mb(settings.device)}


def warm_up_device(settings: Settings) -> dict[str, Any]:
    """One untimed T = 1 step of each implementation and precision: CUDA context, cuBLAS and cuDNN load here,
    not inside the first timed cell."""
    start = time.perf_counter()
    for precision in ENGINE_PRECISIONS:
        for implementation in ("engine", "reference"):
            row = {"algorithm": "maml", "scope": ENGINE_SCOPES[0], "tasks": 1, "precision": precision}
            step, _ = build_step(_step_args(settings, row, implementation), settings.engine_model)
            with autocast(settings.device, precision):
                step()
    synchronize(settings.device)
    return {"seconds": time.perf_counter() - start}


# ------------------------------------------------------------------ fits
def fits(settings: Settings, budget: Budget, report: Report, work_dir: Path) -> None:
    """``metaspeech fit`` of second-order MAML on the tiny corpus, every (precision, recognizer)."""
    corpus: dict[str, Any] | None = None
    for precision in FIT_PRECISIONS:
        for model in FIT_MODELS:
            row: dict[str, Any] = {"model": model, "precision": precision}
            skip = budget.skip_reason("fit")
            if skip:
                report.add("fit", {**row, "skipped": skip})
                continue
            if corpus is None:
                corpus = guarded(lambda: prepare_corpus(work_dir))
                report.note("fit", corpus=corpus)
            if "error" in corpus:
                report.add("fit", {**row, "error": f"no corpus: {corpus['error']}"})
                continue
            seconds = min(budget.left("fit"), 120.0)
            report.add("fit", {**row, **guarded(lambda: fit_cell(settings, work_dir, corpus, model, precision, seconds))})


def prepare_corpus(work_dir: Path) -> dict[str, Any]:
    """Synthesize the tiny embedded corpus (what `metaspeech generate --preset tiny` does; seconds)."""
    from metaspeech.datamodules.embedded import generate_corpus

    start = time.perf_counter()
    root = work_dir / "data" / "embedded"
    manifest = generate_corpus(root, "tiny", seed=0, num_workers=1)
    return {"root": str(root), "cache_dir": str(work_dir / "data" / "cache"), "manifest": str(manifest),
            "seconds": time.perf_counter() - start}


def fit_arguments(settings: Settings, corpus: dict[str, Any], model: str, precision: str, directory: Path,
                  max_seconds: float) -> list[str]:
    """The `metaspeech fit` command line: configs/maml.yaml on configs/data/embedded_tiny.yaml, a CSV logger, no validation.

    ``max_epochs=3`` and ``max_time`` bound a fit whose steps are all skipped (skipped steps do not count to max_steps).
    """
    accelerator = "gpu" if settings.device.startswith("cuda") else "cpu"
    recognizer = [f"--model.recognizer=metaspeech.models.{model}"]
    recognizer += [f"--model.recognizer.init_args.{key}={value}" for key, value in settings.fit_models[model].items()]
    return [
        "fit", "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--config", str(REPO / "configs/maml.yaml"),
        *recognizer, "--seed_everything=0",
        f"--data.init_args.root={corpus['root']}", f"--data.init_args.cache_dir={corpus['cache_dir']}",
        f"--data.init_args.batches_per_epoch={settings.fit_steps}",
        f"--trainer.accelerator={accelerator}", "--trainer.devices=1", f"--trainer.precision={precision}",
        f"--trainer.max_steps={settings.fit_steps}", "--trainer.max_epochs=3", f"--trainer.max_time={clock(max_seconds)}",
        "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={directory}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={directory}",
    ]


def clock(seconds: float) -> str:
    """``DD:HH:MM:SS`` for Lightning's ``max_time`` (at least one second)."""
    total = max(1, int(seconds))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def fit_cell(settings: Settings, work_dir: Path, corpus: dict[str, Any], model: str, precision: str,
             max_seconds: float) -> dict[str, Any]:
    from metaspeech.cli.main import build_cli

    directory = work_dir / "fits" / f"{model}-{precision}"
    start = time.perf_counter()
    try:
        cli = build_cli(fit_arguments(settings, corpus, model, precision, directory, max_seconds))
    except SystemExit as exit_:  # a configuration error: jsonargparse has printed why
        raise RuntimeError(f"metaspeech fit exited with status {exit_.code}") from exit_
    seconds = time.perf_counter() - start
    rows = read_metrics(Path(cli.trainer.logger.log_dir) / "metrics.csv")
    return {**summarize_fit(cli, rows), "seconds": seconds}


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The CSV logger's rows, numbers only (a row holds the metrics logged at one step)."""
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def summarize_fit(cli: Any, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Finite losses and weights, the query loss before and after adaptation (mean over steps), skipped steps."""
    pairs = [(r["train/query_loss_pre"], r["train/query_loss_post"]) for r in rows
             if "train/query_loss_pre" in r and "train/query_loss_post" in r]
    losses = [v for r in rows for k, v in r.items() if k.startswith("train/") and "loss" in k]
    weights_finite = all(bool(torch.isfinite(p).all()) for p in cli.model.parameters())
    gains = [pre - post for pre, post in pairs]
    scaler = getattr(cli.trainer.precision_plugin, "scaler", None)
    return {
        "precision_ran": str(cli.trainer.precision), "grad_scaler": scaler is not None,
        "steps": int(cli.trainer.global_step), "skipped_steps": int(cli.model.skipped_steps),
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses) and weights_finite,
        "query_loss_pre": statistics.fmean(p for p, _ in pairs) if pairs else None,
        "query_loss_post": statistics.fmean(q for _, q in pairs) if pairs else None,
        "adaptation_gain": statistics.fmean(gains) if gains else None,
        "steps_adaptation_lowered": sum(g > 0 for g in gains), "steps_compared": len(gains),
        "adaptation_lowers_query_loss": bool(gains) and statistics.fmean(gains) > 0,
    }


# ------------------------------------------------------------------ scale
def scale(settings: Settings, budget: Budget, report: Report) -> None:
    """The largest T for each variant; the first variant gets half of the section's time."""
    for index, (variant, second_order_steps) in enumerate(SCALE_VARIANTS.items()):
        share = budget.left("scale") / (len(SCALE_VARIANTS) - index)
        deadline = time.perf_counter() + share
        row: dict[str, Any] = {"variant": variant, "second_order_steps": second_order_steps, "steps": settings.scale_steps,
                               "scope": settings.scale_scope, "shots": settings.shots}
        skip = budget.skip_reason("scale")
        if skip:
            report.add("scale", {**row, "skipped": skip})
            continue
        report.add("scale", {**row, **guarded(lambda: largest_tasks(settings, second_order_steps, deadline))})


def largest_tasks(settings: Settings, second_order_steps: int | None, deadline: float) -> dict[str, Any]:
    """Double T from ``scale_start`` until a step fails (out of memory), then bisect; stop at ``scale_max`` or ``deadline``.

    A probe is left out when the slowest seconds per task so far, times T, would pass the deadline.
    """
    probes: list[dict[str, Any]] = []
    fits, fails, bounded_by = 0, None, "cap"
    for tasks in _candidates(settings, lambda: (fits, fails)):
        rate = max((p["seconds"] / p["tasks"] for p in probes), default=0.0)
        if time.perf_counter() + rate * tasks > deadline:
            bounded_by = bounded_by if fails is not None else "budget"  # after a failure memory stays the bound
            break
        probe = probe_tasks(settings, tasks, second_order_steps)
        probes.append(probe)
        if probe["fits"]:
            fits = tasks
        else:
            fails, bounded_by = tasks, "out of memory" if probe.get("out_of_memory") else "error"
    best = next((p for p in probes if p["tasks"] == fits), {})
    result = {"largest_fitting_tasks": fits, "first_failing_tasks": fails, "bounded_by": bounded_by,
              "peak_memory_mb_at_largest": best.get("peak_memory_mb"), "probe_seconds_at_largest": best.get("seconds"),
              "probes": probes}
    if not fits:
        result["error"] = f"T={probes[0]['tasks']} does not fit: {probes[0].get('error', 'out of memory')}"
    return result


def _candidates(settings: Settings, state: Callable[[], tuple[int, int | None]]) -> Iterable[int]:
    """T to probe next: doubling while every probe fits, then ``scale_bisections`` midpoints."""
    tasks = settings.scale_start
    while tasks <= settings.scale_max and state()[1] is None:
        yield tasks
        tasks *= 2
    for _ in range(settings.scale_bisections):
        fits, fails = state()
        if fails is None or fails - fits <= 1:
            return
        yield (fits + fails) // 2


def probe_tasks(settings: Settings, tasks: int, second_order_steps: int | None) -> dict[str, Any]:
    """One fp32 second-order MAML outer step (engine) with T tasks: fits or not, seconds, peak memory."""
    args = argparse.Namespace(
        algorithm="maml", scope=settings.scale_scope, implementation="engine", tasks=tasks, shots=settings.shots,
        frames=settings.frames, steps=settings.scale_steps, second_order_steps=second_order_steps, device=settings.device,
    )
    free_memory()
    reset_peak_memory(settings.device)
    start = time.perf_counter()
    outcome = _try_step(args, settings)
    seconds, peak = time.perf_counter() - start, peak_memory_mb(settings.device)
    free_memory()
    return {"tasks": tasks, **outcome, "seconds": seconds, "peak_memory_mb": peak}


def _try_step(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Build and run one step; its tensors are freed when this returns, also after running out of memory."""
    try:
        step, _ = build_step(args, settings.engine_model)
        step()
        synchronize(settings.device)
    except Exception as err:  # noqa: BLE001 -- out of memory is the answer; another error is recorded as the bound
        out_of_memory = isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err) or "ALLOC_FAILED" in str(err)
        return {"fits": False, "out_of_memory": True} if out_of_memory else {"fits": False, "error": describe(err)}
    return {"fits": True}


# ------------------------------------------------------------------ environment and wheels
def environment(argv: list[str], device: str, work_dir: Path) -> dict[str, Any]:
    """What ran where: versions, the GPU, the commit, the command."""
    from importlib.metadata import version

    info: dict[str, Any] = {
        "command": ["python3", "benchmarks/gpu_check.py", *argv], "started_utc": datetime.now(timezone.utc).isoformat(),
        "python": platform.python_version(), "platform": platform.platform(), "device": device, "work_dir": str(work_dir),
        "versions": {name: version(name) for name in (*GPU_PREINSTALLED, "metaspeech")},
        "torch_cuda": torch.version.cuda, "commit": git_commit(),
    }
    if device.startswith("cuda"):
        info.update(guarded(lambda: gpu_properties(device)))
    return info


def gpu_properties(device: str) -> dict[str, Any]:
    properties = torch.cuda.get_device_properties(torch.device(device))
    return {"gpu": properties.name, "gpu_memory_gb": round(properties.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version()}


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def stale_sources() -> list[str]:
    """Project files whose installed copy differs from this tree (a wheel built before the last edit)."""
    import metaspeech
    import metaspeech.algorithms
    import metaspeech.datamodules

    differing = []
    for package, tree in ((metaspeech, "metaspeech"), (metaspeech.algorithms, "algorithms"), (metaspeech.datamodules, "datamodules")):
        installed = Path(package.__file__).parent
        for source in sorted((REPO / tree).rglob("*.py")):
            copy = installed / source.relative_to(REPO / tree)
            if not copy.is_file() or copy.read_bytes() != source.read_bytes():
                differing.append(str(source.relative_to(REPO)))
    return differing


def requirement_closure(roots: Iterable[str]) -> set[str]:
    """Canonical names of ``roots`` and of everything they require, as installed here (extras included)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, str]] = set()
    stack = [(canonicalize_name(r), "") for r in roots]
    while stack:
        name, extra = stack.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            requirements = [Requirement(r) for r in requires(name) or []]
        except PackageNotFoundError:
            continue
        for r in requirements:
            if r.marker is None or r.marker.evaluate({**GPU_MARKER_ENVIRONMENT, "extra": extra}):
                stack += [(canonicalize_name(r.name), e) for e in ("", *r.extras)]
    return {name for name, _ in seen}


def distributions_not_carried() -> list[str]:
    """Distributions this process imported that the GPU machine lacks: neither preinstalled (with their
    requirements) nor in GPU_WHEEL_PACKAGES. Empty, or `make gpu-wheels` misses something."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    owners = packages_distributions()
    imported = {canonicalize_name(d) for m in list(sys.modules) for d in owners.get(m.partition(".")[0], [])}
    available = requirement_closure(GPU_PREINSTALLED) | {canonicalize_name(p) for p in (*GPU_WHEEL_PACKAGES, "metaspeech")}
    available |= requirement_closure(GPU_ABSENT_OPTIONAL)
    return sorted(imported - available)


def wheel_requirements(lock: Path) -> list[str]:
    """``name==version`` of every GPU_WHEEL_PACKAGES entry as requirements.lock pins it for CPython 3.12 on Linux."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in lock.read_text().splitlines():
        if not line or line[0] in " #-":
            continue
        requirement = Requirement(line.rstrip(" \\"))
        if requirement.marker is None or requirement.marker.evaluate(GPU_MARKER_ENVIRONMENT):
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    missing = [p for p in GPU_WHEEL_PACKAGES if canonicalize_name(p) not in pins]
    if missing:
        raise SystemExit(f"not pinned in {lock}: {missing}")
    return [f"{p}{pins[canonicalize_name(p)]}" for p in GPU_WHEEL_PACKAGES]


# ------------------------------------------------------------------ markdown
def _number(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _note(row: dict[str, Any]) -> str:
    return (row.get("skipped") or row_error(row) or "").replace("|", "/")[:120]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *("| " + " | ".join(r) + " |" for r in rows)]


def _engine_line(row: dict[str, Any]) -> list[str]:
    engine, loop = row.get("engine", {}), row.get("reference", {})
    return [row["algorithm"], row["scope"], str(row["tasks"]), row["precision"],
            _number(engine.get("tasks_per_second"), 1), _number(loop.get("tasks_per_second"), 1), _number(row.get("speedup")),
            _number(engine.get("peak_memory_mb"), 0), _number(loop.get("peak_memory_mb"), 0),
            f"{_number(engine.get('repeats'))}/{_number(loop.get('repeats'))}", _note(row)]


def _fit_line(row: dict[str, Any]) -> list[str]:
    losses = f"{_number(row.get('query_loss_pre'), 3)} → {_number(row.get('query_loss_post'), 3)}" if "query_loss_pre" in row else ""
    return [row["model"], row["precision"], row.get("precision_ran", ""), _number(row.get("steps")),
            _number(row.get("skipped_steps")), _number(row.get("losses_finite")), losses,
            _number(row.get("adaptation_lowers_query_loss")), _number(row.get("seconds"), 0), _note(row)]


def _scale_line(row: dict[str, Any]) -> list[str]:
    return [row["variant"], _number(row.get("largest_fitting_tasks")), _number(row.get("first_failing_tasks")),
            row.get("bounded_by", ""), _number(row.get("peak_memory_mb_at_largest"), 0),
            _number(row.get("probe_seconds_at_largest")), _note(row)]


def markdown(data: dict[str, Any]) -> str:
    """The three sections as markdown tables, headed by the device and versions."""
    env, sections, settings = data["environment"], data["sections"], data["settings"]
    lines = [f"# GPU check: {env.get('gpu', env['device'])}", "",
             f"`{' '.join(env['command'])}` · python {env['python']} · "
             + " · ".join(f"{k} {v}" for k, v in env["versions"].items())
             + f" · CUDA {env['torch_cuda']} · commit {env['commit']} · {data.get('elapsed_s', 0):.0f} s of {data['budget_s']:.0f} s", "",
             f"## Engine vs per-task loop (k = {settings['shots']}, {settings['inner_steps']} inner steps, "
             "median of the timed runs; 0 runs: timed by its warm-up)", ""]
    lines += _table(["algorithm", "scope", "T", "precision", "engine tasks/s", "loop tasks/s", "speed-up", "engine MB",
                     "loop MB", "timed runs", "note"], [_engine_line(r) for r in sections["engine_speed"]["rows"]])
    lines += ["", f"## Second-order MAML fits ({settings['fit_steps']} steps, tiny embedded corpus)", ""]
    lines += _table(["model", "precision", "ran as", "steps", "skipped", "finite", "query loss pre → post", "adaptation lowers",
                     "s", "note"], [_fit_line(r) for r in sections["fit"]["rows"]])
    lines += ["", f"## Scale: largest T, second-order MAML, {settings['scale_steps']} inner steps, fp32", ""]
    lines += _table(["variant", "largest T that fits", "first T that fails", "bounded by", "peak MB at largest",
                     "probe s at largest", "note"], [_scale_line(r) for r in sections["scale"]["rows"]])
    return "\n".join(lines) + "\n"


def _engine_summary(row: dict[str, Any]) -> str:
    head = f"{row['algorithm']:>9} {row['scope']:>4} T={row['tasks']:<2} {row['precision']}"
    return f"{head} speed-up x{row['speedup']:.2f}" if "speedup" in row else f"{head} {_note(row)}"


def _fit_summary(row: dict[str, Any]) -> str:
    head = f"{row['model']} {row['precision']}"
    if "steps" not in row:
        return f"{head} {_note(row)}"
    return (f"{head} ran as {row['precision_ran']}: {row['steps']} steps, {row['skipped_steps']} skipped, finite "
            f"{row['losses_finite']}, query loss {_number(row['query_loss_pre'], 3)} -> {_number(row['query_loss_post'], 3)}")


def _scale_summary(row: dict[str, Any]) -> str:
    if "largest_fitting_tasks" not in row:
        return f"{row['variant']} {_note(row)}"
    return f"{row['variant']}: T = {row['largest_fitting_tasks']} fits, bounded by {row['bounded_by']}"


ROW_SUMMARIES = {"engine_speed": _engine_summary, "fit": _fit_summary, "scale": _scale_summary}


# ------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="results/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the rehearsal)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: the CPU rehearsal (< 2 min)")
    parser.add_argument("--budget_s", type=float, default=420.0, help="wall-clock budget shared by the sections")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--work_dir", default=None, help="corpus, feature cache and fit logs (default: a new temp folder)")
    parser.add_argument("--wheel_requirements", action="store_true",
                        help="print the pins `make gpu-wheels` downloads (from requirements.lock) and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.wheel_requirements:
        print("\n".join(wheel_requirements(REPO / "requirements.lock")))
        return 0
    settings = quick_settings(args.device) if args.quick else Settings(device=args.device)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    budget = Budget(args.budget_s)
    report = Report(Path(args.output), environment(argv, args.device, work_dir), settings, budget)
    if "engine_speed" in args.sections:
        engine_speed(settings, budget, report)
    if "fit" in args.sections:
        fits(settings, budget, report, work_dir)
    if "scale" in args.sections:
        scale(settings, budget, report)
    report.data["environment"].update(guarded(lambda: {"not_in_gpu_wheels": distributions_not_carried(),
                                                       "stale_sources": stale_sources()}))
    if report.data["environment"].get("stale_sources"):
        print(f"warning: the installed metaspeech differs from this tree in {report.data['environment']['stale_sources']}: "
              "rebuild the wheels (make gpu-wheels)", flush=True)
    failures = report.failures()
    report.data["failures"] = failures
    report.save()
    print(f"wrote {report.json_path} and {report.markdown_path} ({budget.elapsed():.0f} s, {len(failures)} failed cells)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
