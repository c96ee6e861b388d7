"""One vector index per memory scope: :class:`VectorSpace`, and :func:`build_index`, which picks its kind."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from habitus.memory._hnsw import HNSWIndex
from habitus.memory._pca import PCAIndex
from habitus.memory._vectors import (
    _RETRAIN_GROWTH,
    EXACT_MAX,
    ExactIndex,
    IndexKind,
    IVFIndex,
    Keys,
    Loader,
    VectorIndex,
    Vectors,
    _as_keys,
    _check_batch,
    _check_k,
    _check_query,
)

__all__ = ["LargeKind", "PartitionStats", "VectorSpace", "build_index"]

LargeKind: TypeAlias = Literal["hnsw", "pca", "ivf"]
"""The index a partition above ``exact_max`` gets (ADR 0004)."""


def large_kind(large: LargeKind) -> IndexKind:
    """The kind :func:`build_index` builds for ``large``: ``"hnsw"`` needs hnswlib (else ``"pca"``)."""
    if large == "hnsw" and not HNSWIndex.available():
        return "pca"
    return large


def build_index(
    dim: int,
    keys: npt.ArrayLike,
    vectors: npt.ArrayLike,
    *,
    exact_max: int = EXACT_MAX,
    large: LargeKind = "hnsw",
) -> VectorIndex:
    """An :class:`ExactIndex` for up to ``exact_max`` vectors; above, the ``large`` kind: by default an
    :class:`HNSWIndex` when hnswlib is installed (``habitus[vectors]``; the fastest searches, minutes
    to build at a million vectors), else a :class:`PCAIndex` (near-exact, built in seconds);
    ``"pca"`` a :class:`PCAIndex`; ``"ivf"`` an :class:`IVFIndex`."""
    k, v = _check_batch(keys, vectors, dim)
    if len(k) <= exact_max:
        return ExactIndex(dim, k, v)
    kind = large_kind(large)
    if kind == "hnsw":
        return HNSWIndex(dim, k, v)
    if kind == "ivf":
        return IVFIndex(dim, k, v)
    return PCAIndex(dim, k, v)


@dataclass(frozen=True)
class PartitionStats:
    """One loaded partition, as :meth:`VectorSpace.stats` reports it."""

    kind: IndexKind
    size: int
    build_seconds: float
    """How long the current index took to build (training and calibration included)."""
    rebuilding: bool
    """Whether a new index (another kind, or a retrained one) is being built in the background."""


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
    """One vector index per partition, loaded on first search, exact or not by size.

    A partition is loaded by ``load(partition) -> (keys, vectors)`` the first time it is
    searched, once, however many threads ask at the same time (they wait for the one
    loading). A partition never searched costs nothing: writes to it are ignored, since
    ``load`` will read them from the store. Writes that arrive while a partition is being
    loaded or rebuilt are applied to the index in service and replayed onto the new one,
    so the caller must have committed a write to the store before calling :meth:`add` or
    :meth:`remove` (replaying a write the loader already saw is harmless).

    A partition above ``exact_max`` vectors gets the ``large`` kind of index (see
    :func:`build_index`), one at or below half of it an exact one (the gap keeps a partition
    from flapping), and a PCA or IVF index that has doubled since it was trained is
    retrained. That build runs on a background thread (or inline if ``background`` is
    false) while the old index keeps answering. A graph takes minutes to build at a million
    vectors, so a large partition's first load builds a :class:`PCAIndex` (seconds) to
    answer while its graph is built in the background.
    """

    def __init__(
        self,
        dim: int,
        load: Loader,
        *,
        exact_max: int = EXACT_MAX,
        large: LargeKind = "hnsw",
        background: bool = True,
    ) -> None:
        """A space of ``dim``-long vectors whose partitions come from ``load``."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim!r}")
        self.dim = dim
        self._load = load
        self._exact_max = exact_max
        self._large: LargeKind = large
        self._target = large_kind(large)
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

    def vectors_of(self, partitions: Sequence[str], keys: Sequence[int]) -> dict[int, npt.NDArray[np.float32]]:
        """``key -> vector`` for those of ``keys`` that the loaded indexes of ``partitions`` hold and
        find cheaply (see :meth:`~habitus.memory._vectors.VectorIndex.vectors_of`); never loads one."""
        out: dict[int, npt.NDArray[np.float32]] = {}
        wanted = np.asarray(list(keys), dtype=np.int64)
        for name in dict.fromkeys(partitions):
            if not len(wanted):
                break
            with self._lock:
                part = self._parts.get(name)
                index = part.index if part is not None else None
            if index is None:
                continue
            found, vectors = index.vectors_of(wanted)
            out.update(zip(found.tolist(), vectors, strict=True))
            wanted = wanted[~np.isin(wanted, found)]
        return out

    def add(self, partition: str, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add ``vectors[i]`` under ``keys[i]`` to ``partition`` (replacing a key already there).

        Cheap enough for the event loop: it never loads a partition, and a rebuild it
        triggers runs on a background thread.

        Raises:
            ValueError: keys and vectors differ in length, a vector is not ``dim`` long or
                holds NaN or infinity, or keys are not integers.
        """
        k, v = _check_batch(keys, vectors, self.dim)
        self._write(partition, ("add", k, v))

    def remove(self, partition: str, keys: Sequence[int] | npt.ArrayLike) -> None:
        """Remove ``keys`` from ``partition``; unknown keys are ignored. Searches that start after never return them."""
        self._write(partition, ("remove", _as_keys(keys), None))

    def _write(self, partition: str, op: _Op) -> None:
        """Apply ``op`` to a loaded partition (and journal it while a new index is built)."""
        if not len(op[1]):
            return
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                return
            if part.journal is not None:
                part.journal.append(op)
            if part.index is not None:
                _apply(part.index, op)
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
            # A graph would keep the first search waiting for minutes: a PCA index answers until it is built.
            first: LargeKind = "pca" if self._target == "hnsw" and self._background else self._large
            index = build_index(self.dim, keys, vectors, exact_max=self._exact_max, large=first)
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
        for op in part.journal or ():
            _apply(index, op)
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
            trained = index.trained_size if isinstance(index, IVFIndex | PCAIndex) else size
            due = size >= _RETRAIN_GROWTH * trained or size <= self._exact_max // 2 or index.kind != self._target
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
            index = build_index(self.dim, keys, vectors, exact_max=self._exact_max, large=self._large)
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


def _apply(index: VectorIndex, op: _Op) -> None:
    """One journalled write, applied to ``index``."""
    kind, keys, vectors = op
    if kind == "add" and vectors is not None:
        index.add(keys, vectors)
    else:
        index.remove(keys)
