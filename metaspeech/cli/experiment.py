"""Run several algorithm configs with the same budget and compare them in one table.

Each (algorithm, seed) is a normal Lightning CLI run (fit, then test) built
from the same YAML files a researcher would use, so ``compare`` measures
exactly what ``metaspeech fit`` / ``metaspeech test`` do.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from lightning.pytorch.callbacks import Callback

from metaspeech.cli.lightning_cli import build_cli
from metaspeech.cli.parallel_runs import Run, run_side_by_side
from metaspeech.evaluation.label_free_report import label_free_markdown, summarize_label_free
from metaspeech.evaluation.scoring import SEEN_SPEAKERS, AdaptationReport
from metaspeech.evaluation.selection_report import selection_markdown, summarize_at_selection
from metaspeech.training.reporting import last_test_report

QUICK_RUN = [
    "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
    "--trainer.limit_val_batches=0", "--trainer.enable_model_summary=false",
]
"""Overrides for comparison runs: no per-run logging, periodic checkpoints or meta-validation (the test is the result;
each run still leaves its final model, ``FINAL_CHECKPOINT``).
The progress bar stays: every phase shows outer steps (or held-out speakers) done, the total and the time left."""


FINAL_CHECKPOINT = "final.ckpt"
"""Every run leaves its trained model at ``<output>/<algorithm>/seed<N>/final.ckpt`` (written atomically, before the
test), which ``metaspeech adapt`` and ``metaspeech transcribe`` read."""


def _cli(algorithm_config: str, data_config: str, trainer_config: str, root: Path, seed: int, overrides: list[str]):
    return build_cli(
        [
            "--config", trainer_config, "--config", data_config, "--config", algorithm_config,
            f"--seed_everything={seed}", f"--trainer.default_root_dir={root}",
            f"--model.results_dir={root}", *overrides,
        ],
        run=False,
    )


def train_base(config: str, data_config: str, trainer_config: str, root: Path, seed: int, steps: int, overrides: list[str]) -> Path:
    """Train the shared starting point (``steps`` outer steps of ``config``); returns its checkpoint."""
    path = root / "base.ckpt"
    if path.is_file():
        print(f"shared start: reusing {path}", flush=True)
        return path
    print(f"shared start: {Path(config).stem}, {steps} outer steps, seed {seed}", flush=True)
    cli = _cli(config, data_config, trainer_config, root, seed, [*overrides, f"--trainer.max_steps={steps}"])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(path, weights_only=True)  # a start point: weights, no optimizer state
    return path


def run_one(run: Run, callbacks: Iterable[Callback] = ()) -> AdaptationReport | None:
    """fit + test one configuration (with ``callbacks`` added to its Trainer); returns its evaluation report.
    The trained model is saved at ``run.root / FINAL_CHECKPOINT`` in between. With ``run.test`` false, only fit:
    no report."""
    cli = _cli(run.algorithm_config, run.data_config, run.trainer_config, run.root, run.seed, list(run.overrides))
    cli.trainer.callbacks.extend(callbacks)
    name = Path(run.algorithm_config).stem
    print(f"{name}: meta-training, seed {run.seed}", flush=True)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(run.root / FINAL_CHECKPOINT, weights_only=False)  # atomic (the CLI's checkpoint IO); resumable
    cli.model.protocol_settings["budget"] = {"outer_steps": cli.trainer.global_step,
                                             "train_seconds": round(time.perf_counter() - start, 1)}
    if not run.test:
        print(f"{name}: meta-trained in {time.perf_counter() - start:.0f} s, saved {run.root / FINAL_CHECKPOINT}", flush=True)
        return None
    print(f"{name}: adaptation protocol on the held-out speakers", flush=True)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)  # the adaptation table is the result
    report = last_test_report(cli.trainer)
    assert report is not None
    return report


def run_comparison(
    algorithm_configs: list[str],
    data_config: str,
    trainer_config: str,
    output: Path,
    seeds: list[int],
    overrides: list[str],
    base_config: str | None = None,
    base_steps: int = 0,
    workers: int = 1,
    test: bool = True,
) -> dict[str, Any] | None:
    """All algorithms x seeds; writes ``comparison.json``, ``comparison.md`` and ``wer_vs_steps.png``.

    With ``base_steps > 0`` every algorithm starts from the same model, first trained
    for ``base_steps`` outer steps with ``base_config`` (per seed), and then gets the
    same number of outer steps of its own: the comparison isolates what each
    algorithm does with an equal budget from an equal start. The shared starts are
    trained first, with all threads; with ``workers > 1`` the (algorithm, seed) runs then go
    side by side, one process each (:mod:`metaspeech.cli.parallel_runs`). With ``test`` false the runs only
    meta-train and leave their ``FINAL_CHECKPOINT``; nothing is summarized (returns None).
    """
    runs = []
    for seed in seeds:
        extra = list(overrides)
        if base_steps > 0:
            base = train_base(base_config or algorithm_configs[-1], data_config, trainer_config, output / "base" / f"seed{seed}",
                              seed, base_steps, overrides)
            extra.append(f"--model.init_from={base}")
        runs += [Run(config, data_config, trainer_config, output / Path(config).stem / f"seed{seed}", seed, tuple(extra), test)
                 for config in algorithm_configs]
    if workers > 1:
        reports = run_side_by_side(runs, workers)
    else:
        reports = [run_one(run) for run in runs]
    if not test:
        return None
    results: dict[str, dict[int, AdaptationReport]] = defaultdict(dict)
    for run, report in zip(runs, reports):
        assert report is not None
        results[Path(run.algorithm_config).stem][run.seed] = report
    return write_comparison(results, seeds, output)


def collect_reports(output: Path) -> dict[str, dict[int, AdaptationReport]]:
    """Every ``<output>/<algorithm>/seed<N>/adaptation_*.json`` written by earlier runs, to re-summarize them."""
    results: dict[str, dict[int, AdaptationReport]] = defaultdict(dict)
    for path in sorted(output.glob("*/seed*/adaptation_*.json")):
        results[path.parts[-3]][int(path.parent.name.removeprefix("seed"))] = AdaptationReport.load(path)
    return dict(results)


def write_comparison(results: dict[str, dict[int, AdaptationReport]], seeds: list[int], output: Path) -> dict[str, Any]:
    """Summarize ``results`` into ``comparison.json``, ``comparison.md`` and ``wer_vs_steps.png`` under ``output``."""
    rows = summarize(results)
    label_free = summarize_label_free(results, rows)  # empty unless the runs had metaspeech.training.label_free.LabelFreeEvaluation
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "comparison.json"
    selected = summarize_at_selection(results)  # each algorithm at the setting its own meta-val search chose
    json_path.write_text(json.dumps({"seeds": seeds, "headline": headline(rows), "rows": rows, "at_selection": selected,
                                     "label_free": label_free}, indent=2))
    parts = (markdown_report(rows), selection_markdown(selected), label_free_markdown(label_free))
    table = "\n\n".join(part for part in parts if part)
    (output / "comparison.md").write_text(table + "\n")
    plot = plot_wer_vs_steps(rows, output / "wer_vs_steps.png")
    return {"rows": rows, "table": table, "json": json_path, "plot": plot}


def summarize(results: dict[str, dict[int, AdaptationReport]]) -> list[dict[str, Any]]:
    """One row per (algorithm, speaker group, k, s): WER/CER mean and standard deviation over seeds.

    ``group`` is ``"all"`` for every held-out speaker, else a report group such as ``"unseen accent"``.
    """
    rows = []
    for name, by_seed in results.items():
        cells: dict[tuple[str, int, int], list[Any]] = defaultdict(list)
        for report in by_seed.values():
            parts = [("all", report)] + [(group, report.subset(group)) for group in report.group_names()]
            for group, part in parts:
                for c in part.conditions():
                    cells[(group, c.shots, c.steps)].append(c)
        for (group, shots, steps), conditions in sorted(cells.items(), key=lambda item: (item[0][0] != "all", item[0])):
            wers = [c.wer for c in conditions]
            rows.append({
                "algorithm": name, "group": group, "shots": shots, "steps": steps,
                "wer": statistics.mean(wers), "wer_std": statistics.pstdev(wers),
                "cer": statistics.mean(c.cer for c in conditions),
                "relative_wer_reduction": statistics.mean(c.relative_wer_reduction for c in conditions),
                "speakers_worse": statistics.mean(c.speakers_worse for c in conditions),
                "median_speaker_relative_reduction": statistics.mean(c.median_speaker_relative_reduction for c in conditions),
                "oracle_wer": statistics.mean(c.oracle_wer for c in conditions),
                "gap_closed": statistics.mean(c.gap_closed for c in conditions),
                "accent_oracle_wer": statistics.mean(c.accent_oracle_wer for c in conditions),
                "beats_oracle": any(c.beats_oracle for c in conditions),
                "adaptation_seconds": statistics.mean(c.adaptation_seconds for c in conditions),
                "speakers": conditions[0].speakers,
                "seeds": len(conditions),
                "seed_ids": sorted(by_seed),
                **_budget(by_seed.values()),
            })
    return rows


def _budget(reports: Iterable[AdaptationReport]) -> dict[str, float]:
    """Mean outer steps and training seconds over seeds (what each algorithm spent), when recorded."""
    budgets = [r.settings["budget"] for r in reports if "budget" in r.settings]
    if not budgets:
        return {}
    return {key: statistics.mean(b[key] for b in budgets) for key in ("outer_steps", "train_seconds")}


HEADLINE_CELL = (5, 5)
"""The (k, s) the headline reads: five adaptation utterances (~10 s of speech), five inner steps."""
BASELINE = "joint"
"""The config name of joint training + the same fine-tuning, which every meta-learner must beat."""


def headline(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The comparison's answer in one place: is adaptation worth it, and does meta-learning beat joint training?

    Why: the table has hundreds of cells, and the two questions the project exists for are read off one
    of them. Over all held-out speakers at ``HEADLINE_CELL`` (else the largest k and s run): the best
    algorithm by WER, with its relative reduction vs no adaptation, share of speakers worse and share
    of the oracle gap closed; and the best meta-learner's relative WER reduction vs ``BASELINE`` (positive:
    meta-learning is better), and whether that difference is smaller than the larger of the two standard
    deviations over seeds (then it is not a result either way). Means over different seeds are not
    comparable, so only algorithms run on ``BASELINE``'s seeds (without it, on the most common seeds) take part; the others are
    listed as left
    out. None without adapted cells.
    """
    adapted = [r for r in rows if r.get("group", "all") == "all" and r["steps"] > 0]
    if not adapted:
        return None
    cells = {(r["shots"], r["steps"]) for r in adapted}
    shots, steps = HEADLINE_CELL if HEADLINE_CELL in cells else max(cells)
    everyone = {r["algorithm"]: r for r in adapted if (r["shots"], r["steps"]) == (shots, steps)}
    seed_sets = [tuple(r.get("seed_ids", ())) for r in everyone.values()]
    seeds = tuple(everyone[BASELINE].get("seed_ids", ())) if BASELINE in everyone else max(seed_sets, key=seed_sets.count)
    cell = {name: r for name, r in everyone.items() if tuple(r.get("seed_ids", ())) == seeds}
    best = min(cell.values(), key=lambda r: r["wer"])
    keys = ("wer", "wer_std", "relative_wer_reduction", "speakers_worse", "gap_closed", "seeds")
    summary: dict[str, Any] = {"shots": shots, "steps": steps, "best": {"algorithm": best["algorithm"], **{k: best[k] for k in keys}},
                               "left_out": sorted(set(everyone) - set(cell))}
    meta = [r for name, r in cell.items() if name != BASELINE]
    if BASELINE in cell and meta:
        best_meta = min(meta, key=lambda r: r["wer"])
        joint = cell[BASELINE]
        spread = max(best_meta.get("wer_std", 0.0), joint.get("wer_std", 0.0)) if len(seeds) > 1 else 0.0
        summary["meta_vs_joint"] = {"algorithm": best_meta["algorithm"], "wer": best_meta["wer"], "joint_wer": joint["wer"],
                                    "relative_wer_reduction": 1.0 - best_meta["wer"] / joint["wer"] if joint["wer"] else 0.0,
                                    "seed_spread": spread, "within_seed_spread": abs(best_meta["wer"] - joint["wer"]) < spread}
    return summary


def headline_text(summary: dict[str, Any] | None) -> str:
    """:func:`headline` as two sentences of markdown ("" without one)."""
    if summary is None:
        return ""
    best = summary["best"]
    gap = f"; {100 * best['gap_closed']:.0f} % of the oracle gap closed" if best["gap_closed"] == best["gap_closed"] else ""
    text = (f"**Headline, all held-out speakers, k = {summary['shots']}, s = {summary['steps']}** ({best['seeds']} seed(s)): "
            f"the best is {best['algorithm']} at {100 * best['wer']:.1f} % WER ({100 * best['relative_wer_reduction']:+.1f} % relative "
            f"vs no adaptation; {100 * best['speakers_worse']:.0f} % of speakers worse{gap}).")
    versus = summary.get("meta_vs_joint")
    if versus:
        numbers = (f"{100 * versus['wer']:.1f} vs {100 * versus['joint_wer']:.1f} % "
                   f"({100 * versus['relative_wer_reduction']:+.1f} % relative)")
        if versus.get("within_seed_spread"):
            text += (f" The best meta-learner, {versus['algorithm']}, and {BASELINE} training + the same fine-tuning differ by less "
                     f"than the seed spread (standard deviation {100 * versus['seed_spread']:.1f} points): {numbers}.")
        else:
            verdict = "better" if versus["relative_wer_reduction"] > 0 else "not better"
            text += (f" The best meta-learner, {versus['algorithm']}, is {verdict} than {BASELINE} training + the same fine-tuning: "
                     f"{numbers}.")
    if summary.get("left_out"):
        text += f" Left out, run on other seeds: {', '.join(summary['left_out'])}."
    return text


def markdown_table(rows: list[dict[str, Any]], group: str = "all") -> str:
    """Side-by-side WER % (mean ± std over seeds; relative reduction vs s = 0, median per-speaker relative
    reduction, share of speakers made worse, share of the gap to the speaker oracle closed) per algorithm, one line per (k, s),
    and the oracle's WER."""
    rows = [r for r in rows if r.get("group", "all") == group]
    algorithms = list(dict.fromkeys(r["algorithm"] for r in rows))
    grid = {(r["algorithm"], r["shots"], r["steps"]): r for r in rows}
    conditions = sorted({(r["shots"], r["steps"]) for r in rows})
    seeds = {a: max(r["seeds"] for r in rows if r["algorithm"] == a) for a in algorithms}
    cell = "WER % (rel. red.; median speaker rel. red.; speakers worse; gap to oracle closed)"
    header = "| k (speech) | steps | " + " | ".join(f"{a} {cell}, {seeds[a]} seed(s)" for a in algorithms) + " |"
    lines = [header, "|" + "---|" * (2 + len(algorithms))]
    for shots, steps in conditions:
        cells = ["-" if grid.get((a, shots, steps)) is None else _cell(grid[(a, shots, steps)]) for a in algorithms]
        seconds = max(r.get("adaptation_seconds", 0.0) for r in rows if (r["shots"], r["steps"]) == (shots, steps))
        k = f"{shots} ({seconds:.0f} s)" if seconds else str(shots)
        lines.append(f"| {k} | {steps} | " + " | ".join(cells) + " |")
    oracles = [statistics.mean(r["oracle_wer"] for r in rows if r["algorithm"] == a) for a in algorithms]
    if any(o == o for o in oracles):
        lines.append("| oracle | | " + " | ".join("-" if o != o else f"{100 * o:.1f}" for o in oracles) + " |")
    accents = [statistics.mean(r.get("accent_oracle_wer", float("nan")) for r in rows if r["algorithm"] == a) for a in algorithms]
    if any(o == o for o in accents):
        lines.append("| accent oracle | | " + " | ".join("-" if o != o else f"{100 * o:.1f}" for o in accents) + " |")
    return "\n".join(lines)


def _cell(row: dict[str, Any]) -> str:
    spread = f" ± {100 * row['wer_std']:.1f}" if row["seeds"] > 1 else ""
    gap = row.get("gap_closed", float("nan"))
    details = [f"{100 * row['relative_wer_reduction']:+.1f}", f"median {100 * row.get('median_speaker_relative_reduction', 0.0):+.1f}",
               f"{100 * row['speakers_worse']:.0f} % worse"]
    if gap == gap and row["steps"] > 0:
        details.append(f"{100 * gap:.0f} % of gap")
    mark = " **(below the oracle)**" if row.get("beats_oracle") else ""
    return f"{100 * row['wer']:.1f}{spread} ({'; '.join(details)}){mark}"


def markdown_report(rows: list[dict[str, Any]]) -> str:
    """The budget and the :func:`headline`, then the table over all held-out speakers and one per speaker group."""
    groups = list(dict.fromkeys(r.get("group", "all") for r in rows))
    parts = []
    for group in groups:
        speakers = next(r["speakers"] for r in rows if r.get("group", "all") == group)
        titles = {"all": "All held-out speakers", SEEN_SPEAKERS: "Training speakers, new sentences"}
        title = titles.get(group, f"Held-out speakers, {group}")
        parts.append(f"**{title}** ({speakers} speakers)\n\n{markdown_table(rows, group)}")
    budgets = {r["algorithm"]: r for r in rows if "train_seconds" in r}
    summary = headline_text(headline(rows))
    if summary:
        parts.insert(0, summary)
    if budgets:
        spent = "; ".join(f"{a}: {r['outer_steps']:.0f} outer steps, {r['train_seconds'] / 60:.1f} min" for a, r in budgets.items())
        parts.insert(0, f"Budget from the shared start (mean over seeds): {spent}.")
    return "\n\n".join(parts)


def plot_wer_vs_steps(rows: list[dict[str, Any]], path: Path) -> Path:
    """WER against inner steps, one panel per k, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shots"] for r in rows})
    fig, axes = plt.subplots(1, len(shots), figsize=(4 * len(shots), 3.2), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], shots):
        for algorithm in dict.fromkeys(r["algorithm"] for r in rows):
            points = sorted((r["steps"], 100 * r["wer"]) for r in rows
                            if r["algorithm"] == algorithm and r["shots"] == k and r.get("group", "all") == "all")
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=algorithm)
        ax.set_title(f"k = {k} utterances")
        ax.set_xlabel("inner steps")
    axes[0][0].set_ylabel("WER %")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
