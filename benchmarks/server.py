"""Server benchmark: HTTP append and recall under concurrent clients, beside the library in the same run.

* A habitat with one agent holding ``--memories`` memories (2,000, embedded by the
  configured embedder: the real model when installed) and a token for its owner.
* HTTP: ``habitus serve`` in a child process on a loopback port; ``--clients`` (50)
  concurrent httpx clients in this process, each doing its share of ``--appends``
  (5,000) ``POST /v1/events`` (a ``note.recorded`` as the owner) and then of ``--recalls``
  (500) ``POST /v1/agents/{agent}/recall`` (a real question, ``k=10``).
* Library (the baseline): the same operations with the same concurrency through
  ``hab.acting_as(owner)`` (``append``, ``memory(agent).recall``) in this process, on the
  same habitat, after the server has stopped.
* Unloaded (one client): the same operations one at a time, HTTP and library, so the
  server's own cost is seen apart from queueing behind 49 other clients.

Keys: ``http_append_p50_ms``, ``lib_append_p50_ms``, ``http_recall_p50_ms``,
``lib_recall_p50_ms`` (and p95s), ``http_rps`` (appends per second over HTTP),
``lib_append_rps``, ``single_*`` (one client), ``clients``, ``cores``. Usage:
``python benchmarks/server.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from _common import fail, log, pct
from habitus import Habitat, Settings

AGENT = "scout"
OWNER = "human:ada"
QUESTIONS = [
    "when does the greenhouse get too hot?",
    "what did the sensor report about the north side?",
    "who asked to keep the temperature in range?",
    "which vents were opened last week?",
    "is the bridge closed for repairs?",
]
TOPICS = ["greenhouse", "vents", "sensor", "bridge", "harbour", "garden", "market", "lighthouse"]


def _settings(path: Path) -> Settings:
    return Settings.resolve(config_file=None, environ={}, path=path)


async def prepare(path: Path, memories: int) -> str:
    async with await Habitat.init(path, settings=_settings(path)) as hab:
        await hab.agents.spawn(AGENT, behaviour="bench", owner=OWNER)
        texts = [f"Note {i}: the {TOPICS[i % len(TOPICS)]} was checked on day {i % 97}" for i in range(memories)]
        for start in range(0, memories, 256):
            await hab.memory(AGENT).remember_many(texts[start : start + 256])
        _, secret = await hab.control.tokens.create(OWNER, name="benchmark")
        log(f"prepared {memories} memories with {hab.memories.embedder.name}")
        return secret


async def timed_concurrently(
    clients: int, total: int, op: Callable[[int], Awaitable[None]]
) -> tuple[list[float], float]:
    """Run ``total`` calls of ``op`` from ``clients`` concurrent workers; latencies and wall time."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, time.perf_counter() - start


def start_server(path: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABITUS_")}
    cmd = [sys.executable, "-m", "habitus._cli", "-H", str(path), "serve", "--port", "0"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"API\s+(http://\S+)/v1", line)
        if found:
            return process, found.group(1)
    process.kill()
    fail("the server did not start")
    raise AssertionError  # unreachable: fail() exits


async def over_http(base: str, secret: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {secret}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as client:

        async def append(i: int) -> None:
            response = await client.post("/v1/events", json={"kind": "note.recorded", "content": f"http note {i}"})
            if response.status_code != 201:
                fail(f"append over HTTP answered {response.status_code}: {response.text[:200]}")

        async def recall(i: int) -> None:
            body = {"query": QUESTIONS[i % len(QUESTIONS)], "k": 10}
            response = await client.post(f"/v1/agents/{AGENT}/recall", json=body)
            if response.status_code != 200 or not response.json()["hits"]:
                fail(f"recall over HTTP answered {response.status_code}: {response.text[:200]}")

        await append(-1)
        await recall(-1)  # warm: the model loaded, the index built
        single_append, _ = await timed_concurrently(1, args.single, append)
        single_recall, _ = await timed_concurrently(1, args.single // 4, recall)
        appends, append_s = await timed_concurrently(args.clients, args.appends, append)
        recalls, recall_s = await timed_concurrently(args.clients, args.recalls, recall)
    log(f"HTTP: {args.appends / append_s:.0f} appends/s, {args.recalls / recall_s:.1f} recalls/s")
    return {
        "http_append_p50_ms": pct(appends, 0.5),
        "http_append_p95_ms": pct(appends, 0.95),
        "http_rps": round(args.appends / append_s),
        "http_recall_p50_ms": pct(recalls, 0.5),
        "http_recall_p95_ms": pct(recalls, 0.95),
        "http_recall_rps": round(args.recalls / recall_s, 1),
        "single_http_append_p50_ms": pct(single_append, 0.5),
        "single_http_recall_p50_ms": pct(single_recall, 0.5),
    }


async def in_library(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with await Habitat.open(path, settings=_settings(path)) as hab:
        who = hab.acting_as(OWNER)
        memory = who.memory(AGENT)

        async def append(i: int) -> None:
            await who.append("note.recorded", content=f"library note {i}")

        async def recall(i: int) -> None:
            if not (await memory.recall(QUESTIONS[i % len(QUESTIONS)], k=10)).hits:
                fail("recall in the library found nothing")

        await append(-1)
        await recall(-1)
        single_append, _ = await timed_concurrently(1, args.single, append)
        single_recall, _ = await timed_concurrently(1, args.single // 4, recall)
        appends, append_s = await timed_concurrently(args.clients, args.appends, append)
        recalls, recall_s = await timed_concurrently(args.clients, args.recalls, recall)
    log(f"library: {args.appends / append_s:.0f} appends/s, {args.recalls / recall_s:.1f} recalls/s")
    return {
        "lib_append_p50_ms": pct(appends, 0.5),
        "lib_append_p95_ms": pct(appends, 0.95),
        "lib_append_rps": round(args.appends / append_s),
        "lib_recall_p50_ms": pct(recalls, 0.5),
        "lib_recall_p95_ms": pct(recalls, 0.95),
        "lib_recall_rps": round(args.recalls / recall_s, 1),
        "single_lib_append_p50_ms": pct(single_append, 0.5),
        "single_lib_recall_p50_ms": pct(single_recall, 0.5),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="habitus-server-bench-", dir=os.environ.get("HABITUS_BENCH_DIR")))
    path = root / "h"
    try:
        secret = await prepare(path, args.memories)
        process, base = start_server(path)
        try:
            http = await over_http(base, secret, args)
        finally:
            process.terminate()
            process.wait(timeout=60)
        lib = await in_library(path, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {**http, **lib}
    result["append_added_p50_ms"] = round(result["http_append_p50_ms"] - result["lib_append_p50_ms"], 3)
    result["recall_added_p50_ms"] = round(result["http_recall_p50_ms"] - result["lib_recall_p50_ms"], 3)
    result["single_append_added_p50_ms"] = round(
        result["single_http_append_p50_ms"] - result["single_lib_append_p50_ms"], 3
    )
    result["single_recall_added_p50_ms"] = round(
        result["single_http_recall_p50_ms"] - result["single_lib_recall_p50_ms"], 3
    )
    result.update(
        clients=args.clients,
        appends=args.appends,
        recalls=args.recalls,
        memories=args.memories,
        cores=os.cpu_count(),
        python=platform.python_version(),
        quick=args.quick,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: fewer requests")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout")
    args = parser.parse_args()
    args.appends = 500 if args.quick else 5_000
    args.recalls = 50 if args.quick else 500
    args.single = 40 if args.quick else 400
    args.memories = 300 if args.quick else 2_000
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
