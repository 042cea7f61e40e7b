"""The adaptation evaluation protocol's bookkeeping: records -> the headline table.

For every held-out speaker, every shot count k and every number of inner steps
s, the evaluation set is decoded once; each decoded utterance is a
:class:`UtteranceRecord`. :class:`AdaptationReport` turns the records of all
speakers (all DDP ranks) into corpus-level WER/CER per (k, s), the relative WER
reduction against s = 0, the per-speaker median WER and the share of speakers
that adaptation made worse. References and hypotheses go through one
normalizer (:func:`metaspeech.speech.text.normalize_text`) before scoring.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import jiwer

from metaspeech.speech.text import normalize_text


@dataclass
class UtteranceRecord:
    """One decoded utterance under one (k, s) condition, with its error counts."""

    task: str
    shots: int
    steps: int
    utterance: str
    reference: str
    hypothesis: str
    word_errors: int
    words: int
    char_errors: int
    chars: int


def score_utterance(task: str, shots: int, steps: int, utterance: str, reference: str, hypothesis: str) -> UtteranceRecord:
    """Count word and character edits (jiwer alignments) after normalization."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    words = len(ref.split())
    word_errors = _edits(jiwer.process_words(ref, hyp)) if words else len(hyp.split())
    char_errors = _edits(jiwer.process_characters(ref, hyp)) if ref else len(hyp)
    return UtteranceRecord(task, shots, steps, utterance, ref, hyp, word_errors, words, char_errors, len(ref))


def word_errors(references: Iterable[str], hypotheses: Iterable[str]) -> tuple[int, int]:
    """``(word errors, reference words)`` summed over utterance pairs, scored as :func:`score_utterance` does."""
    records = [score_utterance("", 0, 0, "", r, h) for r, h in zip(references, hypotheses)]
    return sum(r.word_errors for r in records), sum(r.words for r in records)


def _edits(output: Any) -> int:
    return int(output.substitutions + output.deletions + output.insertions)


@dataclass
class ConditionResult:
    """Metrics of one (k, s) cell of the table."""

    shots: int
    steps: int
    wer: float
    cer: float
    relative_wer_reduction: float
    median_speaker_wer: float
    median_speaker_relative_reduction: float
    speakers_worse: float
    speakers: int
    utterances: int
    adaptation_seconds: float
    oracle_wer: float = float("nan")
    gap_closed: float = float("nan")
    accent_oracle_wer: float = float("nan")
    beats_oracle: bool = False  # an adapted cell below the speaker oracle: the oracle is no ceiling there


SEEN_SPEAKERS = "seen speaker, new sentences"
"""The group of training speakers scored on held-out sentences: reported alone, never in the held-out rows."""


class AdaptationReport:
    """Aggregate :class:`UtteranceRecord` rows into the protocol's table.

    ``adaptation_seconds[(task, k)]`` is the audio duration of the k adaptation utterances;
    ``groups[task]`` an optional group label (e.g. ``"unseen accent"``) reported separately.
    ``oracle`` holds the speaker oracle's records (:mod:`metaspeech.evaluation.oracle`): with them every
    condition also reports the oracle WER of its speakers and the share of the gap closed,
    ``(WER at s=0 - WER) / (WER at s=0 - oracle WER)``. ``accent_oracle`` holds the accent oracle's records
    (fine-tuned on the speaker's accent mates too); each condition reports its WER where every speaker has one.
    """

    def __init__(
        self,
        records: Iterable[UtteranceRecord],
        adaptation_seconds: dict[tuple[str, int], float] | None = None,
        groups: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        oracle: Iterable[UtteranceRecord] = (),
        accent_oracle: Iterable[UtteranceRecord] = (),
    ):
        self.settings = dict(settings or {})  # protocol choices, e.g. the inner learning rate chosen on meta-val
        self.records = list(records)
        self.oracle = list(oracle)
        self.accent_oracle = list(accent_oracle)
        self.adaptation_seconds = adaptation_seconds or {}
        self.groups = {task: group for task, group in (groups or {}).items() if any(r.task == task for r in self.records)}

    @classmethod
    def load(cls, json_path: str | Path) -> "AdaptationReport":
        """A report from the JSON that :meth:`write` produced (records and task groups)."""
        data = json.loads(Path(json_path).read_text())
        return cls([UtteranceRecord(**r) for r in data["records"]], groups=data.get("task_groups"), settings=data.get("settings"),
                   oracle=[UtteranceRecord(**r) for r in data.get("oracle_records", [])],
                   accent_oracle=[UtteranceRecord(**r) for r in data.get("accent_oracle_records", [])])

    def group_names(self) -> list[str]:
        return sorted(set(self.groups.values()))

    def subset(self, group: str) -> "AdaptationReport":
        """The report restricted to the tasks labelled ``group``."""
        tasks = {task for task, g in self.groups.items() if g == group}
        return AdaptationReport([r for r in self.records if r.task in tasks], self.adaptation_seconds,
                                oracle=[r for r in self.oracle if r.task in tasks],
                                accent_oracle=[r for r in self.accent_oracle if r.task in tasks])

    def conditions(self) -> list[ConditionResult]:
        """One result per (k, s) over the held-out speakers (the seen-speaker group is only in its subset)."""
        cells: dict[tuple[int, int], list[UtteranceRecord]] = defaultdict(list)
        for record in self.records:
            if self.groups.get(record.task) != SEEN_SPEAKERS:
                cells[(record.shots, record.steps)].append(record)
        results = []
        for (shots, steps), rows in sorted(cells.items()):
            baseline = cells.get((shots, 0), [])
            results.append(self._condition(shots, steps, rows, baseline))
        return results

    def _condition(self, shots: int, steps: int, rows: list[UtteranceRecord], baseline: list[UtteranceRecord]) -> ConditionResult:
        wer = _rate(rows, "word_errors", "words")
        base_wer = _rate(baseline, "word_errors", "words") if baseline else float("nan")
        per_speaker = _per_speaker_wer(rows)
        base_per_speaker = _per_speaker_wer(baseline)
        worse = [task for task, value in per_speaker.items() if task in base_per_speaker and value > base_per_speaker[task]]
        tasks = sorted(per_speaker)
        seconds = [self.adaptation_seconds.get((task, shots), 0.0) for task in tasks]
        oracle_wer = self._oracle_wer(set(tasks))
        accent_oracle_wer = _complete_rate(self.accent_oracle, set(tasks))
        return ConditionResult(
            shots=shots,
            steps=steps,
            wer=wer,
            cer=_rate(rows, "char_errors", "chars"),
            relative_wer_reduction=(base_wer - wer) / base_wer if base_wer and base_wer == base_wer else 0.0,
            median_speaker_wer=statistics.median(per_speaker.values()) if per_speaker else float("nan"),
            median_speaker_relative_reduction=_median_relative_reduction(per_speaker, base_per_speaker),
            speakers_worse=len(worse) / len(per_speaker) if per_speaker and baseline else 0.0,
            speakers=len(per_speaker),
            utterances=len(rows),
            adaptation_seconds=statistics.mean(seconds) if seconds else 0.0,
            oracle_wer=oracle_wer,
            gap_closed=(base_wer - wer) / (base_wer - oracle_wer) if base_wer > oracle_wer else float("nan"),
            accent_oracle_wer=accent_oracle_wer,
            beats_oracle=steps > 0 and wer < oracle_wer,
        )

    def _oracle_wer(self, tasks: set[str]) -> float:
        """Corpus WER of the speaker oracle over ``tasks``; NaN unless every one of them has an oracle."""
        return _complete_rate(self.oracle, tasks)

    def to_rows(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.conditions()]

    def decomposition_rows(self) -> list[dict[str, Any]]:
        """Where the error lies: WER per speaker group (and all held-out speakers) for every (k, s), and the oracle."""
        rows = []
        for name, part in [("all held-out", self)] + [(group, self.subset(group)) for group in self.group_names()]:
            for c in part.conditions():
                rows.append({"group": name, "condition": f"k={c.shots} s={c.steps}", "wer": c.wer,
                             "relative_wer_reduction": c.relative_wer_reduction, "speakers_worse": c.speakers_worse,
                             "gap_closed": c.gap_closed, "speakers": c.speakers})
            for condition, oracle in (("oracle", part.oracle), ("accent oracle", part.accent_oracle)):
                if oracle:
                    rows.append({"group": name, "condition": condition, "wer": _rate(oracle, "word_errors", "words"),
                                 "relative_wer_reduction": float("nan"), "speakers_worse": float("nan"),
                                 "gap_closed": 1.0 if condition == "oracle" else float("nan"),
                                 "speakers": len({r.task for r in oracle})})
        return rows

    def speaker_rows(self) -> list[dict[str, Any]]:
        """One row per (speaker, k, s): that speaker's WER, CER and word count."""
        groups: dict[tuple[str, int, int], list[UtteranceRecord]] = defaultdict(list)
        for r in self.records:
            groups[(r.task, r.shots, r.steps)].append(r)
        return [
            {"speaker": task, "k": shots, "s": steps, "wer": _rate(rows, "word_errors", "words"),
             "cer": _rate(rows, "char_errors", "chars"), "words": sum(r.words for r in rows)}
            for (task, shots, steps), rows in sorted(groups.items())
        ]

    def curves(self) -> dict[int, list[tuple[int, float]]]:
        """The adaptation curves: for every k, corpus WER against inner steps ``[(s, wer), ...]``."""
        curves: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for c in self.conditions():
            curves[c.shots].append((c.steps, c.wer))
        return dict(curves)

    def examples(self, count: int = 4) -> list[tuple[UtteranceRecord, UtteranceRecord | None]]:
        """Up to ``count`` utterances of the most adapted condition (largest k, then s), one per speaker
        first, each paired with its unadapted (s = 0) decoding."""
        if not self.records:
            return []
        shots, steps = max((r.shots, r.steps) for r in self.records)
        chosen = [r for r in self.records if (r.shots, r.steps) == (shots, steps)]
        firsts: dict[str, UtteranceRecord] = {}
        for r in chosen:
            firsts.setdefault(r.task, r)
        picked = {id(r) for r in firsts.values()}
        ordered = list(firsts.values()) + [r for r in chosen if id(r) not in picked]
        before = {(r.task, r.utterance): r for r in self.records if (r.shots, r.steps) == (shots, 0)}
        return [(r, before.get((r.task, r.utterance))) for r in ordered[:count]]

    def write(self, directory: str | Path, name: str = "adaptation") -> dict[str, Path]:
        """Write ``<name>.json`` (table + per-utterance records) and ``<name>.csv`` (table)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.to_rows()
        json_path, csv_path = directory / f"{name}.json", directory / f"{name}.csv"
        by_group = {group: self.subset(group).to_rows() for group in self.group_names()}
        json_path.write_text(json.dumps(
            {"conditions": rows, "groups": by_group, "decomposition": self.decomposition_rows(),
             "task_groups": self.groups, "settings": self.settings,
             "records": [asdict(r) for r in self.records], "oracle_records": [asdict(r) for r in self.oracle],
             "accent_oracle_records": [asdict(r) for r in self.accent_oracle]},
            indent=2,
        ))
        return {"json": json_path, "csv": write_csv(csv_path, rows, empty_header=["shots"])}

    def render(self, title: str = "Adaptation on held-out speakers") -> str:
        """The table as text (rich), for the console and for logs."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in ("k", "steps", "WER %", "CER %", "rel. WER red. %", "median spk WER %", "median spk rel. red. %",
                       "spk worse %", "gap closed %", "speakers", "adapt s"):
            table.add_column(column, justify="right")
        for c in self.conditions():
            table.add_row(
                str(c.shots), str(c.steps), f"{100 * c.wer:.1f}", f"{100 * c.cer:.1f}",
                f"{100 * c.relative_wer_reduction:+.1f}", f"{100 * c.median_speaker_wer:.1f}",
                f"{100 * c.median_speaker_relative_reduction:+.1f}", f"{100 * c.speakers_worse:.0f}",
                _percent(c.gap_closed), str(c.speakers), f"{c.adaptation_seconds:.1f}",
            )
        console = Console(width=140, record=True, force_terminal=False, force_jupyter=False)
        with console.capture() as capture:
            console.print(table)
            if self.oracle:
                console.print(self._oracle_line())
            if self.accent_oracle:
                console.print(f"Accent oracle (fine-tuned on the speaker's accent mates and its own pool, "
                              f"{len({r.task for r in self.accent_oracle})} speakers): "
                              f"WER {100 * _rate(self.accent_oracle, 'word_errors', 'words'):.1f} %")
            beaten = [c for c in self.conditions() if c.beats_oracle]
            if beaten:
                console.print("! Few-shot cells below the speaker oracle (the oracle is no ceiling there): "
                              + ", ".join(f"k={c.shots} s={c.steps}" for c in beaten))
            if self.group_names():
                console.print(self._group_table())
        return capture.get()

    def _oracle_line(self) -> str:
        pool = statistics.mean(r.shots for r in self.oracle)
        chosen = self.settings.get("oracle", {}).get("chosen_scopes", {})
        scopes = ", ".join(f"{scope}: {n}" for scope, n in sorted(chosen.items())) if chosen else ""
        return (f"Speaker oracle (fine-tuned on {pool:.0f} utterances of each speaker, early-stopped on held-out ones"
                f"{'; scopes chosen ' + scopes if scopes else ''}): WER {100 * _rate(self.oracle, 'word_errors', 'words'):.1f} %")

    def _group_table(self):  # type: ignore[no-untyped-def]
        """WER % per group of speakers (e.g. seen vs unseen accents), one row per (k, s)."""
        from rich.table import Table

        names = self.group_names()
        table = Table(title="WER % by speaker group")
        for column in ("k", "steps", *(f"{n} ({sum(g == n for g in self.groups.values())} spk)" for n in names)):
            table.add_column(column, justify="right")
        cells = {n: {(c.shots, c.steps): c for c in self.subset(n).conditions()} for n in names}
        for c in self.conditions():
            table.add_row(str(c.shots), str(c.steps), *(
                f"{100 * cells[n][(c.shots, c.steps)].wer:.1f} ({100 * cells[n][(c.shots, c.steps)].relative_wer_reduction:+.0f}%)"
                if (c.shots, c.steps) in cells[n] else "-" for n in names))
        if self.oracle:
            parts = {n: self.subset(n).oracle for n in names}
            table.add_row("oracle", "", *(f"{100 * _rate(parts[n], 'word_errors', 'words'):.1f}" if parts[n] else "-" for n in names))
        if self.accent_oracle:
            parts = {n: self.subset(n).accent_oracle for n in names}
            table.add_row("accent oracle", "", *(f"{100 * _rate(parts[n], 'word_errors', 'words'):.1f}" if parts[n] else "-"
                                                   for n in names))
        return table


def _percent(value: float) -> str:
    return "-" if value != value else f"{100 * value:.0f}"


def _median_relative_reduction(per_speaker: dict[str, float], baseline: dict[str, float]) -> float:
    """Median over speakers of (WER at s = 0 - WER) / WER at s = 0; speakers with a perfect start count 0."""
    reductions = [(baseline[t] - wer) / baseline[t] if baseline[t] > 0 else 0.0 for t, wer in per_speaker.items() if t in baseline]
    return statistics.median(reductions) if reductions else 0.0


def _complete_rate(rows: list[UtteranceRecord], tasks: set[str]) -> float:
    """Corpus WER of ``rows`` over ``tasks``; NaN unless every one of ``tasks`` has rows."""
    rows = [r for r in rows if r.task in tasks]
    if not tasks or {r.task for r in rows} != tasks:
        return float("nan")
    return _rate(rows, "word_errors", "words")


def _rate(rows: list[UtteranceRecord], errors: str, total: str) -> float:
    denominator = sum(getattr(r, total) for r in rows)
    return sum(getattr(r, errors) for r in rows) / max(denominator, 1)


def _per_speaker_wer(rows: list[UtteranceRecord]) -> dict[str, float]:
    by_task: dict[str, list[UtteranceRecord]] = defaultdict(list)
    for r in rows:
        by_task[r.task].append(r)
    return {task: _rate(group, "word_errors", "words") for task, group in by_task.items()}


def write_csv(path: Path, rows: list[dict[str, Any]], empty_header: list[str]) -> Path:
    """``rows`` (dicts with the same keys) as a CSV table at ``path``; no rows: just ``empty_header``."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else empty_header)
        writer.writeheader()
        writer.writerows(rows)
    return path
