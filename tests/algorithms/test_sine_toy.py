"""Every algorithm, unchanged, meta-learns sine regression: adaptation lowers the loss."""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, MAML, HyperInit, JointTraining, MetaSGD, Reptile
from metaspeech.engine.learner import Learner
from metaspeech.engine.toy import SineMLP, mse_loss, sine_meta_batch

ALGORITHMS = {
    "maml": lambda: MAML(inner_steps=1, inner_lr=0.03),
    "fomaml": lambda: FOMAML(inner_steps=1, inner_lr=0.03),
    "reptile": lambda: Reptile(inner_steps=3, inner_lr=0.03),
    "metasgd": lambda: MetaSGD(inner_steps=1, inner_lr=0.03),
    "hyperinit": lambda: HyperInit(inner_steps=1, inner_lr=0.03, embedding_dim=16),
    "joint": lambda: JointTraining(inner_steps=5, inner_lr=0.003),
}


def _post_adaptation_loss(algorithm, learner, steps: int, seed: int = 123) -> float:
    algorithm.eval()
    batch = sine_meta_batch(25, 10, torch.Generator().manual_seed(seed))
    adaptation = algorithm.adapt(learner, batch.support, algorithm.inner_loop(steps=steps))
    return float(learner.losses(adaptation.fast, learner.prepare(batch.query)).mean().detach())


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_meta_training_and_adaptation_lower_sine_loss(name: str) -> None:
    torch.manual_seed(0)
    learner = Learner(SineMLP(), mse_loss, scope=["all"])
    algorithm = ALGORITHMS[name]()
    algorithm.setup(learner)
    before_training = _post_adaptation_loss(algorithm, learner, steps=algorithm.inner_steps)
    params = list(learner.model.parameters()) + list(algorithm.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3 if name != "reptile" else 3e-3)
    generator = torch.Generator().manual_seed(1)
    algorithm.train()
    for _ in range(500):
        batch = sine_meta_batch(8, 10, generator)
        optimizer.zero_grad()
        algorithm.outer_loss(learner, batch).loss.backward()
        optimizer.step()
    unadapted = _post_adaptation_loss(algorithm, learner, steps=0)
    adapted = _post_adaptation_loss(algorithm, learner, steps=algorithm.inner_steps)
    assert adapted < before_training, "meta-training did not improve post-adaptation loss"
    required = 1.0 if name == "joint" else 0.9  # the baseline is not trained to adapt, only to fit
    assert adapted < required * unadapted, f"{name}: inner steps did not lower the query loss ({unadapted} -> {adapted})"
