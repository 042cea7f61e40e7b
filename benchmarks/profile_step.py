"""Where one engine outer step spends its CPU time, by operator family.

    .venv/bin/python -m benchmarks.profile_step --algorithm fomaml --scope lhuc

Why: FOMAML and Reptile on the LHUC scope are the cells of BENCHMARKS.md §3 where the
engine gains least over a per-task loop. This runs one outer step of the §1 setting
(T = 8, k = 5, 5 inner steps, default BiLSTMCTC) under ``torch.profiler`` and groups the
self CPU time of every operator into LSTM, convolution, matrix products, CTC and the rest,
so the ceiling of any engine-side optimization is visible. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

FAMILIES = {
    "lstm": ("lstm", "rnn"),
    "convolution": ("conv",),
    "matrix products": ("mm", "matmul", "linear", "addmm", "bmm"),
    "ctc": ("ctc",),
}


def family(name: str) -> str:
    lowered = name.lower()
    return next((f for f, keys in FAMILIES.items() if any(k in lowered for k in keys)), "other")


def main(argv: list[str] | None = None) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.engine_speed import build_step

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="fomaml", choices=["maml", "fomaml", "reptile", "hyperinit"])
    parser.add_argument("--scope", default="lhuc", choices=["lhuc", "head", "lin+lhuc+head"])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="results/benchmarks/profile_step.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.device, args.implementation, args.second_order_steps, args.body = "cpu", "engine", None, "trained"
    step, _ = build_step(args)
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        step()
    shares: dict[str, float] = defaultdict(float)
    for event in trace.key_averages():
        shares[family(event.key)] += event.self_cpu_time_total
    total = sum(shares.values())
    rows = sorted(({"family": f, "seconds": t / 1e6, "share": t / total} for f, t in shares.items()), key=lambda r: -r["share"])
    print(f"{args.algorithm}, {args.scope}, T={args.tasks}, {args.steps} inner steps: {total / 1e6:.2f} s of CPU time")
    for row in rows:
        print(f"  {row['family']:<16} {row['seconds']:7.2f} s  {100 * row['share']:5.1f} %")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
