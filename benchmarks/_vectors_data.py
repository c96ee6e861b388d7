"""Synthetic embeddings that look like all-MiniLM-L6-v2's, for the vector index benchmark and tests.

Real sentence embeddings are not uniform on the sphere, and an approximate index that
is tuned on uniform vectors is tuned for the wrong problem. Three things shape them and
are reproduced here:

* a common direction that every embedding leans towards (the mean of 600 real ones has
  norm 0.30), so unrelated sentences still score about 0.09;
* a decaying spectrum: variance spreads over about 70 effective dimensions out of 384
  (the participation ratio of the covariance's eigenvalues), modelled as variance
  ``i ** -0.7`` on axis ``i`` in a random order;
* clusters of very different sizes and tightness: a few near-duplicates, many loose
  topics. Cluster sizes are drawn from a heavy-tailed (Pareto) law, about 10 vectors per
  cluster on average, and each cluster's spread varies log-normally.

Fit (600 vectors, mean of 5 seeds, vs 600 real embeddings): pairwise cosine mean 0.10 (real 0.09),
standard deviation 0.11 (0.11); top-1 neighbour quartiles 0.48 / 0.60 / 0.72 (0.51 / 0.61 / 0.72);
top-10 quartiles 0.28 / 0.34 / 0.51 (0.32 / 0.37 / 0.42). The upper top-10 quartile is too high:
some synthetic clusters are tighter than any real topic, which if anything flatters an index.

:func:`vectors_around` draws the same way around given centres instead of random ones: real
embeddings of texts, so that real questions land near the stored vectors about what they ask
(``benchmarks/recall.py --regime texts``).

The parameters were fitted by grid search so that, at 600 vectors, the pairwise and
nearest-neighbour similarity quartiles match those of 600 real embeddings (the first
sentences of standard-library docstrings, a varied, real English corpus); the benchmark
measures both again in every run (``calibration`` in its JSON).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["PER_CLUSTER", "clustered_vectors", "queries_near", "similarity_profile", "vectors_around"]

PER_CLUSTER = 10
"""Vectors per cluster on average when ``clusters`` is not given."""

_ALPHA = 0.7  # spectrum decay
_LEAN = 0.45  # weight of the common direction
_CENTRE = 1.0  # spread of the cluster centres around it
_SPREAD = 1.0  # median spread of a cluster's members around its centre
_SPREAD_SIGMA = 0.4  # log-normal variation of that spread between clusters
_PARETO = 5.0  # tail of the cluster sizes (Pareto shape): a few clusters several times the mean
_CHUNK = 65_536


class _Model(NamedTuple):
    lean: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]
    centres: npt.NDArray[np.float32]
    spread: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float64]


def _model(dim: int, clusters: int, seed: int) -> _Model:
    rng = np.random.default_rng([seed, 0])
    variance = np.arange(1, dim + 1, dtype=np.float64) ** -_ALPHA
    scale = np.sqrt(variance / variance.sum()).astype(np.float32)[rng.permutation(dim)]
    lean = rng.standard_normal(dim).astype(np.float32)
    lean *= _LEAN / np.linalg.norm(lean)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale * _CENTRE
    spread = (_SPREAD * np.exp(_SPREAD_SIGMA * rng.standard_normal(clusters))).astype(np.float32)
    weights = rng.pareto(_PARETO, clusters) + 1.0
    return _Model(lean, scale, centres, spread, weights / weights.sum())


def _draw(model: _Model, n: int, rng: np.random.Generator, noise: float = 1.0) -> npt.NDArray[np.float32]:
    out = np.empty((n, len(model.scale)), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        which = rng.choice(len(model.weights), size=m, p=model.weights)
        x = rng.standard_normal((m, len(model.scale)), dtype=np.float32)
        x *= model.scale
        x *= (model.spread[which] * noise)[:, None]
        x += model.centres[which]
        x += model.lean
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def clustered_vectors(n: int, dim: int = 384, *, clusters: int | None = None, seed: int = 0) -> npt.NDArray[np.float32]:
    """``n`` L2-normalised ``float32`` vectors drawn around ``clusters`` centres (``n // 10`` by default).

    Deterministic: the same arguments give the same vectors.
    """
    model = _model(dim, clusters or max(1, n // PER_CLUSTER), seed)
    return _draw(model, n, np.random.default_rng([seed, 1]))


def queries_near(
    count: int, n: int, dim: int = 384, *, clusters: int | None = None, seed: int = 0, query_seed: int = 1
) -> npt.NDArray[np.float32]:
    """``count`` query vectors for the corpus ``clustered_vectors(n, dim, clusters=..., seed=seed)``.

    Queries are fresh draws from the same clusters, a little looser (spread times 1.2: a
    question is phrased unlike the memory it should find), so none is a stored vector.
    """
    model = _model(dim, clusters or max(1, n // PER_CLUSTER), seed)
    return _draw(model, count, np.random.default_rng([seed, 2, query_seed]), noise=1.2)


def vectors_around(
    centres: npt.NDArray[np.float32], n: int, *, seed: int = 0, noise: float = 1.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """``n`` vectors drawn around the rows of ``centres`` (real embeddings), and the row each was drawn around.

    The same recipe as :func:`clustered_vectors` with real embeddings for the centres: each
    centre draws members in proportion to a Pareto weight, with its own log-normal spread and
    the fitted spectrum. The fitted centres have norm about ``sqrt(_CENTRE ** 2 + _LEAN ** 2)``
    before normalising, real embeddings norm 1, so the spread is divided by that norm: a member
    sits at the same cosine to its centre (about 0.74 at the median spread) in both. Members
    of one centre stand for different memories about the same thing; which memories exist,
    and so where real questions land among them, comes from the real texts.
    """
    c = np.ascontiguousarray(centres, dtype=np.float32)
    if c.ndim != 2 or not len(c):
        raise ValueError(f"centres must be a non-empty (m, dim) array, got shape {c.shape}")
    rng = np.random.default_rng([seed, 3])
    dim = c.shape[1]
    variance = np.arange(1, dim + 1, dtype=np.float64) ** -_ALPHA
    scale = np.sqrt(variance / variance.sum()).astype(np.float32)[rng.permutation(dim)]
    relative = noise / float(np.hypot(_CENTRE, _LEAN))
    spread = (relative * _SPREAD * np.exp(_SPREAD_SIGMA * rng.standard_normal(len(c)))).astype(np.float32)
    weights = rng.pareto(_PARETO, len(c)) + 1.0
    which = rng.choice(len(c), size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        rows = which[start : start + _CHUNK]
        x = rng.standard_normal((len(rows), dim), dtype=np.float32)
        x *= scale
        x *= spread[rows][:, None]
        x += c[rows]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + len(rows)] = x
    return out, which


def similarity_profile(
    queries: npt.NDArray[np.float32], corpus: npt.NDArray[np.float32], *, same: bool = False
) -> dict[str, float]:
    """Quartiles of each query's top-1 and top-10 cosine to ``corpus`` (``same``: queries are the corpus)."""
    top1: list[npt.NDArray[np.float32]] = []
    top10: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(queries), 256):
        s = queries[start : start + 256] @ corpus.T
        if same:
            s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        best = -np.partition(-s, 9, axis=1)[:, :10]
        best.sort(axis=1)
        top1.append(best[:, -1])
        top10.append(best[:, 0])
    t1, t10 = np.concatenate(top1), np.concatenate(top10)
    out: dict[str, float] = {}
    for name, values in (("top1", t1), ("top10", t10)):
        for q in (25, 50, 75):
            out[f"{name}_p{q}"] = round(float(np.percentile(values, q)), 3)
    return out
