"""The two-stage index for large memory scopes: see :class:`PCAIndex` and ADR 0004."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from habitus.memory._vectors import (
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
_BLENDS = (0.9, 0.75, 0.6, 0.45, 0.3, 0.2, 0.1)  # cosine of each calibration query to the vector it is made from
_PER_BLEND = 32
_WINDOW = 48  # calibration queries either side of a query's place in the unseen order that set its candidates
_CALIBRATED_RECALL = 0.99
"""Of the neighbours of the calibration queries nearest a query in unseen ratio, the share its candidates must
find. Measured at a million vectors: 0.97 gave 0.96 of the exact top 10 for real questions, 0.99 gave 0.98."""


class _Axes(NamedTuple):
    """Every principal axis of the data (columns of ``rotation``, largest variance first) and its variance."""

    rotation: Vectors
    variance: npt.NDArray[np.float32]


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
    quarter of the bytes of a full scan); the best candidates of it are then scored exactly
    and the best of those returned. Nothing is skipped by a guess about where the neighbours
    are, so recall does not depend on how the data clusters, only on how much of a query's
    similarity the principal axes carry; and it builds in seconds (the axes come from a
    sample), where a graph over a million vectors takes minutes.

    How many candidates a query needs depends on how much of it the first pass cannot see:
    its *unseen ratio*, the spread over the data of the part of its score the first pass
    leaves out (the other axes, weighted by the data's variance on them) over the spread of
    the part it keeps. A question about the stored texts lies mostly along the axes (0.2-0.4
    on MiniLM-like data); a query unlike anything stored does not (0.7-0.95), and there a
    handful of candidates would miss most of its neighbours. So the number is calibrated at
    build, like the IVF's ``nprobe``, as a function of that ratio: stored vectors blended with
    random directions, at cosines from 0.9 down to 0.1, give queries across the range; for
    each, the rank in the first pass of each of its exact top 10 says how many candidates
    would have found it; a query gets the fewest that found :data:`_CALIBRATED_RECALL` of the
    neighbours of the calibration queries nearest to it in that ratio (never fewer than for
    an easier query), and one beyond every calibration query is scored exactly throughout.
    A search for more than 10 takes at least twice as many candidates as it wants.

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
            candidates: Rows scored exactly per search, for every query; by default calibrated
                per query (see above).
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
        self._axes = _principal_axes(sample)
        self._basis = np.ascontiguousarray(self._axes.rotation[:, : self.components])
        segment = self._projected = _ProjectedSegment(dim, self._basis)
        self._segments.append(segment)
        self.add(k, v)
        self.trained_size = len(k)
        self._limits: npt.NDArray[np.float64] = np.array([np.inf])  # unseen ratios, ascending ...
        self._counts: npt.NDArray[np.int64] = np.array([candidates or 0])  # ... and the candidates up to each
        if not candidates:
            self._limits, self._counts = _calibrate(
                segment.vecs[: segment.n], segment.proj[:, : segment.n], self._axes, self.components, rng
            )

    def candidates_for(self, query: npt.ArrayLike) -> int:
        """How many rows the first pass hands to exact scoring for ``query`` (every row: it is scored exactly).

        Raises:
            ValueError: the query is not ``dim`` long or holds NaN or infinity.
        """
        return self._candidates(_check_query(query, self._dim) @ self._axes.rotation, len(self))

    def _candidates(self, coords: npt.NDArray[np.float32], n: int) -> int:
        at = int(np.searchsorted(self._limits, _unseen(coords[None, :], self._axes.variance, self.components)[0]))
        return n if at == len(self._limits) else min(n, int(self._counts[at]))

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
        coords = q @ self._axes.rotation
        take = max(self._candidates(coords, n), 2 * want)
        # Scoring a gathered row costs about 11 times a row of a full scan (measured at a million: 66,000
        # candidates took 25 ms, the whole scan 33 ms), so past a twelfth of the rows a full scan is cheaper.
        if take * 12 >= n:
            found_k, found_s = _score([(vecs, keys, live, n)], q, want)
        else:
            rows = _best_rows(coords[: self.components] @ proj[:, :n], take)
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


def _principal_axes(sample: Vectors) -> _Axes:
    """The principal axes of ``sample`` and the variance along each, largest first."""
    centred = sample - sample.mean(axis=0)
    variance, axes = np.linalg.eigh((centred.T @ centred).astype(np.float64) / len(sample))  # ascending
    return _Axes(
        np.ascontiguousarray(axes[:, ::-1], dtype=np.float32),
        np.maximum(variance[::-1], 0.0).astype(np.float32),
    )


def _unseen(
    coords: npt.NDArray[np.float32], variance: npt.NDArray[np.float32], components: int
) -> npt.NDArray[np.float64]:
    """Each query's unseen ratio (see :class:`PCAIndex`), from its coordinates on every principal axis."""
    spread = coords.astype(np.float64) ** 2 * variance
    kept = spread[:, :components].sum(axis=1)
    unseen: npt.NDArray[np.float64] = np.sqrt(spread[:, components:].sum(axis=1) / np.maximum(kept, 1e-30))
    return unseen


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


def _calibrate(
    vectors: Vectors, proj: Vectors, axes: _Axes, components: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Unseen ratios, ascending, and the candidates a query up to each needs (see :class:`PCAIndex`).

    A true neighbour is found exactly when fewer than the candidates score above it in the
    first pass, so each neighbour's rank there says how many would find it, without searching
    once per candidate value.
    """
    n, dim = vectors.shape
    take = rng.choice(n, size=min(n, _PER_BLEND * len(_BLENDS)), replace=False)
    cosine = np.resize(np.array(_BLENDS, dtype=np.float32), len(take))[:, None]
    noise = rng.standard_normal((len(take), dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = cosine * vectors[take] + np.sqrt(1 - cosine**2) * noise
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
    coords = queries @ axes.rotation
    projected = np.ascontiguousarray(coords[:, :components])
    bar = np.einsum("qc,cqd->qd", projected, proj[:, best_i])  # each true neighbour's first-pass score
    lowest = bar.min(axis=1)
    ahead = np.zeros(bar.shape, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        first = projected @ proj[:, start : min(n, start + _CHUNK)]
        over = first > lowest[:, None]  # only rows above some neighbour can rank ahead of it
        query, _ = np.nonzero(over)
        above = first[over][:, None] > bar[query]
        for j in range(depth):
            ahead[:, j] += np.bincount(query, weights=above[:, j], minlength=len(take)).astype(np.int64)
    unseen = _unseen(coords, axes.variance, components)
    order = np.argsort(unseen, kind="stable")
    needed = ahead[order] + 1
    counts = np.empty(len(order), dtype=np.int64)
    for i in range(len(order)):
        near = np.sort(needed[max(0, i - _WINDOW) : i + _WINDOW + 1].ravel())
        counts[i] = near[math.ceil(_CALIBRATED_RECALL * len(near)) - 1]
    return unseen[order], np.maximum(np.maximum.accumulate(counts), 4 * depth)
