"""Random-number helpers every layer may use: OS-entropy seeds and per-device generators (never
the global RNG)."""

from __future__ import annotations

import os

import torch


def entropy_seed() -> int:
    """A 63-bit seed drawn from the operating system's entropy pool (never the global RNG)."""
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
