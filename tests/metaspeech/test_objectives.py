"""Label-free adaptation objectives (entropy, entropy + MCC, pseudo-labels) and the collapse guard."""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, MAML, HyperInit, MetaSGD
from metaspeech.engine.batch import MetaBatch, TaskBatch
from metaspeech.engine.learner import Learner
from metaspeech.errors import ConfigError
from metaspeech.evaluation.adapter import FewShotAdapter
from metaspeech.evaluation.collapse_guard import CollapseGuard, agreement, blank_ratio, edit_distance
from metaspeech.models import BiLSTMCTC
from metaspeech.speech.objectives import EntropyObjective, PseudoLabelObjective, class_confusion, frame_entropy, mean_confidence

TINY = dict(vocab_size=29, input_dim=80, d_model=16, hidden_dim=12, num_layers=1, adapter_dim=4, dropout=0.0)


def _log_probs(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows).log()


def test_frame_entropy_is_the_mean_over_valid_frames_only() -> None:
    uniform, certain = [0.5, 0.5], [1.0 - 1e-9, 1e-9]
    log_probs = _log_probs([[uniform, certain, uniform], [certain, certain, uniform]])
    entropy = frame_entropy(log_probs, torch.tensor([2, 2]))
    torch.testing.assert_close(entropy, torch.tensor([0.5 * torch.log(torch.tensor(2.0)), 0.0]), atol=1e-6, rtol=0)


def test_class_confusion_is_zero_for_confident_frames_and_positive_for_confused_ones() -> None:
    one, other = [1.0 - 1e-9, 1e-9], [1e-9, 1.0 - 1e-9]
    confident = _log_probs([[one, other, one, other]])
    confused = _log_probs([[[0.5, 0.5]] * 4])
    assert float(class_confusion(confident, torch.tensor([4]))) == pytest.approx(0.0, abs=1e-6)
    assert float(class_confusion(confused, torch.tensor([4]))) == pytest.approx(0.5)


def test_pseudo_labels_are_the_greedy_transcripts_and_unconfident_utterances_are_dropped() -> None:
    confident = [[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]
    unsure = [[0.3, 0.35, 0.35], [0.4, 0.3, 0.3], [0.3, 0.3, 0.4], [0.3, 0.4, 0.3]]
    log_probs = _log_probs([confident, unsure]).requires_grad_()
    lengths = torch.tensor([4, 4])
    objective = PseudoLabelObjective(blank=0, min_confidence=0.5)
    tokens, token_lengths, weight = objective.targets((log_probs, lengths), ())
    assert token_lengths.tolist() == [2, 3] and tokens[0, :2].tolist() == [1, 2] and tokens[1].tolist() == [1, 2, 1]
    torch.testing.assert_close(mean_confidence(log_probs, lengths), torch.tensor([0.9, 0.3875]))
    assert weight.tolist() == [1.0, 0.0]
    losses = objective((log_probs, lengths), (tokens, token_lengths, weight), differentiable=False)
    assert float(losses[0].detach()) > 0 and float(losses[1].detach()) == 0.0
    losses.sum().backward()
    assert log_probs.grad[0].abs().sum() > 0 and log_probs.grad[1].abs().sum() == 0


@pytest.fixture(scope="module")
def support(corpus_root, feature_cache) -> TaskBatch:
    from metaspeech.datamodules import EmbeddedCorpus

    data = EmbeddedCorpus(preset="tiny", root=str(corpus_root), cache_dir=str(feature_cache), k_shot=3, q_query=3,
                          tasks_per_batch=2, batches_per_epoch=1, eval_pool_size=5, eval_size=4, seed=0)
    data.setup("fit")
    return next(iter(data.train_dataloader())).support


def _unlabelled(batch: TaskBatch) -> TaskBatch:
    """The batch with its transcripts removed: label-free objectives must not read them."""
    unlabelled = batch.without_transcripts()
    assert unlabelled.targets[0].shape[-1] == 0 and not unlabelled.texts and unlabelled.targets[1].sum() == 0
    return unlabelled


@pytest.mark.parametrize("name", ["entropy", "entropy_mcc", "pseudo_label"])
def test_each_label_free_objective_lowers_its_own_loss_without_transcripts(name: str, support: TaskBatch) -> None:
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)

    def objectives(objective: str):  # an untrained model is unsure everywhere: keep every pseudo-label here
        return PseudoLabelObjective(min_confidence=0.0) if objective == "pseudo_label" else recognizer.objective(objective)

    learner = Learner(recognizer, recognizer.loss, ["lin", "lhuc", "head"], objectives=objectives)
    algorithm = FOMAML(inner_steps=1, inner_lr=0.5)
    adapter = FewShotAdapter(recognizer, learner, algorithm, collapse_guard=None)
    unlabelled = _unlabelled(support)
    fast = adapter.adapt(unlabelled, steps=5, objective=name)
    with torch.no_grad():
        prepared = learner.prepare(unlabelled)
        start = adapter.unadapted(unlabelled.num_tasks)
        labelled = learner.for_objective(prepared, start, name)
        before, after = (learner.losses(w, labelled, objective=name) for w in (start, fast))
    assert (after < before).all(), (before, after)


def test_the_plugins_adapt_with_their_inner_objective_and_keep_a_supervised_outer_loss(support: TaskBatch) -> None:
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)
    learner = Learner(recognizer, recognizer.loss, ["lhuc", "head"], objectives=recognizer.objective)
    entropy = EntropyObjective()
    with torch.no_grad():
        prepared = learner.prepare(support)
        start_entropy = entropy(learner.outputs(learner.expand(learner.init_weights(), 2), prepared), (), False)
    for algorithm in (MAML(inner_steps=1, inner_objective="entropy"), FOMAML(inner_steps=1, inner_objective="entropy"),
                      MetaSGD(inner_steps=1, inner_objective="entropy"), HyperInit(inner_steps=1, inner_objective="entropy")):
        algorithm.setup(learner)
        adaptation = algorithm.adapt(learner, support, algorithm.inner_loop())
        torch.testing.assert_close(adaptation.inner_losses[0], start_entropy.reshape(2, -1).mean(1))
        result = algorithm.outer_loss(learner, MetaBatch(support=support, query=support))
        supervised = learner.losses(adaptation.fast, learner.prepare(support)).detach()
        torch.testing.assert_close(result.query_losses, supervised)


def test_an_unknown_inner_objective_is_a_config_error_naming_the_key(tiny_module) -> None:
    with pytest.raises(ConfigError, match="model.algorithm.init_args.inner_objective"):
        tiny_module(FOMAML(inner_objective="entropie"))
    with pytest.raises(ConfigError, match="model.test_objective"):
        tiny_module(FOMAML(), test_objective="none")


def test_blank_ratio_and_agreement() -> None:
    log_probs = _log_probs([[[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1]]])
    assert float(blank_ratio(log_probs, torch.tensor([3]))) == pytest.approx(2 / 3)
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2
    assert agreement([[1, 2], [], [5]], [[1, 2], [], []]).tolist() == [1.0, 1.0, 0.0]


def test_the_collapse_guard_refuses_an_all_blank_adaptation_and_keeps_a_sane_one(support: TaskBatch) -> None:
    """A real adaptation whose head is then pushed to the blank everywhere: the guard gives those tasks their start back."""
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)
    learner = Learner(recognizer, recognizer.loss, ["lhuc", "head"], objectives=recognizer.objective)
    adapter = FewShotAdapter(recognizer, learner, FOMAML(inner_lr=0.01), collapse_guard=CollapseGuard())
    start = adapter.unadapted(support.num_tasks)
    trained = adapter._adapt(support, [1], 1.0, "entropy")

    def collapse_task_0(support, counts, loss_scale, objective):
        fast = {n: w.clone() for n, w in trained[1].items()}
        fast["stages.head.linear.bias"][0, recognizer.blank] += 100.0  # task 0: every frame is blank
        return {1: fast}

    adapter._adapt = collapse_task_0
    guarded, kept = adapter.adapt_label_free(support, [1], "entropy")
    assert kept[1].tolist() == [False, True]
    for name, w in guarded[1].items():
        torch.testing.assert_close(w[0], start[name][0].detach())
        torch.testing.assert_close(w[1], trained[1][name][1])
    with torch.no_grad():
        prepared = learner.prepare(support)
        collapsed = learner.outputs(collapse_task_0(None, None, None, None)[1], prepared)
    per_task = blank_ratio(*collapsed).reshape(2, -1).mean(1)
    assert float(per_task[0]) == 1.0


def test_pseudo_label_inner_loss_runs_second_order_through_the_differentiable_ctc(support: TaskBatch) -> None:
    """``F.ctc_loss`` has no double backward: a second-order inner loop on pseudo-labels must take the torch-ops CTC."""
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)
    learner = Learner(recognizer, recognizer.loss, ["head"], objectives=lambda name: PseudoLabelObjective(min_confidence=0.0))
    gradients = {}
    for second_order in (True, False):
        recognizer.zero_grad()
        algorithm = MAML(inner_steps=1, inner_lr=0.5, second_order=second_order, inner_objective="pseudo_label")
        algorithm.outer_loss(learner, MetaBatch(support=support, query=support)).loss.backward()
        gradients[second_order] = recognizer.stages.head.linear.weight.grad.clone()
    assert torch.isfinite(gradients[True]).all() and not torch.allclose(gradients[True], gradients[False])


def test_model_test_objective_makes_module_adapt_label_free(tiny_module, support: TaskBatch) -> None:
    unlabelled = _unlabelled(support)
    module = tiny_module(FOMAML(inner_lr=0.5), test_objective="entropy")
    start = module.adapter.unadapted(unlabelled.num_tasks)
    fast = module.adapt(unlabelled, 3)
    assert any(not torch.equal(fast[n], start[n]) for n in fast)
    assert (module.adapter.loss(unlabelled, fast, "entropy") < module.adapter.loss(unlabelled, start, "entropy")).all()


def test_a_transductive_plugin_adapts_each_query_utterance_on_itself_without_its_transcript(support: TaskBatch) -> None:
    torch.manual_seed(0)
    recognizer = BiLSTMCTC(**TINY)
    learner = Learner(recognizer, recognizer.loss, ["lhuc", "head"], objectives=recognizer.objective)
    algorithm = MetaSGD(inner_steps=2, inner_lr=0.3, second_order=False, inner_objective="entropy", transductive=True)
    algorithm.setup(learner)
    unread = TaskBatch(tuple(t[:, :1] * 0 for t in support.inputs), tuple(t[:, :1] for t in support.targets))
    result = algorithm.outer_loss(learner, MetaBatch(support=unread, query=support))
    alone = []
    for task in range(support.num_tasks):
        for example in range(support.examples_per_task):
            utterance = support.task(task).select([example])
            fast = algorithm.adapt(learner, utterance.without_transcripts()).fast
            alone.append(learner.losses(fast, learner.prepare(utterance)).detach())
    torch.testing.assert_close(result.query_losses, torch.cat(alone), rtol=1e-5, atol=1e-6)

    other_transcripts = TaskBatch(support.inputs, tuple(t.flip(0) for t in support.targets))
    swapped = algorithm.outer_loss(learner, MetaBatch(support=unread, query=other_transcripts))
    for read, unchanged in zip(result.inner_losses, swapped.inner_losses):  # the steps never read a transcript
        torch.testing.assert_close(read, unchanged)
    assert not torch.allclose(result.query_losses, swapped.query_losses)  # the outer loss does
    result.loss.backward()
    rates = [p.grad for p in algorithm.learning_rates.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in rates) and any(g.abs().sum() > 0 for g in rates)


def test_transductive_meta_training_needs_a_label_free_inner_loop_and_the_base_outer_loss() -> None:
    with pytest.raises(ConfigError, match="model.algorithm.init_args.inner_objective"):
        FOMAML(transductive=True)

    class OwnOuterLoss(FOMAML):
        def outer_loss(self, learner, batch, loss_scale=1.0):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError, match="OwnOuterLoss has an outer loss of its own"):
        OwnOuterLoss(inner_objective="entropy", transductive=True)


def test_per_utterance_makes_every_utterance_of_every_task_a_task(support: TaskBatch) -> None:
    singles = support.per_utterance()
    assert singles.num_tasks == support.num_tasks * support.examples_per_task and singles.examples_per_task == 1
    assert torch.equal(singles.inputs[0][4, 0], support.inputs[0][1, 1])  # task 1, utterance 1 of 3
    assert singles.texts[4] == [support.texts[1][1]] and singles.ids[4] == [support.ids[1][1]]
    assert torch.equal(singles.targets[1].flatten(), support.targets[1].flatten())
