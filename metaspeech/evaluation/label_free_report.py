"""The label-free rows of a comparison: means over seeds, the share of the supervised gain, a markdown table.

Why apart from :mod:`metaspeech.cli.experiment`: the supervised table is built there; the label-free rows
(:mod:`metaspeech.training.label_free`, stored in each test report's ``settings["label_free"]``) sit beside it and
are compared with it cell by cell, which is all this module does.

The share of the supervised gain of a label-free cell is ``(unadapted WER - label-free WER) /
(unadapted WER - supervised WER)`` at the same k and s, over the same utterances: 1 means label-free
adaptation gained as much as adaptation with transcripts. Transductive rows (k = 0) are compared with
the supervised cell at :data:`TRANSDUCTIVE_REFERENCE_SHOTS` (else the largest k run).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from metaspeech.evaluation.scoring import AdaptationReport

TRANSDUCTIVE_REFERENCE_SHOTS = 5


def _supervised_shots(shots: int, available: set[int]) -> int:
    if shots > 0 or not available:
        return shots
    return TRANSDUCTIVE_REFERENCE_SHOTS if TRANSDUCTIVE_REFERENCE_SHOTS in available else max(available)


def share_of_gain(unadapted: float, label_free: float, supervised: float) -> float:
    """``(unadapted - label_free) / (unadapted - supervised)``; NaN where supervised adaptation gained nothing."""
    gain = unadapted - supervised
    return (unadapted - label_free) / gain if gain > 0 else float("nan")


def summarize_label_free(results: dict[str, dict[int, AdaptationReport]], supervised_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (algorithm, row set, speaker group, k, s): means over seeds, with the supervised WER of the same
    cell (``supervised_rows`` from :func:`metaspeech.cli.experiment.summarize`) and the share of its gain reached."""
    supervised = {(r["algorithm"], r.get("group", "all"), r["shots"], r["steps"]): r["wer"] for r in supervised_rows}
    rows = []
    for name, by_seed in results.items():
        cells: dict[tuple[str, str, int, int], list[dict[str, Any]]] = defaultdict(list)
        for report in by_seed.values():
            for r in report.settings.get("label_free", {}).get("rows", []):
                cells[(r["row"], r["group"], r["shots"], r["steps"])].append(r)
        available = {shots for (a, _, shots, _) in supervised if a == name}
        for (row, group, shots, steps), parts in cells.items():
            wer = statistics.mean(p["wer"] for p in parts)
            unadapted = statistics.mean(p["unadapted_wer"] for p in parts)
            reference = supervised.get((name, group, _supervised_shots(shots, available), steps), float("nan"))
            rows.append({
                "algorithm": name, "row": row, "objective": parts[0]["objective"], "setting": parts[0]["setting"],
                "group": group, "shots": shots, "steps": steps, "wer": wer,
                "wer_std": statistics.pstdev(p["wer"] for p in parts), "unadapted_wer": unadapted,
                "relative_wer_reduction": statistics.mean(p["relative_wer_reduction"] for p in parts),
                "supervised_wer": reference, "share_of_supervised_gain": share_of_gain(unadapted, wer, reference),
                "speakers_worse": statistics.mean(p["speakers_worse"] for p in parts),
                "guard_refused": statistics.mean(p["guard_refused"] for p in parts),
                "adapt_seconds_per_speech_second": statistics.mean(p["adapt_seconds_per_speech_second"] for p in parts),
                "selected_in_seeds": sum(bool(p["selected"]) for p in parts),
                "learning_rates": sorted({str(p["learning_rate"]) for p in parts}),
                "seeds": len(parts), "speakers": parts[0]["speakers"],
            })
    return rows


def label_free_markdown(rows: list[dict[str, Any]]) -> str:
    """The label-free table over all held-out speakers at the step count chosen on meta-val most often ("" without rows)."""
    rows = [r for r in rows if r["group"] == "all"]
    if not rows:
        return ""
    chosen: dict[tuple[str, str, int], Counter] = defaultdict(Counter)
    for r in rows:
        chosen[(r["algorithm"], r["row"], r["shots"])][r["steps"]] += r["selected_in_seeds"]
    lines = ["**Label-free adaptation, all held-out speakers** (no transcript of the adaptation utterances is read; "
             "learning rate and steps chosen on meta-val speakers; supervised = the same k and s with transcripts; "
             "k = 0: transductive, each evaluation utterance adapts on itself)", "",
             "| algorithm | objective | k | s | lr | WER % | unadapted % | supervised % | share of supervised gain | "
             "speakers worse | guard refused | adapt s / speech s |", "|" + "---|" * 12]
    for r in sorted(rows, key=lambda r: (r["algorithm"], r["row"], r["shots"])):
        steps = chosen[(r["algorithm"], r["row"], r["shots"])].most_common(1)[0][0]
        if r["steps"] != steps:
            continue
        spread = f" ± {100 * r['wer_std']:.1f}" if r["seeds"] > 1 else ""
        share = "-" if r["share_of_supervised_gain"] != r["share_of_supervised_gain"] else f"{100 * r['share_of_supervised_gain']:.0f} %"
        supervised = "-" if r["supervised_wer"] != r["supervised_wer"] else f"{100 * r['supervised_wer']:.1f}"
        lines.append(f"| {r['algorithm']} | {r['row']} | {r['shots']} | {r['steps']} | {', '.join(r['learning_rates'])} | "
                     f"{100 * r['wer']:.1f}{spread} | {100 * r['unadapted_wer']:.1f} | {supervised} | {share} | "
                     f"{100 * r['speakers_worse']:.0f} % | {100 * r['guard_refused']:.0f} % | {r['adapt_seconds_per_speech_second']:.3f} |")
    return "\n".join(lines)
