"""Rebuilding components from checkpoints without pickled code; checking configured values.

Models and algorithms remember how they were constructed (import path and
keyword arguments). A checkpoint stores that record next to the weights, so
``metaspeech adapt`` / ``transcribe`` rebuild the exact model with
``torch.load(weights_only=True)``: no code from a file is ever unpickled.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Iterable

from metaspeech.errors import ConfigError, MetaSpeechError


class RecordsInitArgs:
    """Mixin: instances keep ``init_config = {"class_path", "init_args"}`` of their construction."""

    init_config: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        init_args = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("args", "kwargs")}
        object.__setattr__(obj, "init_config", {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args})
        return obj


class UnknownClassError(MetaSpeechError, ImportError):
    """A configured ``class_path`` cannot be imported."""


def import_class(class_path: str) -> type:
    """Import ``package.module.Class``; a clear error names the path and what to check."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UnknownClassError(
            f"cannot import class_path {class_path!r} ({err}); give the full import path, "
            "e.g. metaspeech.algorithms.MAML or mypackage.module.MyAlgorithm, and check it is installed"
        ) from err


def instantiate(config: dict[str, Any]) -> Any:
    """Build an object from ``{"class_path": ..., "init_args": {...}}``."""
    return import_class(config["class_path"])(**config.get("init_args", {}))


def check_positive(key: str, value: float | Iterable[float] | None, fix: str = "") -> None:
    """Refuse a learning rate that is not a finite number > 0, naming the config ``key``.

    Why at construction: a negative or NaN rate trains silently to nothing, or skips every step.
    A list (per-step rates) may hold zeros, a step that does not move, but not only zeros.
    None (unset) passes.
    """
    values = _values(value)
    finite = all(isinstance(item, (int, float)) and math.isfinite(item) and item >= 0 for item in values)
    if values and not (finite and any(item > 0 for item in values)):
        rule = "must be finite numbers >= 0, not all 0" if isinstance(value, (list, tuple)) else "must be a finite number > 0"
        raise ConfigError(f"{key}={_shown(value)}: {rule}{'; ' + fix if fix else ''}")


def check_at_least(key: str, value: int | Iterable[int] | None, minimum: int) -> None:
    """Refuse a count (steps, shots) below ``minimum``, naming the config ``key``; None (unset) passes."""
    for item in _values(value):
        if not (isinstance(item, int) and item >= minimum):
            raise ConfigError(f"{key}={_shown(value)}: must be an integer >= {minimum}")


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, (list, tuple)) else str(value)
