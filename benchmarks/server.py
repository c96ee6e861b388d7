"""Server benchmark: HTTP append and recall under concurrent clients, beside the library in the same run.

* A habitat with one agent holding ``--memories`` memories (2,000, embedded by the
  configured embedder: the real model when installed) and a token for its owner.
* HTTP: ``habitus serve`` in a child process on a loopback port; ``--clients`` (50)
  concurrent keep-alive connections from this process, each doing its share of
  ``--appends`` (5,000) ``POST /v1/events`` (a ``note.recorded`` as the owner) and then of
  ``--recalls`` (500) ``POST /v1/agents/{agent}/recall`` (a real question, ``k=10``). The
  client is a minimal HTTP/1.1 one over asyncio streams (request bytes out, a
  Content-Length body in), so that the figure is the server's: httpx's own cost, about
  0.5 ms a request, would otherwise share the two cores with it.
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


class _Connection:
    """One keep-alive HTTP/1.1 connection: enough client to measure the server, nothing more."""

    def __init__(self, host: str, port: int, secret: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {secret}\r\n"

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.used = time.monotonic()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if time.monotonic() - self.used > 3:  # uvicorn closes connections idle for 5 s: open a fresh one
            self.close()
            await self.open()
        self.used = time.monotonic()
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status_and_headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(status_and_headers.split(b" ", 2)[1])
        length = re.search(rb"content-length: *(\d+)", status_and_headers, re.IGNORECASE)
        if length is None:
            fail(f"a response without Content-Length: {status_and_headers[:200]!r}")
            raise AssertionError  # unreachable: fail() exits
        return status, await self.reader.readexactly(int(length.group(1)))

    def close(self) -> None:
        self.writer.close()


async def over_http(base: str, secret: str, args: argparse.Namespace) -> dict[str, Any]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(args.clients):
        connection = _Connection(host, int(port), secret)
        await connection.open()
        pool.put_nowait(connection)

    async def call(path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        connection = await pool.get()
        try:
            return await connection.post(path, body)
        finally:
            pool.put_nowait(connection)

    async def append(i: int) -> None:
        status, text = await call("/v1/events", {"kind": "note.recorded", "content": f"http note {i}"})
        if status != 201:
            fail(f"append over HTTP answered {status}: {text[:200]!r}")

    async def recall(i: int) -> None:
        status, text = await call(f"/v1/agents/{AGENT}/recall", {"query": QUESTIONS[i % len(QUESTIONS)], "k": 10})
        if status != 200 or not json.loads(text)["hits"]:
            fail(f"recall over HTTP answered {status}: {text[:200]!r}")

    try:
        await append(-1)
        await recall(-1)  # warm: the model loaded, the index built
        single_append, _ = await timed_concurrently(1, args.single, append)
        single_recall, _ = await timed_concurrently(1, args.single // 4, recall)
        appends, append_s = await timed_concurrently(args.clients, args.appends, append)
        recalls, recall_s = await timed_concurrently(args.clients, args.recalls, recall)
    finally:
        while not pool.empty():
            pool.get_nowait().close()
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
