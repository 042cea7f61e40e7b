"""Each algorithm at the test-time setting it chose on meta-val: the comparison's row that needs no test speaker to pick.

Why: the k x s table shows every step count, and reading the best cell off it would pick on test speakers.
:class:`~metaspeech.evaluation.selection.TestTimeSelection` already chose, per run and on meta-val speakers
only, how to adapt and for how many steps (``settings["test_time_selection"]`` of each report). This module
reads each run's test cell at that (k, s), per speaker group, and averages over seeds: the number an
algorithm would score if deployed as selected.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from metaspeech.evaluation.scoring import SEEN_SPEAKERS, AdaptationReport


def summarize_at_selection(results: dict[str, dict[int, AdaptationReport]]) -> list[dict[str, Any]]:
    """One row per (algorithm, speaker group): WER at s = 0 and at the selected (k, s), mean over seeds.

    ``results`` maps algorithm -> seed -> report. Runs without a selection, or whose test grid lacks the
    selected cell, are left out (``seeds`` counts those read). ``choices`` lists each seed's selected setting.
    """
    rows = []
    for name, by_seed in results.items():
        pairs: dict[str, list[tuple[Any, Any]]] = defaultdict(list)  # group -> [(s = 0 condition, selected condition)]
        choices = []
        for seed, report in sorted(by_seed.items()):
            selection = report.settings.get("test_time_selection")
            if not selection:
                continue
            shots, steps = selection["shots"], selection["steps"]
            for group, part in [("all", report)] + [(g, report.subset(g)) for g in report.group_names()]:
                conditions = {(c.shots, c.steps): c for c in part.conditions()}
                if (shots, steps) in conditions and (shots, 0) in conditions:
                    pairs[group].append((conditions[(shots, 0)], conditions[(shots, steps)]))
            choices.append({"seed": seed, **selection["chosen"], "shots": shots, "steps": steps})
        for group, cells in pairs.items():
            rows.append(_row(name, group, cells, choices))
    return rows


def _row(name: str, group: str, cells: list[tuple[Any, Any]], choices: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return statistics.mean(values) if values else math.nan

    wers = [c.wer for _, c in cells]
    return {
        "algorithm": name, "group": group, "shots": cells[0][1].shots, "seeds": len(cells), "speakers": cells[0][1].speakers,
        "unadapted_wer": mean([c0.wer for c0, _ in cells]), "wer": statistics.mean(wers), "wer_std": statistics.pstdev(wers),
        "relative_wer_reduction": mean([c.relative_wer_reduction for _, c in cells]),
        "speakers_worse": mean([c.speakers_worse for _, c in cells]), "gap_closed": mean([c.gap_closed for _, c in cells]),
        "oracle_wer": mean([c.oracle_wer for _, c in cells]), "choices": choices,
    }


def selection_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`summarize_at_selection` as one table (groups in turn) and each algorithm's choices ("" without rows)."""
    if not rows:
        return ""
    lines = ["**At the test-time setting chosen on meta-val** (per seed: scope, optimizer, learning rate and steps; "
             "WER %, mean ± std over seeds)", "",
             "| speakers | algorithm (seeds) | s = 0 | selected | rel. red. | speakers worse | gap closed | oracle |",
             "|---|---|---|---|---|---|---|---|"]
    groups = sorted(dict.fromkeys(r["group"] for r in rows), key=lambda g: (g != "all", g == SEEN_SPEAKERS, g))
    for group in groups:
        label = {"all": "all held-out", SEEN_SPEAKERS: "training speakers, new sentences"}.get(group, f"held-out, {group}")
        for r in (r for r in rows if r["group"] == group):
            spread = f" ± {100 * r['wer_std']:.1f}" if r["seeds"] > 1 else ""
            lines.append(f"| {label} ({r['speakers']}) | {r['algorithm']} ({r['seeds']}) | {_percent(r['unadapted_wer'])} | "
                         f"{100 * r['wer']:.1f}{spread} | {_signed(r['relative_wer_reduction'])} | {_percent(r['speakers_worse'], 0)} | "
                         f"{_percent(r['gap_closed'], 0)} | {_percent(r['oracle_wer'])} |")
    lines.append("")
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        choices = next(r["choices"] for r in rows if r["algorithm"] == name)
        lines.append(f"- {name}: " + "; ".join(
            f"seed {c['seed']}: {c.get('scope') or 'training scope'}, {c.get('optimizer')}, lr {c.get('lr')}, k = {c['shots']}, "
            f"s = {c['steps']}" for c in choices))
    return "\n".join(lines)


def _percent(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.{digits}f}" + (" %" if digits == 0 else "")


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.1f} %"
