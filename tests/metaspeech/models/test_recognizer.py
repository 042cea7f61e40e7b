"""A recognizer brings its own loss and decoder: the module trains, scores and transcribes with them.

The user recognizer here is defined in the test, outside the package, as the
"Add a recognizer" recipe of docs/architecture.md says.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from metaspeech.algorithms import MAML
from metaspeech.models import BiLSTMCTC, Recognizer
from metaspeech.training.module import MetaSpeechModule

TINY = dict(vocab_size=29, input_dim=80, d_model=16, hidden_dim=12, num_layers=1, adapter_dim=4, dropout=0.0)


class DoubledCTC(BiLSTMCTC):
    """A user recognizer: twice the CTC loss, and a decoder that reads every utterance as token 3."""

    def loss(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        return 2.0 * super().loss(output, targets, differentiable)

    def decode(self, output: tuple[Tensor, ...]) -> list[list[int]]:
        return [[3] for _ in range(output[0].shape[0])]


def _module(recognizer_class: type[BiLSTMCTC], data) -> MetaSpeechModule:
    torch.manual_seed(0)
    module = MetaSpeechModule(recognizer_class(**TINY), MAML(inner_steps=1, inner_lr=0.5), scope=["head"])
    module.use_front_end(data.tokenizer, data.feature_config)
    return module


def test_the_module_uses_the_recognizers_loss_and_decoder(tiny_data) -> None:
    data = tiny_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    plain, doubled = _module(BiLSTMCTC, data), _module(DoubledCTC, data)
    fast = plain.learner.expand(plain.learner.init_weights(), batch.query.num_tasks)
    torch.testing.assert_close(doubled.evaluation_loss(batch.query, fast), 2.0 * plain.evaluation_loss(batch.query, fast))
    assert doubled.learner.loss == doubled.model.loss
    symbol = data.tokenizer.decode([3])
    assert doubled.transcribe(batch.query) == [[symbol] * batch.query.examples_per_task] * batch.query.num_tasks
    outer = doubled.algorithm.outer_loss(doubled.learner, batch)  # second order: the differentiable CTC, doubled
    outer.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in doubled.model.parameters() if p.grad is not None)


def test_a_recognizer_without_a_loss_or_decoder_says_so() -> None:
    bare = Recognizer()
    with pytest.raises(NotImplementedError, match="training loss"):
        bare.loss((), (), differentiable=False)
    with pytest.raises(NotImplementedError, match="decoder"):
        bare.decode(())


class _Headless(Recognizer):
    """Breaks the contract: no input_dim argument, no head stage, a parameter outside the stages, no decoder."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.stages = torch.nn.ModuleDict({"output": torch.nn.Linear(4, vocab_size)})
        self.scale = torch.nn.Parameter(torch.ones(1))

    def loss(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        return output[0].sum(-1)


def test_a_recognizer_that_breaks_the_contract_gets_one_line_naming_what_is_missing() -> None:
    from metaspeech.models.recognizer import RecognizerContractError

    with pytest.raises(RecognizerContractError) as error:
        MetaSpeechModule(_Headless(vocab_size=5), MAML(inner_steps=1), scope=["all"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("model.recognizer _Headless lacks")
    for part in ("constructor argument 'input_dim'", "a 'head' stage (has ['output'])", "['scale']", "a decode() method"):
        assert part in message, message
    with pytest.raises(RecognizerContractError, match="torch.nn|is not a metaspeech.models.Recognizer"):
        MetaSpeechModule(torch.nn.Linear(2, 2), MAML(inner_steps=1))
