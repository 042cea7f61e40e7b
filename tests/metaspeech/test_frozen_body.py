"""Frozen-body meta-training: only the adaptation machinery learns; the recognizer's body stays bit-identical."""

from __future__ import annotations

import pytest
import torch

from metaspeech.algorithms import FOMAML, HyperInit, MetaSGD


@pytest.mark.parametrize("algorithm", [FOMAML(inner_steps=1, inner_lr=0.5), MetaSGD(inner_steps=1, inner_lr=0.3, second_order=False),
                                       HyperInit(inner_steps=1, inner_lr=0.5)], ids=["fomaml", "metasgd", "hyperinit"])
def test_meta_training_with_a_frozen_body_leaves_every_body_parameter_bit_identical(
    tiny_data, tiny_module, tiny_trainer, algorithm
) -> None:
    module = tiny_module(algorithm, freeze_body=True)
    scope = set(module.learner.adapted_names)
    model_before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    plugin_before = {name: p.detach().clone() for name, p in module.algorithm.named_parameters()}
    tiny_trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=tiny_data())
    after = dict(module.model.named_parameters())
    body = [name for name in after if name not in scope]
    assert body and all(torch.equal(after[name], model_before[name]) for name in body)
    assert any(not torch.equal(after[name], model_before[name]) for name in scope)  # the scope's init is meta-learned
    if plugin_before:  # learned rates / the hypernetwork learn too
        assert any(not torch.equal(p, plugin_before[name]) for name, p in module.algorithm.named_parameters())


def test_without_the_flag_the_body_trains(tiny_data, tiny_module, tiny_trainer) -> None:
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5))
    scope = set(module.learner.adapted_names)
    before = {name: p.detach().clone() for name, p in module.model.named_parameters() if name not in scope}
    tiny_trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert any(not torch.equal(p, before[name]) for name, p in module.model.named_parameters() if name in before)


@pytest.mark.parametrize("algorithm", [MetaSGD(inner_steps=1, inner_lr=0.3, second_order=False), HyperInit(inner_steps=1, inner_lr=0.5)],
                         ids=["metasgd", "hyperinit"])
def test_a_frozen_recognizer_keeps_every_recognizer_weight_and_trains_only_the_plugin(
    tiny_data, tiny_module, tiny_trainer, algorithm
) -> None:
    module = tiny_module(algorithm, freeze_recognizer=True)
    model_before = {name: p.detach().clone() for name, p in module.model.named_parameters()}
    plugin_before = {name: p.detach().clone() for name, p in module.algorithm.named_parameters()}
    tiny_trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert all(torch.equal(p, model_before[name]) for name, p in module.model.named_parameters())  # the scope's init too
    assert any(not torch.equal(p, plugin_before[name]) for name, p in module.algorithm.named_parameters())


def test_a_frozen_recognizer_needs_a_plugin_with_meta_parameters(tiny_module) -> None:
    from metaspeech.errors import ConfigError

    with pytest.raises(ConfigError, match="model.freeze_recognizer: FOMAML has no meta-parameters"):
        tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), freeze_recognizer=True)
