"""Test-time adaptation without a Trainer or a LightningModule: ``FewShotAdapter`` alone."""

from __future__ import annotations

import pytest
import torch

from metaspeech.adapter import FewShotAdapter
from metaspeech.algorithms import FOMAML
from metaspeech.learner import Learner
from metaspeech.models import BiLSTMCTC
from metaspeech.oracle import SpeakerOracle

TINY = dict(vocab_size=29, input_dim=80, d_model=16, hidden_dim=12, num_layers=1, adapter_dim=4, dropout=0.0)


@pytest.fixture
def adapter_and_data(tiny_data):
    data = tiny_data()
    data.setup("fit")
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)
    learner = Learner(recognizer, recognizer.loss, ["lin", "lhuc", "head"])
    algorithm = FOMAML(inner_steps=1, inner_lr=0.5)
    algorithm.setup(learner)
    return FewShotAdapter(recognizer, learner, algorithm), data


def test_adapting_lowers_the_support_loss_and_leaves_the_recognizer_alone(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    support = next(iter(data.train_dataloader())).support
    before = {name: p.detach().clone() for name, p in adapter.recognizer.named_parameters()}
    start = adapter.unadapted(support.num_tasks)
    fast = adapter.adapt(support, steps=5)
    assert set(fast) == set(adapter.learner.adapted_names)
    assert all(w.shape[0] == support.num_tasks and not w.requires_grad for w in fast.values())
    assert (adapter.loss(support, fast) < adapter.loss(support, start)).all()
    assert all(torch.equal(p, before[name]) for name, p in adapter.recognizer.named_parameters())
    zero = adapter.adapt(support, steps=0)
    assert all(torch.equal(zero[name], start[name]) for name in fast)


def test_transcripts_are_per_task_and_follow_the_fast_weights(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    query = next(iter(data.train_dataloader())).query
    texts = adapter.transcribe(query, data.tokenizer)
    assert [len(t) for t in texts] == [query.examples_per_task] * query.num_tasks
    assert texts == adapter.transcribe(query, data.tokenizer, adapter.unadapted(query.num_tasks))


def test_adaptation_inside_inference_mode_says_which_setting_to_change(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    support = next(iter(data.train_dataloader())).support
    with torch.inference_mode(), pytest.raises(RuntimeError, match="trainer.inference_mode=false"):
        adapter.adapt(support, steps=1)


def test_the_speaker_oracle_fine_tunes_its_own_scope_and_transcribes_with_it(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    batch = next(iter(data.train_dataloader()))
    pool, evaluation = batch.support.task(0), batch.query.task(0)
    oracle = SpeakerOracle(scopes=["head"], max_steps=5, eval_every=5)
    hypotheses, fit = adapter.speaker_oracle(oracle, pool, evaluation, data.tokenizer)
    assert fit.scope == "head" and fit.steps in (0, 5)
    assert hypotheses == adapter.transcribe(evaluation, data.tokenizer, fit.fast, fit.learner)[0]
    assert len(hypotheses) == evaluation.examples_per_task
