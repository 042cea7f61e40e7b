"""Quality benchmark: every algorithm and the joint-training baseline, same budget, several seeds.

    .venv/bin/python benchmarks/adaptation.py                      # the recorded setting (BENCHMARKS.md)
    .venv/bin/python benchmarks/adaptation.py --seeds 0 --algorithms fomaml joint --steps 20 --base_steps 50
    # another YAML from the same shared start, meta-trained only (its final.ckpt for benchmarks/label_free.py)
    .venv/bin/python benchmarks/adaptation.py --base_steps 900 --seeds 0 --algorithms --configs configs/fomaml_entropy.yaml --fit_only

Protocol (README, "Results of the main job"): per seed, one shared start is trained with joint
multi-speaker training for ``--base_steps`` outer steps; every algorithm then
gets the same ``--steps`` outer steps of its own from that start, and is tested
on the held-out speakers of the embedded ``small`` corpus (adaptation pool vs a
disjoint evaluation set; k in {1, 5, 10}, s in {0, 1, 5, 10}). Held-out speakers
of accents never seen in meta-training are reported separately. Writes
``comparison.json``, ``comparison.md`` and ``wer_vs_steps.png`` to ``--output``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from metaspeech.algorithms import SHIPPED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="*", default=list(SHIPPED), choices=list(SHIPPED),
                        help="shipped algorithms (metaspeech.algorithms.SHIPPED)")
    parser.add_argument("--configs", nargs="+", default=[],
                        help="further algorithm YAMLs (e.g. configs/fomaml_entropy.yaml), each run like a shipped algorithm")
    parser.add_argument("--fit_only", action="store_true",
                        help="meta-train and leave each run's final.ckpt, without the test protocol (for checkpoints that "
                             "another benchmark scores, e.g. benchmarks/label_free.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base_steps", type=int, default=300, help="joint-training steps of the shared start")
    parser.add_argument("--steps", type=int, default=60, help="outer steps each algorithm gets from the shared start")
    parser.add_argument("--data", default="configs/data/embedded_small.yaml")
    parser.add_argument("--trainer", default="configs/trainer/cpu.yaml")
    parser.add_argument("--output", default="results/benchmarks/adaptation")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs side by side after the shared starts, one process each, the threads split between them")
    parser.add_argument("--summarize_only", action="store_true",
                        help="re-build the table from the per-run JSON already under --output (e.g. runs done in parts), "
                             "for the runs of --seeds")
    args, extra = parser.parse_known_args()

    from metaspeech.cli.experiment import QUICK_RUN, collect_reports, run_comparison, write_comparison

    if args.summarize_only:
        results = {name: {seed: report for seed, report in by_seed.items() if seed in args.seeds}
                   for name, by_seed in collect_reports(Path(args.output)).items()}
        results = {name: by_seed for name, by_seed in results.items() if by_seed}
        if not results:
            raise SystemExit(f"no <algorithm>/seed<N>/adaptation_*.json under {args.output}: run the benchmark first")
        seeds = sorted({seed for by_seed in results.values() for seed in by_seed})
        summary = write_comparison(results, seeds, Path(args.output))
        print(summary["table"])
        print(f"wrote {summary['json']}, {summary['plot']}")
        return

    overrides = [f"--trainer.max_steps={args.steps}", *QUICK_RUN, "--config", str(REPO / "configs/protocol/benchmark.yaml"), *extra]
    start = time.perf_counter()
    summary = run_comparison(
        [*(str(REPO / "configs" / SHIPPED[name]) for name in args.algorithms), *(str(REPO / c) for c in args.configs)],
        str(REPO / args.data), str(REPO / args.trainer), Path(args.output), args.seeds, overrides,
        base_config=str(REPO / "configs/base.yaml"), base_steps=args.base_steps, workers=args.workers, test=not args.fit_only,
    )
    if summary is None:
        print(f"meta-trained in {(time.perf_counter() - start) / 60:.1f} min; final.ckpt under {args.output}/<config>/seed<N>/")
        return
    print(summary["table"])
    print(f"wrote {summary['json']}, {summary['plot']} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
