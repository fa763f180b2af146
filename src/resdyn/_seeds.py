"""Seeds and named random streams: the ground floor every layer draws its randomness from.

Every random draw in resdyn comes from a stream named by ``(seed, stream)``; streams are
independent by construction (a hash), so adding a stream never shifts another's numbers.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator_for"]


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named random stream of ``seed`` (init, data, minibatch ...).

    Streams are independent by construction (a hash), so adding a new stream never shifts the
    numbers an existing one draws.
    """
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator_for(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for ``(seed, stream)``.

    Draws happen on the CPU and are moved afterwards, so a seed gives the same numbers on every
    device.
    """
    del device  # draws always happen on the CPU; see docstring
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, stream))
    return g
