"""Engine vs the per-task reference loop: tasks per second and peak memory.

    .venv/bin/python benchmarks/engine_speed.py                       # the reference setting: T=8, k=5, 5 steps
    .venv/bin/python benchmarks/engine_speed.py --tasks 4 8 16 --steps 1 5 10 --device cuda

Each (algorithm, scope, T, steps, body, implementation) runs in a fresh subprocess so
its peak memory (CPU: max RSS; CUDA: max allocated) is its own. Prints a table
of ratios (engine / reference) and writes JSON.

Two modes, reported side by side (``--bodies trained frozen``):

- ``trained`` (metaspeech's default): the meta-gradient reaches every parameter, the body
  outside the adaptation scope included, on both sides;
- ``frozen`` (like for like with a learn2learn user): parameters outside the scope have
  ``requires_grad=False`` on both sides, so neither computes body gradients.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

ALGORITHMS = ("maml", "fomaml", "reptile", "hyperinit")
SCOPES = {"lhuc": ["lhuc"], "head": ["head"], "lin+lhuc+head": ["lin", "lhuc", "head"]}


def synthetic_meta_batch(tasks: int, shots: int, frames: int, vocab: int, seed: int = 0):
    """Random features ``[T, k, frames, 80]`` and token targets, the size of ~2 s utterances."""
    import torch

    from metaspeech.engine.batch import MetaBatch, TaskBatch

    g = torch.Generator().manual_seed(seed)

    def part() -> TaskBatch:
        feats = torch.randn(tasks, shots, frames, 80, generator=g)
        lengths = torch.randint(frames * 3 // 4, frames + 1, (tasks, shots), generator=g)
        tokens = torch.randint(1, vocab, (tasks, shots, 24), generator=g)
        return TaskBatch((feats, lengths), (tokens, torch.full((tasks, shots), 24)))

    return MetaBatch(support=part(), query=part())


def build_step(args: argparse.Namespace, model_kwargs: dict | None = None) -> tuple[Callable[[], None], "torch.nn.Module"]:
    """One outer step (loss and backward) of the configuration in ``args`` on ``args.device``, and its model.

    Why a function: ``benchmarks/gpu_check.py`` times the same steps in one process with
    CUDA synchronization. ``model_kwargs`` override BiLSTMCTC's defaults (a tiny model for
    quick CPU runs). The meta-batch is ``[T=args.tasks, k=args.shots, args.frames, 80]``.
    """
    import torch

    from benchmarks.reference_loop import reference_outer_loss
    from metaspeech.algorithms import FOMAML, MAML, HyperInit, Reptile
    from metaspeech.engine.learner import Learner
    from metaspeech.models import BiLSTMCTC

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = BiLSTMCTC(**(model_kwargs or {})).to(device)
    scope = SCOPES[args.scope]
    learner = Learner(model, model.loss, scope)
    if getattr(args, "body", "trained") == "frozen":
        for parameter in learner.outside_scope():
            parameter.requires_grad_(False)  # what a learn2learn user freezes; both implementations see it
    truncation = {"second_order_steps": args.second_order_steps} if args.algorithm == "maml" else {}
    algorithm = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "hyperinit": HyperInit}[args.algorithm](
        inner_steps=args.steps, inner_lr=0.1, **truncation
    )
    algorithm.setup(learner)
    algorithm.to(device)
    batch = synthetic_meta_batch(args.tasks, args.shots, args.frames, model.vocab_size)
    batch = type(batch)(
        support=_to(batch.support, device), query=_to(batch.query, device)
    )

    def engine_step() -> None:
        algorithm.outer_loss(learner, batch).loss.backward()

    def reference_step() -> None:
        generator = None
        if args.algorithm == "hyperinit":
            fast = algorithm.initial_weights(learner, learner.prepare(batch.support))
            generator = lambda t: {n: w[t] for n, w in fast.items()}  # noqa: E731
        kind = args.algorithm if args.algorithm != "hyperinit" else "fomaml"
        reference_outer_loss(
            model, learner.loss, learner.adapted_names, batch, args.steps, 0.1, kind, generator, args.second_order_steps
        ).backward()

    return (engine_step if args.implementation == "engine" else reference_step), model


def measure(args: argparse.Namespace) -> dict:
    """One configuration in this process: seconds per outer step and peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    step, model = build_step(args)
    seconds = timed_steps(step, model, torch.device(args.device), args.repeats)
    return {"seconds_per_step": seconds, "tasks_per_second": args.tasks / seconds, "peak_memory_mb": peak_memory(args.device) / 2**20}


def timed_steps(step: Callable[[], None], model: "torch.nn.Module", device: "torch.device", repeats: int) -> float:
    """Seconds per call of ``step`` (gradients cleared before each), after one warm-up call."""
    import torch

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def peak_memory(device: str = "cpu") -> float:
    """Peak bytes of this process so far: CUDA max allocated, else the maximum resident set size."""
    import resource

    import torch

    if device.startswith("cuda"):
        return float(torch.cuda.max_memory_allocated())
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _to(batch, device):
    from metaspeech.engine.batch import TaskBatch

    return TaskBatch(tuple(x.to(device) for x in batch.inputs), tuple(y.to(device) for y in batch.targets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--scopes", nargs="+", default=["lhuc", "head"], choices=list(SCOPES))
    parser.add_argument("--tasks", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, nargs="+", default=[5])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--bodies", nargs="+", default=["trained", "frozen"], choices=["trained", "frozen"],
                        help="meta-train the body outside the scope (metaspeech's default) or freeze it (like for like)")
    parser.add_argument("--second_order_steps", type=int, default=None,
                        help="MAML: differentiate through only the last N inner steps (truncated); default all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="results/benchmarks/engine_speed.json")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", help=argparse.SUPPRESS)
    parser.add_argument("--scope", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", help=argparse.SUPPRESS)
    parser.add_argument("--body", default="trained", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.tasks, args.steps = args.tasks[0], args.steps[0]
        print(json.dumps(measure(args)))
        return
    rows = []
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid = itertools.product(args.algorithms, args.scopes, args.tasks, args.steps, args.bodies)
    for algorithm, scope, tasks, steps, body in grid:
        row = {"algorithm": algorithm, "scope": scope, "tasks": tasks, "steps": steps, "body": body,
               "second_order_steps": args.second_order_steps if algorithm == "maml" else None}
        for implementation in ("engine", "reference"):
            row[implementation] = _run_one(args, algorithm, scope, tasks, steps, implementation, body)
        if "error" not in row["engine"] and "error" not in row["reference"]:
            row["speedup"] = row["engine"]["tasks_per_second"] / row["reference"]["tasks_per_second"]
            row["memory_ratio"] = row["engine"]["peak_memory_mb"] / row["reference"]["peak_memory_mb"]
        rows.append(row)
        print(_format(row), flush=True)
        # Written after every cell: a long grid killed half-way keeps what it measured.
        output.write_text(json.dumps({"device": args.device, "shots": args.shots, "frames": args.frames, "rows": rows}, indent=2))
    print(f"wrote {output}")


def _run_one(args, algorithm: str, scope: str, tasks: int, steps: int, implementation: str, body: str = "trained") -> dict:
    """Measure one cell in a fresh process; ``{"error": ...}`` if it fails (e.g. killed for memory)."""
    command = [
        sys.executable, "-m", "benchmarks.engine_speed", "--one", "--algorithm", algorithm, "--scope", scope,
        "--implementation", implementation, "--tasks", str(tasks), "--steps", str(steps), "--shots", str(args.shots),
        "--frames", str(args.frames), "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device,
        "--body", body,
    ]
    if args.second_order_steps is not None:
        command += ["--second_order_steps", str(args.second_order_steps)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        reason = "killed (out of memory?)" if out.returncode < 0 else (out.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": f"exit {out.returncode}: {reason}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _describe(result: dict) -> str:
    if "error" in result:
        return f"{result['error'][:40]:>40}"
    return f"{result['tasks_per_second']:7.2f} tasks/s {result['peak_memory_mb']:7.0f} MB"


def _format(row: dict) -> str:
    ratios = f"speedup x{row['speedup']:.2f}  memory x{row['memory_ratio']:.2f}" if "speedup" in row else "no ratio"
    return (
        f"{row['algorithm']:>9} {row['scope']:>14} T={row['tasks']:<2} steps={row['steps']:<2} body={row.get('body', 'trained'):<7} "
        f"engine {_describe(row['engine'])} | loop {_describe(row['reference'])} | {ratios}"
    )


if __name__ == "__main__":
    main()
