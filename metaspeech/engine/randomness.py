"""Randomness keyed by *what* is computed, not by what ran before it.

A training step's dropout masks come from a generator seeded by a key such as
``(run seed, global step, rank)``, with the global RNG state saved and restored
around the step. Why: Lightning does not checkpoint the global RNG, and data
loading or validation draw from it too, so a resumed run would otherwise see
different masks than the uninterrupted one.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch


def _digest(keys: tuple[object, ...]) -> bytes:
    return hashlib.sha256(":".join(str(key) for key in keys).encode()).digest()


def seed_from_keys(*keys: object) -> int:
    """A 63-bit seed derived from ``keys`` joined by ``:``.

    Python's ``hash`` is salted per process, so a SHA-256 digest is used: every process,
    DataLoader worker and Python version derives the same seed from the same keys.
    """
    return int.from_bytes(_digest(keys)[:8], "little") & ((1 << 63) - 1)


def seeded_generator(*keys: object) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`seed_from_keys`."""
    generator = torch.Generator()
    generator.manual_seed(seed_from_keys(*keys))
    return generator


def unit_interval(*keys: object) -> float:
    """A number in ``[0, 1]`` fixed by ``keys`` (e.g. to assign a speaker to a split by its name)."""
    return int.from_bytes(_digest(keys)[:4], "big") / 0xFFFFFFFF


@contextmanager
def seeded_rng(key: str, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s, when it is an accelerator) from ``key``; restore both after."""
    seed = seed_from_keys(key)
    accelerated = device.type != "cpu"
    devices = [device.index if device.index is not None else 0] if accelerated else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accelerated else "cuda"):
        torch.default_generator.manual_seed(seed)
        if accelerated:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            else:
                torch.get_device_module(device.type).manual_seed(seed)
        yield
