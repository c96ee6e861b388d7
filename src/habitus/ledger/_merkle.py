"""RFC 6962 Merkle tree hashing, incremental appends and proofs.

The tree is the one of RFC 6962 §2.1 (and RFC 9162 §2.1): leaves are hashed as
``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || left || right)``,
and the empty tree's root is ``SHA-256()``.

Appends use a *frontier*: the roots of the perfect subtrees that make up the
tree from the left, one per set bit of the tree size. Appending a leaf merges
at most ``log2(n)`` of them, so an append costs O(log n) and on average one
interior hash. Interior nodes of perfect subtrees at or above
:data:`STORED_LEVEL` are handed to the store so that proofs for any leaf need
a bounded number of reads; lower levels are recomputed from leaf hashes.

Proof generation reads hashes through :class:`NodeSource`, so it is the same
code whatever the storage; proof verification needs nothing but hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "EMPTY_ROOT",
    "STORED_LEVEL",
    "Frontier",
    "NodeSource",
    "consistency_proof",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "root_of",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256

EMPTY_ROOT: bytes = _sha256(b"").digest()
"""Root hash of the tree with no leaves (RFC 6962: the hash of the empty string)."""

STORED_LEVEL = 6
"""Perfect subtrees of ``2**STORED_LEVEL`` leaves and larger are persisted."""


def hash_leaf(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash of ``data``."""
    return _sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior-node hash of two child hashes."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The right edge of a growing tree: one perfect-subtree root per set bit of its size.

    ``append`` returns the interior nodes it completed at or above
    :data:`STORED_LEVEL` as ``(level, index, hash)``, where ``index`` counts
    subtrees of that level from the left.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, stack: Sequence[tuple[int, bytes]] = ()) -> None:
        self.size = size
        self._stack: list[tuple[int, bytes]] = list(stack)

    def append(self, leaf: bytes, completed: list[tuple[int, int, bytes]]) -> None:
        """Add one leaf hash; append newly completed storable nodes to ``completed``."""
        stack = self._stack
        level = 0
        node = leaf
        size = self.size + 1
        while stack and stack[-1][0] == level:
            node = _sha256(b"\x01" + stack.pop()[1] + node).digest()
            level += 1
            if level >= STORED_LEVEL:
                completed.append((level, (size >> level) - 1, node))
        stack.append((level, node))
        self.size = size

    def root(self) -> bytes:
        """Return the root hash of the tree as it stands."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        node = stack[-1][1]
        for _, left in reversed(stack[:-1]):
            node = _sha256(b"\x01" + left + node).digest()
        return node

    def stack(self) -> list[tuple[int, bytes]]:
        """Return the perfect-subtree roots, largest (leftmost) first."""
        return list(self._stack)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """Root hash of a tree over the given leaf hashes (built incrementally)."""
    frontier = Frontier()
    sink: list[tuple[int, int, bytes]] = []
    for leaf in leaves:
        frontier.append(leaf, sink)
        sink.clear()
    return frontier.root()


class NodeSource(Protocol):
    """Where proof generation reads hashes from."""

    def leaves(self, start: int, end: int) -> Sequence[bytes]:
        """Leaf hashes of leaves ``start`` (inclusive) to ``end`` (exclusive)."""
        ...

    def node(self, level: int, index: int) -> bytes:
        """Root of the perfect subtree at ``level`` (``>= STORED_LEVEL``), ``index``-th from the left."""
        ...


def _perfect_root(source: NodeSource, level: int, index: int) -> bytes:
    if level >= STORED_LEVEL:
        return source.node(level, index)
    start = index << level
    nodes = list(source.leaves(start, start + (1 << level)))
    while len(nodes) > 1:
        nodes = [hash_children(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
    return nodes[0]


def subtree_root(source: NodeSource, start: int, end: int) -> bytes:
    """Root of the subtree over leaves ``[start, end)``, as RFC 6962's MTH defines it.

    ``start`` must be a multiple of the largest power of two not above
    ``end - start`` rounded up, which is what the RFC's recursion produces.
    """
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return _perfect_root(source, level, start >> level)
    k = _split(n)
    return hash_children(subtree_root(source, start, start + k), subtree_root(source, start + k, end))


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """Audit path (RFC 6962 §2.1.1) for leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index!r} is outside a tree of size {size!r}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(subtree_root(source, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(source, start, start + k))
            start += k
            m -= k
    path.reverse()
    return path


def consistency_proof(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof (RFC 6962 §2.1.2) from a tree of ``old_size`` to one of ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove consistency from size {old_size!r} to size {new_size!r}")
    if old_size == 0 or old_size == new_size:
        return []
    path: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                path.append(subtree_root(source, start, end))
            break
        k = _split(n)
        if m <= k:
            path.append(subtree_root(source, start + k, end))
            end = start + k
        else:
            path.append(subtree_root(source, start, start + k))
            start += k
            m -= k
            complete = False
    path.reverse()
    return path


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Check an audit path (RFC 9162 §2.1.3.2). Needs nothing but hashes."""
    if not 0 <= index < size:
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = hash_children(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = hash_children(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Check a consistency proof (RFC 9162 §2.1.4.2). Needs nothing but hashes."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


def frontier_from(size: int, perfect: Callable[[int, int], bytes]) -> Frontier:
    """Rebuild a frontier for a tree of ``size`` leaves from perfect-subtree roots.

    ``perfect(level, index)`` returns the root of the given perfect subtree.
    """
    stack: list[tuple[int, bytes]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            stack.append((level, perfect(level, start >> level)))
            start += 1 << level
    return Frontier(size, stack)
