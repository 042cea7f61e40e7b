"""Check that the installed torch and torchaudio load together.

Why: torchaudio's compiled extension is built against one torch release. A
mismatched pair (e.g. torchaudio 2.11.1 next to torch 2.11.0) fails on import with
an undefined-symbol error that names neither version. ``make`` runs this module
right after installing, so a broken pair stops the install at once with both
versions named; ``requirements.lock`` pins a pair that loads.

    python -m metaspeech.cli.environment
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def check_torchaudio() -> str | None:
    """None when torchaudio's transforms load with this torch, else a message naming both versions and the fix."""
    try:
        import torchaudio.compliance.kaldi  # noqa: F401 -- loads the compiled extension
        import torchaudio.functional  # noqa: F401
    except (ImportError, OSError, RuntimeError) as err:
        return (
            f"torchaudio {installed('torchaudio')} does not load with torch {installed('torch')} ({err}); "
            "install the pair pinned in requirements.lock: rm -rf .venv && make install"
        )
    return None


def main() -> int:
    problem = check_torchaudio()
    if problem:
        print(f"metaspeech: broken install: {problem}", file=sys.stderr)
        return 1
    print(f"torch {installed('torch')} and torchaudio {installed('torchaudio')} load together")
    return 0


if __name__ == "__main__":
    sys.exit(main())
