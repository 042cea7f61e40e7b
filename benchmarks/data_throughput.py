"""Data pipeline throughput: corpus synthesis, feature extraction, and meta-batch loading vs a training step.

    .venv/bin/python benchmarks/data_throughput.py                 # embedded `small` corpus
    .venv/bin/python benchmarks/data_throughput.py --preset tiny

Synthesis and feature extraction run into fresh temporary folders (no cache);
then the episodic loader draws ``--batches`` meta-batches and the time per batch is
compared with one FOMAML outer step of the default recognizer on the same batch:
the loader starves training only if a batch takes longer to load than a step.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes / feature threads")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--output", default="results/benchmarks/data_throughput.json")
    args = parser.parse_args()

    import torch

    from metaspeech.algorithms import FOMAML
    from metaspeech.datamodules import EmbeddedCorpus
    from metaspeech.datamodules.embedded import generate_corpus
    from metaspeech.datamodules.manifest import read_manifest
    from metaspeech.engine.learner import Learner
    from metaspeech.models import BiLSTMCTC

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = generate_corpus(Path(tmp) / "corpus", args.preset, seed=0, num_workers=args.workers)
        synthesis = time.perf_counter() - start
        rows = read_manifest(manifest)
        audio_seconds = sum(r.duration for r in rows)

        data = EmbeddedCorpus(preset=args.preset, root=str(Path(tmp) / "corpus"), cache_dir=str(Path(tmp) / "features"))
        start = time.perf_counter()
        data.setup("fit")
        features = time.perf_counter() - start

        loader = iter(data.train_dataloader())
        next(loader)
        start = time.perf_counter()
        batches = [next(loader) for _ in range(args.batches)]
        loading = (time.perf_counter() - start) / args.batches

        model = BiLSTMCTC(vocab_size=data.vocab_size, input_dim=data.feature_dim)
        learner = Learner(model, model.loss, ["lin", "lhuc", "head"])
        algorithm = FOMAML(inner_steps=3, inner_lr=0.5)
        algorithm.setup(learner)
        algorithm.outer_loss(learner, batches[0]).loss.backward()
        start = time.perf_counter()
        for batch in batches[1:4]:
            algorithm.outer_loss(learner, batch).loss.backward()
        step = (time.perf_counter() - start) / 3

    result = {
        "preset": args.preset, "utterances": len(rows), "audio_hours": audio_seconds / 3600,
        "synthesis_utterances_per_s": len(rows) / synthesis, "feature_utterances_per_s": len(rows) / features,
        "loader_seconds_per_batch": loading, "fomaml_step_seconds": step, "loader_share_of_step": loading / step,
    }
    print(f"{'stage':<32}{'value':>14}")
    print(f"{'corpus synthesis (utt/s)':<32}{result['synthesis_utterances_per_s']:>14.1f}")
    print(f"{'feature extraction (utt/s)':<32}{result['feature_utterances_per_s']:>14.1f}")
    print(f"{'meta-batch loading (s/batch)':<32}{loading:>14.4f}")
    print(f"{'FOMAML outer step (s)':<32}{step:>14.3f}")
    print(f"{'loader time / step time':<32}{result['loader_share_of_step']:>14.3f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
