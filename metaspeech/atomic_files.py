"""Crash-safe files: a write that is complete or absent, never half-written.

Why a module of its own: checkpoints (:mod:`metaspeech.training.checkpoint_io`), saved speaker
adaptations and the feature cache (:mod:`metaspeech.speech.features`) are all written through
:func:`save_atomically`, and the feature cache sits in a layer below the training glue.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from pathlib import Path
from typing import Any

import torch

TEMP_SUFFIX = ".tmp"


def temporary_name(path: str | Path) -> Path:
    """A fresh hidden name next to ``path`` for writing before the rename: ``.<name>.<random>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def save_atomically(obj: Any, path: str | Path, fsync: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is always complete: the old file or the new one.

    The data goes to a temporary file in the same folder (same file system, so the final
    ``os.replace`` is an atomic rename), is flushed and ``fsync``\\ ed, then renamed over
    ``path``; the folder is ``fsync``\\ ed so the rename survives a power loss. On any error
    the temporary file is removed and ``path`` is untouched. A process killed mid-write
    leaves only a hidden ``.<name>.*.tmp`` file behind, never a damaged ``path``; the next save of
    ``path`` removes it (:func:`remove_abandoned_temporaries`). If
    ``path`` is a symlink, the link is replaced, not the file it points to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    # os.open with 0o666 applies the umask: the file gets the permissions a plain open() would give.
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_directory(path.parent)
    remove_abandoned_temporaries(path)
    return path


def remove_abandoned_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of ``path`` left by writers that were killed mid-save; returns them.

    A temporary name carries its writer's process id (:func:`temporary_name`); a file whose writer
    no longer runs on this machine can never be completed, so it only takes disk space.
    """
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"):
        writer = candidate.name[len(path.name) + 2:].split("-", 1)[0]
        if writer.isdigit() and not _process_runs(int(writer)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else (or the platform cannot tell): leave its file alone
        return True
    return True


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
