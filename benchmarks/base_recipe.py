"""Which recipe trains the shared base recognizer best within the CPU budget of ``make demo``?

Every adaptation number sits on top of the base recognizer: if it is underfit, most of its
error is generic recognition error that no speaker transform removes. This script trains the
joint (multi-speaker) base with several recipes, each a list of ordinary ``metaspeech fit``
overrides, and scores each without adaptation (s = 0) on

- **meta-val** held-out speakers, seen and unseen accent: the numbers a recipe is *chosen* on;
- **seen speakers, new sentences** (training speakers' held-out sentences): how well the
  recognizer learned the task itself, read but never used for the choice.

Test speakers are never scored here. Prints a table and writes JSON after every recipe::

    python -m benchmarks.base_recipe --steps 500 --recipes baseline cosine cosine_specaug
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from torch.utils.data import DataLoader

from metaspeech.cli.experiment import QUICK_RUN, _cli
from metaspeech.datamodules.episodic import EvaluationTaskDataset
from metaspeech.evaluation.scoring import SEEN_SPEAKERS, score_utterance

SPEC_AUGMENT = [
    "--model.augmentation=metaspeech.speech.augmentation.EpisodeAugmentation",
    "--model.augmentation.init_args.max_warp=0.0",
    "--model.augmentation.init_args.spec_augment=metaspeech.speech.features.SpecAugment",
]
RECIPES: dict[str, list[str]] = {
    "baseline": [],
    "cosine": ["--model.lr_decay=cosine"],
    "wsd": ["--model.lr_decay=wsd"],
    "lr6e-3_4tasks": ["--model.lr=0.006", "--data.init_args.tasks_per_batch=4"],
    "lr6e-3_4tasks_wsd": ["--model.lr=0.006", "--data.init_args.tasks_per_batch=4", "--model.lr_decay=wsd"],
    "cosine_lr5e-3": ["--model.lr_decay=cosine", "--model.lr=0.005"],
    "cosine_specaug": ["--model.lr_decay=cosine", *SPEC_AUGMENT],
    "cosine_warp": ["--model.lr_decay=cosine", "--model.augmentation=metaspeech.speech.augmentation.EpisodeAugmentation"],
    "cosine_aug": ["--model.lr_decay=cosine", "--model.augmentation=metaspeech.speech.augmentation.EpisodeAugmentation",
                   "--model.augmentation.init_args.spec_augment=metaspeech.speech.features.SpecAugment"],
    "cosine_16tasks": ["--model.lr_decay=cosine", "--data.init_args.tasks_per_batch=16"],
    "cosine_wide": ["--model.lr_decay=cosine", "--model.recognizer.init_args.hidden_dim=256",
                    "--model.recognizer.init_args.d_model=256"],
}
"""Named recipes: overrides on top of ``configs/joint.yaml`` and the data and trainer configs."""


def score(module: Any, loader: Iterable[Any], groups: dict[str, str]) -> dict[str, float]:
    """Corpus WER without adaptation per group (and ``all``) over the evaluation utterances of ``loader``."""
    errors: dict[str, int] = defaultdict(int)
    words: dict[str, int] = defaultdict(int)
    module.eval()
    for item in loader:
        hypotheses = module.transcribe(item.evaluation)[0]
        for reference, hypothesis in zip(item.evaluation.texts[0], hypotheses):
            record = score_utterance(item.task, 0, 0, "", reference, hypothesis)
            for group in {"all", groups.get(item.task, "all")}:
                errors[group] += record.word_errors
                words[group] += record.words
    return {group: errors[group] / max(words[group], 1) for group in errors}


def score_groups(module: Any, data: Any) -> dict[str, Any]:
    """s = 0 WERs of ``module`` on the meta-val groups and on the seen speakers' new sentences."""
    was_training = module.training
    with torch.no_grad():
        val = score(module, data.val_dataloader(), data.task_groups("val"))
        seen_loader = DataLoader(EvaluationTaskDataset(data.datasets["test"], data.seen_tasks), batch_size=None)
        seen = score(module, seen_loader, {})["all"] if data.seen_tasks else float("nan")
    module.train(was_training)
    return {"meta_val": val, SEEN_SPEAKERS: seen}


class LearningCurve(L.Callback):
    """Score the recognizer every ``every`` outer steps; the scoring time is not counted as training time."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.points: list[dict[str, Any]] = []
        self.scoring_seconds = 0.0
        self.start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            start = time.perf_counter()
            minutes = (start - self.start - self.scoring_seconds) / 60
            self.points.append({"step": step, "train_minutes": round(minutes, 2), **score_groups(pl_module, trainer.datamodule)})
            print(json.dumps(self.points[-1]), flush=True)
            self.scoring_seconds += time.perf_counter() - start


def run_recipe(name: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe for ``args.steps`` outer steps; its wall-clock and s = 0 WERs (and the curve on the way)."""
    root = Path(args.output) / name
    cli = _cli(args.algorithm, args.data, args.trainer, root, args.seed,
               [*QUICK_RUN, f"--trainer.max_steps={args.steps}", *overrides])
    curve = LearningCurve(args.eval_every)
    cli.trainer.callbacks.append(curve)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start - curve.scoring_seconds
    final = {"step": args.steps, "train_minutes": round(seconds / 60, 2), **score_groups(cli.model, cli.datamodule)}
    result = {"recipe": name, "overrides": overrides, "steps": args.steps, "train_seconds": round(seconds, 1),
              "meta_val": final["meta_val"], SEEN_SPEAKERS: final[SEEN_SPEAKERS], "curve": [*curve.points, final]}
    if args.keep_checkpoints:
        cli.trainer.save_checkpoint(root / "base.ckpt", weights_only=True)
    return result


def curve_markdown(results: list[dict[str, Any]]) -> str:
    """One row per recipe and scored step: how the error falls with training."""
    lines = ["| recipe | step | train min | seen speakers, new sentences | meta-val seen accent | meta-val unseen accent |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for p in r.get("curve", []):
            val = p["meta_val"]
            lines.append(f"| {r['recipe']} | {p['step']} | {p['train_minutes']:.1f} | {100 * p[SEEN_SPEAKERS]:.1f} | "
                         f"{100 * val.get('seen accent', float('nan')):.1f} | {100 * val.get('unseen accent', float('nan')):.1f} |")
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| recipe | steps | train min | seen speakers, new sentences | meta-val all | meta-val seen accent | meta-val unseen accent |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        val = r["meta_val"]
        lines.append(
            f"| {r['recipe']} | {r['steps']} | {r['train_seconds'] / 60:.1f} | {100 * r[SEEN_SPEAKERS]:.1f} | "
            f"{100 * val['all']:.1f} | {100 * val.get('seen accent', float('nan')):.1f} | "
            f"{100 * val.get('unseen accent', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["baseline", "cosine"], choices=sorted(RECIPES))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every recipe")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithm", default="configs/joint.yaml")
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--trainer", default="configs/trainer/cpu.yaml")
    parser.add_argument("--output", default="results/base_recipe")
    parser.add_argument("--keep_checkpoints", action="store_true")
    parser.add_argument("--eval_every", type=int, default=0, help="also score every N outer steps (a learning curve)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.recipes:
        results.append(run_recipe(name, [*RECIPES[name], *args.extra], args))
        (output / "base_recipe.json").write_text(json.dumps(results, indent=2))
        print(markdown(results), flush=True)
    curves = "\n\n" + curve_markdown(results) if args.eval_every else ""
    print(curves, flush=True)
    (output / "base_recipe.md").write_text(markdown(results) + curves + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
