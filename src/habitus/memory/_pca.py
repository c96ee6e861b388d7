"""The two-stage index for large memory scopes: see :class:`PCAIndex` and ADR 0004."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from habitus.memory._vectors import (
    _CALIBRATION_QUERIES,
    _TARGET_RECALL,
    IndexKind,
    Keys,
    Scores,
    Vectors,
    _check_batch,
    _check_k,
    _check_query,
    _score,
    _Segment,
    _SegmentedIndex,
)

__all__ = ["PCAIndex"]

COMPONENTS = 96
"""Principal components the first pass reads: a quarter of MiniLM's 384 dimensions (ADR 0004)."""

_SAMPLE = 65_536  # vectors the principal axes are computed from
_CHUNK = 65_536  # rows per matrix product when projecting or calibrating: bounds the temporaries
_SAMPLE_HITS = 64  # how many of the first pass's best rows the threshold's sample should hold


class _ProjectedSegment(_Segment):
    """A segment that also keeps every row's coordinates on the principal axes.

    They are stored one component per row (``proj[c, i]`` for row ``i``), so the first pass
    is one matrix-vector product that reads each component contiguously.
    """

    __slots__ = ("basis", "proj")

    def __init__(self, dim: int, basis: Vectors) -> None:
        super().__init__(dim)
        self.basis = basis
        self.proj: Vectors = np.zeros((basis.shape[1], 0), dtype=np.float32)

    def _grow(self, cap: int) -> None:
        super()._grow(cap)
        out = np.empty((self.proj.shape[0], cap), dtype=np.float32)
        out[:, : self.n] = self.proj[:, : self.n]
        self.proj = out

    def _written(self, start: int, end: int) -> None:
        for s in range(start, end, _CHUNK):
            e = min(end, s + _CHUNK)
            self.proj[:, s:e] = (self.vecs[s:e] @ self.basis).T

    def _compact(self, alive: npt.NDArray[np.bool_]) -> None:
        super()._compact(alive)
        self.proj = np.ascontiguousarray(self.proj[:, : len(alive)][:, alive])


class PCAIndex(_SegmentedIndex):
    """Exact scores for the best candidates of a cheap first pass over every vector.

    The first pass scores every vector on its top :data:`COMPONENTS` principal axes (a
    quarter of the bytes of a full scan); the ``candidates`` best of it are then scored
    exactly and the best of those returned. Nothing is skipped by a guess about where the
    neighbours are, so its recall does not depend on how the data clusters, only on how
    much of a query's similarity the principal axes carry; and it builds in seconds (the
    axes come from a sample), where a graph over a million vectors takes minutes.

    ``candidates`` is calibrated at build, like the IVF's ``nprobe``: the fewest that give
    :data:`_TARGET_RECALL` of the exact top 10 for hard queries, each a stored vector blended
    with a random direction to a cosine of 0.6. A random direction lies mostly off the
    principal axes, so these are harder for the first pass than real questions about the
    stored texts (ADR 0004). A search for more than 10 takes at least twice as many
    candidates as it wants.

    Adds are projected on the axes found at build; :class:`VectorSpace` rebuilds the index
    once it has grown :data:`_RETRAIN_GROWTH` times past :attr:`trained_size`. Removals
    are tombstones, compacted once a quarter of the rows are dead.
    """

    kind: IndexKind = "pca"

    def __init__(
        self,
        dim: int,
        keys: npt.ArrayLike,
        vectors: npt.ArrayLike,
        *,
        components: int = COMPONENTS,
        candidates: int | None = None,
        seed: int = 0,
    ) -> None:
        """Find the principal axes of ``vectors`` (at least 2) and index them under ``keys``.

        Args:
            dim: The length of every vector.
            keys: One ``int64`` key per vector.
            vectors: The ``(n, dim)`` vectors, L2-normalised.
            components: Principal axes the first pass reads (at most ``dim``).
            candidates: Rows scored exactly per search; calibrated by default (see above).
            seed: Seeds the sample and the calibration queries.

        Raises:
            ValueError: bad keys or vectors (see :meth:`add`), or fewer than 2 vectors.
        """
        super().__init__(dim)
        k, v = _check_batch(keys, vectors, dim)
        if len(k) < 2:
            raise ValueError(f"a PCA index needs at least 2 vectors to find axes in, got {len(k)}")
        rng = np.random.default_rng(seed)
        self.components = max(1, min(components, dim))
        sample = v[np.sort(rng.choice(len(v), size=min(len(v), _SAMPLE), replace=False))]
        self._basis = _principal_axes(sample, self.components)
        segment = self._projected = _ProjectedSegment(dim, self._basis)
        self._segments.append(segment)
        self.add(k, v)
        self.trained_size = len(k)
        self.candidates = candidates or _calibrate(
            segment.vecs[: segment.n], segment.proj[:, : segment.n], self._basis, rng
        )

    def _route(self, vectors: Vectors) -> npt.NDArray[np.intp]:
        return np.zeros(len(vectors), dtype=np.intp)

    def _probe(self, query: npt.NDArray[np.float32]) -> Sequence[int]:
        return (0,)

    def search(self, query: npt.ArrayLike, k: int, *, exclude: Collection[int] = ()) -> tuple[Keys, Scores]:
        """The (up to) ``k`` best keys and their scores (dot products), best first.

        Raises:
            ValueError: the query is not ``dim`` long or holds NaN or infinity, or ``k`` is not positive.
        """
        q = _check_query(query, self._dim)
        k = _check_k(k)
        with self._lock:
            vecs, keys, live, n = self._projected.view()
            proj = self._projected.proj
        want = k + len(exclude)
        take = max(self.candidates, 2 * want)
        if take * 2 >= n:  # the first pass would save nothing
            found_k, found_s = _score([(vecs, keys, live, n)], q, want)
        else:
            rows = _best_rows((q @ self._basis) @ proj[:, :n], take)
            if live is not None:
                rows = rows[live[rows]]
            # einsum, not a BLAS product: a few thousand rows are too few to split across threads, and on
            # a busy machine waiting for the second thread cost 8 ms where one thread takes 0.2 ms.
            exact = np.einsum("ij,j->i", vecs[rows], q)
            top = np.argpartition(-exact, want - 1)[:want] if want < len(rows) else np.arange(len(rows))
            top = top[np.argsort(-exact[top], kind="stable")]
            found_k, found_s = keys[rows[top]], exact[top]
        if exclude:
            keep = ~np.isin(found_k, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
            found_k, found_s = found_k[keep], found_s[keep]
        return found_k[:k], found_s[:k]


def _principal_axes(sample: Vectors, components: int) -> Vectors:
    """The ``components`` directions of largest variance in ``sample``, as columns of a ``(dim, components)`` array."""
    centred = sample - sample.mean(axis=0)
    _, axes = np.linalg.eigh((centred.T @ centred).astype(np.float64))  # eigenvalues ascending
    return np.ascontiguousarray(axes[:, ::-1][:, :components], dtype=np.float32)


def _best_rows(approx: npt.NDArray[np.floating[Any]], count: int) -> npt.NDArray[np.intp]:
    """At least ``count`` rows (about 1.25 times as many) among the highest of ``approx``, unordered.

    A full partition of a million scores costs about 3 ms; a threshold read off an evenly
    strided sample and one comparison cost a fraction of that. Should the sample mislead
    (fewer rows pass than asked for, or far more, as with many equal scores), it partitions.
    """
    n = len(approx)
    if count >= n:
        return np.arange(n)
    stride = max(1, count // _SAMPLE_HITS)
    sample = approx[::stride]
    hits = min(len(sample), math.ceil(1.25 * count / stride))
    threshold = np.partition(sample, len(sample) - hits)[len(sample) - hits]
    rows = np.flatnonzero(approx >= threshold)
    if count <= len(rows) <= 4 * count:
        return rows
    return np.argpartition(-approx, count - 1)[:count]


def _calibrate(vectors: Vectors, proj: Vectors, basis: Vectors, rng: np.random.Generator) -> int:
    """The fewest candidates for :data:`_TARGET_RECALL` recall@10 on hard queries (see :class:`PCAIndex`).

    A true neighbour is found exactly when fewer than ``candidates`` rows score above it in
    the first pass, so recall at every number of candidates follows from each neighbour's
    rank there, without searching once per candidate value.
    """
    n, dim = vectors.shape
    take = rng.choice(n, size=min(n, _CALIBRATION_QUERIES), replace=False)
    noise = rng.standard_normal((len(take), dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = 0.6 * vectors[take] + 0.8 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    depth = min(10, n - 1)
    best_s = np.full((len(take), depth), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(take), depth), dtype=np.int64)
    for start in range(0, n, _CHUNK):
        end = min(n, start + _CHUNK)
        s = queries @ vectors[start:end].T
        both_s = np.concatenate([best_s, s], axis=1)
        both_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, end), s.shape)], axis=1)
        top = np.argpartition(-both_s, depth - 1, axis=1)[:, :depth]
        best_s = np.take_along_axis(both_s, top, axis=1)
        best_i = np.take_along_axis(both_i, top, axis=1)
    projected = queries @ basis
    bar = np.einsum("qc,cqd->qd", projected, proj[:, best_i])  # each true neighbour's first-pass score
    ahead = np.zeros(bar.shape, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        first = projected @ proj[:, start : min(n, start + _CHUNK)]
        ahead += (first[:, :, None] > bar[:, None, :]).sum(axis=1)
    needed = np.sort(ahead.ravel() + 1)
    return int(max(4 * depth, needed[math.ceil(_TARGET_RECALL * len(needed)) - 1]))
