"""Test-time adaptation without a Trainer or a LightningModule: ``FewShotAdapter`` alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metaspeech.algorithms import FOMAML, HyperInit, InnerLoop, MetaSGD
from metaspeech.engine.learner import Learner
from metaspeech.evaluation.adapter import FewShotAdapter
from metaspeech.evaluation.oracle import SpeakerOracle
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.models import BiLSTMCTC

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


@dataclasses.dataclass(frozen=True)
class _ClippedLoop(InnerLoop):
    """A user's inner loop: every inner gradient clipped elementwise to [-1e-3, 1e-3]."""

    def gradients(self, losses, fast, step=0, create_graph=None):
        return [None if g is None else g.clamp(-1e-3, 1e-3) for g in super().gradients(losses, fast, step, create_graph)]


class _OwnInnerLoop(FOMAML):
    """A plugin whose ``inner_loop`` override decides how its loops run."""

    def inner_loop(self, steps=None, loss_scale=1.0):
        return _ClippedLoop(self.inner_steps if steps is None else steps, self.second_order, loss_scale)


def test_a_plugins_inner_loop_override_reaches_test_time_adaptation(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    algorithm = _OwnInnerLoop(inner_steps=1, inner_lr=0.5)
    algorithm.setup(adapter.learner)
    support = next(iter(data.train_dataloader())).support
    along = FewShotAdapter(adapter.recognizer, adapter.learner, algorithm).adapt_along(support, [0, 3])
    moved = max(float((along[3][name] - along[0][name]).abs().max()) for name in along[3])
    assert 0 < moved <= 3 * 0.5 * 1e-3 * 1.001  # three steps of lr 0.5 times a clipped gradient, at most
    plain = FewShotAdapter(adapter.recognizer, adapter.learner, adapter.algorithm).adapt(support, 3)
    assert max(float((plain[name] - along[0][name]).abs().max()) for name in plain) > moved


@pytest.mark.parametrize("settings", [TestTimeAdaptation(optimizer="adam", lr=3e-3),
                                      TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3),
                                      TestTimeAdaptation(scope=["all"], optimizer="sgd", lr=0.05)],
                         ids=["adam", "adam-all", "sgd-all"])
def test_test_time_settings_lower_the_support_loss_and_read_along_the_way(adapter_and_data, settings) -> None:
    adapter, data = adapter_and_data
    tuned = FewShotAdapter(adapter.recognizer, adapter.learner, adapter.algorithm, test_time=settings)
    assert set(tuned.learner.adapted_names) == set(Learner(adapter.recognizer, adapter.recognizer.loss, settings.scope
                                                           or ["lin", "lhuc", "head"]).adapted_names)
    support = next(iter(data.train_dataloader())).support
    along = tuned.adapt_along(support, [0, 2, 5])
    assert (tuned.loss(support, along[5]) < tuned.loss(support, along[0])).all()
    alone = tuned.adapt(support, 2)
    assert all(torch.equal(along[2][name], alone[name]) for name in alone)


def test_adam_steps_follow_the_bias_corrected_rule_per_task() -> None:
    loop = InnerLoop(2, optimizer="adam", lr=0.1)
    fast = {"w": torch.zeros(2, 3)}
    grads = [torch.tensor([[1.0, -2.0, 0.0], [4.0, 0.5, -1.0]])]
    first, state = loop.update(fast, grads, 0, step_size=lambda step, name: 99.0)
    torch.testing.assert_close(first["w"], -0.1 * grads[0] / (grads[0].abs() + 1e-8))  # step 1: lr * sign(g)
    second, _ = loop.update(first, [torch.zeros(2, 3)], 1, lambda step, name: 99.0, state)
    m = 0.9 * 0.1 * grads[0] / (1 - 0.9**2)
    v = 0.999 * 0.001 * grads[0] ** 2 / (1 - 0.999**2)
    torch.testing.assert_close(second["w"], first["w"] - 0.1 * m / (v.sqrt() + 1e-8))


def test_hyperinit_generates_its_scope_then_fine_tunes_the_whole_model(adapter_and_data) -> None:
    adapter, data = adapter_and_data
    hyper = HyperInit(inner_steps=1, inner_lr=0.5, embedding_dim=8)
    hyper.setup(adapter.learner)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained hypernetwork: its generators' last layers start at zero, so move them
        for p in hyper.parameters():
            p.add_(0.05 * torch.randn_like(p))
    own = FewShotAdapter(adapter.recognizer, adapter.learner, hyper)
    whole = FewShotAdapter(adapter.recognizer, adapter.learner, hyper,
                           test_time=TestTimeAdaptation(scope=["all"], optimizer="adam", lr=1e-3))
    batch = next(iter(data.train_dataloader()))
    generated, start = own.adapt(batch.support, 0), whole.adapt(batch.support, 0)
    shared = dict(adapter.recognizer.named_parameters())
    assert set(generated) < set(start) == set(whole.learner.adapted_names)
    for name, w in start.items():  # s = 0: the generated weights of its scope, the shared init elsewhere
        expected = generated[name] if name in generated else shared[name].detach().expand_as(w)
        assert torch.equal(w, expected), name
    assert not all(torch.equal(generated[name], shared[name].detach().expand_as(w)) for name, w in generated.items())
    assert torch.allclose(whole.loss(batch.query, start), own.loss(batch.query, generated), atol=1e-6)
    tuned = whole.adapt(batch.support, 3)
    body = [name for name in start if name not in generated]
    assert any(not torch.equal(tuned[name], start[name]) for name in body)  # fine-tuning reaches beyond its scope
    assert (whole.loss(batch.support, tuned) < whole.loss(batch.support, start)).all()


def test_written_adapted_weights_become_the_start_of_the_next_adaptation(adapter_and_data) -> None:
    import copy

    from metaspeech.evaluation.adapter import write_adapted_weights

    adapter, data = adapter_and_data
    batch = next(iter(data.train_dataloader()))
    fast = adapter.adapt(batch.support, 3)
    enrolled = copy.deepcopy(adapter.recognizer)
    write_adapted_weights(enrolled, fast, task=1)
    learner = Learner(enrolled, enrolled.loss, ["lin", "lhuc", "head"])
    after = FewShotAdapter(enrolled, learner, adapter.algorithm)
    start = after.adapt(batch.support, 0)
    assert all(torch.equal(start[name][0], fast[name][1]) for name in fast)
    assert not all(torch.equal(p, dict(enrolled.named_parameters())[n]) for n, p in adapter.recognizer.named_parameters())
    with pytest.raises(KeyError, match="not.a.weight"):
        write_adapted_weights(enrolled, {"not.a.weight": fast[next(iter(fast))]})


def test_an_adapter_from_the_model_does_not_generate_a_start_again(adapter_and_data) -> None:
    """A recognizer holding a speaker's HyperInit adaptation starts there: the hypernetwork is not applied twice."""
    import copy

    from metaspeech.evaluation.adapter import write_adapted_weights

    adapter, data = adapter_and_data
    hyper = HyperInit(inner_steps=1, inner_lr=0.5, embedding_dim=8)
    hyper.setup(adapter.learner)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hyper.parameters():
            p.add_(0.05 * torch.randn_like(p))
    support = next(iter(data.train_dataloader())).support
    enrolled_weights = FewShotAdapter(adapter.recognizer, adapter.learner, hyper).adapt(support, 2)
    enrolled = copy.deepcopy(adapter.recognizer)
    write_adapted_weights(enrolled, enrolled_weights, task=0)
    learner = Learner(enrolled, enrolled.loss, ["lin", "lhuc", "head"], objectives=enrolled.objective)
    again = FewShotAdapter(enrolled, learner, hyper).adapt(support, 0)  # would add a generated update on top
    there = FewShotAdapter(enrolled, learner, hyper, from_model=True).adapt(support, 0)
    assert all(torch.equal(there[name][0], enrolled_weights[name][0]) for name in there)
    assert not all(torch.equal(again[name][0], enrolled_weights[name][0]) for name in again)
    moved = FewShotAdapter(enrolled, learner, hyper, from_model=True, objective="entropy", collapse_guard=None).adapt(support, 2)
    assert any(not torch.equal(moved[name], there[name]) for name in moved)
