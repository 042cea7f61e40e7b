"""Label-free vs supervised adaptation of a trained checkpoint, and the cost of transductive adaptation.

From one checkpoint (e.g. ``results/demo/base/seed0/base.ckpt``, the joint-trained shared start of
``metaspeech demo``), on the held-out speakers:

(a) WER after adapting on the first k (default 5) pool utterances of each speaker, supervised (with their
    transcripts) and with each label-free objective (audio only), each with its learning rate and step
    count chosen on meta-val speakers only; the transductive row (each evaluation utterance adapts on
    itself); the share of the supervised gain each label-free row reaches, and the speakers made worse
    (the collapse guard on);
(b) the transductive single-utterance cost: one utterance at a time (T = 1, a reset before each), seconds
    of adaptation per second of speech, on this machine's threads.

Prints a table and writes JSON (with the date, the commit and the command)::

    python -m benchmarks.label_free --checkpoint results/demo/base/seed0/base.ckpt
    python -m benchmarks.label_free --checkpoint tiny.ckpt --data configs/data/embedded_tiny.yaml \\
        --data.init_args.root=data/embedded --shots 3

``--summarize DIR ...`` averages the ``label_free.json`` of earlier runs (e.g. one per seed) into one table,
mean +- std across them::

    python -m benchmarks.label_free --summarize results/label_free/joint/seed0 results/label_free/joint/seed1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from metaspeech.cli.experiment import QUICK_RUN, _cli
from metaspeech.cli.inference import load_module
from metaspeech.evaluation.label_free_report import share_of_gain
from metaspeech.speech.objectives import LABEL_FREE, SUPERVISED
from metaspeech.training.label_free import (
    LabelFreeRow,
    choose_on_meta_val,
    evaluate_speaker,
    report_rows,
    test_time_learning_rate,
)

REPO = Path(__file__).resolve().parents[1]


def compare_rows(module: Any, val_items: list[Any], test_items: list[Any], rows: list[LabelFreeRow], shots: int,
                 learning_rates: list[float], steps: list[int], groups: dict[str, str] | None) -> list[dict[str, Any]]:
    """(a): every row chosen on ``val_items`` (meta-val speakers) and scored on ``test_items`` at ``shots``; each row at
    its chosen steps, with the share of the supervised gain (the supervised row must come first)."""
    results = []
    for row in rows:
        choice = choose_on_meta_val(module, val_items, row, shots, learning_rates, steps)
        lr = choice["learning_rate"] if isinstance(choice["learning_rate"], float) else None
        with test_time_learning_rate(module.algorithm, lr):
            speakers = [evaluate_speaker(module, item, row, [shots], [choice["steps"]]) for item in test_items]
        chosen = [r for r in report_rows(row, choice, speakers, groups) if r["selected"]]
        results += [{**r, "meta_val_wer": choice["meta_val_wer"][f"lr={lr} s={choice['steps']}"]} for r in chosen]
    supervised = {r["group"]: r for r in results if r["objective"] == SUPERVISED}
    for r in results:
        reference = supervised.get(r["group"])
        r["supervised_wer"] = reference["wer"] if reference else float("nan")
        r["share_of_supervised_gain"] = share_of_gain(r["unadapted_wer"], r["wer"], r["supervised_wer"])
    return results


def single_utterance_cost(module: Any, test_items: list[Any], objective: str, steps: int, learning_rate: float | None,
                          utterances: int) -> dict[str, Any]:
    """(b): seconds of transductive adaptation per second of speech, one utterance at a time (T = 1)."""
    adapt_seconds = speech_seconds = 0.0
    done = 0
    frame = module.feature_config.frame_shift_seconds
    with test_time_learning_rate(module.algorithm, learning_rate):
        for item in test_items:
            singles = item.evaluation.per_utterance()
            for index in range(singles.num_tasks):
                if done == utterances:
                    break
                utterance = singles.task(index)
                start = time.perf_counter()
                module.adapter.adapt_label_free(utterance, [steps], objective)
                adapt_seconds += time.perf_counter() - start
                speech_seconds += float(utterance.inputs[1].sum()) * frame
                done += 1
    return {"objective": objective, "steps": steps, "learning_rate": learning_rate, "utterances": done,
            "speech_seconds": speech_seconds, "adapt_seconds": adapt_seconds,
            "adapt_seconds_per_speech_second": adapt_seconds / speech_seconds if speech_seconds else float("nan"),
            "threads": torch.get_num_threads()}


def markdown(rows: list[dict[str, Any]], cost: dict[str, Any]) -> str:
    """(a) over all held-out speakers and per group, then (b) in one line."""
    lines = ["| group | objective | k | s | lr | WER % | unadapted % | share of supervised gain | speakers worse | guard refused |",
             "|" + "---|" * 10]
    for r in rows:
        share = "-" if r["share_of_supervised_gain"] != r["share_of_supervised_gain"] else f"{100 * r['share_of_supervised_gain']:.0f} %"
        lines.append(f"| {r['group']} | {r['row']} | {r['shots']} | {r['steps']} | {r['learning_rate']} | {100 * r['wer']:.1f} | "
                     f"{100 * r['unadapted_wer']:.1f} | {share} | {100 * r['speakers_worse']:.0f} % | {100 * r['guard_refused']:.0f} % |")
    lines.append("")
    lines.append(f"Transductive single-utterance cost ({cost['objective']}, {cost['steps']} steps, {cost['utterances']} utterances, "
                 f"{cost['threads']} thread(s)): {cost['adapt_seconds_per_speech_second']:.3f} s of adaptation per second of speech.")
    return "\n".join(lines)


def summarize(folders: list[Path]) -> str:
    """Mean +- std across the runs in ``folders`` (their ``label_free.json``) of every (row, group) they all report."""
    runs = [json.loads((folder / "label_free.json").read_text()) for folder in folders]
    keys = [(r["row"], r["group"]) for r in runs[0]["rows"] if r["selected"]]
    lines = [f"{len(runs)} runs: {', '.join(str(f) for f in folders)}",
             "| group | objective | k | WER % | unadapted % | relative reduction | share of the mean supervised gain | speakers worse |",
             "|" + "---|" * 8]
    for row, group in keys:
        cells = [next(r for r in run["rows"] if r["selected"] and (r["row"], r["group"]) == (row, group)) for run in runs]
        wer, unadapted = [100 * c["wer"] for c in cells], [100 * c["unadapted_wer"] for c in cells]
        reduction = [100 * (1 - c["wer"] / c["unadapted_wer"]) for c in cells]
        supervised = statistics.fmean(100 * c["supervised_wer"] for c in cells)
        share = [100 * share_of_gain(statistics.fmean(unadapted), statistics.fmean(wer), supervised)]  # of the mean gains
        worse = [100 * c["speakers_worse"] for c in cells]
        lines.append(f"| {group} | {row} | {cells[0]['shots']} | {_spread(wer)} | {_spread(unadapted)} | {_spread(reduction)} % | "
                     f"{_spread(share, 0)} % | {_spread(worse, 0)} % |")
    return "\n".join(lines)


def _spread(values: list[float], digits: int = 1) -> str:
    """``mean ± std`` of the finite ``values`` (a share of a gain is undefined where there was no gain): ``-`` if none."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def require_outputs(parser: argparse.ArgumentParser, folders: list[Path], name: str) -> None:
    """A one-line error (exit status 2) naming every folder of ``folders`` without the benchmark output ``name``."""
    missing = [str(f) for f in folders if not (f / name).is_file()]
    if missing:
        parser.error(f"no {name} in {', '.join(missing)}: run the benchmark with --output there first")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a metaspeech checkpoint (e.g. the demo's joint-trained shared start)")
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="DIR",
                        help="instead of a run: average the label_free.json of earlier runs (e.g. one per seed)")
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--shots", type=int, default=5, help="adaptation utterances per held-out speaker")
    parser.add_argument("--objectives", nargs="+", default=["entropy", "entropy_mcc", "pseudo_label"], choices=LABEL_FREE)
    parser.add_argument("--transductive", default="entropy", choices=LABEL_FREE, help="objective of the transductive row")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--cost_utterances", type=int, default=20, help="utterances timed one at a time for (b)")
    parser.add_argument("--output", default="results/label_free")
    args, overrides = parser.parse_known_args(argv)
    if args.summarize:
        require_outputs(parser, args.summarize, "label_free.json")
        print(summarize(args.summarize))
        return 0
    if not args.checkpoint:
        parser.error("--checkpoint is required (or --summarize DIR ...)")

    output = Path(args.output)
    cli = _cli("configs/joint.yaml", args.data, "configs/trainer/cpu.yaml", output, 0, [*QUICK_RUN, *overrides])
    data = cli.datamodule
    data.prepare_data()
    data.setup("test")
    module = load_module(args.checkpoint)
    val_items, test_items = list(data.val_dataloader()), list(data.test_dataloader())
    rows = [LabelFreeRow(SUPERVISED)] + [LabelFreeRow(o) for o in args.objectives] + [LabelFreeRow(args.transductive, True)]
    table = compare_rows(module, val_items, test_items, rows, args.shots, args.learning_rates, args.steps, data.task_groups("test"))
    transductive = next(r for r in table if r["setting"] == "transductive")
    lr = transductive["learning_rate"] if isinstance(transductive["learning_rate"], float) else None
    cost = single_utterance_cost(module, test_items, args.transductive, transductive["steps"], lr, args.cost_utterances)
    result = {"date_utc": datetime.now(timezone.utc).isoformat(), "commit": git_commit(),
              "command": ["python", "-m", "benchmarks.label_free", *argv], "checkpoint": args.checkpoint,
              "meta_val_speakers": len(val_items), "test_speakers": len(test_items), "rows": table, "single_utterance_cost": cost}
    output.mkdir(parents=True, exist_ok=True)
    (output / "label_free.json").write_text(json.dumps(result, indent=2))
    print(markdown(table, cost), flush=True)
    print(f"written to {output / 'label_free.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
