"""The Merkle tree against RFC 6962's hashing rules and an independent naive implementation."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from habitus.ledger._merkle import (
    EMPTY_ROOT,
    STORED_LEVEL,
    Frontier,
    consistency_proof,
    frontier_from,
    hash_leaf,
    inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# -- an independent, deliberately naive RFC 6962 implementation (straight from §2.1) ----------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over raw leaf *data* (not hashes), recursively, as the RFC writes it."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:]))


def naive_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [naive_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, leaves[:k], complete), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


def naive_consistency(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if m == 0 or m == len(leaves):
        return []
    return naive_subproof(m, leaves, True)


# -- a node source over an in-memory tree, storing only what the store would store ------------


class MemoryNodes:
    """Leaves plus the nodes a Frontier hands to the store (levels >= STORED_LEVEL)."""

    def __init__(self, data: Sequence[bytes]) -> None:
        self.hashes = [hash_leaf(d) for d in data]
        self.stored: dict[tuple[int, int], bytes] = {}
        frontier = Frontier()
        completed: list[tuple[int, int, bytes]] = []
        for leaf in self.hashes:
            frontier.append(leaf, completed)
        for level, index, node in completed:
            self.stored[(level, index)] = node
        self.frontier = frontier

    def leaves(self, start: int, end: int) -> list[bytes]:
        return self.hashes[start:end]

    def node(self, level: int, index: int) -> bytes:
        return self.stored[(level, index)]


def _data(n: int) -> list[bytes]:
    return [b"leaf-%d" % i for i in range(n)]


# -- RFC 6962 hashing rules ----------------------------------------------------------------------


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT


def test_one_leaf_root_is_leaf_hash_with_zero_prefix() -> None:
    assert root_of([hash_leaf(b"")]) == hashlib.sha256(b"\x00").digest()
    assert root_of([hash_leaf(b"abc")]) == hashlib.sha256(b"\x00abc").digest()


def test_two_leaf_root_hashes_children_with_one_prefix() -> None:
    left, right = hash_leaf(b"a"), hash_leaf(b"b")
    assert root_of([left, right]) == hashlib.sha256(b"\x01" + left + right).digest()


def test_known_vector_from_certificate_transparency() -> None:
    # The eight-leaf test tree of the Go and C++ CT implementations (trillian's rfc6962 tests).
    inputs = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ]
    root = root_of([hash_leaf(d) for d in inputs])
    assert root.hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


# -- against the naive implementation -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_incremental_root_matches_naive_at_every_size(n: int) -> None:
    data = _data(n)
    frontier = Frontier()
    sink: list[tuple[int, int, bytes]] = []
    for i, d in enumerate(data):
        frontier.append(hash_leaf(d), sink)
        if i % 37 == 0 or i == n - 1:
            assert frontier.root() == naive_mth(data[: i + 1])
    assert frontier.root() == naive_mth(data)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=260))
def test_every_inclusion_proof_matches_naive_and_verifies(n: int) -> None:
    data = _data(n)
    nodes = MemoryNodes(data)
    root = naive_mth(data)
    for m in range(n):
        proof = inclusion_proof(nodes, m, n)
        assert proof == naive_path(m, data)
        assert verify_inclusion(nodes.hashes[m], m, n, proof, root)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.data())
def test_random_consistency_proofs_match_naive_and_verify(n: int, draw: st.DataObject) -> None:
    data = _data(n)
    nodes = MemoryNodes(data)
    for _ in range(8):
        old = draw.draw(st.integers(min_value=0, max_value=n))
        new = draw.draw(st.integers(min_value=old, max_value=n))
        proof = consistency_proof(nodes, old, new)
        assert proof == naive_consistency(old, data[:new])
        assert verify_consistency(old, new, naive_mth(data[:old]), naive_mth(data[:new]), proof)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=200), st.data())
def test_tampered_proofs_are_rejected(n: int, draw: st.DataObject) -> None:
    data = _data(n)
    nodes = MemoryNodes(data)
    root = naive_mth(data)
    m = draw.draw(st.integers(min_value=0, max_value=n - 1))
    proof = inclusion_proof(nodes, m, n)
    assert not verify_inclusion(hash_leaf(b"forged"), m, n, proof, root)
    if proof:
        i = draw.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_inclusion(nodes.hashes[m], m, n, bad, root)
        assert not verify_inclusion(nodes.hashes[m], m, n, proof[:-1], root)
    old = draw.draw(st.integers(min_value=1, max_value=n - 1))
    cproof = consistency_proof(nodes, old, n)
    forged_old = naive_mth([*data[: old - 1], b"forged"])
    assert not verify_consistency(old, n, forged_old, root, cproof)


def test_frontier_rebuilds_from_perfect_subtrees() -> None:
    data = _data(1000)
    nodes = MemoryNodes(data)

    def perfect(level: int, index: int) -> bytes:
        if level >= STORED_LEVEL:
            return nodes.node(level, index)
        return root_of(nodes.hashes[index << level : (index + 1) << level])

    rebuilt = frontier_from(1000, perfect)
    assert rebuilt.root() == nodes.frontier.root() == naive_mth(data)
    sink: list[tuple[int, int, bytes]] = []
    rebuilt.append(hash_leaf(b"next"), sink)
    assert rebuilt.root() == naive_mth([*data, b"next"])
