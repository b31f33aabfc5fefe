"""Seed derivation: independent streams from a base seed and a tuple of names."""

from __future__ import annotations

import hashlib


def derive_seed(base: int, *names: object) -> int:
    """A 63-bit seed derived from ``base`` and ``names`` (stable across runs and machines)."""
    text = "/".join([str(base), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)
