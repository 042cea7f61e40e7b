"""A float64 recognizer stays float64 end to end, so meta-gradients check to float64 precision.

Why on a recognizer, not only the toy MLP: the output head and the CTC loss used to cast to
float32, which capped every float64 check of a speech model at ~1e-6.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaspeech.algorithms import MAML
from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import Learner
from metaspeech.models import BiLSTMCTC, ConformerCTC


def _double(batch: TaskBatch) -> TaskBatch:
    return dataclasses.replace(batch, inputs=(batch.inputs[0].double(), *batch.inputs[1:]))


@pytest.fixture(scope="module")
def meta_batch(corpus_root, feature_cache) -> MetaBatch:
    from metaspeech.datamodules import EmbeddedCorpus

    data = EmbeddedCorpus(preset="tiny", root=str(corpus_root), cache_dir=str(feature_cache), k_shot=2, q_query=2,
                          tasks_per_batch=2, batches_per_epoch=1, eval_pool_size=5, eval_size=4, seed=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    return dataclasses.replace(batch, support=_double(batch.support), query=_double(batch.query))


def _recognizer(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bilstm":
        return BiLSTMCTC(vocab_size=29, input_dim=80, d_model=16, hidden_dim=12, num_layers=1, adapter_dim=4, dropout=0.0).double()
    return ConformerCTC(vocab_size=29, input_dim=80, d_model=16, num_layers=1, heads=2, ffn_dim=32, adapter_dim=4, dropout=0.0).double()


@pytest.mark.parametrize("kind", ["bilstm", "conformer"])
def test_log_probs_and_losses_stay_float64(kind: str, meta_batch: MetaBatch) -> None:
    model = _recognizer(kind)
    learner = Learner(model, model.loss, ["lhuc", "head"])
    prepared = learner.prepare(meta_batch.support)
    fast = learner.expand(learner.init_weights(), prepared.num_tasks)
    log_probs = learner.outputs(fast, prepared)[0]
    assert log_probs.dtype == torch.float64
    for differentiable in (False, True):  # F.ctc_loss and the twice-differentiable CTC
        assert learner.losses(fast, prepared, create_graph=differentiable).dtype == torch.float64


def test_second_order_meta_gradient_of_a_recognizer_matches_central_differences(meta_batch: MetaBatch) -> None:
    """d/de outer_loss(theta + e v) at e = 0, by autograd through the inner loop and by central
    differences, agree to 1e-7 relative: only possible when nothing is computed in float32."""
    algorithm = MAML(inner_steps=2, inner_lr=0.3)
    model = _recognizer("bilstm")
    learner = Learner(model, model.loss, ["head"])
    algorithm.setup(learner)
    model.zero_grad()
    algorithm.outer_loss(learner, meta_batch).loss.backward()
    head = dict(model.named_parameters())
    names = [n for n in head if n.startswith("stages.head")]
    direction = {n: torch.randn_like(head[n]) for n in names}
    analytic = sum((head[n].grad * direction[n]).sum() for n in names)
    assert analytic.dtype == torch.float64

    def objective(epsilon: float) -> float:
        with torch.no_grad():
            for n in names:
                head[n].add_(epsilon * direction[n])
        try:
            return float(algorithm.outer_loss(learner, meta_batch).loss.detach())
        finally:
            with torch.no_grad():
                for n in names:
                    head[n].sub_(epsilon * direction[n])

    epsilon = 1e-5
    numeric = (objective(epsilon) - objective(-epsilon)) / (2 * epsilon)
    assert abs(float(analytic) - numeric) <= 1e-7 * max(1.0, abs(numeric)), (float(analytic), numeric)


def _masked_frame_entropy(log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean per-frame entropy over valid frames, written out independently of metaspeech.speech.objectives."""
    frames = torch.arange(log_probs.shape[1])[None, :] < lengths[:, None]
    entropy = -(log_probs.exp() * log_probs).sum(-1) * frames
    return entropy.sum(1) / frames.sum(1)


@pytest.mark.parametrize("second_order", [True, False])
def test_entropy_inner_loss_meta_gradient_matches_hand_unrolled_reference(second_order: bool, meta_batch: MetaBatch) -> None:
    """MAML with a label-free inner loop (entropy on the support) and the supervised CTC outer loss on the query:
    the head's meta-gradient equals a hand-unrolled head (linear + log-softmax) with the same two losses, float64."""
    steps, lr = 2, 0.5
    model = _recognizer("bilstm")
    learner = Learner(model, model.loss, ["head"], objectives=model.objective)
    algorithm = MAML(inner_steps=steps, inner_lr=lr, second_order=second_order, inner_objective="entropy")
    model.zero_grad()
    algorithm.outer_loss(learner, meta_batch).loss.backward()
    names = ["stages.head.linear.weight", "stages.head.linear.bias"]
    params = dict(model.named_parameters())
    engine = [params[n].grad.clone() for n in names]

    weight, bias = (params[n].detach().clone().requires_grad_() for n in names)
    with torch.no_grad():
        support, query = learner.prepare(meta_batch.support), learner.prepare(meta_batch.query)
    tasks, per_task = meta_batch.num_tasks, meta_batch.support.examples_per_task
    total = 0.0
    for t in range(tasks):
        rows = slice(t * per_task, (t + 1) * per_task)
        (h, lengths), (hq, lengths_q) = ((s.state[0][rows], s.state[1][rows]) for s in (support, query))
        fast = [weight, bias]
        for _ in range(steps):
            inner = _masked_frame_entropy(torch.log_softmax(h @ fast[0].T + fast[1], -1), lengths).mean()
            grads = torch.autograd.grad(inner, fast, create_graph=second_order)
            fast = [w - lr * g for w, g in zip(fast, grads)]
        tokens, token_lengths = (x[rows] for x in query.targets)
        log_probs = torch.log_softmax(hq @ fast[0].T + fast[1], -1)
        ctc = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), tokens, lengths_q, token_lengths, reduction="none",
                                           zero_infinity=True)
        total = total + (ctc / token_lengths.clamp(min=1)).mean()
    reference = torch.autograd.grad(total / tasks, [weight, bias])
    for got, want in zip(engine, reference):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    if second_order:  # the entropy's Hessian term is really there
        model.zero_grad()
        MAML(inner_steps=steps, inner_lr=lr, second_order=False, inner_objective="entropy").outer_loss(learner, meta_batch).loss.backward()
        assert not torch.allclose(params[names[0]].grad, engine[0])
