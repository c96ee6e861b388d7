"""Models and tools benchmark: what the habitat's mediation of model and tool calls costs, beside the bare call.

A loopback OpenAI-compatible server runs in a child process (this script with
``--serve``: a minimal HTTP/1.1 server over asyncio streams that answers at once,
so what is measured is the client side). Agent ``scout`` holds ``model:use`` and
``tool:call`` grants and budgets of ``tokens`` and ``tool_calls`` (large enough
never to run out), so every check is worked out and every charge made.

* **Chat** (500 sequential calls of each kind, interleaved so that noise falls on
  each alike; 50 with ``--quick``): ``chat_p50_ms`` is ``hab.models.chat("agent:scout",
  ...)`` with a ``ContextRecord`` citing 8 real ``memory.remembered`` events (policy,
  budget, the HTTP call through the provider's pooled ``httpx`` client, then the
  ``model.called`` event with its 8 causes and the charge, in one transaction);
  ``raw_chat_p50_ms`` is the same request body POSTed with one ``httpx.AsyncClient``
  and its JSON answer parsed (the baseline); ``chat_overhead_p50_ms`` is the
  difference of the medians. ``scripted_chat_p50_ms``: the gateway in front of a
  ``ScriptedModel`` with a fixed answer (no HTTP), which leaves the ledger, policy
  and budget work alone.
* **Embeddings** (2,000 short texts, three rounds alternated, median; 500 texts and one
  round with ``--quick``): ``embed_coalesced_tps`` is texts per second when each text
  is its own concurrent ``hab.models.embed`` call (the gateway gathers calls for a few
  milliseconds into requests of up to ``embed_batch`` texts, at most ``concurrency``
  in flight; each call still records its own ``model.embedded`` event).
  ``embed_single_tps`` is the baseline: one direct POST per text from one
  ``httpx.AsyncClient``, all issued at once but at most ``embed_in_flight`` (the
  provider's ``concurrency``, 4) in flight, as the gateway allows itself;
  ``embed_single_unbounded_tps`` lets all of them go at once (httpx's pool then costs
  more per request than it saves). ``embed_requests`` is the number of embedding
  requests the server saw in a coalesced round (each direct round is checked to make
  one per text).
* **Tools** (1,000 calls of each kind, 100 with ``--quick``): ``tool_call_p50_ms`` is
  ``hab.tools.call`` of a registered synchronous function adding two numbers (it runs
  in a worker thread; ``tool.called`` with the charge, then ``tool.returned``), and
  ``async_tool_call_p50_ms`` the same with an ``async def``; baselines
  ``direct_call_p50_us`` (calling the function: the median of 1,000-call means) and
  ``to_thread_p50_us`` (``asyncio.to_thread``, the hop a sync tool makes).
* **Programs** (100 calls of each kind, 10 with ``--quick``): ``sandboxed_p50_ms`` is
  ``hab.tools.call`` of an ``add_program`` tool running ``cat`` (the arguments come
  back from stdin as the value), ``run_sandboxed_p50_ms`` the sandbox alone
  (``run_sandboxed``: no registry, no events), and ``subprocess_p50_ms`` the
  baseline, ``asyncio.create_subprocess_exec`` of the same ``cat`` with the same
  stdin. ``sandbox_mechanism`` and ``sandbox_isolation`` are what the sandbox used
  and enforced here (``SandboxResult.mechanism`` and ``.isolation``).

Usage: ``python benchmarks/models.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import statistics
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
from habitus.models import (
    ChatMessage,
    Completion,
    ContextRecord,
    ModelCall,
    OpenAIProvider,
    ProviderConfig,
    ScriptedModel,
    Usage,
)
from habitus.tools import run_sandboxed

AGENT = "scout"
PRINCIPAL = f"agent:{AGENT}"
OWNER = "human:ada"
CHAT_MODEL = "bench-chat"
EMBED_MODEL = "bench-embed"
API_KEY = "sk-bench"
ANSWER = "The north bridge is closed; take the harbour detour."
DIMENSIONS = 8
MEMORIES = [
    "The north bridge is closed for repairs until Friday.",
    "The detour to the market goes by the harbour road.",
    "Greenhouse vents open when it is warmer than 28 degrees.",
    "The sensor on the north side reported 31 degrees at noon.",
    "Ada asked to keep the greenhouse between 18 and 26 degrees.",
    "The irrigation pump was serviced last Tuesday.",
    "The lighthouse keeper reports fog most mornings in autumn.",
    "The market opens at seven on weekdays and nine on Sundays.",
]
QUESTION = "How do I get to the market from the greenhouse this week?"


# -- the loopback server (child process) ------------------------------------------------------------


def _response(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


async def _serve() -> None:
    """Answer chat completions and embeddings at once; ``GET /stats`` says how many requests and texts came."""
    counts = {"chat": 0, "embeddings": 0, "texts": 0}
    chat = _response(
        200,
        json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "model": CHAT_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 120, "completion_tokens": 12, "total_tokens": 132},
            }
        ).encode(),
    )
    vector = [round(1 / DIMENSIONS**0.5, 6)] * DIMENSIONS

    def embeddings(body: bytes) -> bytes:
        texts = json.loads(body)["input"]
        texts = [texts] if isinstance(texts, str) else texts
        counts["embeddings"] += 1
        counts["texts"] += len(texts)
        data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(len(texts))]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return _response(
            200, json.dumps({"object": "list", "data": data, "model": EMBED_MODEL, "usage": usage}).encode()
        )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if path.endswith("/chat/completions"):
                    counts["chat"] += 1
                    writer.write(chat)
                elif path.endswith("/embeddings"):
                    writer.write(embeddings(body))
                elif method == "GET" and path == "/stats":
                    writer.write(_response(200, json.dumps(counts).encode()))
                else:
                    writer.write(_response(404, b'{"error": {"message": "no such route"}}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        process.kill()
        fail(f"the loopback model server did not start (it said {line!r})")
    return process, f"http://127.0.0.1:{line}"


async def stats(client: httpx.AsyncClient, root: str) -> dict[str, int]:
    response = await client.get(f"{root}/stats")
    counts: dict[str, int] = response.json()
    return counts


# -- measuring ----------------------------------------------------------------------------------------


async def timed(op: Callable[[], Awaitable[Any]], into: list[float]) -> Any:
    start = time.perf_counter()
    value = await op()
    into.append(time.perf_counter() - start)
    return value


def per_call_us(fn: Callable[[], Any], rounds: int, per_round: int = 1_000) -> float:
    """The median over ``rounds`` of the mean time of ``per_round`` calls, in microseconds."""
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        means.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(means)


async def bench_chat(hab: Habitat, base: str, calls: int) -> dict[str, Any]:
    records = await hab.memory(AGENT).remember_many(MEMORIES)
    context = ContextRecord(memories=tuple(r.id for r in records), tokens=120)
    messages = [
        ChatMessage(role="system", content="What you remember:\n" + "\n".join(f"- {m}" for m in MEMORIES)),
        ChatMessage(role="user", content=QUESTION),
    ]
    payload = {"model": CHAT_MODEL, "messages": [{"role": m.role, "content": m.content} for m in messages]}
    headers = {"Accept": "application/json", "Authorization": f"Bearer {API_KEY}"}
    url = f"{base}/chat/completions"

    async with httpx.AsyncClient(timeout=60) as client:
        last: list[ModelCall] = []

        async def gateway() -> str:
            last[:] = [await hab.models.chat(PRINCIPAL, messages, context=context)]
            return last[0].text

        async def raw() -> str:
            response = await client.post(url, json=payload, headers=headers)
            response.raise_for_status()
            text: str = response.json()["choices"][0]["message"]["content"]
            return text

        async def scripted() -> str:
            return (await hab.models.chat(PRINCIPAL, messages, context=context, provider="scripted")).text

        for _ in range(10):  # warm-up: connections open, caches filled
            await gateway()
            await raw()
            await scripted()
        through: list[float] = []
        direct: list[float] = []
        offline: list[float] = []
        for _ in range(calls):
            answers = (await timed(gateway, through), await timed(raw, direct), await timed(scripted, offline))
            if answers != (ANSWER, ANSWER, ANSWER):
                fail(f"a chat call answered {answers!r}")
    recorded = await hab.ledger.get(last[0].event)
    if set(recorded.causes) != set(context.memories) or recorded.meta["provider"] != "local":
        fail(f"model.called cites {recorded.causes!r}, not the {len(MEMORIES)} memories")
    log(
        f"chat: gateway p50 {pct(through, 0.5):.3f} ms, raw httpx {pct(direct, 0.5):.3f} ms, "
        f"scripted {pct(offline, 0.5):.3f} ms"
    )
    return {
        "chat_p50_ms": pct(through, 0.5),
        "chat_p95_ms": pct(through, 0.95),
        "raw_chat_p50_ms": pct(direct, 0.5),
        "raw_chat_p95_ms": pct(direct, 0.95),
        "chat_overhead_p50_ms": round(pct(through, 0.5) - pct(direct, 0.5), 3),
        "scripted_chat_p50_ms": pct(offline, 0.5),
        "scripted_chat_p95_ms": pct(offline, 0.95),
        "chat_calls": calls,
    }


async def bench_embed(hab: Habitat, base: str, root: str, n_texts: int, rounds: int) -> dict[str, Any]:
    texts = [f"note {i}: the vent on row {i % 37} was opened at {i % 24}h" for i in range(n_texts)]
    url = f"{base}/embeddings"
    headers = {"Accept": "application/json", "Authorization": f"Bearer {API_KEY}"}
    in_flight = hab.models.config("local").concurrency
    tps: dict[str, list[float]] = {"coalesced": [], "single": [], "unbounded": []}
    requests: list[int] = []
    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Semaphore(in_flight)

        async def post(text: str) -> list[float]:
            response = await client.post(url, json={"model": EMBED_MODEL, "input": [text]}, headers=headers)
            response.raise_for_status()
            vector: list[float] = response.json()["data"][0]["embedding"]
            return vector

        async def post_gated(text: str) -> list[float]:
            async with gate:
                return await post(text)

        async def gateway(text: str) -> list[float]:
            (vector,) = await hab.models.embed(PRINCIPAL, [text])
            return vector

        ways: dict[str, Callable[[str], Awaitable[list[float]]]] = {
            "coalesced": gateway,
            "single": post_gated,
            "unbounded": post,
        }
        for way in ways.values():  # warm-up
            await asyncio.gather(*(way(t) for t in texts[:200]))
        for r in range(rounds):
            for name, way in ways.items():
                before = await stats(client, root)
                start = time.perf_counter()
                vectors = await asyncio.gather(*(way(t) for t in texts))
                tps[name].append(n_texts / (time.perf_counter() - start))
                after = await stats(client, root)
                if len(vectors) != n_texts or any(len(v) != DIMENSIONS for v in vectors):
                    fail(f"{name}: the wrong number or size of embeddings came back")
                if after["texts"] - before["texts"] != n_texts:
                    fail(f"{name}: the server saw {after['texts'] - before['texts']} texts, not {n_texts}")
                sent = after["embeddings"] - before["embeddings"]
                if name == "coalesced":
                    requests.append(sent)
                elif sent != n_texts:
                    fail(f"{name}: {sent} requests for {n_texts} texts")
            log(
                f"embed round {r + 1}: coalesced {tps['coalesced'][-1]:,.0f} texts/s in {requests[-1]} requests, "
                f"single {tps['single'][-1]:,.0f} texts/s ({in_flight} in flight), "
                f"{tps['unbounded'][-1]:,.0f} with all {n_texts} at once"
            )
    coalesced, single = statistics.median(tps["coalesced"]), statistics.median(tps["single"])
    return {
        "embed_coalesced_tps": round(coalesced),
        "embed_single_tps": round(single),
        "embed_single_unbounded_tps": round(statistics.median(tps["unbounded"])),
        "embed_speedup": round(coalesced / single, 2),
        "embed_requests": max(requests),
        "embed_single_requests": n_texts,
        "embed_texts": n_texts,
        "embed_batch": hab.models.config("local").embed_batch,
        "embed_in_flight": in_flight,
        "embed_rounds": rounds,
    }


def add(a: int, b: int = 0) -> int:
    """Add two whole numbers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


async def add_async(a: int, b: int = 0) -> int:
    """Add two whole numbers, in a coroutine.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


async def bench_tools(hab: Habitat, calls: int, sandboxed: int) -> dict[str, Any]:
    hab.tools.register(add)
    hab.tools.register(add_async)
    cat = shutil.which("cat") or "/bin/cat"
    hab.tools.add_program("echo", [cat], description="Give the arguments back.")
    for tool in ("add", "add_async", "echo"):
        await hab.control.grant(PRINCIPAL, "tool:call", tool)

    direct_us = per_call_us(lambda: add(2, 3), max(calls // 10, 20))
    hops: list[float] = []
    sync_calls: list[float] = []
    async_calls: list[float] = []
    for i in range(calls + 20):
        a = await timed(lambda: hab.tools.call(PRINCIPAL, "add", {"a": 2, "b": 3}), sync_calls)
        b = await timed(lambda: hab.tools.call(PRINCIPAL, "add_async", {"a": 2, "b": 3}), async_calls)
        c = await timed(lambda: asyncio.to_thread(add, 2, 3), hops)
        if not (a.ok and b.ok and a.value == b.value == c == 5):
            fail(f"a tool call went wrong: {a!r}, {b!r}, {c!r}")
        if i == 19:  # the first 20 warm up
            hops.clear()
            sync_calls.clear()
            async_calls.clear()
    log(
        f"tools: call p50 {pct(sync_calls, 0.5):.3f} ms (async {pct(async_calls, 0.5):.3f} ms), "
        f"to_thread {pct(hops, 0.5) * 1000:.1f} us, direct {direct_us:.3f} us"
    )

    arguments = {"city": "Oslo", "days": 3}
    stdin = json.dumps(arguments).encode()
    probe = await run_sandboxed([cat], stdin=stdin)
    if probe.stdout != stdin:
        fail(f"the sandboxed cat answered {probe!r}")
    boxed: list[float] = []
    bare: list[float] = []
    plain: list[float] = []

    async def subprocess_cat() -> bytes:
        process = await asyncio.create_subprocess_exec(
            cat, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate(stdin)
        return out

    for i in range(sandboxed + 3):
        tool = await timed(lambda: hab.tools.call(PRINCIPAL, "echo", arguments), boxed)
        box = await timed(lambda: run_sandboxed([cat], stdin=stdin), bare)
        out = await timed(subprocess_cat, plain)
        if not (tool.ok and tool.value == arguments and box.stdout == stdin and out == stdin):
            fail(f"a program call went wrong: {tool!r}, {box!r}, {out!r}")
        if i == 2:
            boxed.clear()
            bare.clear()
            plain.clear()
    log(
        f"programs ({probe.mechanism}): tool p50 {pct(boxed, 0.5):.2f} ms, run_sandboxed {pct(bare, 0.5):.2f} ms, "
        f"subprocess {pct(plain, 0.5):.2f} ms"
    )
    return {
        "tool_call_p50_ms": pct(sync_calls, 0.5),
        "tool_call_p95_ms": pct(sync_calls, 0.95),
        "async_tool_call_p50_ms": pct(async_calls, 0.5),
        "direct_call_p50_us": round(direct_us, 3),
        "to_thread_p50_us": round(pct(hops, 0.5) * 1000, 1),
        "tool_calls": calls,
        "sandboxed_p50_ms": pct(boxed, 0.5),
        "sandboxed_p95_ms": pct(boxed, 0.95),
        "run_sandboxed_p50_ms": pct(bare, 0.5),
        "subprocess_p50_ms": pct(plain, 0.5),
        "subprocess_p95_ms": pct(plain, 0.95),
        "sandboxed_calls": sandboxed,
        "sandbox_mechanism": probe.mechanism,
        "sandbox_isolation": list(probe.isolation),
    }


async def run(quick: bool) -> dict[str, Any]:
    calls = 50 if quick else 500
    n_texts = 500 if quick else 2_000
    rounds = 1 if quick else 3
    tool_calls = 100 if quick else 1_000
    sandboxed = 10 if quick else 100
    process, root = start_server()
    base = f"{root}/v1"
    path = Path(tempfile.mkdtemp(prefix="habitus-models-bench-", dir=os.environ.get("HABITUS_BENCH_DIR")))
    result: dict[str, Any] = {}
    try:
        settings = Settings.resolve(config_file=None, environ={}, path=path / "h", embedder="hash")
        async with await Habitat.init(settings.path, settings=settings) as hab:
            await hab.agents.spawn(AGENT, behaviour="bench", owner=OWNER)
            provider = OpenAIProvider(
                "local", base, api_key=API_KEY, chat_model=CHAT_MODEL, embedding_model=EMBED_MODEL
            )
            config = ProviderConfig(base_url=base, chat_model=CHAT_MODEL, embedding_model=EMBED_MODEL)
            hab.models.add_provider("local", provider, config=config, default=True)
            fixed = Completion(model="scripted", text=ANSWER, usage=Usage(prompt_tokens=120, completion_tokens=12))
            hab.models.add_provider("scripted", ScriptedModel(responder=lambda _: fixed))
            for resource in ("model:local/*", "model:scripted/*"):
                await hab.control.grant(PRINCIPAL, "model:use", resource)
            await hab.control.set_budget(PRINCIPAL, "tokens", 10**12)
            await hab.control.set_budget(PRINCIPAL, "tool_calls", 10**9)
            log(f"loopback model server at {base}; habitat at {settings.path}")
            result |= await bench_chat(hab, base, calls)
            result |= await bench_embed(hab, base, root, n_texts, rounds)
            result |= await bench_tools(hab, tool_calls, sandboxed)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(path, ignore_errors=True)
    return result | {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "httpx": httpx.__version__,
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: fewer calls")
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process: the server
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    result = asyncio.run(run(args.quick))
    print(json.dumps(result, indent=None if args.json else 2))
    sys.exit(0)


if __name__ == "__main__":
    main()
