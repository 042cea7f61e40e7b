"""Configuration errors a person can read: the offending key, its value and the closest valid one.

Why: jsonargparse reports a typo'd key, an unknown ``class_path`` or a value of the wrong type as
~65 lines of usage text followed by a nested explanation. :func:`readable_config_error` turns that
explanation into one line (``model.algorithm.init_args.inner_stpes=3 is not an option of
metaspeech.algorithms.MAML; did you mean inner_steps?``); the ``metaspeech`` parser
(:class:`~metaspeech.cli.lightning_cli.MetaSpeechArgumentParser`) raises it as a
:class:`~metaspeech.errors.ConfigError`, and the usage is printed only with ``--help``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Iterable

CLASS_PACKAGES = ("metaspeech.models", "metaspeech.algorithms", "metaspeech.datamodules", "metaspeech.training.loggers",
                  "metaspeech.training.checkpoint_io", "metaspeech.evaluation.selection", "lightning.pytorch.callbacks",
                  "lightning.pytorch.loggers")
"""Where the classes a config names usually live: the candidates for an unknown ``class_path``."""


def readable_config_error(message: str, command_line: list[str], options: Iterable[str]) -> str:
    """One line for jsonargparse's error ``message``.

    ``command_line`` gives the value of an offending key where it was typed there; ``options`` are the
    parser's option strings (``--trainer.max_steps``, ...), the candidates for an unrecognized argument.
    """
    if message.startswith("unrecognized arguments:"):
        return _unrecognized(message, list(options))
    key = _key_path(message)
    unknown_option = re.search(r"Option '([^']+)' is not accepted", message)
    class_paths = re.findall(r"class_path '([^']+)'", message)
    if unknown_option and class_paths:
        return _unknown_init_arg(key, unknown_option.group(1), class_paths[-1], command_line)
    missing_class = re.search(r"Expected a path but (\S+) either not accessible", message)
    if missing_class:
        return _unknown_class(key, missing_class.group(1))
    if class_paths and re.search(r"No module named|has no attribute", message):
        return _unknown_class(key, class_paths[-1])
    given = re.search(r"(?:Given value|Got value): (.*)$", message, re.MULTILINE)
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    if given and expected:
        return f"{key}={given.group(1)} is not a valid value: expected {' or '.join(_type_name(t) for t in expected)}"
    last = [re.sub(r'^Parser key "[^"]+":\s*', "", line.strip(" -")) for line in message.splitlines() if line.strip()]
    return f"{key}: {last[-1]}" if key and last else message.replace("\n", " ")


def _key_path(message: str) -> str:
    """The dotted key of a nested jsonargparse message: ``model.algorithm`` + ``inner_lr`` -> ``model.algorithm.init_args.inner_lr``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    return ".init_args.".join(keys)


def _unrecognized(message: str, options: list[str]) -> str:
    arguments = [a for a in message.split(":", 1)[1].split() if a.startswith("-")]
    if not arguments:
        return message
    words = message.split(":", 1)[1].split()
    name, _, value = arguments[0].partition("=")
    following = words.index(arguments[0]) + 1
    if not value and following < len(words) and not words[following].startswith("-"):
        value = words[following]
    suggestion = _closest(name, options)
    shown = f"{name}={value}" if value else name
    return f"unknown option {shown}" + (f"; did you mean {suggestion}?" if suggestion else "")


def _unknown_init_arg(key: str, option: str, class_path: str, command_line: list[str]) -> str:
    full_key = f"{key}.init_args.{option}" if key else option
    value = _typed_value(command_line, option)
    accepted = _parameters(class_path)
    suggestion = _closest(option, accepted)
    text = f"{full_key}{'=' + value if value is not None else ''} is not an option of {class_path}"
    if suggestion:
        return f"{text}; did you mean {suggestion}?"
    return f"{text}; it takes {', '.join(accepted)}" if accepted else text


def _unknown_class(key: str, name: str) -> str:
    known = _known_classes()
    by_lower = {k.lower(): k for k in known}
    suggestion = _closest(name.rsplit(".", 1)[-1].lower(), by_lower, cutoff=0.5)
    text = f"{key}={name}: no such class"
    if suggestion:
        return f"{text}; did you mean {known[by_lower[suggestion]]}?"
    return f"{text}; give an importable class path (package.module.Class)"


def _typed_value(command_line: list[str], option: str) -> str | None:
    """The value given to ``--...<option>`` on the command line (``--a.b=v`` or ``--a.b v``); None if not typed there."""
    for index, argument in enumerate(command_line):
        name, has_value, value = argument.partition("=")
        if name.startswith("--") and name.rsplit(".", 1)[-1] == option:
            if has_value:
                return value
            return command_line[index + 1] if index + 1 < len(command_line) else ""
    return None


def _parameters(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path``, through ``**kwargs`` to its bases as jsonargparse reads them."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for base in inspect.getmro(cls):
        try:
            parameters = list(inspect.signature(base.__init__).parameters.values())[1:]
        except (ValueError, TypeError):
            break
        names += [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _known_classes() -> dict[str, str]:
    """Class name -> import path of every public class in :data:`CLASS_PACKAGES`."""
    known: dict[str, str] = {}
    for package in CLASS_PACKAGES:
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        for name in getattr(module, "__all__", None) or list(vars(module)):
            value = getattr(module, name, None)
            if inspect.isclass(value) and not name.startswith("_"):
                known.setdefault(name, f"{package}.{name}")
    return known


def _closest(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def _type_name(name: str) -> str:
    return {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string",
            "NoneType": "null", "Sequence": "a list"}.get(name.rsplit(".", 1)[-1], name)
