"""The graph index (hnswlib) for large memory scopes: see :class:`HNSWIndex` and ADR 0004."""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from habitus.memory._vectors import (
    _CALIBRATION_QUERIES,
    _TARGET_RECALL,
    IndexKind,
    Keys,
    Scores,
    Vectors,
    _as_keys,
    _check_batch,
    _check_k,
    _check_query,
)

__all__ = ["HNSWIndex"]


class HNSWIndex:
    """A hierarchical navigable small-world graph (hnswlib): milliseconds at a million vectors.

    On data like real sentence embeddings an IVF must probe about half its lists to reach
    0.95 recall@10, which at a million vectors is little faster than exact search; a graph
    visits a few thousand vectors instead (ADR 0004). The search breadth ``ef`` is
    calibrated at build, like the IVF's ``nprobe``: raised until exact search agrees on
    :data:`_TARGET_RECALL` of the top 10 for queries made from the stored vectors.

    Removal overwrites the vector in the graph with noise before marking it deleted, so
    the graph keeps no copy of a forgotten memory's embedding. Re-adding a key updates it.
    The graph is guarded by one lock (hnswlib's updates and searches must not overlap).
    """

    kind: IndexKind = "hnsw"

    @staticmethod
    def available() -> bool:
        """Whether hnswlib can be imported."""
        try:
            import hnswlib  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(
        self,
        dim: int,
        keys: npt.ArrayLike = (),
        vectors: npt.ArrayLike = (),
        *,
        m: int = 16,
        ef_construction: int = 80,
        ef: int | None = None,
        seed: int = 0,
    ) -> None:
        import hnswlib

        k, v = _check_batch(keys, np.asarray(vectors, dtype=np.float32).reshape(-1, dim), dim)
        self._dim = dim
        self._lock = threading.Lock()
        self._graph = hnswlib.Index(space="ip", dim=dim)
        self._graph.init_index(
            max_elements=max(1024, int(len(k) * 1.25)), M=m, ef_construction=ef_construction, random_seed=seed
        )
        self._graph.set_num_threads(max(1, os.cpu_count() or 1))
        self._live: set[int] = set()
        self._noise = np.random.default_rng(seed)
        if len(k):
            k, v = _last_copy(k, v)
            self._graph.add_items(v, k)
            self._live.update(k.tolist())
        self._graph.set_num_threads(1)
        self.ef = ef if ef is not None else self._calibrate(k, v)
        self._graph.set_ef(self.ef)

    def _calibrate(self, keys: Keys, vectors: Vectors) -> int:
        """The smallest ``ef`` (doubling from 64) at which the graph finds :data:`_TARGET_RECALL` of the
        exact top 10 for hard queries: each a stored vector blended with a random direction to a
        cosine of 0.6 with it, about how close a real question is to the memory that answers it."""
        if len(keys) < 100:
            return 64
        rng = np.random.default_rng(1)
        take = rng.choice(len(keys), size=min(_CALIBRATION_QUERIES, len(keys)), replace=False)
        noise = rng.normal(size=(len(take), self._dim)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        queries = 0.6 * vectors[take] + 0.8 * noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = [set(keys[np.argpartition(-(vectors @ q), 10)[:10]].tolist()) for q in queries]
        ef = 64
        while True:
            self._graph.set_ef(ef)
            labels, _ = self._graph.knn_query(queries, k=10)
            found = np.mean([len(t & set(row.tolist())) / 10 for t, row in zip(truth, labels, strict=True)])
            if found >= _TARGET_RECALL or ef >= 8192:
                return ef
            ef *= 2

    @property
    def dim(self) -> int:
        """The length of every vector."""
        return self._dim

    def __len__(self) -> int:
        return len(self._live)

    def add(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add or replace ``vectors[i]`` under ``keys[i]`` (the graph grows as needed)."""
        k, v = _check_batch(keys, vectors, self._dim)
        if not len(k):
            return
        k, v = _last_copy(k, v)
        with self._lock:
            needed = self._graph.get_current_count() + len(k)
            if needed > self._graph.get_max_elements():
                self._graph.resize_index(int(needed * 1.5))
            self._graph.add_items(v, k)
            self._live.update(k.tolist())

    def remove(self, keys: Sequence[int] | npt.ArrayLike) -> None:
        """Remove ``keys`` (unknown keys are ignored), scrubbing their vectors from the graph first."""
        k = _as_keys(keys)
        with self._lock:
            gone = [int(x) for x in k.tolist() if int(x) in self._live]
            if not gone:
                return
            noise = self._noise.normal(size=(len(gone), self._dim)).astype(np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            self._graph.add_items(noise, np.asarray(gone, dtype=np.int64))
            for key in gone:
                self._graph.mark_deleted(key)
                self._live.discard(key)

    def search(self, query: npt.ArrayLike, k: int, *, exclude: Collection[int] = ()) -> tuple[Keys, Scores]:
        """The ``k`` best keys by inner product, best first (``exclude`` left out)."""
        q = _check_query(query, self._dim)
        k = _check_k(k)
        with self._lock:
            want = min(len(self._live), k + len(exclude))
            if want == 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if want > self.ef:
                self._graph.set_ef(want)
            try:
                labels, distances = self._graph.knn_query(q.reshape(1, -1), k=want)
            finally:
                if want > self.ef:
                    self._graph.set_ef(self.ef)
        out_k = labels[0].astype(np.int64)
        out_s = (1.0 - distances[0]).astype(np.float32)
        if exclude:
            keep = ~np.isin(out_k, np.fromiter(exclude, dtype=np.int64))
            out_k, out_s = out_k[keep], out_s[keep]
        return out_k[:k], out_s[:k]

    def vectors_of(self, keys: npt.ArrayLike) -> tuple[Keys, Vectors]:
        """The vectors of those of ``keys`` that are live here, in the order given."""
        k = _as_keys(keys)
        with self._lock:
            live = np.asarray([key for key in k.tolist() if key in self._live], dtype=np.int64)
            if not len(live):
                return live, np.zeros((0, self._dim), np.float32)
            vectors = np.asarray(self._graph.get_items(live, return_type="numpy"), dtype=np.float32)
        return live, vectors.reshape(len(live), self._dim)

    def export(self) -> tuple[Keys, Vectors]:
        """A copy of every live key and its vector."""
        with self._lock:
            keys = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
            if not len(keys):
                return keys, np.zeros((0, self._dim), dtype=np.float32)
            vectors = np.asarray(self._graph.get_items(keys), dtype=np.float32)
        return keys, vectors


def _last_copy(keys: Keys, vectors: Vectors) -> tuple[Keys, Vectors]:
    """Drop earlier copies of a key repeated within one batch (the last one wins)."""
    _, last = np.unique(keys[::-1], return_index=True)
    if len(last) == len(keys):
        return keys, vectors
    pick = np.sort(len(keys) - 1 - last)
    return keys[pick], vectors[pick]
