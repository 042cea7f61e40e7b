"""The engine (cached prefix + all tasks in one batch) equals a per-task loop on the speech recognizers.

The reference is the hand-written learn2learn-style loop the speed benchmark
compares against (``benchmarks/reference_loop.py``): whole model, one task at a
time. Float64, so any coupling between tasks shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference_loop import reference_outer_loss
from metaspeech.algorithms import FOMAML, MAML, Reptile
from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import Learner
from metaspeech.models import BiLSTMCTC, ConformerCTC

RECOGNIZERS = {
    "bilstm": lambda: BiLSTMCTC(vocab_size=12, input_dim=80, d_model=16, hidden_dim=12, num_layers=2, adapter_dim=4, dropout=0.0),
    "conformer": lambda: ConformerCTC(vocab_size=12, input_dim=80, d_model=16, num_layers=2, heads=2, ffn_dim=24,
                                      kernel_size=3, adapter_dim=4, dropout=0.0),
}
ALGORITHMS = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile}


def _meta_batch(tasks: int = 2, shots: int = 2, frames: int = 40, tokens: int = 4) -> MetaBatch:
    """Random float64 features with different lengths per utterance (so padding is exercised)."""
    g = torch.Generator().manual_seed(0)

    def part() -> TaskBatch:
        features = torch.randn(tasks, shots, frames, 80, generator=g, dtype=torch.float64)
        lengths = torch.randint(frames * 2 // 3, frames + 1, (tasks, shots), generator=g)
        labels = torch.randint(1, 12, (tasks, shots, tokens), generator=g)
        label_lengths = torch.randint(tokens // 2, tokens + 1, (tasks, shots), generator=g)
        return TaskBatch((features, lengths), (labels, label_lengths))

    return MetaBatch(support=part(), query=part())


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("kind", list(ALGORITHMS))
@pytest.mark.parametrize(("recognizer", "scope"), [("bilstm", ["lhuc", "head"]), ("conformer", ["lhuc", "head"]),
                                                   ("conformer", ["norm"]), ("conformer", ["lin", "adapters"])])
def test_engine_meta_gradient_equals_the_per_task_loop(recognizer: str, scope: list[str], kind: str) -> None:
    torch.manual_seed(0)
    model = RECOGNIZERS[recognizer]()
    learner = Learner(model, model.loss, scope)
    assert learner.task_batched and (learner.first_stage > 0) == ("lin" not in scope)  # a cached prefix unless LIN is adapted
    batch = _meta_batch()

    gradients = []
    for compute in ("engine", "loop"):
        model.zero_grad(set_to_none=True)
        if compute == "engine":
            loss = ALGORITHMS[kind](inner_steps=2, inner_lr=0.1).outer_loss(learner, batch).loss
        else:
            loss = reference_outer_loss(model, learner.loss, learner.adapted_names, batch, steps=2, lr=0.1, kind=kind)
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-7, atol=1e-10)
