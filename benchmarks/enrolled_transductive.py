"""A speaker's supervised few-shot adaptation, then each of its utterances adapted on itself: do the two add up?

Supervised adaptation on k transcribed utterances learns what the speaker has in common across utterances;
transductive adaptation (entropy minimization on the utterance being decoded, SUTA) needs no transcript and
adapts to each utterance alone. From one run of the benchmark protocol (its ``final.ckpt`` and its report
``adaptation_<name>.json``, which holds the test-time adaptation its meta-val search chose and its speaker
oracle), on the held-out speakers:

- ``unadapted``: s = 0;
- ``supervised``: the run's chosen test-time adaptation on each speaker's first k pool utterances, at the
  chosen s (what the protocol reports at that cell);
- ``transductive``: each evaluation utterance adapted on itself from the unadapted model;
- ``supervised + transductive``: the same, starting from the speaker's supervised adaptation
  (``metaspeech transcribe --adaptation A --transductive``);
- ``oracle`` and ``oracle + transductive``: the run's speaker oracle (its meta-val choice, refitted on each
  speaker's oracle pool), alone and as the start of the transductive steps. The oracle adapts to a speaker,
  not to each utterance, so a method with transductive steps is measured against both ceilings: the
  speaker oracle, and the oracle with the same transductive steps (its gap is ``matched_gap_closed``).

The transductive learning rate and steps (SGD on the training scope) are chosen on meta-val speakers,
separately for each of the two starts, exactly as they run on test speakers. With ``--transductive_checkpoint``,
the transductive steps are those of a plugin meta-trained for them over the run's frozen model (Meta-SGD with
``transductive: true`` and ``freeze_recognizer``, ``configs/metasgd_transductive.yaml``): its learned rates
replace the searched one, and only the steps are chosen. Prints a table per speaker
group (WER, relative reduction vs unadapted, speakers made worse, share of the speaker-oracle gap closed)
and writes JSON with the date, the commit and the command::

    python -m benchmarks.enrolled_transductive --run results/demo/joint/seed0 --output results/enrolled/joint/seed0
    python -m benchmarks.enrolled_transductive --summarize results/enrolled/joint/seed0 results/enrolled/joint/seed1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch

from benchmarks.label_free import git_commit, require_outputs
from metaspeech.cli.experiment import QUICK_RUN, _cli
from metaspeech.cli.inference import load_module
from metaspeech.engine.algorithm import MetaAlgorithm
from metaspeech.engine.batch import EvaluationBatch
from metaspeech.engine.inner_loop import INNER_OPTIMIZERS
from metaspeech.engine.learner import FastWeights, Learner
from metaspeech.evaluation.adapter import FewShotAdapter, write_adapted_weights
from metaspeech.evaluation.oracle import SpeakerOracle
from metaspeech.evaluation.scoring import SEEN_SPEAKERS, word_errors
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.training.label_free import learns_its_step_size

UNADAPTED, SUPERVISED, TRANSDUCTIVE, BOTH = "unadapted", "supervised", "transductive", "supervised + transductive"
ORACLE, ORACLE_BOTH = "oracle", "oracle + transductive"
CONDITIONS = (UNADAPTED, SUPERVISED, TRANSDUCTIVE, BOTH, ORACLE, ORACLE_BOTH)
ALL = "all held-out"


def supervised(module: Any, item: EvaluationBatch, shots: int, steps: int) -> FastWeights:
    """The module's test-time adaptation on ``item``'s first ``shots`` pool utterances: fast weights ``[1, ...]``."""
    return module.adapter.adapt(item.pool.take(min(shots, item.pool.examples_per_task)), steps)


def transductive(module: Any, item: EvaluationBatch, start: FastWeights | None, learning_rate: float | None, steps: list[int],
                 objective: str = "entropy", algorithm: MetaAlgorithm | None = None) -> dict[int, list[str]]:
    """Hypotheses of ``item``'s evaluation utterances, each adapted on itself for every count in ``steps``, from
    ``start`` (a speaker's adaptation ``[1, ...]``; None: the unadapted model). SGD on the training scope at
    ``learning_rate`` (None: ``algorithm``'s learned rates), the collapse guard on, as ``metaspeech transcribe
    --transductive`` runs it. ``algorithm`` (default: the module's) takes the steps."""
    algorithm = algorithm if algorithm is not None else module.algorithm
    recognizer = copy.deepcopy(module.model)
    if start is not None:
        write_adapted_weights(recognizer, start)
    learner = Learner(recognizer, recognizer.loss, module.scope, objectives=recognizer.objective)
    per_utterance = TestTimeAdaptation(optimizer="sgd", lr=learning_rate)  # as `transcribe --transductive` sets it
    adapter = FewShotAdapter(recognizer, learner, algorithm, test_time=per_utterance, objective=objective,
                             collapse_guard=module.collapse_guard,
                             from_model=start is not None)  # a HyperInit start is generated once, in the supervised part
    utterances = item.evaluation.per_utterance()
    adapted, _ = adapter.adapt_label_free(utterances, steps, objective)
    return {s: [task[0] for task in adapter.transcribe(utterances, module.tokenizer, adapted[s])] for s in steps}


def choose_transductive(module: Any, val_items: Iterable[EvaluationBatch], shots: int, supervised_steps: int,
                        learning_rates: list[float], steps: list[int],
                        algorithm: MetaAlgorithm | None = None) -> dict[str, dict[str, Any]]:
    """For each start (the unadapted model, the speaker's supervised adaptation), the transductive (learning rate,
    steps) of lowest corpus WER over the meta-val speakers ``val_items``; ties go to fewer steps, then the smaller rate.
    An ``algorithm`` that learns its rates (Meta-SGD) takes the steps with them: only the steps are chosen."""
    if algorithm is not None and learns_its_step_size(algorithm):
        learning_rates = [None]
    errors: dict[tuple[str, float | None, int], int] = {}
    words = 0
    for item in val_items:
        references = item.evaluation.texts[0]
        words += word_errors(references, references)[1]
        starts = {TRANSDUCTIVE: None, BOTH: supervised(module, item, shots, supervised_steps)}
        for name, start in starts.items():
            for lr in learning_rates:
                for s, hypotheses in transductive(module, item, start, lr, steps, algorithm=algorithm).items():
                    errors[(name, lr, s)] = errors.get((name, lr, s), 0) + word_errors(references, hypotheses)[0]
    choices = {}
    for name in (TRANSDUCTIVE, BOTH):
        wer = {(lr, s): count / max(words, 1) for (start, lr, s), count in errors.items() if start == name}
        lr, s = min(wer, key=lambda key: (wer[key], key[1], key[0] or 0.0))
        choices[name] = {"learning_rate": lr, "steps": s,
                         "meta_val_wer": {f"lr={'learned' if k[0] is None else k[0]} s={k[1]}": v for k, v in wer.items()}}
    return choices


def score_speakers(module: Any, test_items: Iterable[EvaluationBatch], shots: int, supervised_steps: int,
                   choices: dict[str, dict[str, Any]], oracle: SpeakerOracle | None = None,
                   algorithm: MetaAlgorithm | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    """``(word errors, words)`` of every test speaker under every condition: ``{condition: {task: counts}}``. The oracle
    conditions need ``oracle`` and the speaker's oracle pool; their transductive steps are those chosen for ``BOTH``,
    taken by ``algorithm`` (default: the module's)."""
    counts: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in CONDITIONS}
    for item in test_items:
        references = item.evaluation.texts[0]
        fast = supervised(module, item, shots, supervised_steps)
        start = supervised(module, item, shots, 0)  # the protocol's s = 0 (HyperInit's generated weights)
        hypotheses = {UNADAPTED: module.transcribe(item.evaluation, start)[0], SUPERVISED: module.transcribe(item.evaluation, fast)[0]}
        for name, start in ((TRANSDUCTIVE, None), (BOTH, fast)):
            chosen = choices[name]
            hypotheses[name] = transductive(module, item, start, chosen["learning_rate"], [chosen["steps"]],
                                            algorithm=algorithm)[chosen["steps"]]
        if oracle is not None and item.oracle is not None:
            hypotheses[ORACLE], fit = module.adapter.speaker_oracle(oracle, item.oracle, item.evaluation, module.tokenizer)
            chosen = choices[BOTH]
            hypotheses[ORACLE_BOTH] = transductive(module, item, fit.fast, chosen["learning_rate"], [chosen["steps"]],
                                                   algorithm=algorithm)[chosen["steps"]]
        for name, heard in hypotheses.items():
            counts[name][item.task] = word_errors(references, heard)
    return {name: by_task for name, by_task in counts.items() if by_task}


def group_rows(counts: dict[str, dict[str, tuple[int, int]]], groups: dict[str, str],
               oracle: dict[str, float]) -> list[dict[str, Any]]:
    """Per speaker group and condition: WER, relative reduction vs unadapted, share of speakers made worse and share
    of the speaker-oracle gap closed (``oracle``: the run's oracle WER per group). ``all held-out`` leaves out the
    training speakers' new sentences, as the protocol's report does."""
    rows = []
    names = [ALL] + sorted(set(groups.values()))
    for group in names:
        tasks = [t for t in counts[UNADAPTED] if (groups.get(t) != SEEN_SPEAKERS if group == ALL else groups.get(t) == group)]
        if not tasks:
            continue

        def wer(name: str, of: list[str] = tasks) -> float:
            return sum(counts[name][t][0] for t in of) / max(sum(counts[name][t][1] for t in of), 1)

        base = wer(UNADAPTED)
        present = [c for c in CONDITIONS if all(t in counts.get(c, {}) for t in tasks)]  # no oracle without an oracle pool
        gap = base - oracle[group] if group in oracle else float("nan")
        matched = base - wer(ORACLE_BOTH) if ORACLE_BOTH in present else float("nan")
        for name in present:
            value = wer(name)
            worse = sum(wer(name, [t]) > wer(UNADAPTED, [t]) for t in tasks) / len(tasks)
            rows.append({"group": group, "condition": name, "wer": value, "relative_wer_reduction": 1 - value / base if base else 0.0,
                         "speakers_worse": worse, "gap_closed": (base - value) / gap if gap > 0 else float("nan"),
                         "matched_gap_closed": (base - value) / matched if matched > 0 else float("nan"),
                         "oracle_wer": oracle.get(group, float("nan")), "speakers": len(tasks)})
    return rows


def run_report(run: Path) -> dict[str, Any]:
    """The run's test report (``adaptation_<name>.json``), which names its meta-val choices and its oracle."""
    reports = sorted(run.glob("adaptation_*.json"))
    if not reports:
        raise SystemExit(f"no adaptation_*.json in {run}: pass a run folder of benchmarks/adaptation.py or `metaspeech demo`")
    return json.loads(reports[0].read_text())


def chosen_test_time(report: dict[str, Any]) -> tuple[TestTimeAdaptation, int, int]:
    """The test-time adaptation, s and k the run's meta-val search chose."""
    selection = report["settings"]["test_time_selection"]
    chosen = selection["chosen"]
    scope = None if chosen["scope"] == "training scope" else chosen["scope"].split(",")
    lr = chosen["lr"] if isinstance(chosen["lr"], float) else None
    optimizer = chosen["optimizer"] if chosen["optimizer"] in INNER_OPTIMIZERS else None  # None: the algorithm's own
    return TestTimeAdaptation(scope=scope, optimizer=optimizer, lr=lr), selection["steps"], selection["shots"]


def run_oracle(report: dict[str, Any]) -> SpeakerOracle | None:
    """The run's speaker oracle at the (scope, learning rate) its meta-val search chose; None if it had none."""
    settings = report["settings"].get("oracle") or {}
    chosen = settings.get("chosen_on_meta_val")
    if not chosen or not settings.get("max_steps"):
        return None
    return SpeakerOracle(scopes=[chosen["scope"].split(",")], learning_rates=[chosen["lr"]], max_steps=settings["max_steps"],
                         eval_every=settings["eval_every"], dev_fraction=settings["dev_fraction"], patience=settings["patience"])


def oracle_by_group(report: dict[str, Any], shots: int) -> dict[str, float]:
    """The run's speaker-oracle WER per group (and over all held-out speakers)."""
    def at(rows: list[dict[str, Any]]) -> float:
        return next(r["oracle_wer"] for r in rows if r["shots"] == shots and r["steps"] == 0)

    return {ALL: at(report["conditions"]), **{group: at(rows) for group, rows in report["groups"].items()}}


def markdown(rows: list[dict[str, Any]], spread: dict[tuple[str, str], float] | None = None) -> str:
    lines = ["| speakers | condition | WER % | relative reduction | speakers worse | speaker-oracle gap closed | "
             "oracle + transductive gap closed |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        deviation = f" ± {100 * spread[(r['group'], r['condition'])]:.1f}" if spread else ""
        lines.append(f"| {r['group']} ({r['speakers']}) | {r['condition']} | {100 * r['wer']:.1f}{deviation} | "
                     f"{100 * r['relative_wer_reduction']:+.1f} % | {100 * r['speakers_worse']:.0f} % | {100 * r['gap_closed']:.0f} % | "
                     f"{100 * r['matched_gap_closed']:.0f} % |")
    return "\n".join(lines)


def summarize(folders: list[Path]) -> str:
    """Mean over runs (e.g. seeds) of every (group, condition) cell; ± the standard deviation of its WER."""
    runs = [json.loads((folder / "enrolled_transductive.json").read_text())["rows"] for folder in folders]
    mean_rows, spread = [], {}
    for cells in zip(*runs):
        key = (cells[0]["group"], cells[0]["condition"])
        row = {k: statistics.fmean(c[k] for c in cells) if isinstance(cells[0][k], float) else cells[0][k] for k in cells[0]}
        spread[key] = statistics.stdev(c["wer"] for c in cells) if len(cells) > 1 else 0.0
        mean_rows.append(row)
    return markdown(mean_rows, spread)


def transductive_plugin(module: Any, checkpoint: Path) -> MetaAlgorithm | None:
    """The plugin of ``checkpoint``, meta-trained for transductive steps, if its recognizer and scope are ``module``'s
    bit for bit (``model.freeze_recognizer`` from that model); else None, as its rates were learned for another model."""
    trained = load_module(checkpoint)
    mine, theirs = module.model.state_dict(), trained.model.state_dict()
    same = mine.keys() == theirs.keys() and all(torch.equal(mine[name], theirs[name]) for name in mine)
    return trained.algorithm if same and trained.scope == module.scope else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder with final.ckpt and adaptation_<name>.json")
    parser.add_argument("--checkpoint", type=Path, default=None, help="the run's model, if not <run>/final.ckpt")
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="DIR", help="instead: average earlier outputs")
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10], help="transductive step counts searched")
    parser.add_argument("--output", type=Path, default=Path("results/enrolled"))
    parser.add_argument("--skip_oracle", action="store_true", help="leave out the two oracle conditions (their fits cost most)")
    parser.add_argument("--transductive_checkpoint", type=Path, default=None,
                        help="a plugin meta-trained for the transductive steps over the run's frozen model "
                             "(configs/metasgd_transductive.yaml); its learned rates take those steps")
    args, overrides = parser.parse_known_args(argv)
    if args.summarize:
        require_outputs(parser, args.summarize, "enrolled_transductive.json")
        print(summarize(args.summarize))
        return 0
    if args.run is None:
        parser.error("--run is required (or --summarize DIR ...)")
    report = run_report(args.run)
    checkpoint = args.checkpoint or args.run / "final.ckpt"
    if not checkpoint.is_file():
        parser.error(f"no checkpoint {checkpoint}: pass the run's model with --checkpoint")
    test_time, supervised_steps, shots = chosen_test_time(report)
    data = _cli("configs/joint.yaml", args.data, "configs/trainer/cpu.yaml", args.output, 0, [*QUICK_RUN, *overrides]).datamodule
    data.prepare_data()
    data.setup("test")
    module = load_module(checkpoint)
    module.use_test_time(test_time)
    module.eval()
    algorithm = None
    if args.transductive_checkpoint is not None:
        algorithm = transductive_plugin(module, args.transductive_checkpoint)
        if algorithm is None:
            parser.error(f"{args.transductive_checkpoint} does not hold {checkpoint}'s recognizer and scope: meta-train it "
                         f"from that model with model.freeze_recognizer (configs/metasgd_transductive.yaml)")
    choices = choose_transductive(module, data.val_dataloader(), shots, supervised_steps, args.learning_rates, args.steps,
                                  algorithm)
    oracle = None if args.skip_oracle else run_oracle(report)
    counts = score_speakers(module, data.test_dataloader(), shots, supervised_steps, choices, oracle, algorithm)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "speakers.json").write_text(json.dumps(counts, indent=1))  # kept even if the summary below fails
    rows = group_rows(counts, data.task_groups("test"), oracle_by_group(report, shots))
    result = {"date_utc": datetime.now(timezone.utc).isoformat(), "commit": git_commit(),
              "command": ["python", "-m", "benchmarks.enrolled_transductive", *argv], "run": str(args.run),
              "transductive_checkpoint": str(args.transductive_checkpoint) if args.transductive_checkpoint else None,
              "supervised": {**test_time.describe(), "steps": supervised_steps, "shots": shots}, "transductive": choices,
              "rows": rows, "speakers": {name: {t: list(c) for t, c in by_task.items()} for name, by_task in counts.items()}}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "enrolled_transductive.json").write_text(json.dumps(result, indent=2))
    print(markdown(rows), flush=True)
    print(f"written to {args.output / 'enrolled_transductive.json'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
