"""Test-time adaptation without a Trainer or a LightningModule: ``FewShotAdapter`` alone."""

from __future__ import annotations

import pytest
import torch

from metaspeech.adapter import FewShotAdapter
from metaspeech.algorithms import FOMAML, HyperInit, MetaSGD
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


class _NoRecording(FOMAML):
    """A plugin whose ``adapt`` override ignores ``InnerLoop.record`` (as an older user plugin would)."""

    def adapt(self, learner, support, loop=None):
        adaptation = super().adapt(learner, support, loop)
        adaptation.trajectory = {}
        return adaptation


@pytest.mark.parametrize("algorithm", [FOMAML(inner_steps=1, inner_lr=0.5), MetaSGD(inner_steps=1, inner_lr=0.3),
                                       HyperInit(inner_steps=1, inner_lr=0.5), _NoRecording(inner_steps=1, inner_lr=0.5)],
                         ids=["fomaml", "metasgd", "hyperinit", "no-recording-override"])
def test_one_adaptation_read_along_the_way_equals_one_adaptation_per_step_count(adapter_and_data, algorithm) -> None:
    adapter, data = adapter_and_data
    algorithm.setup(adapter.learner)
    adapter = FewShotAdapter(adapter.recognizer, adapter.learner, algorithm)
    support = next(iter(data.train_dataloader())).support
    along = adapter.adapt_along(support, [5, 0, 2, 5])
    assert sorted(along) == [0, 2, 5]
    for steps, fast in along.items():
        alone = adapter.adapt(support, steps)
        assert all(torch.equal(fast[name], alone[name]) for name in alone), steps
    assert not all(torch.equal(along[2][name], along[5][name]) for name in along[5])


def test_the_guard_decides_per_step_count_along_the_way(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    guarded = FewShotAdapter(adapter.recognizer, adapter.learner, adapter.algorithm, guard="cross_validation")
    support = next(iter(data.train_dataloader())).support
    along = guarded.adapt_along(support, [0, 3])
    for steps in (0, 3):
        alone = guarded.adapt(support, steps)
        assert all(torch.equal(along[steps][name], alone[name]) for name in alone)
