"""Adaptation scopes: which parameters the inner loop adapts, chosen by configuration.

A scope is a list of entries; each entry is a preset name or a glob pattern on
parameter names (``fnmatch``), and the scope is their union::

    scope: [lhuc]                        # LHUC scales only
    scope: [lin, lhuc, head]             # input transform + LHUC + output layer
    scope: ["stages.enc2.*"]             # a name pattern
    scope: [all]                         # full-model MAML

Presets select by layer type, so they work for every model built from
:mod:`metaspeech.engine.layers`.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Callable

from torch import nn

from metaspeech.engine.layers import LHUC, LinearInputNetwork, ResidualAdapter, TaskLayerNorm
from metaspeech.errors import ConfigError


def _named(model: nn.Module, keep: Callable[[str, nn.Module], bool]) -> list[str]:
    names = []
    for module_name, module in model.named_modules():
        if keep(module_name, module):
            names += [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
    return names


PRESETS: dict[str, Callable[[nn.Module], list[str]]] = {
    "all": lambda m: [n for n, _ in m.named_parameters()],
    "lhuc": lambda m: _named(m, lambda _, mod: isinstance(mod, LHUC)),
    "lin": lambda m: _named(m, lambda _, mod: isinstance(mod, LinearInputNetwork)),
    "adapters": lambda m: [n for n, _ in m.named_parameters() if any(
        n.startswith(prefix + ".") for prefix, mod in m.named_modules() if isinstance(mod, ResidualAdapter))],
    "norm": lambda m: _named(m, lambda _, mod: isinstance(mod, (nn.LayerNorm, TaskLayerNorm, nn.BatchNorm1d))),
    "head": lambda m: [n for n, _ in m.named_parameters() if n.startswith("stages.head.")],
}


class ScopeError(ConfigError):
    """A scope entry matched nothing or named an unknown preset."""


def resolve_scope(model: nn.Module, scope: list[str] | str) -> list[str]:
    """Parameter names selected by ``scope``, in the model's parameter order."""
    entries = [scope] if isinstance(scope, str) else list(scope)
    if not entries:
        raise ScopeError("the adaptation scope is empty; use e.g. scope: [lhuc] or [all]")
    all_names = [n for n, _ in model.named_parameters()]
    selected: set[str] = set()
    for entry in entries:
        if entry in PRESETS:
            matched = PRESETS[entry](model)
        elif any(ch in entry for ch in "*?[") or entry in all_names:
            matched = [n for n in all_names if fnmatch(n, entry)]
        else:
            raise ScopeError(
                f"unknown scope entry {entry!r}: use a preset ({', '.join(PRESETS)}) or a glob on parameter names"
            )
        if not matched:
            raise ScopeError(
                f"scope entry {entry!r} matched no parameter of {type(model).__name__} "
                "(e.g. 'adapters' needs adapter_dim > 0)"
            )
        selected.update(matched)
    return [n for n in all_names if n in selected]
