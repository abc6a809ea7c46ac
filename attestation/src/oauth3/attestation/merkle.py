"""Merkle trees over client nonces, hashed as in RFC 6962 / RFC 9162 (Certificate Transparency).

Leaves are SHA-256(0x00 ‖ nonce) and inner nodes SHA-256(0x01 ‖ left ‖ right), so a node can never
pass for a leaf. A tree of n leaves splits at the largest power of two below n: the left subtree is
full and a last odd node is carried up as it is, never paired with a copy of itself. An inclusion
path lists the sibling hashes from the leaf up; `root_from_path` is RFC 9162 §2.1.3.2, which also
refuses a path whose length does not fit the claimed tree size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import AttestationError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32


class MerkleError(AttestationError):
    """An inclusion proof does not lead to a root, or a tree cannot be built as asked."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash a leaf enters the tree with."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): an inner node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaf hashes first; an odd last node is carried up unpaired."""
    if not leaves:
        raise MerkleError("a Merkle tree needs at least one leaf")
    levels = [[leaf_hash(leaf) for leaf in leaves]]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


class MerkleTree:
    """A tree built once over a batch of leaves, answering each leaf's inclusion path."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self._levels = _levels(leaves)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The root hash (for one leaf: that leaf's hash)."""
        return self._levels[-1][0]

    def path(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf `index` up to the root (carried-up levels add none)."""
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf index {index} is outside a tree of {self.size}")
        siblings = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over `leaves` (see MerkleTree)."""
    return MerkleTree(leaves).root


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that `leaf` at `index` in a tree of `size` leads to along `path`; MerkleError
    when the index is outside the tree, a hash is not 32 bytes, or the path is too short or too
    long for that position (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} is outside a tree of {size}")
    if any(len(sibling) != HASH_SIZE for sibling in path):
        raise MerkleError(f"every path hash must be {HASH_SIZE} bytes")
    position, last = index, size - 1
    current = leaf_hash(leaf)
    for sibling in path:
        if last == 0:
            raise MerkleError(f"the path is longer than a tree of {size} allows at {index}")
        if position % 2 == 1 or position == last:
            current = node_hash(sibling, current)
            if position % 2 == 0:
                while position % 2 == 0 and position != 0:
                    position //= 2
                    last //= 2
        else:
            current = node_hash(current, sibling)
        position //= 2
        last //= 2
    if last != 0:
        raise MerkleError(f"the path is shorter than a tree of {size} needs at {index}")
    return current
