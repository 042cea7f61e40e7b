"""Mozilla Common Voice from its own layout; accents make natural tasks.

::

    cv-corpus-<version>/en/
      validated.tsv, train.tsv, dev.tsv, test.tsv, ...   (tab-separated, header row)
      clips/common_voice_en_<n>.mp3

The speaker is the anonymous ``client_id``. The accent label comes from the
``accents`` column (``accent`` in releases before v8); an empty cell is
``unknown``. The TSV name is kept as the ``subset`` label, not ``split``: the
data module reads ``split`` as its meta-train/val/test assignment, and loading
one TSV should not put every speaker on one side.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from metaspeech.datamodules.corpora._common import (
    CorpusLayoutError,
    normalize_gender,
    probe_durations,
    require_dir,
    require_rows,
)
from metaspeech.datamodules.manifest import Utterance

LAYOUT = "Common Voice layout root/<split>.tsv (columns client_id, path, sentence, ...) and root/clips/<path>"
REQUIRED_COLUMNS = ("client_id", "path", "sentence")


def load_common_voice(root: str | Path, split: str = "validated") -> list[Utterance]:
    """Utterances listed in ``root/<split>.tsv`` with accent, gender, age and locale labels."""
    root = require_dir(root, "Common Voice", LAYOUT)
    table = root / f"{split}.tsv"
    if not table.is_file():
        available = sorted(path.stem for path in root.glob("*.tsv"))
        raise CorpusLayoutError(f"{table} does not exist (available splits: {available or 'none'}): expected {LAYOUT}")
    records = _read_tsv(table)
    audio = [root / "clips" / record["path"] for record in records]
    durations = probe_durations("Common Voice", audio)
    rows = [
        Utterance(str(path), record["sentence"], record["client_id"], duration, _labels(record, split))
        for record, path, duration in zip(records, audio, durations)
    ]
    return require_rows(rows, "Common Voice", root, LAYOUT)


def _read_tsv(table: Path) -> list[dict[str, str]]:
    """Rows as dicts. ``QUOTE_NONE``: sentences contain bare quote characters that are text."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with table.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CorpusLayoutError(f"{table} has no column(s) {missing} in its header: expected {LAYOUT}")
        return [{key: (value or "") for key, value in record.items() if key is not None} for record in reader]


def _labels(record: dict[str, str], split: str) -> dict[str, object]:
    accent = record.get("accents", record.get("accent", "")).strip()
    labels: dict[str, object] = {
        "id": Path(record["path"]).stem,
        "accent": accent or "unknown",
        "gender": normalize_gender(record.get("gender", "")),
        "age": record.get("age", "").strip() or "unknown",
        "subset": split,
    }
    if record.get("locale"):
        labels["locale"] = record["locale"].strip()
    return labels
