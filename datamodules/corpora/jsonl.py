"""Any JSONL manifest (see :mod:`metaspeech.datamodules.manifest`) as a corpus.

Compared with :func:`metaspeech.datamodules.manifest.read_manifest`, a missing or empty
manifest is a :class:`CorpusLayoutError` like a missing corpus root, and audio
files that do not exist are counted in one warning up front (the validation
step then skips them or stops on them, per ``on_bad_input``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from metaspeech.datamodules.corpora._common import CorpusLayoutError, require_rows
from metaspeech.datamodules.manifest import Utterance, read_manifest

LAYOUT = "a JSONL file with one {audio_filepath, text, speaker, duration, ...} object per line"


def load_jsonl_manifest(path: str | Path) -> list[Utterance]:
    """Rows of the manifest, audio paths resolved against its folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise CorpusLayoutError(f"manifest {path} does not exist or is not a file: expected {LAYOUT}")
    rows = read_manifest(path)
    missing = [row.audio_filepath for row in rows if not Path(row.audio_filepath).is_file()]
    if missing:
        warnings.warn(
            f"manifest {path}: {len(missing)} of {len(rows)} audio file(s) do not exist (first: {missing[0]}); "
            f"the validation step skips them (on_bad_input='skip') or stops on them (on_bad_input='raise')",
            stacklevel=2,
        )
    return require_rows(rows, "manifest", path, LAYOUT)
