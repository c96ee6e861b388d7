"""Reading Merkle hashes out of a store for proofs and for rebuilding the frontier."""

from __future__ import annotations

from habitus.errors import IntegrityError
from habitus.ledger._merkle import STORED_LEVEL, Frontier, frontier_from, hash_children, subtree_root
from habitus.storage._abstract import LedgerStore

__all__ = ["StoreNodes", "rebuild_frontier"]


class StoreNodes:
    """A :class:`~habitus.ledger._merkle.NodeSource` over a store, caching what it reads."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._blocks: dict[int, list[bytes]] = {}

    def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf hashes ``[start, end)``, read a block of ``2**STORED_LEVEL`` at a time."""
        out: list[bytes] = []
        width = 1 << STORED_LEVEL
        index = start
        while index < end:
            block = index >> STORED_LEVEL
            cached = self._blocks.get(block)
            if cached is None:
                cached = self._store.leaves(block * width, (block + 1) * width)
                self._blocks[block] = cached
            lo = index - block * width
            hi = min(end - block * width, width)
            if len(cached) < hi:
                raise IntegrityError(f"leaf {block * width + len(cached)} is missing from the store")
            out.extend(cached[lo:hi])
            index = block * width + hi
        return out

    def node(self, level: int, index: int) -> bytes:
        """A stored perfect-subtree root."""
        value = self._store.node(level, index)
        if value is None:
            raise IntegrityError(f"Merkle node at level {level}, index {index} is missing from the store")
        return value

    def root(self, size: int) -> bytes:
        """Root of the tree over the first ``size`` leaves."""
        return subtree_root(self, 0, size)


def rebuild_frontier(store: LedgerStore, size: int) -> Frontier:
    """Frontier of the stored tree of ``size`` leaves, from stored nodes and the last leaves."""
    nodes = StoreNodes(store)

    def perfect(level: int, index: int) -> bytes:
        if level >= STORED_LEVEL:
            return nodes.node(level, index)
        layer = nodes.leaves(index << level, (index + 1) << level)
        while len(layer) > 1:
            layer = [hash_children(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
        return layer[0]

    return frontier_from(size, perfect)
