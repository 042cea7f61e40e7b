"""Peak memory and speed of second-order MAML with task chunking (``model.tasks_per_chunk``).

    .venv/bin/python -m benchmarks.task_chunking                       # T in {8, 16}, c in {1, 2, 4, 8, 16}
    .venv/bin/python -m benchmarks.task_chunking --tasks 8 --chunks 1 8 --device cuda

Why: without chunks the engine holds all T tasks' double-backward graphs until the one
backward. With chunks of c tasks each chunk's share of the outer loss is backpropagated
at once (as :meth:`metaspeech.training.module.MetaSpeechModule.training_step` does), so
peak memory should fall roughly with T / c at the price of less task batching. Each
cell runs in a fresh subprocess; memory is the peak above the process's footprint
before the first step (CPU: max RSS; CUDA: max allocated). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path


def measure(args: argparse.Namespace) -> dict:
    """One (T, c) cell in this process: seconds per outer step and peak memory above the start."""
    import torch

    from benchmarks.engine_speed import peak_memory, synthetic_meta_batch, timed_steps
    from metaspeech.algorithms import MAML
    from metaspeech.engine.learner import Learner
    from metaspeech.models import BiLSTMCTC

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = BiLSTMCTC().to(device)
    learner = Learner(model, model.loss, ["lhuc"])
    algorithm = MAML(inner_steps=args.steps, inner_lr=0.1)
    batch = synthetic_meta_batch(args.tasks, args.shots, args.frames, model.vocab_size)
    batch = type(batch)(support=_to(batch.support, device), query=_to(batch.query, device))

    def step() -> None:
        for chunk in batch.chunks(args.chunk):
            (algorithm.outer_loss(learner, chunk).loss * (chunk.num_tasks / batch.num_tasks)).backward()

    before = peak_memory(args.device)
    seconds = timed_steps(step, model, device, args.repeats)
    return {"seconds_per_step": seconds, "tasks_per_second": args.tasks / seconds,
            "peak_memory_mb": (peak_memory(args.device) - before) / 2**20}


def _to(batch, device):
    from dataclasses import replace

    return replace(batch, inputs=tuple(x.to(device) for x in batch.inputs), targets=tuple(y.to(device) for y in batch.targets))


def _run_one(args: argparse.Namespace, tasks: int, chunk: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.task_chunking", "--one", "--tasks", str(tasks), "--chunk", str(chunk),
               "--steps", str(args.steps), "--shots", str(args.shots), "--frames", str(args.frames),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        reason = "killed (out of memory?)" if out.returncode < 0 else (out.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": f"exit {out.returncode}: {reason}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="results/benchmarks/task_chunking.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        args.tasks = args.tasks[0]
        print(json.dumps(measure(args)))
        return
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'T':>3} {'c':>3} {'tasks/s':>8} {'s/step':>7} {'peak MB':>8}")
    for tasks, chunk in itertools.product(args.tasks, args.chunks):
        if chunk > tasks:
            continue
        row = {"tasks": tasks, "chunk": chunk, **_run_one(args, tasks, chunk)}
        rows.append(row)
        if "error" in row:
            print(f"{tasks:>3} {chunk:>3} {row['error']}", flush=True)
        else:
            print(f"{tasks:>3} {chunk:>3} {row['tasks_per_second']:8.2f} {row['seconds_per_step']:7.2f} {row['peak_memory_mb']:8.0f}",
                  flush=True)
        output.write_text(json.dumps({"device": args.device, "algorithm": "maml", "scope": "lhuc", "steps": args.steps,
                                      "shots": args.shots, "frames": args.frames, "rows": rows}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
