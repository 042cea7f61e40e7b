"""Meta-val curves of runs logged with Lightning's CSVLogger, side by side in one table.

Why: "did meta-training run long enough?" is answered by the meta-val WER before and after
adaptation (``val/wer_pre``, ``val/wer_post``, logged at every validation) as the outer steps
grow, not by the test table of the last step. Give one ``metrics.csv`` per run, named::

    python -m benchmarks.meta_val_curve fomaml=results/long400/logs_fomaml/lightning_logs/version_0/metrics.csv \\
        joint=results/long400/logs_joint/lightning_logs/version_0/metrics.csv --output results/long400/meta_val_curve

Prints a markdown table (WER % per step: before -> after adaptation) and writes ``meta_val_curve.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

CURVE_METRICS = ("val/wer_pre", "val/wer_post", "val/loss_pre", "val/loss_post")


def read_curve(metrics_csv: Path) -> list[dict[str, float]]:
    """The validation rows of one CSVLogger ``metrics.csv``: ``step`` and every curve metric, sorted by step."""
    points: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            values = {name: float(row[name]) for name in CURVE_METRICS if row.get(name)}
            if values:
                step = int(row["step"]) + 1  # Lightning logs the index of the last finished step
                points.setdefault(step, {"step": step}).update(values)
    return [points[step] for step in sorted(points)]


def markdown(curves: dict[str, list[dict[str, float]]]) -> str:
    """One line per outer step, one column per run: meta-val WER % before -> after adaptation."""
    steps = sorted({int(p["step"]) for points in curves.values() for p in points})
    lines = ["| outer steps | " + " | ".join(f"{name} WER % (s = 0 -> adapted)" for name in curves) + " |",
             "|---|" + "---|" * len(curves)]
    for step in steps:
        cells = []
        for points in curves.values():
            point = next((p for p in points if p["step"] == step), None)
            cells.append("-" if point is None or "val/wer_pre" not in point
                         else f"{100 * point['val/wer_pre']:.1f} -> {100 * point['val/wer_post']:.1f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="name=path/to/metrics.csv")
    parser.add_argument("--output", default="results/meta_val_curve")
    args = parser.parse_args(argv)
    curves = {}
    for run in args.runs:
        name, sep, path = run.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"{run!r}: give name=path/to/metrics.csv of an existing CSVLogger file")
        curves[name] = read_curve(Path(path))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "meta_val_curve.json").write_text(json.dumps(curves, indent=2))
    print(markdown(curves), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
