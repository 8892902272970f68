"""Seeding, RNG snapshots and seed-derived data orders.

Data orders use their own ``torch.Generator`` seeded from (seed, stream, cycle), never the global
RNG, so the order of epoch 3 does not depend on how many random numbers dropout drew before it.
That is what lets a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch

# Streams of independent shuffles drawn from one seed (the alignment stage draws its safe and
# harmful batches independently, as the released code's two samplers do).
STREAM_TRAIN = 0
STREAM_HARMFUL = 1
STREAM_GUIDE = 2
STREAM_RETAIN = 3  # Antibody's benign retain examples at theta' (AlignConfig.perturbed_retain)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's RNGs (all devices) for one run."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step may draw from (dropout, Python ``random``)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    # A checkpoint round-trip turns the inner tuple into a list; random.setstate wants tuples.
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def permutation(n: int, *, seed: int, stream: int, cycle: int) -> list[int]:
    """A shuffle of ``range(n)`` determined by (seed, stream, cycle) alone."""
    generator = torch.Generator().manual_seed(_mix(seed, stream, cycle))
    return torch.randperm(n, generator=generator).tolist()


def _mix(seed: int, stream: int, cycle: int) -> int:
    # A hash, not arithmetic, so that no two (seed, stream, cycle) triples share a generator seed.
    digest = hashlib.sha256(f"{seed}:{stream}:{cycle}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
