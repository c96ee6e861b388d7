"""Ledger benchmark: each figure is measured beside a plain baseline, in the same run.

* Batched durable append (``append_batched_eps``): ``append_many`` in batches of 1000 drafts
  from 4 concurrent tasks while the big ledger is built, validation, hashing, Merkle tree and
  group commit included; against plain ``sqlite3`` inserting rows of the same shape into a
  table like ``events`` (same unique index on ``id``, WAL, ``synchronous=NORMAL``), one
  transaction per 1000 rows, with ``executemany`` and with one multi-row ``INSERT``.
* One event per commit: sequential ``append`` and 100 concurrent appenders (sharing group
  commits); against ``sqlite3`` inserting one row per transaction.
* ``why(depth=50)`` on 64 causal chains spread through the whole ledger; against a recursive
  CTE over a copy of the ledger's edges (indexed by effect) that fetches the same rows.
* ``verify()`` of the big ledger; against ``hashlib`` hashing as many 200-byte leaves.
* ``inclusion_proof`` of random events (each checked with ``verify_inclusion``); beside its
  synchronous inner part, read straight from the store without thread hops.

Drafts and rows are built before timers start; the bulk drafts are a pool of at most 128
distinct batches submitted in turn. Chain links (0.4% of the events) are built as the run
goes, since each link's cause must be committed first.
Usage: ``python benchmarks/ledger.py [--events N | --quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import habitus
from _common import Timer, fail, log, pct

BATCH = 1000
PRODUCERS = 4
SEEDS = 1000  # committed before timing; the bulk drafts' causes point at them
CHAINS = 64
LINKS = 64  # links per chain, spread evenly through the ledger
DEPTH = 50
KIND = "observation.recorded"
POOL_BATCHES = 128
SINGLE_EVENTS = 3000
CONCURRENT_TASKS = 100
CONCURRENT_EACH = 30
WHY_CALLS = 200
PROOF_CALLS = 200
EVENTS_DDL = """CREATE TABLE events (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, ts INTEGER NOT NULL, at INTEGER,
    actor TEXT NOT NULL, kind TEXT NOT NULL, thread TEXT, meta TEXT NOT NULL, causes BLOB, ctype INTEGER,
    digest BLOB, leaf BLOB NOT NULL, salt BLOB, body BLOB); CREATE UNIQUE INDEX events_id ON events (id);"""
ONE_ROW = "(" + ",".join("?" * 14) + ")"
INSERT_ONE = "INSERT INTO events VALUES " + ONE_ROW
ACTORS = [f"agent:a{i}" for i in range(50)]
Row = tuple[Any, ...]
A = TypeVar("A")
R = TypeVar("R")


def text(i: int) -> str:
    """About 60 bytes of observation text."""
    return f"sensor s{i % 97:02d} reading #{i:08d}: {20 + i % 15}.{i % 10} C, within the normal band"


def thread(i: int) -> str | None:
    return f"task-{i % 997}" if i % 3 == 0 else None


def baseline_rows(count: int, rng: random.Random) -> list[Row]:
    """Rows shaped like ours: UUID-sized increasing ids, 32-byte digests and leaves, 16-byte salts."""
    high = rng.getrandbits(64) << 64
    ts = time.time_ns() // 1000
    causes = [rng.randbytes(16) for _ in range(SEEDS)]
    distinct = min(count, 65_536)
    payload = [(rng.randbytes(32), rng.randbytes(32), rng.randbytes(16), text(i).encode()) for i in range(distinct)]
    rows: list[Row] = []
    for i in range(count):
        digest, leaf, salt, body = payload[i % distinct]
        cause = causes[rng.randrange(SEEDS)] if i % 10 == 0 else None
        row = (i + 1, (high | i).to_bytes(16, "big"), ts + i // BATCH, None, ACTORS[i % 50], KIND, thread(i), "{}")
        rows.append((*row, cause, 1, digest, leaf, salt, body))
    return rows


@functools.cache
def insert_rows(count: int) -> str:
    """One multi-row INSERT (the same str object each time, as our store does)."""
    return "INSERT INTO events VALUES " + ",".join([ONE_ROW] * count)


def sqlite_insert(path: Path, rows: list[Row], mode: str) -> float:
    """Rows per second: ``single`` (a transaction per row), ``many`` or ``multirow`` (per BATCH rows)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;" + EVENTS_DDL)
    size = 1 if mode == "single" else BATCH
    with Timer() as timer:
        for start in range(0, len(rows), size):
            conn.execute("BEGIN IMMEDIATE")
            if mode == "single":
                conn.execute(INSERT_ONE, rows[start])
            elif mode == "many":
                conn.executemany(INSERT_ONE, rows[start : start + size])
            else:
                chunk = rows[start : start + size]
                conn.execute(insert_rows(len(chunk)), list(itertools.chain.from_iterable(chunk)))
            conn.execute("COMMIT")
    conn.close()
    for file in path.parent.glob(path.name + "*"):
        file.unlink()
    return len(rows) / timer.seconds


COMMIT_PROCESS = ["auto"]  # the habitat's default; --commit-process measures the others


async def open_habitat(path: Path) -> habitus.Habitat:
    settings = habitus.Settings.resolve(config_file=None, environ={}, path=path, commit_process=COMMIT_PROCESS[0])
    return await habitus.Habitat.init(path, settings=settings)


def draft(i: int, cause: uuid.UUID | None) -> habitus.Draft:
    return habitus.Draft(
        kind=KIND, actor=ACTORS[i % 50], content=text(i), causes=(cause,) if cause else (), thread=thread(i)
    )


async def build_big(ledger: habitus.Ledger, total: int, rng: random.Random) -> tuple[dict[str, Any], list[list[Any]]]:
    """Fill the ledger to ``total`` events with batched appends; return figures and the chains' links."""
    seeds = [e.id for e in await ledger.append_many([draft(i, None) for i in range(SEEDS)])]
    roots = await ledger.append_many([draft(c, None) for c in range(CHAINS)])
    chains: list[list[habitus.Event]] = [[e] for e in roots]
    bulk = total - ledger.size - CHAINS * (LINKS - 1)
    if bulk < BATCH * PRODUCERS:
        fail(f"--events {total} is too small; use at least {ledger.size + CHAINS * LINKS + BATCH * PRODUCERS}")
    batches = math.ceil(bulk / BATCH)
    pool = [
        [draft(i, seeds[rng.randrange(SEEDS)] if i % 10 == 0 else None) for i in range(b * BATCH, (b + 1) * BATCH)]
        for b in range(min(batches, POOL_BATCHES))
    ]
    log(f"built {len(pool) * BATCH} drafts; appending {bulk} events in batches of {BATCH} from {PRODUCERS} tasks")
    turns = itertools.count()
    done = [0]
    wake = asyncio.Event()

    async def producer() -> None:
        while (k := next(turns)) < batches:
            items = pool[k % len(pool)][: bulk - k * BATCH]
            await ledger.append_many(items)
            done[0] += len(items)
            wake.set()

    async def linker() -> None:
        for r in range(1, LINKS):
            while done[0] < bulk * r // LINKS:
                wake.clear()
                await wake.wait()
            links = await ledger.append_many([draft(r * CHAINS + c, chain[-1].id) for c, chain in enumerate(chains)])
            for chain, event in zip(chains, links, strict=True):
                chain.append(event)

    before = ledger.size
    with Timer() as timer:
        await asyncio.gather(linker(), *(producer() for _ in range(PRODUCERS)))
    appended = ledger.size - before
    figures = {"append_batched_eps": round(appended / timer.seconds), "append_batched_events": appended}
    return figures, [[(e.id, e.seq) for e in chain] for chain in chains]


async def bench_single(path: Path) -> dict[str, float]:
    hab = await open_habitat(path)
    try:
        ledger = hab.ledger
        args = [(ACTORS[i % 50], text(i), thread(i)) for i in range(SINGLE_EVENTS)]
        with Timer() as timer:
            for who, content, where in args:
                await ledger.append(KIND, actor=who, content=content, thread=where)
        single = SINGLE_EVENTS / timer.seconds

        async def appender(t: int) -> None:
            for who, content, where in args[t * CONCURRENT_EACH : (t + 1) * CONCURRENT_EACH]:
                await ledger.append(KIND, actor=who, content=content, thread=where)

        with Timer() as timer:
            await asyncio.gather(*(appender(t) for t in range(CONCURRENT_TASKS)))
        concurrent = CONCURRENT_TASKS * CONCURRENT_EACH / timer.seconds
    finally:
        await hab.close()
    return {"append_single_eps": round(single), "append_single_concurrent_eps": round(concurrent)}


async def timed_calls(call: Callable[[A], Awaitable[R]], args: list[A]) -> tuple[list[float], list[R]]:
    seconds: list[float] = []
    results: list[R] = []
    with Timer():
        for arg in args:
            start = time.perf_counter()
            results.append(await call(arg))
            seconds.append(time.perf_counter() - start)
    return seconds, results


async def bench_why(ledger: habitus.Ledger, targets: list[tuple[Any, int]]) -> dict[str, float]:
    seconds, graphs = await timed_calls(functools.partial(ledger.why, depth=DEPTH), [ref for ref, _ in targets])
    for graph in graphs:
        if len(graph.nodes) != DEPTH + 1:
            fail(f"why(depth={DEPTH}) returned {len(graph.nodes)} nodes, expected {DEPTH + 1}")
    return {"why_depth50_p50_ms": pct(seconds, 0.5), "why_depth50_p95_ms": pct(seconds, 0.95)}


def cte_baseline(db: Path, copy: Path, targets: list[tuple[Any, int]]) -> dict[str, float]:
    """The same walk as a recursive CTE over a copy of the ledger's edges, indexed by effect."""
    conn = sqlite3.connect(copy, isolation_level=None, uri=True)
    conn.execute("ATTACH DATABASE ? AS src", (db.as_uri() + "?mode=ro",))
    conn.execute("CREATE TABLE edges (effect INTEGER, cause INTEGER, PRIMARY KEY (effect, cause)) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO edges SELECT effect, cause FROM src.edges UNION SELECT effect, cause FROM src.edges_recent "
        "ORDER BY 1, 2"
    )
    sql = """
        WITH RECURSIVE walk(seq, d) AS (
            SELECT ?, 0 UNION SELECT e.cause, w.d + 1 FROM walk w JOIN edges e ON e.effect = w.seq WHERE w.d < ?
        )
        SELECT ev.* FROM walk JOIN src.events ev ON ev.seq = walk.seq
    """
    seconds: list[float] = []
    with Timer():
        for _, seq in targets:
            start = time.perf_counter()
            rows = conn.execute(sql, (seq, DEPTH)).fetchall()
            seconds.append(time.perf_counter() - start)
            if len(rows) != DEPTH + 1:
                fail(f"the CTE baseline found {len(rows)} nodes, expected {DEPTH + 1}")
    conn.close()
    return {"why_sql_cte_p50_ms": pct(seconds, 0.5), "why_sql_cte_p95_ms": pct(seconds, 0.95)}


async def bench_proofs(ledger: habitus.Ledger, rng: random.Random) -> dict[str, float | None]:
    size = await ledger.count()
    events = [await ledger.get_seq(rng.randint(1, size)) for _ in range(PROOF_CALLS)]
    seconds, proofs = await timed_calls(ledger.inclusion_proof, events)
    for p in proofs:
        path = [bytes.fromhex(x) for x in p.path]
        if not habitus.verify_inclusion(bytes.fromhex(p.leaf), p.seq - 1, p.tree_size, path, bytes.fromhex(p.root)):
            fail(f"the inclusion proof of seq {p.seq} does not verify")
    figures: dict[str, float | None] = {
        "inclusion_proof_ms": pct(seconds, 0.5),
        "inclusion_proof_p95_ms": pct(seconds, 0.95),
        "inclusion_proofs_verified": len(proofs),
        "inclusion_proof_inner_ms": None,
    }
    try:  # the synchronous inner part, through semi-private modules; skipped if they move
        from habitus.ledger._merkle import inclusion_proof
        from habitus.ledger._proofs import StoreNodes

        store = ledger._store
    except (ImportError, AttributeError):
        return figures

    async def inner(event: habitus.Event) -> bytes:  # what inclusion_proof does in its threads, inline
        seq, size, nodes = store.rows_by_id([event.id.bytes])[0][0], store.size(), StoreNodes(store)
        inclusion_proof(nodes, seq - 1, size)
        nodes.leaves(seq - 1, seq)
        return nodes.root(size)

    figures["inclusion_proof_inner_ms"] = pct((await timed_calls(inner, events))[0], 0.5)
    return figures


def hash_only(count: int) -> float:
    """Seconds to SHA-256 ``count`` leaves of 200 bytes in a plain Python loop."""
    leaves = [os.urandom(200) for _ in range(1024)]
    sha256 = hashlib.sha256
    with Timer() as timer:
        for i in range(count):
            sha256(leaves[i & 1023]).digest()
    return timer.seconds


async def run(total: int, tmp: Path) -> dict[str, Any]:
    rng = random.Random(20_240_601)
    out: dict[str, Any] = {"events": total, "cores": os.cpu_count(), "python": platform.python_version()}
    out.update(sqlite_version=sqlite3.sqlite_version, append_batch_size=BATCH, append_producers=PRODUCERS)

    rows = baseline_rows(total, rng)
    log(f"sqlite3 baseline: {total} rows in transactions of {BATCH} (executemany, then multi-row INSERT)")
    out["sqlite_batched_rps"] = round(sqlite_insert(tmp / "plain.db", rows, "many"))
    out["sqlite_batched_multirow_rps"] = round(sqlite_insert(tmp / "plain.db", rows, "multirow"))
    log(f"sqlite3 baseline: {SINGLE_EVENTS} rows, one per transaction")
    out["sqlite_single_rps"] = round(sqlite_insert(tmp / "plain.db", rows[:SINGLE_EVENTS], "single"))
    del rows

    log(f"ledger: {SINGLE_EVENTS} single appends, then {CONCURRENT_TASKS} concurrent appenders")
    out.update(await bench_single(tmp / "single"))

    log(f"ledger: building the big ledger of {total} events")
    hab = await open_habitat(tmp / "big")
    try:
        ledger = hab.ledger
        figures, chains = await build_big(ledger, total, rng)
        out.update(figures)
        if await ledger.count() != total:
            fail(f"the big ledger has {await ledger.count()} events, expected {total}")
        out["batched_ratio"] = round(out["append_batched_eps"] / out["sqlite_batched_rps"], 3)
        out["batched_ratio_multirow"] = round(out["append_batched_eps"] / out["sqlite_batched_multirow_rps"], 3)
        out["single_ratio"] = round(out["append_single_eps"] / out["sqlite_single_rps"], 3)

        targets = [chains[rng.randrange(CHAINS)][rng.randrange(DEPTH, LINKS)] for _ in range(WHY_CALLS)]
        log(f"why(depth={DEPTH}): {WHY_CALLS} walks over {CHAINS} chains of {LINKS} links")
        out.update(await bench_why(ledger, targets))
        log("why baseline: recursive CTE")
        out.update(cte_baseline(tmp / "big" / "ledger.db", tmp / "cte.db", targets))

        log(f"inclusion proofs of {PROOF_CALLS} random events")
        out.update(await bench_proofs(ledger, rng))

        log("verify()")
        with Timer() as timer:
            report = await ledger.verify()
        if not report.ok:
            fail(f"verify() found problems: {report.problems[:3]}")
        out["verify_s"] = round(timer.seconds, 3)
        out["verify_events"] = report.events
        log(f"hash-only baseline: {report.events} leaves of 200 bytes")
        out["hash_only_s"] = round(hash_only(report.events), 3)
    finally:
        await hab.close()
    return out


SUMMARY = [  # (what, ours, baseline, unit)
    ("batched append", "append_batched_eps", "sqlite_batched_rps", "/s (sqlite executemany)"),
    ("batched append", "append_batched_eps", "sqlite_batched_multirow_rps", "/s (sqlite multi-row INSERT)"),
    ("single append", "append_single_eps", "sqlite_single_rps", "/s (sqlite, a commit per row)"),
    ("100 concurrent appenders", "append_single_concurrent_eps", "sqlite_single_rps", "/s (sqlite, a commit per row)"),
    ("why depth 50 p95", "why_depth50_p95_ms", "why_sql_cte_p95_ms", " ms (recursive CTE)"),
    ("verify", "verify_s", "hash_only_s", " s (hashlib over the leaves)"),
    ("inclusion proof median", "inclusion_proof_ms", "inclusion_proof_inner_ms", " ms (inner part, no threads)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the big ledger (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="same as --events 100000 (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout")
    parser.add_argument(
        "--commit-process",
        choices=["auto", "always", "never"],
        default="auto",
        help="the habitats' commit_process setting (default auto, the habitat's default)",
    )
    args = parser.parse_args()
    COMMIT_PROCESS[0] = args.commit_process
    total = 100_000 if args.quick else args.events
    tmp = Path(tempfile.mkdtemp(prefix="habitus-bench-"))
    try:
        out = asyncio.run(run(total, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["commit_process"] = args.commit_process
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"habitus ledger benchmark: {out['events']} events, {out['cores']} cores, SQLite {out['sqlite_version']}")
    for what, ours, base, unit in SUMMARY:
        print(f"  {what:<26} {out[ours]:>10} vs {out[base]}{unit}")


if __name__ == "__main__":
    main()
