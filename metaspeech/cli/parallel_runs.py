"""The runs of one comparison side by side: one process per run, the cores split between them.

Why: after the shared start, every algorithm of ``metaspeech demo`` / ``compare`` is an
independent fit + test. The recognizer is small, so one run cannot keep several cores busy
(two threads are only ~1.6x faster than one on the test protocol, BENCHMARKS.md §2), and two
one-thread runs side by side finish sooner than the same runs one after the other with two
threads each. A run does exactly what it does alone (:func:`~metaspeech.cli.experiment.run_one`,
the same YAML); only its thread count changes, which moves float sums in the last digits.

Each worker writes its console output to ``<run folder>/log.txt``; the parent shows one progress
bar per run (outer steps, then held-out speakers), fed by :class:`QueueProgress`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from rich.progress import Progress

from metaspeech.errors import ConfigError
from metaspeech.evaluation.scoring import AdaptationReport
from metaspeech.training.progress import bar_columns


@dataclass(frozen=True)
class Run:
    """One (algorithm config, seed) of a comparison: what :func:`~metaspeech.cli.experiment.run_one` fits and tests."""

    algorithm_config: str
    data_config: str
    trainer_config: str
    root: Path
    seed: int
    overrides: tuple[str, ...]
    test: bool = True
    """False: meta-train and save the final model only, without the test protocol (no report)."""

    @property
    def label(self) -> str:
        return f"{Path(self.algorithm_config).stem} seed {self.seed}"


class QueueProgress(Callback):
    """Sends ``(label, phase, done, total)`` to the parent at every outer step and every tested speaker."""

    def __init__(self, label: str, events: Any) -> None:
        self.label, self.events = label, events

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.events.put((self.label, "meta-training (outer steps)", trainer.global_step, trainer.max_steps))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.events.put((self.label, "meta-val lr search, then test protocol (speakers)", 0, _test_speakers(trainer)))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.events.put((self.label, "test protocol (held-out speakers)", batch_idx + 1, _test_speakers(trainer)))


def _test_speakers(trainer: L.Trainer) -> int:
    return int(sum(trainer.num_test_batches))


def default_workers(runs: int) -> int:
    """One process per run, at most one per intra-op thread this process may use (``OMP_NUM_THREADS`` counts)."""
    return max(1, min(runs, torch.get_num_threads()))


def run_side_by_side(runs: list[Run], workers: int) -> list[AdaptationReport | None]:
    """Every run of ``runs`` in its own process, ``workers`` at a time; their reports, in the order of ``runs``.

    Each worker uses ``torch.get_num_threads() // workers`` threads (at least one).
    """
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked OpenMP or Lightning state
    events = context.Queue()
    print(f"{', '.join(r.label for r in runs)}: {workers} processes side by side, {threads} thread(s) each; "
          f"their output goes to log.txt in each run's folder", flush=True)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(events, threads)) as pool, \
            Progress(*bar_columns()) as bars:
        futures = [pool.submit(_run_in_worker, run) for run in runs]
        tasks = {run.label: bars.add_task(f"{run.label}: waiting", total=None) for run in runs}
        while not all(f.done() for f in futures):
            _show(bars, tasks, events, timeout=0.5)
        _show(bars, tasks, events, timeout=0.0)
        reports = [_result(future, run) for future, run in zip(futures, runs)]
    for run, report in zip(runs, reports):
        chosen = report.settings.get("test_time_selection") if report else None
        choice = (f"test-time adaptation {chosen['chosen']} (best at s = {chosen['steps']}) chosen on meta-val speakers; "
                  if chosen else "")
        print(f"{run.label}: {choice}output in {run.root / 'log.txt'}", flush=True)
    return reports


def _show(bars: Progress, tasks: dict[str, Any], events: Any, timeout: float) -> None:
    """Apply every progress event waiting in ``events`` (waiting up to ``timeout`` s for the first)."""
    try:
        label, phase, done, total = events.get(timeout=timeout) if timeout else events.get_nowait()
        while True:
            bars.update(tasks[label], description=f"{label}: {phase}", completed=done, total=total)
            label, phase, done, total = events.get_nowait()
    except queue_module.Empty:
        return


def _result(future: Future, run: Run) -> AdaptationReport | None:
    """A worker's report; its failures as the errors the console script reports, naming the run and its log."""
    log = run.root / "log.txt"
    try:
        return future.result()
    except ConfigError as err:  # the Lightning CLI refused an argument or a value
        raise ConfigError(f"{run.label}: the command line was refused: {err} (output of the run: {log})") from None
    except SystemExit:  # the Lightning CLI exited (a refused argument): its message went to the run's log
        errors = [line for line in log.read_text().splitlines() if "error:" in line] if log.is_file() else []
        reason = errors[-1].strip() if errors else "see its log"
        raise ConfigError(f"{run.label}: the command line was refused: {reason} (output of the run: {log})") from None
    except BrokenProcessPool as err:
        raise RuntimeError(f"{run.label}: its process died (out of memory?); output of the run: {log}") from err


_EVENTS: Any = None


def _start_worker(events: Any, threads: int) -> None:
    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(threads)


def _run_in_worker(run: Run) -> AdaptationReport | None:
    """One run in a worker: its output to ``<root>/log.txt``, progress to the parent, no progress bar of its own."""
    from metaspeech.cli.experiment import run_one

    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / "log.txt", "w") as log:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        quiet = replace(run, overrides=(*run.overrides, "--trainer.enable_progress_bar=false"))
        return run_one(quiet, callbacks=[QueueProgress(run.label, _EVENTS)])
