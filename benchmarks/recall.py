"""Recall benchmark: a million memories across a thousand agents, plus one agent holding a million itself.

Everything goes through the public API (``remember_many``, ``recall``) of a habitat on disk.

* Corpus: ``--memories`` N (1,000,000) memories spread over 1,000 agents, plus N held by one
  agent. Texts are real English: sentences of the LoCoMo conversations in ``--data`` recombined
  (half of one turn + half of another), with a speaker, a world time over two years and a
  thread of 20 memories, so the full-text index is real. Embedding 2N texts on two cores
  would take hours, so the STORED vectors are synthetic; every QUERY is real text embedded
  by the real model inside ``recall``.
* ``--regime texts`` (the default): ``--centres`` C (10,000) texts made that way are embedded
  with the real model (``centres_embed_s``), and every stored vector is drawn around one of
  those embeddings with the spread ``_vectors_data`` fits to MiniLM
  (``_vectors_data.vectors_around``); the memory gets that centre's text and speaker, so its
  vector and its full text agree, and a question lands near the memories about what it
  asks, as with real memories. ``--regime random``: the earlier data, clusters around random
  centres (``_vectors_data.clustered_vectors``) with unrelated texts; real questions land far
  from every cluster (their best cosine is about 0.23, against 0.52 in ``texts``), where every
  similarity is alike and no index short of a full scan reaches 0.95 of the exact top 10.
  ``other_regime`` measures the PCA index alone on N vectors of the other regime in the
  same run (build, search, brute force, recall against it), so both are reported (a graph
  there would add minutes to the run).
* ``p50_ms``/``p95_ms``: ``recall(question, k=10, mode="dense")`` on the big agent, end to end
  through the API (embedding the query with the real model, the vector index, ranking, fetching
  the rows, appending its ``memory.recalled`` event): the path the target and the exact
  baseline are about. ``hybrid_p50_ms``/``hybrid_p95_ms``: the default ``mode="hybrid"``, which adds
  the two full-text searches. ``small_p50_ms``/``small_p95_ms``: hybrid recall on random
  1,000-memory agents.
* ``exact_p50_ms``/``exact_p95_ms``: embedding the same question plus brute-force numpy (one
  matrix product over the big agent's N vectors and a top-10) in the same run.
* ``recall_vs_exact``: |top-10 of the vector index ∩ exact top-10| / 10, for the same real query
  vectors; ``recall_vs_exact_near`` the same for synthetic queries drawn near the clusters
  (around the same centres, spread 1.2 times wider).
* ``index_build_s``: loading the big agent's vectors and building its first index (the first
  search waits for it): with ``--large hnsw`` (the default, as in the library) a PCA index,
  which answers while the graph is built in the background; ``graph_build_s`` is that build,
  which the run waits for before measuring. ``pca_alone``: the PCA index alone on the same
  vectors and queries (search and brute-force times, recall), so both indexes are measured
  in one run. ``--large pca`` keeps the PCA index throughout.
* ``profile``: quartiles of the real questions' top-1 and top-10 cosine to the big agent's
  vectors, beside (``_centres``) the same to the real embeddings of the centre texts.
* ``write_overhead``: remembering 1,024 real texts with the real model in batches of 128,
  over the model alone embedding the same texts in the same batches (0.10 = 10% more);
  best of three of each, alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from _common import log, pct
from _vectors_data import clustered_vectors, queries_near, similarity_profile, vectors_around
from habitus import Habitat, Settings
from habitus.memory import Embedder, LocalEmbedder
from habitus.memory._space import LargeKind, VectorSpace, build_index
from habitus.storage._memory import label

AGENTS = 1000
K = 10
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/locomo-dev"
_FALLBACK = (
    "We went hiking by the lake last weekend and saw a heron. My sister started painting landscapes again. "
    "The bakery on the corner closed for the winter. I finally finished that novel about the lighthouse. "
    "Our team won the charity football match on Sunday. The garden needs watering twice a week in summer."
)


class BenchEmbedder:
    """The real model for queries; pre-drawn synthetic vectors while the corpus is stored."""

    def __init__(self, real: Embedder) -> None:
        self.real = real
        self.queue: np.ndarray[Any, Any] | None = None  # vectors for the texts being stored, in order

    @property
    def name(self) -> str:
        return self.real.name

    @property
    def dim(self) -> int:
        return self.real.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        if self.queue is not None and len(self.queue):
            out, self.queue = self.queue[: len(texts)], self.queue[len(texts) :]
            assert len(out) == len(texts)
            return out
        return self.real.embed(texts)


def sentences(data: Path) -> tuple[list[str], list[str]]:
    """Turn texts and questions of the LoCoMo files in ``data`` (a fallback text without them)."""
    turns: list[str] = []
    questions: list[str] = []
    for path in sorted(data.glob("*.json")) if data.exists() else []:
        d = json.loads(path.read_text(encoding="utf-8"))
        for key, value in d.items():
            if re.fullmatch(r"session_\d+", key):
                turns.extend(t["text"] for t in value)
        questions.extend(q["question"] for q in d.get("qa", []) if q.get("category") != 5)
    if not turns:
        turns = [s.strip() + "." for s in _FALLBACK.split(".") if s.strip()]
        questions = ["Where did we go hiking?", "What did my sister start again?", "Who won the football match?"]
    return turns, questions


NAMES = ["Ada", "Bo", "Cyra", "Dev", "Elin", "Farid", "Gia", "Hana", "Ivo", "Jun"]


def recombined(turns: list[str], rng: random.Random) -> str:
    """Half of one turn and half of another: real English, but not a sentence of the conversations."""
    a, b = rng.choice(turns), rng.choice(turns)
    return a[: max(1, len(a) // 2)] + " " + b[len(b) // 2 :]


class Corpus:
    """Where stored vectors and texts come from: ``texts`` (around real embeddings of the texts) or ``random``."""

    def __init__(self, regime: str, turns: list[str], centres: int, real: Embedder) -> None:
        self.regime = regime
        self.turns = turns
        self.rng = random.Random(7)
        self.embed_s = 0.0
        self.texts: list[tuple[str, str]] = []  # (speaker, text) of each centre
        self.centres = np.zeros((0, real.dim), dtype=np.float32)
        if regime == "texts":
            pick = random.Random(5)
            self.texts = [(NAMES[i % len(NAMES)], recombined(turns, pick)) for i in range(centres)]
            t0 = time.perf_counter()
            self.centres = real.embed([label(speaker, text) for speaker, text in self.texts])
            self.embed_s = time.perf_counter() - t0

    def vectors(self, n: int, seed: int, clusters: int | None = None) -> tuple[np.ndarray[Any, Any], list[int] | None]:
        """``n`` stored vectors, and (``texts``) the centre each was drawn around."""
        if self.regime == "texts":
            vectors, which = vectors_around(self.centres, n, seed=seed)
            return vectors, which.tolist()
        return clustered_vectors(n, seed=seed, clusters=clusters), None

    def near_queries(self, count: int, n: int) -> np.ndarray[Any, Any]:
        """Synthetic queries near the stored vectors: fresh draws around the same centres, 1.2 times looser."""
        if self.regime == "texts":
            return vectors_around(self.centres, count, seed=9, noise=1.2)[0]
        return queries_near(count, n, seed=1)

    def items(self, n: int, start: datetime, which: list[int] | None) -> list[dict[str, Any]]:
        """``n`` memories: a centre's text and speaker (``texts``) or a fresh recombined text (``random``)."""
        items = []
        for i in range(n):
            if which is not None:
                speaker, text = self.texts[which[i]]
            else:
                speaker, text = NAMES[i % len(NAMES)], recombined(self.turns, self.rng)
            items.append(
                {
                    "text": text,
                    "at": start + timedelta(minutes=i * 1051 % (730 * 24 * 60)),
                    "kind": "message",
                    "thread": f"t{i // 20}",
                    "meta": {"speaker": speaker},
                }
            )
        return items


async def ingest(
    hab: Habitat, emb: BenchEmbedder, n: int, corpus: Corpus
) -> tuple[np.ndarray[Any, Any], dict[int, int], float]:
    """Store the corpus; return the big agent's vectors, its memories' keys to their rows there, and the time."""
    start = datetime(2023, 1, 1, tzinfo=UTC)
    per = max(1, n // AGENTS)
    t0 = time.perf_counter()
    for a in range(AGENTS):
        agent = f"a{a:04d}"
        await hab.agents.spawn(agent, behaviour="bench")
        vectors, which = corpus.vectors(per, seed=1000 + a, clusters=max(1, per // 10))
        emb.queue = vectors
        await hab.memory(agent).remember_many(corpus.items(per, start, which))
        if a % 100 == 99:
            log(f"  {a + 1} small agents stored ({(a + 1) * per:,} memories, {time.perf_counter() - t0:.0f}s)")
    await hab.agents.spawn("big", behaviour="bench")
    big_vectors, big_which = corpus.vectors(n, seed=1)
    batch = 5000
    mem = hab.memory("big")
    position: dict[int, int] = {}
    for s in range(0, n, batch):
        chunk = big_vectors[s : s + batch]
        emb.queue = chunk
        records = await mem.remember_many(
            corpus.items(len(chunk), start, big_which[s : s + batch] if big_which else None)
        )
        position.update((r.seq, s + j) for j, r in enumerate(records))
        if (s // batch) % 40 == 39:
            log(f"  big agent: {s + len(chunk):,} memories ({time.perf_counter() - t0:.0f}s)")
    return big_vectors, position, time.perf_counter() - t0


def exact_top(vectors: np.ndarray[Any, Any], query: np.ndarray[Any, Any]) -> set[int]:
    """Rows of the exact top ``K`` by dot product."""
    return {int(i) for i in np.argpartition(-(vectors @ query), K)[:K]}


def index_alone(
    vectors: np.ndarray[Any, Any], queries: np.ndarray[Any, Any], near: np.ndarray[Any, Any], large: LargeKind
) -> dict[str, Any]:
    """An index alone over ``vectors``: build, search and brute-force times, recall against brute force."""
    keys = np.arange(len(vectors), dtype=np.int64)
    t0 = time.perf_counter()
    index = build_index(vectors.shape[1], keys, vectors, large=large)
    out: dict[str, Any] = {"kind": index.kind, "build_s": round(time.perf_counter() - t0, 2)}
    search: list[float] = []
    brute: list[float] = []
    overlaps: list[float] = []
    for q in queries:
        t0 = time.perf_counter()
        found = index.search(q, K)[0]
        search.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        truth = exact_top(vectors, q)
        brute.append(time.perf_counter() - t0)
        overlaps.append(len(truth & set(found.tolist())) / K)
    out["search_p50_ms"], out["search_p95_ms"] = pct(search, 0.5), pct(search, 0.95)
    out["brute_p50_ms"], out["brute_p95_ms"] = pct(brute, 0.5), pct(brute, 0.95)
    out["recall_vs_exact"] = round(float(np.mean(overlaps)), 4)
    near_overlap = [len(exact_top(vectors, q) & set(index.search(q, K)[0].tolist())) / K for q in near]
    out["recall_vs_exact_near"] = round(float(np.mean(near_overlap)), 4)
    out["profile"] = similarity_profile(queries, vectors)
    return out


async def write_overhead(real: Embedder, turns: list[str], tmp: Path) -> dict[str, float]:
    texts = [f"{t} ({i})" for i, t in enumerate(turns[:1024])]
    while len(texts) < 1024:
        texts.append(f"{turns[len(texts) % len(turns)]} #{len(texts)}")
    batches = [texts[i : i + 128] for i in range(0, len(texts), 128)]
    real.embed(["warm up"])
    alone: list[float] = []
    stored: list[float] = []
    for round_ in range(3):
        t0 = time.perf_counter()
        for b in batches:
            real.embed(b)
        alone.append(time.perf_counter() - t0)
        settings = Settings.resolve(config_file=None, environ={}, path=tmp / f"w{round_}")
        async with await Habitat.init(settings.path, settings=settings) as hab:
            hab.use_embedder(real)
            await hab.agents.spawn("writer", behaviour="bench")
            mem = hab.memory("writer")
            t0 = time.perf_counter()
            for b in batches:
                await mem.remember_many(b)
            stored.append(time.perf_counter() - t0)
    return {
        "write_overhead": round(min(stored) / min(alone) - 1, 4),
        "write_embed_alone_s": round(min(alone), 3),
        "write_remember_s": round(min(stored), 3),
        "write_texts": len(texts),
    }


async def run(
    n: int, data: Path, queries: int, skip_write: bool, regime: str, centres: int, large: LargeKind
) -> dict[str, Any]:
    turns, questions = sentences(data)
    rng = random.Random(11)
    asked = [rng.choice(questions) for _ in range(queries)]
    real = LocalEmbedder()
    real.embed(["load the model"])
    out: dict[str, Any] = {
        "memories": n,
        "agents": AGENTS + 1,
        "embedder": real.name,
        "cores": os.cpu_count(),
        "regime": regime,
        "load_avg_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("HABITUS_BENCH_DIR")) as tmp_dir:
        tmp = Path(tmp_dir)
        if not skip_write:
            log("write path: real model alone vs remember_many")
            out.update(await write_overhead(real, turns, tmp))
            log(f"write overhead {out['write_overhead']:+.3f}")
        if regime == "texts":
            log(f"embedding {centres:,} texts for the stored vectors to be drawn around")
        corpus = Corpus(regime, turns, centres, real)
        if regime == "texts":
            out["centres"] = centres
            out["centres_embed_s"] = round(corpus.embed_s, 1)
            log(f"embedded {centres:,} centre texts in {corpus.embed_s:.0f}s")
        settings = Settings.resolve(config_file=None, environ={}, path=tmp / "habitat")
        async with await Habitat.init(settings.path, settings=settings) as hab:
            emb = BenchEmbedder(real)
            hab.use_embedder(emb)
            hab.memories._space = VectorSpace(real.dim, hab.memories._load_scope, large=large)
            log(f"storing {n:,} memories over {AGENTS} agents and {n:,} in one agent")
            big_vectors, rows, ingest_s = await ingest(hab, emb, n, corpus)
            out["ingest_s"] = round(ingest_s, 1)
            out["ingest_per_s"] = round(2 * n / ingest_s)
            log(f"stored {2 * n:,} memories in {ingest_s:.0f}s")
            space = hab.memories._vectors()
            assert space is not None
            big = "agent:big"
            t0 = time.perf_counter()
            space.search([big], big_vectors[0], K)
            out["index_build_s"] = round(time.perf_counter() - t0, 2)
            stats = space.stats()[big]
            out["first_index_kind"] = stats.kind
            log(
                f"big agent's first index: {stats.kind}, {stats.size:,} vectors, "
                f"in service after {out['index_build_s']}s"
            )
            if stats.rebuilding:
                t0 = time.perf_counter()
                space.wait()
                stats = space.stats()[big]
                out["graph_build_s"] = round(stats.build_seconds, 1)
                log(f"its {stats.kind} built in the background in {stats.build_seconds:.0f}s")
            out["index_kind"] = stats.kind
            mem = hab.memory("big")
            for q in asked[:5]:  # warm up: caches, statistics samples
                await mem.recall(q, k=K)
            lat: list[float] = []
            hybrid: list[float] = []
            for q in asked:
                t0 = time.perf_counter()
                await mem.recall(q, k=K, mode="dense")
                lat.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await mem.recall(q, k=K)
                hybrid.append(time.perf_counter() - t0)
            out["p50_ms"], out["p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
            out["hybrid_p50_ms"], out["hybrid_p95_ms"] = pct(hybrid, 0.5), pct(hybrid, 0.95)
            small_lat: list[float] = []
            for q in asked:
                agent = f"a{rng.randrange(AGENTS):04d}"
                t0 = time.perf_counter()
                await hab.memory(agent).recall(q, k=K)
                small_lat.append(time.perf_counter() - t0)
            out["small_p50_ms"], out["small_p95_ms"] = pct(small_lat, 0.5), pct(small_lat, 0.95)
            log(
                f"recall p50 {out['p50_ms']} ms, p95 {out['p95_ms']} ms; hybrid {out['hybrid_p50_ms']} / "
                f"{out['hybrid_p95_ms']} ms; small agents {out['small_p50_ms']} / {out['small_p95_ms']} ms"
            )
            exact_lat: list[float] = []
            overlaps: list[float] = []
            query_vectors = []
            for q in asked:
                t0 = time.perf_counter()
                qv = real.embed([q])[0]
                scores = big_vectors @ qv
                top = np.argpartition(-scores, K)[:K]
                exact_lat.append(time.perf_counter() - t0)
                query_vectors.append(qv)
                exact_keys = {int(i) for i in top}
                found = space.search([big], qv, K)
                overlaps.append(len(exact_keys & {rows[key] for key, _ in found}) / K)
            out["exact_p50_ms"], out["exact_p95_ms"] = pct(exact_lat, 0.5), pct(exact_lat, 0.95)
            out["recall_vs_exact"] = round(float(np.mean(overlaps)), 4)
            near = corpus.near_queries(200, n)
            near_overlap = []
            for qv in near:
                found = space.search([big], qv, K)
                near_overlap.append(len(exact_top(big_vectors, qv) & {rows[key] for key, _ in found}) / K)
            out["recall_vs_exact_near"] = round(float(np.mean(near_overlap)), 4)
            out["queries"] = len(asked)
            qvs = np.stack(query_vectors)
            out["profile"] = similarity_profile(qvs, big_vectors)
            if regime == "texts":
                out["profile_centres"] = similarity_profile(qvs, corpus.centres)
            log(f"exact p50 {out['exact_p50_ms']} ms; recall vs exact {out['recall_vs_exact']}")
            if out["index_kind"] != "pca":
                out["pca_alone"] = index_alone(big_vectors, qvs, near, "pca")
                log(f"PCA index alone: {out['pca_alone']}")
    del big_vectors
    other = "random" if regime == "texts" else "texts"
    log(f"the index alone on {n:,} vectors of the {other!r} regime")
    other_corpus = Corpus(other, turns, centres, real)
    vectors, _ = other_corpus.vectors(n, seed=1)
    out["other_regime"] = {"regime": other, **index_alone(vectors, qvs, other_corpus.near_queries(200, n), "pca")}
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="200,000 memories, 50 queries, 2,000 centres")
    parser.add_argument(
        "--regime",
        choices=["texts", "random"],
        default="texts",
        help="stored vectors around real embeddings of their texts (default) or around random centres",
    )
    parser.add_argument("--centres", type=int, default=10_000, help="texts embedded as centres (--regime texts)")
    parser.add_argument(
        "--large",
        choices=["hnsw", "pca"],
        default="hnsw",
        help="the big agent's index: a graph (a PCA index until it is built; the default) or PCA throughout",
    )
    parser.add_argument("--no-write", action="store_true", help="skip the write-overhead measurement")
    parser.add_argument("--json", action="store_true", help="print the JSON on one line")
    args = parser.parse_args()
    n, queries, centres = (200_000, 50, 2_000) if args.quick else (args.memories, args.queries, args.centres)
    result = asyncio.run(run(n, args.data, queries, args.no_write, args.regime, centres, args.large))
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
