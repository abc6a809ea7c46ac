"""The oauth3/v2 Merkle tree: RFC 6962 roots, every leaf's path verifies, every bit flip fails."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauth3.attestation.merkle import (
    MerkleError,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_path,
)


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) as RFC 6962 §2.1 writes it: split at the largest power of two below n."""
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    left, right = rfc6962_root(leaves[:k]), rfc6962_root(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def nonces(count: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def test_known_shapes_and_rfc6962_roots() -> None:
    a, b, c = nonces(3)
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    # an odd node is carried up, never paired with a copy of itself
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    for count in range(1, 70):
        assert merkle_root(nonces(count)) == rfc6962_root(nonces(count)), count


def test_every_leaf_of_every_batch_size_up_to_600_verifies() -> None:
    leaves = nonces(600)
    for size in range(1, 601):
        tree = MerkleTree(leaves[:size])
        for index in range(size):
            assert root_from_path(leaves[index], index, size, tree.path(index)) == tree.root


@pytest.mark.parametrize("size", [1000, 1023, 1024, 1025, 2048, 3001, 4096])
def test_every_leaf_of_a_batch_verifies(size: int) -> None:
    leaves = nonces(size)
    tree = MerkleTree(leaves)
    assert tree.root == rfc6962_root(leaves)
    for index, leaf in enumerate(leaves):
        assert root_from_path(leaf, index, size, tree.path(index)) == tree.root


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 3000), data=st.data())
def test_any_leaf_of_any_size_verifies_and_any_bit_flip_fails(
    size: int, data: st.DataObject
) -> None:
    leaves = nonces(size)
    tree = MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    path = tree.path(index)
    assert root_from_path(leaves[index], index, size, path) == tree.root
    # one bit of the root
    bit = data.draw(st.integers(0, 255), label="root bit")
    assert root_from_path(leaves[index], index, size, path) != flip(tree.root, bit)
    # one bit of any path hash
    if path:
        which = data.draw(st.integers(0, len(path) - 1), label="path hash")
        bit = data.draw(st.integers(0, 255), label="path bit")
        broken = [*path[:which], flip(path[which], bit), *path[which + 1 :]]
        assert root_from_path(leaves[index], index, size, broken) != tree.root
    # one bit of the index (a wrong position either fails to fit or leads elsewhere)
    bit = data.draw(st.integers(0, max(0, size.bit_length() - 1)), label="index bit")
    other = index ^ (1 << bit)
    with contextlib.suppress(MerkleError):
        assert root_from_path(leaves[index], other, size, path) != tree.root
    # one bit of the nonce
    bit = data.draw(st.integers(0, 255), label="nonce bit")
    assert root_from_path(flip(leaves[index], bit), index, size, path) != tree.root


def test_malformed_proofs_fail() -> None:
    leaves = nonces(6)
    tree = MerkleTree(leaves)
    path = tree.path(2)
    assert len(path) == 3
    with pytest.raises(MerkleError, match="outside a tree"):
        root_from_path(leaves[2], 6, 6, path)
    with pytest.raises(MerkleError, match="longer than"):
        root_from_path(leaves[2], 2, 6, [*path, path[0]])
    with pytest.raises(MerkleError, match="shorter than"):
        root_from_path(leaves[2], 2, 6, path[:-1])
    with pytest.raises(MerkleError, match="32 bytes"):
        root_from_path(leaves[2], 2, 6, [path[0][:31], *path[1:]])
    # a batch size that does not fit the path
    with pytest.raises(MerkleError):
        root_from_path(leaves[2], 2, 3, path)
    # swapped siblings
    swapped = [path[1], path[0], path[2]]
    assert root_from_path(leaves[2], 2, 6, swapped) != tree.root
    # an inner node offered as a leaf of a smaller tree: the leaf prefix makes it another hash
    four = MerkleTree(leaves[:4])
    left = node_hash(leaf_hash(leaves[0]), leaf_hash(leaves[1]))
    right = node_hash(leaf_hash(leaves[2]), leaf_hash(leaves[3]))
    assert four.root == node_hash(left, right)
    assert root_from_path(left, 0, 2, [right]) != four.root
    with pytest.raises(MerkleError, match="at least one leaf"):
        MerkleTree([])
