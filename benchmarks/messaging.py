"""Messaging benchmark: agents and durable messages, each figure beside plain asyncio in the same run.

* Durable one-way messages (``oneway_mps``): 1,000 agents of a behaviour whose handler forwards
  a ``[hops left, random state]`` message to a pseudo-random other agent until its hops are
  used up. ``--seeds`` messages (1,000) are sent from outside with ``hab.messages.send`` (all
  at once), each travelling ``--hops`` hops; the rate is deliveries (``runtime.delivered``)
  per second from the first send to the last delivery. Every agent handles one message
  before the timer starts (activation and its ``agent.activated`` event are not timed).
  Checked: every message delivered, the ledger grew by exactly one ``message.sent`` per
  send and forward, every mailbox empty (read through a fresh read-only handle;
  ``oneway_depth_cache_wrong`` counts the agents whose depth the running messenger still
  believes non-zero). Against ``asyncio_oneway_mps``: the same pattern with 1,000 tasks
  and ``asyncio.Queue`` mailboxes (no durability, no ledger).
* Durable request→reply (``rr_p50_ms``, ``rr_p99_ms``): ``hab.messages.request("echo", i)``
  in a loop, one at a time, after a warm-up; the handler replies with ``ctx.reply(msg.body)``
  and each reply is checked. Against ``asyncio_rr_p50_ms``/``_p99_ms``: a client puts
  ``(i, future)`` on a request queue, a server task puts the answer on a reply queue, and a
  dispatcher task resolves the future.
* Dormant agents (``dormant_bytes_per_agent``): the growth of the resident set size, read
  from ``/proc/self/statm`` (``resource.getrusage``'s peak where there is no ``/proc``),
  when ``--dormant`` agents (1,000,000) are spawned in transactions of 10,000 into a
  habitat that is open with a runtime started (they stay rows: none is activated). SQLite's
  page cache (64 MiB for the writer) and the registry's caches (capped at 200,000 entries)
  are part of it, so ``dormant_second_half_bytes_per_agent`` gives the growth over the
  second half alone. Against ``asyncio_dormant_bytes_per_task``: the growth per idle task
  awaiting its own ``asyncio.Queue`` (at most 100,000 of them).
* 10,000 active agents (``active_10k_rss_mb``): one message to each of 10,000 agents whose
  handler waits on an event the benchmark holds, so all 10,000 activations and handlers
  are in memory at once (``runtime.active`` is reported as ``active_agents``); the
  process's resident set size then, before they are released. Against
  ``asyncio_active_10k_rss_mb``: 10,000 tasks, each with a queue, handed one message and
  awaiting the same kind of event. Resident sizes include the habitat's writer process
  when one runs (see ``commit_process``).

Every habitat uses ``commit_process = "auto"`` (the default: commits move to a writer
process under sustained load, which the one-way pattern is); ``--commit-process`` runs
them all with ``always`` or ``never`` instead, and the JSON says which.

Each memory figure is measured in a fresh child process (this script with ``--phase``),
so that memory freed by earlier phases does not hide growth. ``targets_met`` compares the
figures with the targets (20,000 messages/s; p50 ≤ 0.5 ms, p99 ≤ 2 ms; ≤ 2 KiB a dormant
agent; < 500 MiB with 10,000 active) without failing the run. Progress goes to stderr;
``--json`` prints one JSON object on stdout. Exit status 1 if a check fails.
Usage: ``python benchmarks/messaging.py [--quick] [--dormant N] [--hops N] [--seeds N]
[--commit-process auto|always|never] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import operator
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import habitus
from _common import Timer, fail, log, log_start, pct, set_log_start
from habitus.agents import RuntimeOptions, SpawnSpec

AGENTS = 1000
SEEDS = 1000
HOPS = 100
QUICK_HOPS = 10
RR_WARMUP = 200
RR_CALLS = 2000
DORMANT = 1_000_000
QUICK_DORMANT = 100_000
BASELINE_DORMANT_MAX = 100_000
ACTIVE = 10_000
CHUNK = 10_000
HOLD_TIMEOUT = 300.0  # seconds a waiting handler holds on before giving up
STALL = 30.0  # seconds without progress before a wait fails
LCG_A, LCG_C, LCG_M = 1_103_515_245, 12_345, 0x7FFF_FFFF
SENDER = "human:bench"


RSS_SOURCE = (
    "/proc/self/statm + writer process"
    if Path("/proc/self/statm").exists()
    else "getrusage(RUSAGE_SELF).ru_maxrss (peak)"
)


def rss_bytes() -> int:
    """The resident set size now, with the habitat's writer process if one runs (``/proc``), or the peak."""
    gc.collect()
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    for pid in children():
        with contextlib.suppress(OSError):  # it may have ended since
            resident += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def children() -> list[int]:
    """Pids of this process's children (the writer process ``commit_process`` starts)."""
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                out.append(int(stat.parent.name))
    return out


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def hop_target(me: int, state: int, n: int) -> tuple[int, int]:
    """The next random state and a pseudo-random agent index other than ``me``."""
    state = (state * LCG_A + LCG_C) & LCG_M
    other = state % (n - 1)
    return state, other + 1 if other >= me else other


def hopper_id(i: int) -> str:
    return f"n{i:04d}"


class Gate:
    """What the waiting handlers share: a release event and how many handlers are waiting."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0


def build_app(n: int, gate: Gate | None = None) -> habitus.App:
    """Hopper (forwards hops), Echo (replies), Waiter (waits on ``gate``), Sleeper (never woken)."""
    app = habitus.App("bench")

    @app.behaviour
    class Hopper(habitus.Agent):
        def __init__(self, ctx: habitus.AgentContext) -> None:
            super().__init__(ctx)
            self.me = int(ctx.agent.id[1:])

        @habitus.handles("hop")
        async def hop(self, msg: habitus.Message) -> None:
            left, state = msg.body
            if left > 0:
                state, other = hop_target(self.me, state, n)
                await self.ctx.send(hopper_id(other), [left - 1, state], type="hop")

    @app.behaviour
    class Echo(habitus.Agent):
        @habitus.handles("ping")
        async def ping(self, msg: habitus.Message) -> None:
            await self.ctx.reply(msg.body)

    @app.behaviour
    class Waiter(habitus.Agent):
        @habitus.handles("hold")
        async def hold(self, msg: habitus.Message) -> None:
            if gate is None:
                raise RuntimeError("no gate to wait on")
            gate.entered += 1
            await asyncio.wait_for(gate.release.wait(), HOLD_TIMEOUT)

    @app.behaviour
    class Sleeper(habitus.Agent):
        pass

    return app


COMMIT_PROCESS = ["auto"]  # the habitat's default; --commit-process measures the others


def settings(path: Path) -> habitus.Settings:
    return habitus.Settings.resolve(
        config_file=None, environ={}, path=path, mailbox_capacity=100_000, commit_process=COMMIT_PROCESS[0]
    )


async def open_habitat(path: Path) -> habitus.Habitat:
    return await habitus.Habitat.init(path, settings=settings(path))


async def spawn(hab: habitus.Habitat, ids: Sequence[str], behaviour: str) -> None:
    for start in range(0, len(ids), CHUNK):
        await hab.agents.spawn_many(
            [SpawnSpec(i, behaviour=behaviour, owner=SENDER) for i in ids[start : start + CHUNK]]
        )


async def until(what: str, count: Callable[[], int], target: int) -> None:
    """Poll ``count()`` until it reaches ``target``; fail after STALL seconds without progress."""
    last, since = -1, time.perf_counter()
    while (now := count()) < target:
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since > STALL:
            fail(f"{what}: stuck at {now} of {target} for {STALL:g} s")
        await asyncio.sleep(0.002)
    if now != target:
        fail(f"{what}: {now}, expected {target}")


async def gather_chunked(calls: Sequence[Callable[[], Awaitable[Any]]], width: int = 1000) -> None:
    for start in range(0, len(calls), width):
        await asyncio.gather(*(c() for c in calls[start : start + width]))


# -- one-way messages ----------------------------------------------------------------------


async def bench_oneway(path: Path, seeds: int, hops: int) -> dict[str, Any]:
    hab = await open_habitat(path)
    try:
        ids = [hopper_id(i) for i in range(AGENTS)]
        await spawn(hab, ids, "Hopper")
        runtime = await hab.start(build_app(AGENTS), options=RuntimeOptions(max_active=20_000))
        send = hab.messages.send
        log(f"one-way: warm-up, one message to each of {AGENTS} agents")
        await gather_chunked([functools.partial(send, a, [0, 0], sender=SENDER, type="hop") for a in ids])
        await until("warm-up deliveries", lambda: runtime.delivered, AGENTS)
        total = seeds * (hops + 1)
        log(f"one-way: {seeds} messages of {hops} hops ({total} deliveries)")
        before_delivered, before_events = runtime.delivered, await hab.ledger.count()
        calls = [
            functools.partial(send, ids[i % AGENTS], [hops, i + 1], sender=SENDER, type="hop") for i in range(seeds)
        ]
        with Timer() as timer:
            await gather_chunked(calls)
            await until("one-way deliveries", lambda: runtime.delivered - before_delivered, total)
        grown = await hab.ledger.count() - before_events
        if grown != total:
            fail(f"one-way: the ledger grew by {grown} events, expected {total} (one message.sent each)")
        cached = {a: hab.messages.depth(a) for a in ids}
    finally:
        await hab.close()
    # Mailboxes are checked through a fresh read-only handle: the running messenger's cached depths can drift.
    ro = await habitus.Habitat.open(path, read_only=True, settings=settings(path))
    try:
        queued = [a for a in ids if ro.messages.depth(a) != 0]
        if queued:
            fail(f"one-way: {len(queued)} mailboxes still hold messages, e.g. {queued[0]!r}")
    finally:
        await ro.close()
    return {
        "oneway_mps": round(total / timer.seconds),
        "oneway_messages": total,
        "oneway_s": round(timer.seconds, 3),
        "oneway_depth_cache_wrong": sum(1 for d in cached.values() if d != 0),
    }


async def asyncio_oneway(seeds: int, hops: int) -> float:
    """Messages per second of the same pattern with tasks and ``asyncio.Queue`` mailboxes."""
    queues: list[asyncio.Queue[list[int]]] = [asyncio.Queue() for _ in range(AGENTS)]
    total = seeds * (hops + 1)
    done = asyncio.Event()
    delivered = [0]

    async def agent(me: int) -> None:
        inbox = queues[me]
        while True:
            left, state = await inbox.get()
            if left > 0:
                state, other = hop_target(me, state, AGENTS)
                queues[other].put_nowait([left - 1, state])
            delivered[0] += 1
            if delivered[0] == total:
                done.set()

    tasks = [asyncio.create_task(agent(i)) for i in range(AGENTS)]
    with Timer() as timer:
        for i in range(seeds):
            queues[i % AGENTS].put_nowait([hops, i + 1])
        await asyncio.wait_for(done.wait(), 600)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if delivered[0] != total:
        fail(f"asyncio one-way: {delivered[0]} deliveries, expected {total}")
    return total / timer.seconds


# -- request → reply -----------------------------------------------------------------------


async def bench_rr(path: Path, calls: int) -> dict[str, float]:
    hab = await open_habitat(path)
    try:
        app = build_app(AGENTS)
        app.agent("echo", "Echo", owner=SENDER)
        await hab.start(app)
        request = hab.messages.request
        log(f"request→reply: {RR_WARMUP} warm-up calls, then {calls}")
        seconds: list[float] = []
        for i in range(-RR_WARMUP, calls):
            start = time.perf_counter()
            reply = await request("echo", i, sender=SENDER, type="ping", timeout=10)
            elapsed = time.perf_counter() - start
            if reply.body != i or reply.sender != "agent:echo" or reply.in_reply_to is None:
                fail(f"request {i}: wrong reply {reply.body!r} from {reply.sender!r}")
            if i == 0:
                gc.collect()
                gc.freeze()
            if i >= 0:
                seconds.append(elapsed)
        gc.unfreeze()
    finally:
        await hab.close()
    return {"rr_p50_ms": pct(seconds, 0.5), "rr_p99_ms": pct(seconds, 0.99), "rr_calls": calls}


async def asyncio_rr(calls: int) -> dict[str, float]:
    requests: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    replies: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    waiting: dict[int, asyncio.Future[int]] = {}

    async def server() -> None:
        while True:
            key, body = await requests.get()
            replies.put_nowait((key, body))

    async def dispatcher() -> None:
        while True:
            key, body = await replies.get()
            future = waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(body)

    tasks = [asyncio.create_task(server()), asyncio.create_task(dispatcher())]
    loop = asyncio.get_running_loop()
    seconds: list[float] = []
    for i in range(-RR_WARMUP, calls):
        start = time.perf_counter()
        future: asyncio.Future[int] = loop.create_future()
        waiting[i] = future
        requests.put_nowait((i, i))
        body = await asyncio.wait_for(future, 10)
        elapsed = time.perf_counter() - start
        if body != i:
            fail(f"asyncio request {i}: wrong reply {body!r}")
        if i == 0:
            gc.collect()
            gc.freeze()
        if i >= 0:
            seconds.append(elapsed)
    gc.unfreeze()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"asyncio_rr_p50_ms": pct(seconds, 0.5), "asyncio_rr_p99_ms": pct(seconds, 0.99)}


# -- memory (each in a child process) ------------------------------------------------------


async def phase_dormant(path: Path, n: int) -> dict[str, Any]:
    hab = await open_habitat(path)
    try:
        runtime = await hab.start(build_app(AGENTS))
        before = rss_bytes()
        half: tuple[int, int] | None = None  # (agents, RSS) once half of them are spawned
        spawn_s = 0.0
        for k in range(0, n, CHUNK):  # the ids are made a chunk at a time, so they are no part of the growth
            done = min(n, k + CHUNK)
            ids = [f"d{i:07d}" for i in range(k, done)]
            start = time.perf_counter()
            await spawn(hab, ids, "Sleeper")
            spawn_s += time.perf_counter() - start
            if half is None and n // 2 <= done < n:
                half = (done, rss_bytes())
                log(f"dormant: {done} agents spawned, RSS {mib(half[1])} MiB")
        del ids
        after = rss_bytes()
        count = await hab.agents.count()
        if count != n:
            fail(f"dormant: {count} agents registered, expected {n}")
        if runtime.active:
            fail(f"dormant: {runtime.active} agents were activated; none should be")
    finally:
        await hab.close()
    return {
        "dormant_agents": n,
        "dormant_bytes_per_agent": round((after - before) / n, 1),
        "dormant_second_half_bytes_per_agent": round((after - half[1]) / (n - half[0]), 1) if half else None,
        "dormant_rss_before_mb": mib(before),
        "dormant_rss_after_mb": mib(after),
        "dormant_spawn_s": round(spawn_s, 2),
        "dormant_spawn_per_s": round(n / spawn_s),
    }


async def phase_asyncio_dormant(n: int) -> dict[str, Any]:
    before = rss_bytes()

    async def idle(inbox: asyncio.Queue[int]) -> None:
        await inbox.get()

    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(n)]
    tasks = [asyncio.create_task(idle(q)) for q in queues]
    await asyncio.sleep(0)  # every task starts and blocks on its queue
    after = rss_bytes()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"asyncio_dormant_tasks": n, "asyncio_dormant_bytes_per_task": round((after - before) / n, 1)}


async def phase_active(path: Path, n: int) -> dict[str, Any]:
    gate = Gate()
    hab = await open_habitat(path)
    try:
        ids = [f"w{i:05d}" for i in range(n)]
        await spawn(hab, ids, "Waiter")
        runtime = await hab.start(build_app(AGENTS, gate), options=RuntimeOptions(max_active=20_000))
        before = rss_bytes()
        log(f"active: one message to each of {n} agents; their handlers wait")
        send = hab.messages.send
        await gather_chunked([functools.partial(send, a, 1, sender=SENDER, type="hold") for a in ids])
        await until("handlers waiting", lambda: gate.entered, n)
        active = runtime.active
        during = rss_bytes()
        log(f"active: {active} activations, RSS {mib(during)} MiB; releasing them")
        gate.release.set()
        await until("held deliveries", lambda: runtime.delivered, n)
    finally:
        gate.release.set()
        await hab.close()
    if active != n:
        fail(f"active: runtime.active was {active} with every handler waiting, expected {n}")
    return {
        "active_agents": active,
        "active_10k_rss_mb": mib(during),
        "active_rss_before_mb": mib(before),
        "active_bytes_per_activation": round((during - before) / n),
    }


async def phase_asyncio_active(n: int) -> dict[str, Any]:
    before = rss_bytes()
    release = asyncio.Event()
    entered = [0]

    async def waiter(inbox: asyncio.Queue[int]) -> None:
        await inbox.get()
        entered[0] += 1
        await asyncio.wait_for(release.wait(), HOLD_TIMEOUT)

    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(n)]
    tasks = [asyncio.create_task(waiter(q)) for q in queues]
    for q in queues:
        q.put_nowait(1)
    await until("asyncio handlers waiting", lambda: entered[0], n)
    during = rss_bytes()
    release.set()
    await asyncio.gather(*tasks)
    return {
        "asyncio_active_10k_rss_mb": mib(during),
        "asyncio_active_rss_before_mb": mib(before),
        "asyncio_active_bytes_per_task": round((during - before) / n),
    }


async def run_phase(phase: str, n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="habitus-bench-msg-"))
    try:
        if phase == "dormant":
            return await phase_dormant(tmp / "h", n)
        if phase == "asyncio-dormant":
            return await phase_asyncio_dormant(n)
        if phase == "active":
            return await phase_active(tmp / "h", n)
        return await phase_asyncio_active(n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def child(phase: str, n: int) -> dict[str, Any]:
    """Run a memory phase in a fresh interpreter and return its figures."""
    done = subprocess.run(
        [
            *(sys.executable, __file__, "--phase", phase, "--size", str(n), "--t0", repr(log_start())),
            *("--commit-process", COMMIT_PROCESS[0]),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        fail(f"the {phase} phase exited with status {done.returncode}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


# -- the run -------------------------------------------------------------------------------


async def run_timed(tmp: Path, seeds: int, hops: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(await bench_oneway(tmp / "oneway", seeds, hops))
    log("one-way baseline: asyncio tasks and queues")
    out["asyncio_oneway_mps"] = round(await asyncio_oneway(seeds, hops))
    out.update(await bench_rr(tmp / "rr", RR_CALLS))
    log("request→reply baseline: asyncio queues and a future")
    out.update(await asyncio_rr(RR_CALLS))
    return out


TARGETS: list[tuple[str, str, float]] = [  # reported in "targets_met", not enforced
    ("oneway_mps", ">=", 20_000),
    ("rr_p50_ms", "<=", 0.5),
    ("rr_p99_ms", "<=", 2.0),
    ("dormant_bytes_per_agent", "<=", 2048),
    ("active_10k_rss_mb", "<", 500),
]
COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}

SUMMARY = [  # (what, ours, baseline, unit)
    ("one-way messages", "oneway_mps", "asyncio_oneway_mps", "/s (asyncio queues)"),
    ("request→reply p50", "rr_p50_ms", "asyncio_rr_p50_ms", " ms (asyncio queues + future)"),
    ("request→reply p99", "rr_p99_ms", "asyncio_rr_p99_ms", " ms (asyncio queues + future)"),
    ("dormant agent", "dormant_bytes_per_agent", "asyncio_dormant_bytes_per_task", " B (idle asyncio task + queue)"),
    ("10,000 active agents", "active_10k_rss_mb", "asyncio_active_10k_rss_mb", " MiB RSS (10,000 waiting tasks)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"CI smoke run: {QUICK_HOPS} hops, {QUICK_DORMANT} dormant"
    )
    parser.add_argument("--hops", type=int, default=None, help=f"hops each one-way message travels (default {HOPS})")
    parser.add_argument(
        "--seeds", type=int, default=SEEDS, help=f"one-way messages sent from outside (default {SEEDS})"
    )
    parser.add_argument("--dormant", type=int, default=None, help=f"dormant agents to spawn (default {DORMANT:,})")
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout")
    parser.add_argument(
        "--commit-process",
        choices=["auto", "always", "never"],
        default="auto",
        help="the habitats' commit_process setting (default auto, the habitat's default)",
    )
    parser.add_argument(
        "--phase", choices=["dormant", "asyncio-dormant", "active", "asyncio-active"], help=argparse.SUPPRESS
    )
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    COMMIT_PROCESS[0] = args.commit_process
    if args.phase:
        if args.t0 is not None:
            set_log_start(args.t0)  # the log's clock starts with the parent's
        print(json.dumps(asyncio.run(run_phase(args.phase, args.size))))
        return
    hops = args.hops if args.hops is not None else (QUICK_HOPS if args.quick else HOPS)
    dormant = args.dormant if args.dormant is not None else (QUICK_DORMANT if args.quick else DORMANT)
    if hops < 0 or args.seeds < 1 or dormant < 1:
        parser.error("--hops must be ≥ 0, --seeds and --dormant ≥ 1")
    out: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(), "rss_source": RSS_SOURCE}
    out.update(agents=AGENTS, seeds=args.seeds, hops=hops, quick=args.quick, commit_process=args.commit_process)
    tmp = Path(tempfile.mkdtemp(prefix="habitus-bench-msg-"))
    try:
        out.update(asyncio.run(run_timed(tmp, args.seeds, hops)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"active: {ACTIVE} waiting agents (child process), then the asyncio baseline")
    out.update(child("active", ACTIVE))
    out.update(child("asyncio-active", ACTIVE))
    log(f"dormant: {dormant} agents spawned in transactions of {CHUNK} (child process), then the asyncio baseline")
    out.update(child("dormant", dormant))
    out.update(child("asyncio-dormant", min(dormant, BASELINE_DORMANT_MAX)))
    out["targets_met"] = {f"{key} {op} {bound:g}": COMPARE[op](out[key], bound) for key, op, bound in TARGETS}
    out["total_s"] = round(time.monotonic() - log_start(), 1)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"habitus messaging benchmark: {out['cores']} cores, Python {out['python']}, RSS from {out['rss_source']}")
    for what, ours, base, unit in SUMMARY:
        print(f"  {what:<22} {out[ours]:>10} vs {out[base]}{unit}")
    missed = [target for target, met in out["targets_met"].items() if not met]
    print(f"  targets missed: {', '.join(missed) or 'none'}")


if __name__ == "__main__":
    main()
