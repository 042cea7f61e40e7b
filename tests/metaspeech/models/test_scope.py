"""Adaptation scopes: presets, name patterns and clear errors."""

from __future__ import annotations

import pytest

from metaspeech.engine.scope import ScopeError, resolve_scope
from metaspeech.models import BiLSTMCTC


@pytest.fixture
def model() -> BiLSTMCTC:
    return BiLSTMCTC(vocab_size=10, input_dim=20, d_model=16, hidden_dim=8, num_layers=2, adapter_dim=4)


def test_presets_select_the_right_parameters(model: BiLSTMCTC) -> None:
    assert resolve_scope(model, "lhuc") == ["stages.lhuc0.module.scale", "stages.lhuc1.module.scale"]
    assert resolve_scope(model, ["head"]) == ["stages.head.linear.weight", "stages.head.linear.bias"]
    assert resolve_scope(model, "lin") == ["stages.lin.module.weight", "stages.lin.module.bias"]
    assert all(".adapter" in n for n in resolve_scope(model, "adapters")) and len(resolve_scope(model, "adapters")) == 8
    assert resolve_scope(model, "all") == [n for n, _ in model.named_parameters()]


def test_scopes_combine_in_parameter_order_without_duplicates(model: BiLSTMCTC) -> None:
    names = resolve_scope(model, ["head", "lhuc", "lin", "stages.lhuc0.*"])
    assert names == ["stages.lin.module.weight", "stages.lin.module.bias", "stages.lhuc0.module.scale", "stages.lhuc1.module.scale",
                     "stages.head.linear.weight", "stages.head.linear.bias"]


@pytest.mark.parametrize(("scope", "message"), [
    ([], "scope is empty"),
    (["lhcu"], "unknown scope entry 'lhcu'"),
    (["stages.nothing.*"], "matched no parameter"),
])
def test_bad_scopes_are_clear_errors(model: BiLSTMCTC, scope, message: str) -> None:
    with pytest.raises(ScopeError, match=message):
        resolve_scope(model, scope)


def test_adapters_scope_without_adapters_says_how_to_enable_them() -> None:
    with pytest.raises(ScopeError, match="adapter_dim > 0"):
        resolve_scope(BiLSTMCTC(vocab_size=10, input_dim=20, d_model=16, hidden_dim=8, num_layers=1, adapter_dim=0), "adapters")
