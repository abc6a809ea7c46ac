"""Labelled, independent byte strings derived from the simulator's seed: every simulated
measurement and key comes from here, so one seed always boots the same CVM."""

from __future__ import annotations

import hashlib


class Seed:
    """Labelled, independent byte strings derived from the simulator seed."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode()

    def take(self, label: str, size: int) -> bytes:
        """`size` bytes for `label`, independent of every other label's."""
        return hashlib.shake_256(
            b"oauth3-simulator/v1\0" + label.encode() + b"\0" + self._seed
        ).digest(size)
