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


def seed_from_key(key: str) -> int:
    """A 63-bit seed derived from ``key`` (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)


@contextmanager
def seeded_rng(key: str, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator (and ``device``'s, when it is an accelerator) from ``key``; restore both after."""
    seed = seed_from_key(key)
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
