"""The vector indexes behind memory recall: exact, PCA, IVF and graph indexes, and the per-partition space."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from habitus.memory import _space
from habitus.memory._hnsw import HNSWIndex
from habitus.memory._pca import PCAIndex
from habitus.memory._space import VectorSpace
from habitus.memory._vectors import ExactIndex, IVFIndex

BIG_KIND = "hnsw" if HNSWIndex.available() else "pca"  # what a partition past the threshold becomes

DIM = 384
F32 = npt.NDArray[np.float32]


def clustered(n: int, *, clusters: int = 200, seed: int = 0, spread: float = 1.0) -> F32:
    """Normalised vectors around random centres: neighbours are structured, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((clusters, DIM)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def spectral(n: int, *, topics: int = 2_000, seed: int = 0) -> F32:
    """Vectors like sentence embeddings: topics and scatter on a decaying spectrum, so the
    principal axes carry much of a similarity but not all of it (a first pass that scores
    only 40 candidates exactly finds 0.86 of the top 10 here)."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, DIM + 1, dtype=np.float32) ** -0.5)[np.random.default_rng(7).permutation(DIM)]
    centres = np.random.default_rng(54321).standard_normal((topics, DIM)).astype(np.float32) * scale
    x = centres[rng.integers(0, topics, n)] + rng.standard_normal((n, DIM)).astype(np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def brute_top(corpus: F32, keys: npt.NDArray[np.int64], query: F32, k: int) -> list[int]:
    scores = corpus @ query
    return [int(key) for key in keys[np.argsort(-scores, kind="stable")[:k]]]


def keys_of(result: tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]) -> list[int]:
    return [int(key) for key in result[0]]


@pytest.fixture(scope="module")
def corpus() -> tuple[npt.NDArray[np.int64], F32]:
    vectors = clustered(30_000, clusters=1_000)  # fine enough that one list is not enough
    return np.arange(1_000, 1_000 + len(vectors), dtype=np.int64), vectors


@pytest.fixture(scope="module")
def ivf(corpus: tuple[npt.NDArray[np.int64], F32]) -> IVFIndex:
    return IVFIndex(DIM, *corpus)


def test_exact_index_returns_the_true_top_k_best_first() -> None:
    vectors = clustered(2_000, seed=1)
    keys = np.arange(2_000, dtype=np.int64) * 7
    index = ExactIndex(DIM, keys, vectors)
    for query in clustered(20, seed=2):
        got_keys, got_scores = index.search(query, 25)
        assert keys_of((got_keys, got_scores)) == brute_top(vectors, keys, query, 25)
        assert list(got_scores) == sorted(got_scores, reverse=True)
    assert len(index) == 2_000
    assert index.kind == "exact"


def test_exact_index_returns_everything_when_k_exceeds_its_size() -> None:
    vectors = clustered(5, seed=3)
    index = ExactIndex(DIM, np.arange(5), vectors)
    assert sorted(keys_of(index.search(vectors[0], 50))) == [0, 1, 2, 3, 4]


def test_ivf_reaches_095_recall_at_10_against_exact(corpus: tuple[npt.NDArray[np.int64], F32], ivf: IVFIndex) -> None:
    keys, vectors = corpus
    queries = clustered(200, clusters=1_000, seed=99)  # fresh draws, not stored vectors
    hits = sum(len(set(keys_of(ivf.search(q, 10))) & set(brute_top(vectors, keys, q, 10))) for q in queries)
    assert hits / (10 * len(queries)) >= 0.95
    assert ivf.nprobe < ivf.nlist  # it is not secretly exact


def test_single_adds_grow_the_exact_index_and_are_found() -> None:
    index = ExactIndex(DIM)
    vectors = clustered(300, seed=4)
    for key, vector in enumerate(vectors):
        index.add([key], vector[None, :])
    assert len(index) == 300
    for key in (0, 150, 299):
        assert keys_of(index.search(vectors[key], 1)) == [key]


def test_adds_after_training_are_found(ivf: IVFIndex) -> None:
    new = clustered(500, seed=5)
    new_keys = np.arange(10_000_000, 10_000_500, dtype=np.int64)
    ivf.add(new_keys, new)
    try:
        for key, vector in zip(new_keys[:50], new[:50], strict=True):
            assert keys_of(ivf.search(vector, 1)) == [int(key)]
    finally:
        ivf.remove(new_keys)


@pytest.mark.parametrize("kind", ["exact", "ivf", "pca"])
def test_removed_keys_never_come_back(kind: str, corpus: tuple[npt.NDArray[np.int64], F32]) -> None:
    keys, vectors = corpus[0][:5_000], corpus[1][:5_000]
    index: ExactIndex | IVFIndex | PCAIndex
    if kind == "exact":
        index = ExactIndex(DIM, keys, vectors)
    elif kind == "ivf":
        index = IVFIndex(DIM, keys, vectors)
    else:
        index = PCAIndex(DIM, keys, vectors, candidates=150)  # few enough that the first pass decides
    gone = keys[:2_000]  # enough to compact every segment at least once
    for start in range(0, len(gone), 100):
        index.remove(gone[start : start + 100].tolist())
    index.remove([-5, 123_456_789])  # unknown keys are ignored
    assert len(index) == 3_000
    dead = set(gone.tolist())
    for i in range(0, 2_000, 97):
        assert not dead & set(keys_of(index.search(vectors[i], 50)))
    exported_keys, _ = index.export()
    assert sorted(exported_keys.tolist()) == sorted(keys[2_000:].tolist())


def test_re_adding_a_key_replaces_its_vector() -> None:
    vectors = clustered(100, seed=6)
    index = ExactIndex(DIM, np.arange(100), vectors)
    index.add([7], vectors[42][None, :])
    assert len(index) == 100
    top = index.search(vectors[42], 2)
    assert sorted(keys_of(top)) == [7, 42]
    assert np.allclose(top[1], 1.0, atol=1e-5)
    everything_keys, everything_scores = index.search(vectors[7], 100)
    assert list(everything_keys).count(7) == 1  # the old vector is gone, not kept beside the new one
    assert everything_scores[list(everything_keys).index(7)] == pytest.approx(float(vectors[42] @ vectors[7]), abs=1e-5)


def test_a_repeated_key_in_one_batch_keeps_the_last_vector() -> None:
    vectors = clustered(3, seed=7)
    index = ExactIndex(DIM, [1, 1, 2], vectors)
    assert len(index) == 2
    assert keys_of(index.search(vectors[1], 1)) == [1]


def test_search_leaves_out_excluded_keys() -> None:
    vectors = clustered(500, seed=8)
    keys = np.arange(500, dtype=np.int64)
    index = ExactIndex(DIM, keys, vectors)
    best = brute_top(vectors, keys, vectors[0], 13)
    assert keys_of(index.search(vectors[0], 10, exclude=set(best[:3]))) == best[3:]


def _space_loader(
    sizes: dict[str, int], calls: list[str]
) -> tuple[dict[str, tuple[npt.NDArray[np.int64], F32]], VectorSpace]:
    data = {
        name: (np.arange(i * 1_000_000, i * 1_000_000 + n, dtype=np.int64), clustered(n, seed=20 + i))
        for i, (name, n) in enumerate(sizes.items())
    }

    def load(partition: str) -> tuple[npt.NDArray[np.int64], F32]:
        calls.append(partition)
        return data[partition]

    return data, VectorSpace(DIM, load, exact_max=3_000, background=False)


def test_space_loads_each_partition_once_even_when_threads_race() -> None:
    calls: list[str] = []
    release = threading.Event()
    data = {"agent:a": (np.arange(50, dtype=np.int64), clustered(50, seed=9))}

    def slow_load(partition: str) -> tuple[npt.NDArray[np.int64], F32]:
        calls.append(partition)
        release.wait(5)
        return data[partition]

    space = VectorSpace(DIM, slow_load)
    assert space.loaded_partitions == frozenset()
    results: list[list[tuple[int, float]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(space.search(["agent:a"], data["agent:a"][1][3], 1)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == ["agent:a"]
    assert [r[0][0] for r in results] == [3, 3, 3, 3]
    assert space.loaded_partitions == {"agent:a"}


def test_space_never_loads_a_partition_for_a_write() -> None:
    calls: list[str] = []
    _, space = _space_loader({"agent:a": 10}, calls)
    space.add("agent:a", [5], clustered(1, seed=10))
    space.remove("agent:a", [1])
    assert calls == []
    assert space.stats() == {}


def test_space_merges_partitions_best_first() -> None:
    calls: list[str] = []
    data, space = _space_loader({"agent:a": 800, "agent:b": 900, "public": 700}, calls)
    query = clustered(1, seed=11)[0]
    got = space.search(["agent:a", "public", "agent:a"], query, 15)
    keys = np.concatenate([data["agent:a"][0], data["public"][0]])
    vectors = np.concatenate([data["agent:a"][1], data["public"][1]])
    assert [key for key, _ in got] == brute_top(vectors, keys, query, 15)
    assert [score for _, score in got] == sorted((score for _, score in got), reverse=True)
    assert calls == ["agent:a", "public"]


def test_space_switches_to_the_large_index_past_the_threshold_without_losing_or_duplicating_keys() -> None:
    calls: list[str] = []
    data, space = _space_loader({"agent:a": 2_500}, calls)
    space.search(["agent:a"], data["agent:a"][1][0], 1)
    assert space.stats()["agent:a"].kind == "exact"
    extra = clustered(1_000, seed=12)
    extra_keys = np.arange(5_000_000, 5_001_000, dtype=np.int64)
    for start in range(0, 1_000, 100):
        space.add("agent:a", extra_keys[start : start + 100], extra[start : start + 100])
    space.remove("agent:a", data["agent:a"][0][:10])
    stats = space.stats()["agent:a"]
    assert (stats.kind, stats.size) == (BIG_KIND, 3_490)
    got = space.search(["agent:a"], extra[0], 3_490)
    keys = [key for key, _ in got]
    assert len(keys) == len(set(keys))
    assert keys[0] == 5_000_000
    survivors = list(zip(data["agent:a"][0][10:], data["agent:a"][1][10:], strict=True))
    survivors += list(zip(extra_keys, extra, strict=True))
    for key, vector in survivors[::50]:  # every kept key is still there: its own vector finds it
        assert space.search(["agent:a"], vector, 1)[0][0] == key


def test_space_rebuild_in_background_keeps_writes_made_during_it() -> None:
    data = {"agent:a": (np.arange(2_900, dtype=np.int64), clustered(2_900, seed=13))}
    space = VectorSpace(DIM, lambda _: data["agent:a"], exact_max=3_000)
    space.search(["agent:a"], data["agent:a"][1][0], 1)
    more = clustered(300, seed=14)
    space.add("agent:a", np.arange(10_000, 10_200), more[:200])  # crosses the threshold: a rebuild starts
    space.add("agent:a", np.arange(10_200, 10_300), more[200:])  # during (or after) it
    space.remove("agent:a", [0, 10_000])
    space.wait()
    stats = space.stats()["agent:a"]
    assert (stats.kind, stats.size, stats.rebuilding) == (BIG_KIND, 3_198, False)
    assert space.search(["agent:a"], more[299], 1)[0][0] == 10_299
    assert 10_000 not in {key for key, _ in space.search(["agent:a"], more[0], 50)}


def test_removed_keys_stay_gone_after_the_large_index_is_retrained() -> None:
    calls: list[str] = []
    data, space = _space_loader({"agent:a": 3_500}, calls)
    space.search(["agent:a"], data["agent:a"][1][0], 1)
    assert space.stats()["agent:a"].kind == BIG_KIND
    space.remove("agent:a", data["agent:a"][0][:100])
    more = clustered(3_600, seed=15)
    space.add("agent:a", np.arange(7_000_000, 7_003_600), more)  # doubles it: retrained inline
    stats = space.stats()["agent:a"]
    assert (stats.kind, stats.size) == (BIG_KIND, 7_000)
    dead = set(data["agent:a"][0][:100].tolist())
    for i in range(0, 100, 9):
        assert not dead & {key for key, _ in space.search(["agent:a"], data["agent:a"][1][i], 20)}


@pytest.mark.skipif(not HNSWIndex.available(), reason="hnswlib is not installed")
def test_a_large_partition_answers_from_a_pca_index_while_its_graph_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    building = threading.Event()
    release = threading.Event()

    class SlowGraph(HNSWIndex):
        def __init__(self, dim: int, keys: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
            building.set()
            release.wait(10)
            super().__init__(dim, keys, vectors)

    monkeypatch.setattr(_space, "HNSWIndex", SlowGraph)
    data = {"agent:a": (np.arange(4_000, dtype=np.int64), spectral(4_000, seed=17))}
    space = VectorSpace(DIM, lambda _: data["agent:a"], exact_max=3_000)
    vectors = data["agent:a"][1]
    assert space.search(["agent:a"], vectors[5], 1)[0][0] == 5  # answered at once, by the PCA index
    assert building.wait(10)
    stats = space.stats()["agent:a"]
    assert (stats.kind, stats.rebuilding) == ("pca", True)
    space.add("agent:a", [9_000], vectors[7][None, :] * -1.0)  # writes during the build reach the graph too
    space.remove("agent:a", [7])
    release.set()
    space.wait()
    stats = space.stats()["agent:a"]
    assert (stats.kind, stats.size, stats.rebuilding) == ("hnsw", 4_000, False)
    assert space.search(["agent:a"], -vectors[7], 1)[0][0] == 9_000
    assert 7 not in {key for key, _ in space.search(["agent:a"], vectors[7], 20)}


def test_space_drops_a_partition_and_reloads_it_on_the_next_search() -> None:
    calls: list[str] = []
    data, space = _space_loader({"agent:a": 10}, calls)
    space.search(["agent:a"], data["agent:a"][1][0], 1)
    space.drop("agent:a")
    assert space.loaded_partitions == frozenset()
    space.search(["agent:a"], data["agent:a"][1][0], 1)
    assert calls == ["agent:a", "agent:a"]


def test_a_failed_load_is_retried_on_the_next_search() -> None:
    attempts: list[str] = []

    def flaky(partition: str) -> tuple[npt.NDArray[np.int64], F32]:
        attempts.append(partition)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return np.arange(3, dtype=np.int64), clustered(3, seed=16)

    space = VectorSpace(DIM, flaky)
    with pytest.raises(OSError, match="disk hiccup"):
        space.search(["public"], clustered(1)[0], 1)
    assert len(space.search(["public"], clustered(1)[0], 5)) == 3


@pytest.mark.parametrize(
    ("keys", "vectors", "message"),
    [
        ([1, 2], np.zeros((2, 10), np.float32), r"shape \(n, 384\)"),
        ([1, 2, 3], np.zeros((2, DIM), np.float32), "3 keys but 2 vectors"),
        ([1, 2], np.array([[np.nan] * DIM, [0.0] * DIM], np.float32), "key 1 has a non-finite value"),
        ([1, 2], np.array([[0.0] * DIM, [np.inf] * DIM], np.float32), "key 2 has a non-finite value"),
        (["a", "b"], np.zeros((2, DIM), np.float32), "keys must be a 1-D sequence of integers"),
    ],
)
def test_bad_batches_are_refused_with_what_was_wrong(keys: object, vectors: F32, message: str) -> None:
    index = ExactIndex(DIM)
    with pytest.raises(ValueError, match=message):
        index.add(keys, vectors)  # type: ignore[arg-type]
    space = VectorSpace(DIM, lambda _: ([], []))
    with pytest.raises(ValueError, match=message):
        space.add("public", keys, vectors)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "k", "message"),
    [
        (np.zeros(10, np.float32), 5, r"query must have shape \(384,\), got \(10,\)"),
        (np.full(DIM, np.nan, np.float32), 5, "query has a non-finite value"),
        (np.zeros(DIM, np.float32), 0, "k must be a positive integer, got 0"),
        (np.zeros(DIM, np.float32), -3, "k must be a positive integer, got -3"),
    ],
)
def test_bad_searches_are_refused_with_what_was_wrong(query: F32, k: int, message: str) -> None:
    index = ExactIndex(DIM, [1], clustered(1))
    with pytest.raises(ValueError, match=message):
        index.search(query, k)
    space = VectorSpace(DIM, lambda _: ([1], clustered(1)))
    with pytest.raises(ValueError, match=message):
        space.search(["public"], query, k)


def test_an_ivf_needs_vectors_to_train_on() -> None:
    with pytest.raises(ValueError, match="at least 2 vectors to train on, got 1"):
        IVFIndex(DIM, [1], clustered(1))
    with pytest.raises(ValueError, match="at least 2 vectors to find axes in, got 1"):
        PCAIndex(DIM, [1], clustered(1))


def test_pca_index_reaches_095_recall_at_10_scoring_a_fraction_exactly() -> None:
    vectors = spectral(40_000)
    keys = np.arange(7, 7 + len(vectors), dtype=np.int64)
    index = PCAIndex(DIM, keys, vectors)
    assert index.kind == "pca"
    queries = spectral(100, seed=99)  # fresh draws around the same topics, not stored vectors
    assert max(index.candidates_for(q) for q in queries) * 4 < len(vectors)  # a fraction: not secretly exact
    found = [len(set(keys_of(index.search(q, 10))) & set(brute_top(vectors, keys, q, 10))) / 10 for q in queries]
    assert np.mean(found) >= 0.95
    got_keys, got_scores = index.search(queries[0], 10)
    assert np.allclose(got_scores, vectors[got_keys - 7] @ queries[0], atol=1e-5)  # scores are exact
    assert list(got_scores) == sorted(got_scores, reverse=True)


def test_pca_index_gives_a_query_it_cannot_see_more_candidates_up_to_every_row() -> None:
    vectors = spectral(20_000, seed=4)
    keys = np.arange(len(vectors), dtype=np.int64)
    index = PCAIndex(DIM, keys, vectors)
    along = spectral(1, seed=5)[0]  # like the stored vectors: mostly on their principal axes
    centred = vectors[:5_000] - vectors[:5_000].mean(axis=0)
    off = np.linalg.svd(centred, full_matrices=False)[2][-1]  # the direction they vary least along
    blend = (along + 2.0 * off) / np.linalg.norm(along + 2.0 * off)
    assert index.candidates_for(along) < index.candidates_for(blend) <= index.candidates_for(off)
    assert index.candidates_for(off) == len(vectors)  # beyond every calibration query: scored exactly
    assert keys_of(index.search(off, 10)) == brute_top(vectors, keys, off, 10)


def test_pca_index_finds_adds_and_honours_exclusions_after_compaction() -> None:
    vectors = spectral(6_000, seed=1)
    keys = np.arange(6_000, dtype=np.int64)
    index = PCAIndex(DIM, keys, vectors, candidates=200)
    new = spectral(400, seed=2)
    new_keys = np.arange(50_000, 50_400, dtype=np.int64)
    for start in range(0, 400, 50):  # grows past its first capacity
        index.add(new_keys[start : start + 50], new[start : start + 50])
    index.remove(keys[:2_000])  # compacts: projections must stay beside their rows
    assert len(index) == 4_400
    live_keys = np.concatenate([keys[2_000:], new_keys])
    live = np.concatenate([vectors[2_000:], new])
    for key, vector in zip(new_keys[::40], new[::40], strict=True):
        assert keys_of(index.search(vector, 1)) == [int(key)]
    query = spectral(1, seed=3)[0]
    best = brute_top(live, live_keys, query, 13)
    assert keys_of(index.search(query, 10, exclude=set(best[:3]))) == best[3:]
    assert keys_of(PCAIndex(DIM, keys, vectors, candidates=3_000).search(query, 10)) == brute_top(
        vectors, keys, query, 10
    )  # asked for so many candidates that a full scan is cheaper, it scores every row


needs_hnswlib = pytest.mark.skipif(not HNSWIndex.available(), reason="hnswlib is not installed")


@needs_hnswlib
def test_hnsw_reaches_095_recall_at_10_and_takes_adds_and_removals() -> None:
    vectors = clustered(6_000, clusters=600, seed=3)
    keys = np.arange(10, 10 + len(vectors), dtype=np.int64)
    index = HNSWIndex(DIM, keys, vectors)
    queries = clustered(40, clusters=600, seed=4)
    found = [len(set(keys_of(index.search(q, 10))) & set(brute_top(vectors, keys, q, 10))) / 10 for q in queries]
    assert np.mean(found) >= 0.95
    extra = clustered(300, clusters=600, seed=5)
    extra_keys = np.arange(100_000, 100_300, dtype=np.int64)
    index.add(extra_keys, extra)  # grows past its first capacity
    assert len(index) == 6_300
    assert all(keys_of(index.search(v, 1)) == [int(k)] for k, v in zip(extra_keys[::30], extra[::30], strict=True))
    index.remove(keys[:50])
    index.remove([123456789])  # unknown: ignored
    assert len(index) == 6_250
    for k, v in zip(keys[:50:5], vectors[:50:5], strict=True):
        assert int(k) not in keys_of(index.search(v, 20))
    # a removed vector is scrubbed from the graph: exporting shows none of it
    exported_keys, exported = index.export()
    assert set(exported_keys.tolist()) == set(keys[50:].tolist()) | set(extra_keys.tolist())
    assert not np.any(np.all(np.isclose(exported[:, None, :5], vectors[None, :50, :5]), axis=2))
    index.add(keys[:1], vectors[:1])  # re-adding a removed key brings it back
    assert keys_of(index.search(vectors[0], 1)) == [int(keys[0])]


@pytest.mark.parametrize("kind", ["exact", "ivf", "pca", "hnsw"])
def test_vectors_of_returns_the_stored_vectors_of_live_keys_only(kind: str) -> None:
    if kind == "hnsw" and not HNSWIndex.available():
        pytest.skip("hnswlib is not installed")
    vectors = clustered(3_000, seed=31)
    keys = np.arange(10, 3_010, dtype=np.int64)
    index: ExactIndex | IVFIndex | PCAIndex | HNSWIndex
    if kind == "exact":
        index = ExactIndex(DIM, keys, vectors)
    elif kind == "ivf":
        index = IVFIndex(DIM, keys, vectors)
    elif kind == "pca":
        index = PCAIndex(DIM, keys, vectors)
    else:
        index = HNSWIndex(DIM, keys, vectors, ef=64)
    index.remove([10, 11])
    index.add([12], vectors[500][None, :])  # replaced: the new vector, once
    found, got = index.vectors_of([10, 11, 12, 13, 2_000, 99_999])
    by_key = dict(zip(found.tolist(), got, strict=True))
    assert sorted(by_key) == [12, 13, 2_000] and len(found) == 3
    np.testing.assert_array_equal(by_key[12], vectors[500])
    np.testing.assert_array_equal(by_key[13], vectors[3])
    np.testing.assert_array_equal(by_key[2_000], vectors[1_990])


def test_space_vectors_of_reads_only_loaded_partitions_and_never_loads_one() -> None:
    calls: list[str] = []
    data, space = _space_loader({"a": 500, "b": 400}, calls)
    keys_a, vectors_a = data["a"]
    keys_b, _ = data["b"]
    assert space.vectors_of(["a", "b"], [int(keys_a[3]), int(keys_b[4])]) == {}
    assert calls == []
    space.search(["a"], vectors_a[0], 1)
    got = space.vectors_of(["a", "b"], [int(keys_a[3]), int(keys_b[4]), -1])
    assert list(got) == [int(keys_a[3])] and calls == ["a"]
    np.testing.assert_array_equal(got[int(keys_a[3])], vectors_a[3])
