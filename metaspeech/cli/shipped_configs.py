"""The YAML configs shipped with metaspeech, found in a checkout or in the installed package.

Why: ``metaspeech compare`` and ``demo`` default to ``configs/...`` paths. In a checkout these
are the repository's top-level ``configs/`` folder; after ``pip install`` the same files are
package data (``metaspeech.configs``, mapped from that folder in pyproject.toml), so the
commands work from any directory. A path that exists as given always wins, so a user's own
``configs/`` folder is read first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFIX = "configs/"


def shipped_config(path: str) -> str:
    """``path`` if it exists; else, for a ``configs/...`` path, the installed copy of that shipped config;
    else ``path`` unchanged (the config parser then names the missing file)."""
    if Path(path).exists() or not path.startswith(PREFIX):
        return path
    packaged = resources.files("metaspeech.configs").joinpath(path[len(PREFIX):])
    return str(packaged) if packaged.is_file() else path
