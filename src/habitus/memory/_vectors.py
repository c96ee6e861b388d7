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
* :class:`~habitus.memory._space.VectorSpace` holds one index per partition (a memory scope), loads each
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
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import Literal, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "EXACT_MAX",
    "ExactIndex",
    "IVFIndex",
    "IndexKind",
    "Keys",
    "Loader",
    "Scores",
    "VectorIndex",
    "Vectors",
]

Keys: TypeAlias = npt.NDArray[np.int64]
Vectors: TypeAlias = npt.NDArray[np.float32]
Scores: TypeAlias = npt.NDArray[np.float32]
IndexKind: TypeAlias = Literal["exact", "ivf", "hnsw", "pca"]
Loader: TypeAlias = Callable[[str], tuple[npt.ArrayLike, npt.ArrayLike]]

EXACT_MAX = 50_000
"""Largest partition kept exact: above it an IVF answers faster at ≥ 0.95 recall@10 (ADR 0004)."""

_T = TypeVar("_T", bound=np.generic)
_CHUNK = 16_384  # rows per matrix product when assigning: bounds the temporary to ~64 MiB at 1,000 lists
_CALIBRATION_QUERIES = 96
_TARGET_RECALL = 0.97  # on synthetic calibration queries: a margin over the 0.95 promised on real ones
_RETRAIN_GROWTH = 2.0


LOOKUP_MAX = 65_536
"""Largest segment :meth:`_SegmentedIndex.vectors_of` scans for keys (about 0.2 ms)."""


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
        """``"exact"``, ``"ivf"``, ``"hnsw"`` or ``"pca"``."""
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

    def vectors_of(self, keys: npt.ArrayLike) -> tuple[Keys, Vectors]:
        """The vectors of those of ``keys`` the index holds and can find cheaply (in no particular order)."""
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
            self._grow(max(end, int(len(self.keys) * 1.5) + 16))
        self.keys[self.n : end] = keys
        self.vecs[self.n : end] = vecs
        self.live[self.n : end] = True
        self._written(self.n, end)
        self.n = end  # published last: a reader that saw the old n never reads the new rows

    def kill(self, keys: Keys) -> None:
        hit = np.flatnonzero(np.isin(self.keys[: self.n], keys) & self.live[: self.n])
        self.live[hit] = False
        self.dead += len(hit)
        if self.dead > max(64, self.n // 4):
            self._compact(self.live[: self.n].copy())
            self.n = len(self.keys)
            self.live = np.ones(self.n, dtype=np.bool_)
            self.dead = 0

    def _grow(self, cap: int) -> None:
        """Move the rows into fresh arrays of ``cap`` rows (a subclass grows its own arrays too)."""
        self.keys = _grown(self.keys, self.n, cap)
        self.vecs = _grown(self.vecs, self.n, cap)
        self.live = _grown(self.live, self.n, cap)

    def _written(self, start: int, end: int) -> None:
        """Rows ``start:end`` were just written (before readers can see them); a hook for subclasses."""

    def _compact(self, alive: npt.NDArray[np.bool_]) -> None:
        """Keep only the first ``n`` rows where ``alive``, in fresh arrays."""
        self.keys, self.vecs = self.keys[: self.n][alive], self.vecs[: self.n][alive]

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


class _SegmentedIndex(ABC):
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

    @abstractmethod
    def _route(self, vectors: Vectors) -> npt.NDArray[np.intp]:
        """The segment each vector belongs in."""

    @abstractmethod
    def _probe(self, query: npt.NDArray[np.float32]) -> Sequence[int]:
        """The segments a search for ``query`` scans."""

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

    def vectors_of(self, keys: npt.ArrayLike) -> tuple[Keys, Vectors]:
        """The vectors of those of ``keys`` that are here, in no particular order.

        A key's segment is known; its row is found by a scan of the segment's keys, so a
        segment of more than :data:`LOOKUP_MAX` rows is not scanned (its keys are left out:
        the caller reads them elsewhere).
        """
        k = _as_keys(keys)
        by_segment: dict[int, list[int]] = {}
        with self._lock:
            for key in k.tolist():
                seg = self._where.get(key)
                if seg is not None:
                    by_segment.setdefault(seg, []).append(key)
            views = {seg: self._segments[seg].view() for seg in by_segment}
        found_k: list[Keys] = []
        found_v: list[Vectors] = []
        for seg, wanted in by_segment.items():
            vecs, seg_keys, live, n = views[seg]
            if n > LOOKUP_MAX:
                continue
            hit = np.isin(seg_keys[:n], np.asarray(wanted, dtype=np.int64))
            if live is not None:
                hit &= live[:n]
            rows = np.flatnonzero(hit)
            found_k.append(seg_keys[rows])
            found_v.append(vecs[rows])
        if not found_k:
            return np.zeros(0, np.int64), np.zeros((0, self._dim), np.float32)
        return np.concatenate(found_k), np.concatenate(found_v)

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
