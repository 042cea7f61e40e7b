"""``metaspeech adapt | transcribe | generate | compare | demo``: commands beyond Lightning's CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

COMMANDS: dict[str, Callable[[list[str]], int]] = {}
WORKERS_HELP = ("runs side by side after the shared start, one process each, the threads split between them "
                "(default: one per run, at most one per thread; 1: one after the other)")


def command(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    def register(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        COMMANDS[name] = fn
        return fn

    return register


def summary(name: str) -> str:
    """The one-line description of a command (the first line of its docstring)."""
    return (COMMANDS[name].__doc__ or "").strip().splitlines()[0]


def run_command(argv: list[str]) -> int:
    """Run ``argv[0]`` with the rest of ``argv``; its exit status. User-facing errors propagate to the CLI."""
    name = argv[0]
    if name not in COMMANDS:
        from metaspeech.cli.lightning_cli import LIGHTNING_SUBCOMMANDS

        known = ", ".join([*LIGHTNING_SUBCOMMANDS, *COMMANDS])
        print(f"metaspeech: unknown command {name!r}; commands: {known} (metaspeech --help)", file=sys.stderr)
        return 2
    return COMMANDS[name](argv[1:])


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


@command("generate")
def generate(argv: list[str]) -> int:
    """Synthesize the embedded corpus (cached: a second run returns at once; Kokoro resumes after a kill)."""
    from metaspeech.datamodules.embedded.generate import ENGINES, PRESETS

    parser = argparse.ArgumentParser(prog="metaspeech generate", description=generate.__doc__)
    parser.add_argument("--engine", default=None, choices=ENGINES, help="default: the preset's engine (eSpeak for tiny)")
    parser.add_argument("--preset", default=None, choices=list(PRESETS), help="default: tiny, or kokoro-tiny with --engine kokoro")
    parser.add_argument("--root", default=None, help="default: data/embedded for eSpeak, the user cache for Kokoro")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every CPU for large corpora)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads per process (Kokoro)")
    args = parser.parse_args(argv)
    from metaspeech.datamodules.embedded.generate import generate_corpus, preset_for_engine

    preset = preset_for_engine(args.engine, args.preset)
    print(generate_corpus(args.root, preset, seed=args.seed, num_workers=args.workers, num_threads=args.threads))
    return 0


@command("adapt")
def adapt(argv: list[str]) -> int:
    """Adapt a trained model to one speaker from their recordings (+ transcripts, unless label-free); save the adaptation."""
    from metaspeech.engine.inner_loop import INNER_OPTIMIZERS
    from metaspeech.speech.objectives import OBJECTIVES, SUPERVISED

    parser = argparse.ArgumentParser(prog="metaspeech adapt", description=adapt.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a .ckpt written by `metaspeech fit`")
    parser.add_argument("--data", required=True, help="folder of x.wav (+ x.txt), or a JSONL manifest of one speaker")
    parser.add_argument("--output", required=True, help="where to write the speaker adaptation (.pt)")
    parser.add_argument("--steps", type=int, default=10, help="inner adaptation steps")
    parser.add_argument("--objective", default=None, choices=OBJECTIVES,
                        help="what adaptation minimizes: supervised (needs x.txt) or label-free, audio only (docs/label_free.md); "
                             "default: the objective the model was meta-trained to adapt with (its inner_objective), else supervised")
    parser.add_argument("--lr", type=float, default=None,
                        help="inner learning rate of every step and weight (default: the algorithm's own, eval_inner_lr or learned)")
    parser.add_argument("--scope", nargs="+", default=None,
                        help="the adapted parameters, presets or name globs (default: the training scope), e.g. all")
    parser.add_argument("--optimizer", default=None, choices=INNER_OPTIMIZERS,
                        help="the inner steps' update rule (default: the model's test-time setting, SGD unless configured)")
    args = parser.parse_args(argv)
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    from metaspeech.cli.inference import adapt_speaker, find_recordings, load_module, save_atomically
    from metaspeech.evaluation.test_time import TestTimeAdaptation

    module = load_module(args.checkpoint)
    objective = args.objective or module.algorithm.inner_objective
    own = module.test_time  # what the model was configured to adapt with; each option replaces one part of it
    module.use_test_time(TestTimeAdaptation(scope=args.scope or own.scope, optimizer=args.optimizer or own.optimizer,
                                            lr=args.lr if args.lr is not None else own.lr))
    recordings = find_recordings(args.data, require_text=objective == SUPERVISED)
    adaptation = adapt_speaker(module, recordings, args.steps, objective)
    save_atomically(adaptation, args.output)
    refused = "" if adaptation["guard_kept"] else "; the collapse guard refused it, the unadapted weights are saved"
    print(
        f"adapted {', '.join(adaptation['scope'])} ({module.test_time.optimizer}) on {adaptation['utterances']} utterances "
        f"({adaptation['seconds']:.1f} s), "
        f"objective {objective}: support loss {adaptation['support_loss_before']:.3f} -> "
        f"{adaptation['support_loss_after']:.3f}{refused}; saved {args.output}"
    )
    return 0


TRANSDUCTIVE_LR = 0.5
"""``transcribe --transductive``'s default SGD rate: what meta-val chose for the demo's joint model (BENCHMARKS.md §2)."""


@command("transcribe")
def transcribe(argv: list[str]) -> int:
    """Transcribe audio files, optionally with a speaker adaptation from `metaspeech adapt`."""
    from metaspeech.speech.objectives import LABEL_FREE

    parser = argparse.ArgumentParser(prog="metaspeech transcribe", description=transcribe.__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--adaptation", default=None, help="a .pt written by `metaspeech adapt`")
    parser.add_argument("--transductive", action="store_true",
                        help="adapt each recording on itself before decoding it, without transcripts, starting from "
                             "--adaptation if given (docs/label_free.md)")
    parser.add_argument("--objective", default="entropy", choices=LABEL_FREE, help="the --transductive objective")
    parser.add_argument("--steps", type=_positive, default=5, help="--transductive inner steps per recording")
    parser.add_argument("--lr", type=float, default=None,
                        help="--transductive SGD learning rate on the training scope (default: 0.5, or the rates a "
                             "Meta-SGD checkpoint learned, e.g. configs/metasgd_transductive.yaml)")
    parser.add_argument("audio", nargs="+", help="audio files or folders")
    args = parser.parse_args(argv)
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    from metaspeech.cli.inference import find_recordings, load_adaptation, load_module, transcribe_files, transcribe_transductive
    from metaspeech.evaluation.adapter import write_adapted_weights
    from metaspeech.evaluation.test_time import TestTimeAdaptation
    from metaspeech.training.label_free import learns_its_step_size

    module = load_module(args.checkpoint)
    adaptation = load_adaptation(args.adaptation, module) if args.adaptation else None
    recordings = [r for source in args.audio for r in find_recordings(source, require_text=False)]
    if args.transductive:  # SGD on the training scope, whatever test-time setting the checkpoint carries for speakers
        learned = args.lr is None and learns_its_step_size(module.algorithm)
        module.use_test_time(TestTimeAdaptation(optimizer="sgd", lr=None if learned else args.lr or TRANSDUCTIVE_LR))
        if adaptation is not None:  # the speaker's adaptation is where every recording's own adaptation starts
            write_adapted_weights(module.model, adaptation)
            module.adapter.from_model = True
        texts = transcribe_transductive(module, recordings, args.steps, args.objective)
    else:
        texts = transcribe_files(module, recordings, adaptation)
    for recording, text in zip(recordings, texts):
        print(f"{recording.path}\t{text}")
    return 0


@command("compare")
def compare(argv: list[str]) -> int:
    """Meta-train and test several algorithm configs with the same budget; print one table."""
    parser = argparse.ArgumentParser(prog="metaspeech compare", description=compare.__doc__)
    parser.add_argument("--algorithms", nargs="+", default=["configs/maml.yaml", "configs/joint.yaml"])
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--trainer", default="configs/trainer/cpu.yaml")
    parser.add_argument("--output", default="results/compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--base_steps", type=int, default=0, help="outer steps of a shared joint-trained start (0: none)")
    parser.add_argument("--base_config", default="configs/base.yaml")
    parser.add_argument("--workers", type=_positive, default=None, help=WORKERS_HELP)
    args, unknown = parser.parse_known_args(argv)
    from metaspeech.cli.experiment import run_comparison
    from metaspeech.cli.parallel_runs import default_workers
    from metaspeech.cli.shipped_configs import shipped_config

    summary = run_comparison(
        [shipped_config(c) for c in args.algorithms], shipped_config(args.data), shipped_config(args.trainer),
        Path(args.output), args.seeds, unknown, base_config=shipped_config(args.base_config), base_steps=args.base_steps,
        workers=args.workers or default_workers(len(args.algorithms) * len(args.seeds)),
    )
    print(summary["table"])
    print(json.dumps({"json": str(summary["json"]), "plot": str(summary["plot"])}))
    return 0


@command("demo")
def demo(argv: list[str]) -> int:
    """The main job: a shared joint-trained start, then meta-training vs joint training with the same budget;
    both are tested on held-out speakers and printed side by side (the protocol of benchmarks/adaptation.py, cut to
    the README table's k and the speaker oracle's winning settings by configs/protocol/demo.yaml)."""
    from metaspeech.algorithms import SHIPPED

    parser = argparse.ArgumentParser(prog="metaspeech demo", description=demo.__doc__)
    parser.add_argument("--algorithm", default="fomaml", choices=[a for a in SHIPPED if a != "joint"],
                        help="a shipped algorithm (its config under configs/)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "kokoro-small"])
    parser.add_argument("--base_steps", type=int, default=900, help="joint-training steps of the shared start")
    parser.add_argument("--steps", type=int, default=60, help="outer steps each algorithm gets from the shared start")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default="results/demo")
    parser.add_argument("--workers", type=_positive, default=None, help=WORKERS_HELP)
    args, unknown = parser.parse_known_args(argv)
    from metaspeech.cli.experiment import QUICK_RUN, run_comparison
    from metaspeech.cli.parallel_runs import default_workers
    from metaspeech.cli.shipped_configs import shipped_config

    protocol = ["--config", shipped_config("configs/protocol/benchmark.yaml"), "--config", shipped_config("configs/protocol/demo.yaml")]
    if args.preset == "tiny":  # its adaptation pools hold 5 utterances
        protocol += ["--model.test_shots=[1,3,5]", "--model.test_steps=[0,1,3]"]
    summary = run_comparison(
        [shipped_config(f"configs/{SHIPPED[args.algorithm]}"), shipped_config(f"configs/{SHIPPED['joint']}")],
        shipped_config(f"configs/data/embedded_{args.preset.replace('-', '_')}.yaml"), shipped_config("configs/trainer/cpu.yaml"),
        Path(args.output), args.seeds, [f"--trainer.max_steps={args.steps}", *QUICK_RUN, *protocol, *unknown],
        base_config=shipped_config("configs/base.yaml"), base_steps=args.base_steps,
        workers=args.workers or default_workers(2 * len(args.seeds)),
    )
    print(summary["table"])
    print(f"tables and plot: {summary['json'].parent}")
    return 0
