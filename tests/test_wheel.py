"""The built wheel carries everything the advertised commands need: ``metaspeech demo`` runs from a fresh venv
with the wheel installed, in a folder outside the checkout (no network: the venv borrows this one's dependencies)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_outside_the_checkout(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("metaspeech-*.whl")
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "dependencies.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")  # torch, lightning, ...
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METASPEECH_DEBUG")} | {"WANDB_MODE": "disabled"}
    probe = "import metaspeech.training.module as m; print(m.__file__)"
    where = subprocess.check_output([str(python), "-c", probe], text=True, cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(site), where  # the wheel's copy, not the checkout

    demo = subprocess.run([str(tmp_path / "venv" / "bin" / "metaspeech"), "demo", "--preset", "tiny", "--base_steps", "5",
                           "--steps", "2"], capture_output=True, text=True, cwd=work, env=env, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (work / "results" / "demo" / "comparison.json").is_file()
    assert "FOMAML" in demo.stdout or "fomaml" in demo.stdout
