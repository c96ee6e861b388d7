"""In-process vector indexes over memory embeddings: one per partition, exact or IVF.

Embeddings are L2-normalised ``float32`` rows, so a score is a dot product (cosine).
The store keeps them durably (a row per memory, keyed by an ``int64``); the indexes
here are a projection rebuilt from those rows when a partition is first touched.

* :class:`ExactIndex` scores every vector: exact, and the fastest below
  :data:`EXACT_MAX` vectors (measured in ``docs/decisions/0004-vector-index.md``).
* :class:`IVFIndex` is an inverted file: a spherical k-means quantiser of about
  ``sqrt(n)`` centroids, each list's vectors stored contiguously, so probing a list is
  one matrix-vector product over a slice, with no gather. ``nprobe`` is calibrated at
  build against exact search on queries made from the stored vectors, so it fits the
  data it is given rather than a guess about it.
* :class:`VectorSpace` holds one index per partition (a memory scope), loads each
  through a callback the first time it is searched, and moves a partition between
  exact and IVF (and retrains an IVF that has doubled) in a background thread while
  the old index keeps answering.

Both indexes store vectors in growable segments (an exact index is one segment, an
IVF one per list). A removal marks a tombstone in place; a segment is compacted into
fresh arrays once a quarter of it is dead. An add writes past the end that readers
know about, or into fresh arrays when a segment grows. Arrays are never rewritten
under a reader, so a search copies a handful of references under the lock and
computes outside it; a search that starts after ``remove`` returns never sees the
removed keys.

Thread safety: every method of every class here may be called from any thread.
Writes are serialised by a lock; searches hold it only to copy references.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "EXACT_MAX",
    "ExactIndex",
    "HNSWIndex",
    "IVFIndex",
    "IndexKind",
    "Keys",
    "Loader",
    "PartitionStats",
    "Scores",
    "VectorIndex",
    "VectorSpace",
    "Vectors",
    "build_index",
]

Keys: TypeAlias = npt.NDArray[np.int64]
Vectors: TypeAlias = npt.NDArray[np.float32]
Scores: TypeAlias = npt.NDArray[np.float32]
IndexKind: TypeAlias = Literal["exact", "ivf", "hnsw"]
Loader: TypeAlias = Callable[[str], tuple[npt.ArrayLike, npt.ArrayLike]]

EXACT_MAX = 50_000
"""Largest partition kept exact: above it an IVF answers faster at ≥ 0.95 recall@10 (ADR 0004)."""

_T = TypeVar("_T", bound=np.generic)
_CHUNK = 16_384  # rows per matrix product when assigning: bounds the temporary to ~64 MiB at 1,000 lists
_CALIBRATION_QUERIES = 96
_TARGET_RECALL = 0.97  # on synthetic calibration queries: a margin over the 0.95 promised on real ones
_RETRAIN_GROWTH = 2.0


def _as_keys(keys: npt.ArrayLike) -> Keys:
    k = np.asarray(keys)
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    if k.ndim != 1 or k.dtype.kind not in "iu":
        raise ValueError(f"keys must be a 1-D sequence of integers, got shape {k.shape} of {k.dtype}")
    return k.astype(np.int64, copy=False)


def _check_batch(keys: npt.ArrayLike, vectors: npt.ArrayLike, dim: int) -> tuple[Keys, Vectors]:
    """Validated, contiguous ``(keys, vectors)``; of keys repeated in the batch, the last wins."""
    k = _as_keys(keys)
    v = np.asarray(vectors, dtype=np.float32)
    if v.size == 0 and len(k) == 0:
        return k, np.zeros((0, dim), dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {v.shape}")
    if len(k) != len(v):
        raise ValueError(f"got {len(k)} keys but {len(v)} vectors: pass exactly one vector per key")
    # One matrix-vector product instead of an (n, dim) boolean temporary: NaN and infinity propagate.
    bad = ~np.isfinite(v @ np.ones(dim, dtype=np.float32))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the vector for key {int(k[first])!r} has a non-finite value (NaN or infinity)")
    if len(k) > 1:
        last_first, where = np.unique(k[::-1], return_index=True)
        if len(last_first) < len(k):
            keep = np.sort(len(k) - 1 - where)
            k, v = k[keep], v[keep]
    return k, np.ascontiguousarray(v)


def _check_query(query: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    q = np.asarray(query, dtype=np.float32)
    if q.shape != (dim,):
        raise ValueError(f"query must have shape ({dim},), got {q.shape}")
    if not np.isfinite(q).all():
        raise ValueError("query has a non-finite value (NaN or infinity)")
    return q


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class VectorIndex(Protocol):
    """What :class:`VectorSpace` needs of an index; both :class:`ExactIndex` and :class:`IVFIndex` are one."""

    @property
    def dim(self) -> int:
        """The length of every vector."""
        ...

    @property
    def kind(self) -> IndexKind:
        """``"exact"`` or ``"ivf"``."""
        ...

    def __len__(self) -> int:
        """The number of live keys."""
        ...

    def add(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add ``vectors[i]`` under ``keys[i]``; a key already present is replaced."""
        ...

    def remove(self, keys: Sequence[int] | npt.ArrayLike) -> None:
        """Remove ``keys``; unknown keys are ignored. Takes effect for every search that starts after."""
        ...

    def search(self, query: npt.ArrayLike, k: int, *, exclude: Collection[int] = ()) -> tuple[Keys, Scores]:
        """The (up to) ``k`` best keys and their scores, best first, leaving out ``exclude``."""
        ...

    def export(self) -> tuple[Keys, Vectors]:
        """A copy of every live key and its vector (safe to call while others write)."""
        ...


_View: TypeAlias = tuple[Vectors, Keys, "npt.NDArray[np.bool_] | None", int]


class _Segment:
    """A growable block of vectors with tombstones; arrays are replaced, never rewritten under a reader."""

    __slots__ = ("dead", "keys", "live", "n", "vecs")

    def __init__(self, dim: int, keys: Keys | None = None, vecs: Vectors | None = None) -> None:
        self.keys: Keys = np.zeros(0, np.int64) if keys is None else keys
        self.vecs: Vectors = np.zeros((0, dim), np.float32) if vecs is None else vecs
        self.n = len(self.keys)
        self.live: npt.NDArray[np.bool_] = np.ones(self.n, dtype=np.bool_)
        self.dead = 0

    def append(self, keys: Keys, vecs: Vectors) -> None:
        m = len(keys)
        end = self.n + m
        if end > len(self.keys):
            cap = max(end, int(len(self.keys) * 1.5) + 16)
            self.keys = _grown(self.keys, self.n, cap)
            self.vecs = _grown(self.vecs, self.n, cap)
            self.live = _grown(self.live, self.n, cap)
        self.keys[self.n : end] = keys
        self.vecs[self.n : end] = vecs
        self.live[self.n : end] = True
        self.n = end  # published last: a reader that saw the old n never reads the new rows

    def kill(self, keys: Keys) -> None:
        hit = np.flatnonzero(np.isin(self.keys[: self.n], keys) & self.live[: self.n])
        self.live[hit] = False
        self.dead += len(hit)
        if self.dead > max(64, self.n // 4):
            alive = self.live[: self.n]
            self.keys, self.vecs = self.keys[: self.n][alive], self.vecs[: self.n][alive]
            self.n = len(self.keys)
            self.live = np.ones(self.n, dtype=np.bool_)
            self.dead = 0

    def view(self) -> _View:
        return self.vecs, self.keys, (self.live if self.dead else None), self.n


def _grown(a: npt.NDArray[_T], n: int, cap: int) -> npt.NDArray[_T]:
    out = np.empty((cap, *a.shape[1:]), dtype=a.dtype)
    out[:n] = a[:n]
    return out


def _score(views: Sequence[_View], q: npt.NDArray[np.float32], want: int) -> tuple[Keys, Scores]:
    """The ``want`` best live rows across ``views``, best first."""
    parts_s: list[Scores] = []
    parts_k: list[Keys] = []
    for vecs, keys, live, n in views:
        if n == 0:
            continue
        s = vecs[:n] @ q
        if live is not None:
            s[~live[:n]] = -np.inf
        parts_s.append(s)
        parts_k.append(keys[:n])
    if not parts_s:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = parts_s[0] if len(parts_s) == 1 else np.concatenate(parts_s)
    if want < len(scores):
        top = np.argpartition(-scores, want - 1)[:want]
        top = top[np.argsort(-scores[top], kind="stable")]
    else:
        top = np.argsort(-scores, kind="stable")
    top = top[np.isfinite(scores[top])]
    keys = parts_k[0][top] if len(parts_k) == 1 else np.concatenate(parts_k)[top]
    return keys, scores[top]


class _SegmentedIndex:
    """What both indexes share: segments, a key → segment map, the lock, search and export."""

    kind: IndexKind

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self._dim = dim
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._where: dict[int, int] = {}

    @property
    def dim(self) -> int:
        """The length of every vector."""
        return self._dim

    def __len__(self) -> int:
        return len(self._where)

    def _route(self, vectors: Vectors) -> npt.NDArray[np.intp]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _probe(self, query: npt.NDArray[np.float32]) -> Sequence[int]:
        raise NotImplementedError  # pragma: no cover - abstract

    def add(self, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add ``vectors[i]`` under ``keys[i]``; a key already present is replaced.

        Raises:
            ValueError: keys and vectors differ in length, a vector is not ``dim`` long or
                holds NaN or infinity, or keys are not integers.
        """
        k, v = _check_batch(keys, vectors, self._dim)
        if not len(k):
            return
        route = self._route(v)  # outside the lock: the quantiser is immutable
        with self._lock:
            self._remove_locked(k)
            order = np.argsort(route, kind="stable")
            bounds = np.flatnonzero(np.diff(route[order])) + 1
            for group in np.split(order, bounds):
                seg = int(route[group[0]])
                self._segments[seg].append(k[group], v[group])
            self._where.update(zip(k.tolist(), route.tolist(), strict=True))

    def remove(self, keys: Sequence[int] | npt.ArrayLike) -> None:
        """Remove ``keys``; unknown keys are ignored. Every search that starts after this returns sees it."""
        k = _as_keys(keys)
        if len(k):
            with self._lock:
                self._remove_locked(k)

    def _remove_locked(self, keys: Keys) -> None:
        by_segment: dict[int, list[int]] = {}
        for key in keys.tolist():
            seg = self._where.pop(key, None)
            if seg is not None:
                by_segment.setdefault(seg, []).append(key)
        for seg, dead in by_segment.items():
            self._segments[seg].kill(np.asarray(dead, dtype=np.int64))

    def search(self, query: npt.ArrayLike, k: int, *, exclude: Collection[int] = ()) -> tuple[Keys, Scores]:
        """The (up to) ``k`` best keys and their scores (dot products), best first.

        Args:
            query: A ``(dim,)`` vector, L2-normalised like the stored ones.
            k: How many results at most.
            exclude: Keys to leave out of the results (for example, ones already shown).

        Raises:
            ValueError: the query is not ``dim`` long or holds NaN or infinity, or ``k`` is not positive.
        """
        q = _check_query(query, self._dim)
        k = _check_k(k)
        probe = self._probe(q)
        with self._lock:
            views = [self._segments[i].view() for i in probe]
        keys, scores = _score(views, q, k + len(exclude))
        if exclude:
            keep = ~np.isin(keys, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
            keys, scores = keys[keep], scores[keep]
        return keys[:k], scores[:k]

    def export(self) -> tuple[Keys, Vectors]:
        """A copy of every live key and its vector, as of the call (safe while others write)."""
        with self._lock:
            views = [seg.view() for seg in self._segments]
        keys = [kk[:n] if live is None else kk[:n][live[:n]] for _, kk, live, n in views]
        vecs = [vv[:n] if live is None else vv[:n][live[:n]] for vv, _, live, n in views]
        if not keys:
            return np.zeros(0, np.int64), np.zeros((0, self._dim), np.float32)
        return np.concatenate(keys), np.concatenate(vecs)


class ExactIndex(_SegmentedIndex):
    """Brute force over every vector: exact, and the right choice for small partitions.

    Adds append into a buffer that grows by half when full, so a single add is amortised
    O(1); removals are tombstones, compacted once a quarter of the rows are dead.
    """

    kind: IndexKind = "exact"

    def __init__(self, dim: int, keys: npt.ArrayLike = (), vectors: npt.ArrayLike = ()) -> None:
        """An exact index of ``dim``-long vectors, holding ``vectors[i]`` under ``keys[i]``."""
        super().__init__(dim)
        self._segments.append(_Segment(dim))
        self.add(keys, vectors)

    def _route(self, vectors: Vectors) -> npt.NDArray[np.intp]:
        return np.zeros(len(vectors), dtype=np.intp)

    def _probe(self, query: npt.NDArray[np.float32]) -> Sequence[int]:
        return (0,)


class IVFIndex(_SegmentedIndex):
    """An inverted file: spherical k-means lists, each stored contiguously, ``nprobe`` of them searched.

    Trained once, at construction, on the vectors it is given. Later adds go to the list of
    their nearest centroid; :class:`VectorSpace` rebuilds the index once it has grown
    :data:`_RETRAIN_GROWTH` times past :attr:`trained_size`.
    """

    kind: IndexKind = "ivf"

    def __init__(
        self,
        dim: int,
        keys: npt.ArrayLike,
        vectors: npt.ArrayLike,
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        """Train on and index ``vectors`` (at least 2), under ``keys``.

        Args:
            dim: The length of every vector.
            keys: One ``int64`` key per vector.
            vectors: The ``(n, dim)`` vectors, L2-normalised.
            nlist: The number of lists; ``sqrt(n)`` by default.
            nprobe: Lists searched per query; by default the fewest that reach 0.97 recall@10
                against exact search on queries made from the stored vectors (see :func:`_calibrate`).
            seed: Seeds the sample and the centroids' initial positions.

        Raises:
            ValueError: bad keys or vectors (see :meth:`add`), or fewer than 2 vectors.
        """
        super().__init__(dim)
        k, v = _check_batch(keys, vectors, dim)
        if len(k) < 2:
            raise ValueError(f"an IVF index needs at least 2 vectors to train on, got {len(k)}")
        rng = np.random.default_rng(seed)
        self.nlist = max(1, min(len(k) // 2, nlist or round(math.sqrt(len(k)))))
        sample = v[rng.choice(len(v), size=min(len(v), 64 * self.nlist), replace=False)]
        self._centroids = _kmeans(sample, self.nlist, rng)
        route = _assign(v, self._centroids)
        order = np.argsort(route, kind="stable")
        counts = np.bincount(route, minlength=self.nlist)
        starts = np.concatenate(([0], np.cumsum(counts)))
        for i in range(self.nlist):
            rows = order[starts[i] : starts[i + 1]]
            self._segments.append(_Segment(dim, k[rows], v[rows]))
        self._where = dict(zip(k.tolist(), route.tolist(), strict=True))
        self.trained_size = len(k)
        self.nprobe = nprobe or _calibrate(v, route, self._centroids, rng)

    def _route(self, vectors: Vectors) -> npt.NDArray[np.intp]:
        return _assign(vectors, self._centroids)

    def _probe(self, query: npt.NDArray[np.float32]) -> Sequence[int]:
        near = self._centroids @ query
        if self.nprobe >= self.nlist:
            return range(self.nlist)
        probe: list[int] = np.argpartition(-near, self.nprobe - 1)[: self.nprobe].tolist()
        return probe


def _assign(vectors: Vectors, centroids: Vectors) -> npt.NDArray[np.intp]:
    """The nearest centroid (by dot product) of each vector, in chunks to bound the temporary."""
    out = np.empty(len(vectors), dtype=np.intp)
    for start in range(0, len(vectors), _CHUNK):
        out[start : start + _CHUNK] = np.argmax(vectors[start : start + _CHUNK] @ centroids.T, axis=1)
    return out


def _kmeans(sample: Vectors, nlist: int, rng: np.random.Generator, iterations: int = 10) -> Vectors:
    """Spherical k-means: centroids are the normalised means; an empty list is reseeded at a random point."""
    centroids = sample[rng.choice(len(sample), size=nlist, replace=False)].copy()
    for _ in range(iterations):
        route = _assign(sample, centroids)
        order = np.argsort(route, kind="stable")
        counts = np.bincount(route, minlength=nlist)
        filled = np.flatnonzero(counts)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[filled]
        sums = np.add.reduceat(sample[order], starts, axis=0)
        centroids[filled] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            centroids[empty] = sample[rng.choice(len(sample), size=len(empty), replace=False)]
    return centroids


def _calibrate(vectors: Vectors, route: npt.NDArray[np.intp], centroids: Vectors, rng: np.random.Generator) -> int:
    """The fewest lists to probe for :data:`_TARGET_RECALL` recall@10 on queries like the stored vectors.

    A stored vector is too easy a query: it trained the centroids and sits where its list is.
    Each calibration query is a stored vector moved by another one's offset from its own
    centroid (scaled by 0.7, so about 1.2 times the data's spread around a centroid): a new
    point near the data, drawn from the data's own scatter rather than from a guess about it.

    A probe scores every vector in the lists it opens, so a true neighbour is found exactly
    when its list is among the ``nprobe`` nearest centroids: recall at every ``nprobe`` follows
    from the rank of each neighbour's list, without searching once per candidate value.
    """
    n, nlist = len(vectors), len(centroids)
    take = rng.choice(n, size=min(n, _CALIBRATION_QUERIES), replace=False)
    other = rng.choice(n, size=len(take))
    queries = vectors[take] + 0.7 * (vectors[other] - centroids[route[other]])
    queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    depth = min(10, n - 1)
    best_s = np.full((len(take), depth), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(take), depth), dtype=np.int64)
    for start in range(0, n, _CHUNK * 4):
        end = min(n, start + _CHUNK * 4)
        s = queries @ vectors[start:end].T
        both_s = np.concatenate([best_s, s], axis=1)
        both_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, end), s.shape)], axis=1)
        top = np.argpartition(-both_s, depth - 1, axis=1)[:, :depth]
        best_s = np.take_along_axis(both_s, top, axis=1)
        best_i = np.take_along_axis(both_i, top, axis=1)
    rank = np.empty((len(take), nlist), dtype=np.int64)
    order = np.argsort(-(queries @ centroids.T), axis=1)
    np.put_along_axis(rank, order, np.arange(nlist)[None, :].repeat(len(take), axis=0), axis=1)
    needed = np.take_along_axis(rank, route[best_i], axis=1).ravel() + 1
    found = np.cumsum(np.bincount(needed, minlength=nlist + 1)) / len(needed)
    return min(nlist, int(np.searchsorted(found, _TARGET_RECALL)))


def build_index(dim: int, keys: npt.ArrayLike, vectors: npt.ArrayLike, *, exact_max: int = EXACT_MAX) -> VectorIndex:
    """An :class:`ExactIndex` for up to ``exact_max`` vectors; above, an :class:`HNSWIndex` when
    hnswlib is installed (``habitus[vectors]``), else an :class:`IVFIndex`."""
    k, v = _check_batch(keys, vectors, dim)
    if len(k) > exact_max:
        if HNSWIndex.available():
            return HNSWIndex(dim, k, v)
        return IVFIndex(dim, k, v)
    return ExactIndex(dim, k, v)


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


@dataclass(frozen=True)
class PartitionStats:
    """One loaded partition, as :meth:`VectorSpace.stats` reports it."""

    kind: IndexKind
    size: int
    build_seconds: float
    """How long the current index took to build (training and calibration included)."""
    rebuilding: bool
    """Whether a new index (another kind, or a retrained IVF) is being built in the background."""


_Op: TypeAlias = tuple[Literal["add"], Keys, Vectors] | tuple[Literal["remove"], Keys, None]


class _Partition:
    __slots__ = ("build_seconds", "failed", "index", "journal", "loaded")

    def __init__(self) -> None:
        self.index: VectorIndex | None = None
        self.build_seconds = 0.0
        self.journal: list[_Op] | None = []  # writes made while a new index is being built
        self.loaded: Future[VectorIndex] = Future()
        self.failed = False


class VectorSpace:
    """One vector index per partition, loaded on first search, exact or IVF by size.

    A partition is loaded by ``load(partition) -> (keys, vectors)`` the first time it is
    searched, once, however many threads ask at the same time (they wait for the one
    loading). A partition never searched costs nothing: writes to it are ignored, since
    ``load`` will read them from the store. Writes that arrive while a partition is being
    loaded or rebuilt are applied to the index in service and replayed onto the new one,
    so the caller must have committed a write to the store before calling :meth:`add` or
    :meth:`remove` (replaying a write the loader already saw is harmless).

    A partition above ``exact_max`` vectors gets an IVF index, one at or below half of it
    an exact one (the gap keeps a partition from flapping), and an IVF that has doubled
    since it was trained is retrained. That build runs on a background thread (or inline
    if ``background`` is false) while the old index keeps answering.
    """

    def __init__(self, dim: int, load: Loader, *, exact_max: int = EXACT_MAX, background: bool = True) -> None:
        """A space of ``dim``-long vectors whose partitions come from ``load``."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self.dim = dim
        self._load = load
        self._exact_max = exact_max
        self._background = background
        self._lock = threading.Lock()
        self._parts: dict[str, _Partition] = {}
        self._threads: set[threading.Thread] = set()
        self._errors: list[BaseException] = []

    @property
    def loaded_partitions(self) -> frozenset[str]:
        """The partitions whose index is in memory."""
        with self._lock:
            return frozenset(name for name, part in self._parts.items() if part.index is not None)

    def stats(self) -> dict[str, PartitionStats]:
        """Kind, size and build time of each loaded partition."""
        with self._lock:
            return {
                name: PartitionStats(p.index.kind, len(p.index), p.build_seconds, p.journal is not None)
                for name, p in self._parts.items()
                if p.index is not None
            }

    def search(
        self, partitions: Sequence[str], query: npt.ArrayLike, k: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        """The ``k`` best ``(key, score)`` pairs across ``partitions``, best first.

        Loads each partition not yet loaded (in the calling thread: a first search of a large
        partition takes as long as its build). Meant for worker threads, not the event loop.

        Raises:
            ValueError: a bad query or ``k`` (see :meth:`ExactIndex.search`).
            Exception: whatever ``load`` raised for a partition it could not load.
        """
        q = _check_query(query, self.dim)
        k = _check_k(k)
        found: dict[int, float] = {}
        for name in dict.fromkeys(partitions):
            keys, scores = self._index(name).search(q, k, exclude=exclude)
            for key, score in zip(keys.tolist(), scores.tolist(), strict=True):
                if score > found.get(key, -math.inf):
                    found[key] = score
        return sorted(found.items(), key=lambda pair: (-pair[1], pair[0]))[:k]

    def add(self, partition: str, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add ``vectors[i]`` under ``keys[i]`` to ``partition`` (replacing a key already there).

        Cheap enough for the event loop: it never loads a partition, and a rebuild it
        triggers runs on a background thread.

        Raises:
            ValueError: keys and vectors differ in length, a vector is not ``dim`` long or
                holds NaN or infinity, or keys are not integers.
        """
        k, v = _check_batch(keys, vectors, self.dim)
        if not len(k):
            return
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return
            if part.journal is not None:
                part.journal.append(("add", k, v))
            if part.index is not None:
                part.index.add(k, v)
                self._maybe_rebuild_locked(partition, part)

    def remove(self, partition: str, keys: Sequence[int] | npt.ArrayLike) -> None:
        """Remove ``keys`` from ``partition``; unknown keys are ignored. Searches that start after never return them."""
        k = _as_keys(keys)
        if not len(k):
            return
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return
            if part.journal is not None:
                part.journal.append(("remove", k, None))
            if part.index is not None:
                part.index.remove(k)
                self._maybe_rebuild_locked(partition, part)

    def drop(self, partition: str) -> None:
        """Forget ``partition``'s index (its memory is freed); the next search loads it again."""
        with self._lock:
            self._parts.pop(partition, None)

    def wait(self) -> None:
        """Wait for background rebuilds to finish; raise the first error one of them hit."""
        while True:
            with self._lock:
                threads = list(self._threads)
                if not threads:
                    if self._errors:
                        error, self._errors = self._errors[0], []
                        raise error
                    return
            for thread in threads:
                thread.join()

    def _index(self, name: str) -> VectorIndex:
        with self._lock:
            part = self._parts.get(name)
            if part is not None:
                if part.index is not None:
                    return part.index
                loading = part.loaded  # another thread is loading it: wait for that load
            else:
                part = self._parts[name] = _Partition()
                loading = None
        if loading is not None:
            return loading.result()
        try:
            keys, vectors = self._load(name)
            started = time.perf_counter()
            index = build_index(self.dim, keys, vectors, exact_max=self._exact_max)
            seconds = time.perf_counter() - started
        except BaseException as error:
            with self._lock:
                if self._parts.get(name) is part:
                    del self._parts[name]
            part.loaded.set_exception(error)
            raise
        with self._lock:
            self._install_locked(name, part, index, seconds)
        part.loaded.set_result(index)
        return index

    def _install_locked(self, name: str, part: _Partition, index: VectorIndex, seconds: float) -> None:
        """Replay the writes made during the build onto ``index`` and put it in service."""
        for op, keys, vectors in part.journal or ():
            if op == "add" and vectors is not None:
                index.add(keys, vectors)
            else:
                index.remove(keys)
        part.index, part.journal, part.build_seconds = index, None, seconds
        if self._parts.get(name) is part:
            self._maybe_rebuild_locked(name, part)

    def _maybe_rebuild_locked(self, name: str, part: _Partition) -> None:
        index = part.index
        if index is None or part.journal is not None or part.failed:
            return
        size = len(index)
        if index.kind == "exact":
            due = size > self._exact_max
        else:
            trained = index.trained_size if isinstance(index, IVFIndex) else size
            due = size >= _RETRAIN_GROWTH * trained or size <= self._exact_max // 2
        if not due:
            return
        part.journal = []  # before the export, so no write falls between the snapshot and the replay
        if not self._background:
            self._rebuild(name, part, index)
            return
        thread = threading.Thread(target=self._rebuild, args=(name, part, index), name=f"habitus-vectors-{name}")
        thread.daemon = True
        self._threads.add(thread)
        thread.start()

    def _rebuild(self, name: str, part: _Partition, old: VectorIndex) -> None:
        inline = not self._background
        try:
            started = time.perf_counter()
            keys, vectors = old.export()
            index = build_index(self.dim, keys, vectors, exact_max=self._exact_max)
            seconds = time.perf_counter() - started
            if inline:
                self._install_locked(name, part, index, seconds)
            else:
                with self._lock:
                    self._install_locked(name, part, index, seconds)
        except BaseException as error:  # the old index keeps serving; wait() reports the failure
            if inline:
                part.journal, part.failed = None, True
                raise
            with self._lock:
                part.journal, part.failed = None, True
                self._errors.append(error)
        finally:
            if not inline:
                with self._lock:
                    self._threads.discard(threading.current_thread())
