"""notebooks/quickstart.ipynb runs top to bottom (small settings) and is stored without outputs.

The notebook is executed with nbclient in a kernel that is this test's own
interpreter: a kernelspec written to a temporary ``JUPYTER_PATH`` names
``sys.executable`` explicitly, so no kernelspec installed elsewhere on the machine
can substitute another Python. Its working directory is ``tmp_path``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "metaspeech-test-python"

# A few seconds of work: the session's tiny corpus, a tiny model, four outer steps, a 2 x 2 protocol.
SMALL_SETTINGS = """
PRESET = "tiny"
ROOT = "run"
CORPUS_ROOT = {corpus_root!r}
MAX_STEPS = 4
VAL_EVERY = 2
MODEL = dict(d_model=48, hidden_dim=48, num_layers=2, adapter_dim=8, dropout=0.0)
INNER_STEPS = 1
TEST_SHOTS = [1, 3]
TEST_STEPS = [0, 2]
ADAPT_SHOTS = 3
ADAPT_STEPS = 2
LOGGER = "csv"
import sys
print("kernel python:", sys.executable)
"""


def test_quickstart_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs before committing"
    (settings,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert nb.cells.index(settings) <= 2, "the settings cell comes first"
    assert all(name in settings.source for name in ("PRESET", "MAX_STEPS", "ROOT"))
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code), "every step is explained"


@pytest.fixture
def own_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running this interpreter; Jupyter/IPython state kept under ``tmp_path``."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "metaspeech test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for name, folder in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython"),
                         ("MPLCONFIGDIR", "matplotlib")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders figures as PNG outputs
    return KERNEL_NAME


def test_quickstart_runs_and_produces_the_table_the_curve_and_a_transcript(own_kernel: str, corpus_root: Path, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    settings = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(settings + 1, nbformat.v4.new_code_cell(SMALL_SETTINGS.format(corpus_root=str(corpus_root))))
    work = tmp_path / "work"
    work.mkdir()
    NotebookClient(nb, kernel_name=own_kernel, timeout=600, resources={"metadata": {"path": str(work)}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert f"kernel python: {sys.executable}" in text
    assert "\x1b[" not in text, "terminal escape codes in the notebook's output"
    assert "adaptation on held-out speakers" in text and "rel. WER red." in text, "trainer.test printed no table"
    lines = text.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("WER table"))) + 1
    assert lines[header].split() == ["k", "s=0", "s=2"]
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["1", "3"]
    assert "adapted" in text and "transcript:" in text
    assert images, "the adaptation curve was not displayed"

    run = work / "run"
    assert (run / "wer_vs_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((run / "results" / "adaptation_fomaml.json").read_text())
    assert {(c["shots"], c["steps"]) for c in result["conditions"]} == {(1, 0), (1, 2), (3, 0), (3, 2)}
    assert (run / "fomaml.ckpt").is_file() and list(run.glob("*.pt")), "no checkpoint or speaker adaptation saved"
    assert (run / "logs").is_dir(), "the CSV logger wrote nothing"
