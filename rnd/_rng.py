"""Random-number helpers every layer may use: OS-entropy seeds and per-device generators (never
the global RNG)."""

from __future__ import annotations

import os
import threading

import torch

from rnd._checks import check_int
from rnd.errors import InputError


def entropy_seed() -> int:
    """A 63-bit seed drawn from the operating system's entropy pool (never the global RNG)."""
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


def generator_for(device: torch.device, seed: int) -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def own_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """A defense's own generator: `generator` as given, else a CPU one seeded with `seed` (OS
    entropy when None). Giving both is an error."""
    if generator is not None and seed is not None:
        raise InputError("give either generator or seed, not both")
    if generator is not None:
        return generator
    if seed is not None:
        check_int(seed, "seed", minimum=None)
    return generator_for(torch.device("cpu"), entropy_seed() if seed is None else seed)


class DeviceGenerators:
    """A base generator, and one per other device seeded from it on first use (thread-safe), so a
    seeded defense draws reproducibly on any device."""

    def __init__(self, generator: torch.Generator) -> None:
        self.base = generator
        self._lock = threading.Lock()
        self._by_device: dict[torch.device, torch.Generator] = {torch.device(generator.device): generator}

    def get(self, device: torch.device) -> torch.Generator:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        with self._lock:
            g = self._by_device.get(device)
            if g is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self.base).item())
                g = self._by_device[device] = generator_for(device, seed)
            return g
