"""Where the test protocol's time goes, and what reading every s off one adaptation saves.

The k x s protocol (``configs/protocol/benchmark.yaml``: k in {1, 5, 10, 20}, s in {0, 1, 5, 10, 20})
dominates the wall clock of ``make demo``. Per held-out speaker it adapts, transcribes the
evaluation utterances and fits the speaker oracle. This script times those phases on a trained
checkpoint for a few test speakers, with the two ways of adapting:

- **per s**: one inner loop per (k, s), 36 inner steps per k;
- **nested**: one inner loop of ``max(s)`` steps per k, read at every s
  (:meth:`metaspeech.evaluation.adapter.FewShotAdapter.adapt_along`, what the protocol does), 20 steps per k.

Both must give the same transcripts (checked; the script fails otherwise). Prints a table and
writes JSON::

    python -m benchmarks.protocol_speed --checkpoint results/demo/base/seed0/base.ckpt --speakers 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from metaspeech.cli.experiment import QUICK_RUN, _cli
from metaspeech.cli.inference import load_module

SHOTS = [1, 5, 10, 20]
STEPS = [0, 1, 5, 10, 20]


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def time_speaker(module: Any, item: Any, shots: list[int] = SHOTS, steps: list[int] = STEPS) -> dict[str, Any]:
    """Seconds of each protocol phase for one test speaker (a ``MetaSpeechModule`` and an ``EvaluationBatch``),
    and whether both adaptation modes give the same transcripts."""
    seconds = {"adapt per s": 0.0, "adapt nested": 0.0, "transcribe": 0.0, "oracle": 0.0}
    agree = True
    for k in shots:
        support = item.pool.take(k)
        per_s, spent = _timed(lambda: {s: module.adapt(support, s) for s in steps})
        seconds["adapt per s"] += spent
        nested, spent = _timed(lambda: module.adapt_along(support, steps))
        seconds["adapt nested"] += spent
        for s in steps:
            texts, spent = _timed(lambda: module.transcribe(item.evaluation, nested[s]))
            seconds["transcribe"] += spent
            agree &= texts == module.transcribe(item.evaluation, per_s[s])
    if item.oracle is not None:
        _, seconds["oracle"] = _timed(lambda: module.adapter.speaker_oracle(module.oracle, item.oracle, item.evaluation,
                                                                            module.tokenizer))
    return {"seconds": seconds, "same_transcripts": agree}


def markdown(rows: list[dict[str, Any]]) -> str:
    """Mean seconds per speaker of each phase, and the protocol's total per speaker under each adaptation mode."""
    phases = list(rows[0]["seconds"])
    mean = {p: sum(r["seconds"][p] for r in rows) / len(rows) for p in phases}
    fixed = mean["transcribe"] + mean["oracle"]
    lines = ["| phase | s per speaker |", "|---|---|"]
    lines += [f"| {p} | {mean[p]:.1f} |" for p in phases]
    lines.append(f"| protocol, per s | {mean['adapt per s'] + fixed:.1f} |")
    lines.append(f"| protocol, nested | {mean['adapt nested'] + fixed:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="results/demo/base/seed0/base.ckpt")
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--speakers", type=int, default=4, help="test speakers to time (those with an oracle pool first)")
    parser.add_argument("--inner_lr", type=float, default=0.05)
    parser.add_argument("--output", default="results/protocol_speed")
    args = parser.parse_args(argv)

    output = Path(args.output)
    cli = _cli("configs/joint.yaml", args.data, "configs/trainer/cpu.yaml", output, 0, QUICK_RUN)
    data = cli.datamodule
    data.prepare_data()
    data.setup("test")
    module = load_module(args.checkpoint)
    module.algorithm.eval_inner_lr = args.inner_lr
    items = sorted(data.test_dataloader(), key=lambda item: item.oracle is None)[: args.speakers]
    rows = []
    for item in items:
        row = {"speaker": item.task, **time_speaker(module, item), "threads": torch.get_num_threads()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not all(r["same_transcripts"] for r in rows):
        raise SystemExit("nested adaptation changed a transcript: it must equal one adaptation per s")
    output.mkdir(parents=True, exist_ok=True)
    (output / "protocol_speed.json").write_text(json.dumps(rows, indent=2))
    print(markdown(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
