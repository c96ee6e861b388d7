"""Control benchmark: what the one policy check costs, beside the same work without it, in one run.

* ``decide_cached_us``: ``control.decide`` for an allowed (principal, action, resource) it
  has answered before (the messaging hot path: every send and delivery asks), against
  ``dict_lookup_us``, a plain dict lookup of the same key.
* ``decide_uncached_us``: the same question worked out from the defaults and 1,000
  capabilities (the memo cleared before each call), and ``decide_denied_us`` for a
  refusal (never memoised; the ``policy.denied`` event is not part of it).
* ``send_checked_p50_ms``: ``acting_as("agent:a").send`` (checked: capability, budget,
  trust label) against ``send_system_p50_ms``, ``hab.messages.send`` by ``system``, which
  skips the check; ``send_check_overhead_ms`` is the difference of the medians.
* ``recall_checked_p50_ms``: an owner's recall through ``acting_as`` (scopes worked out by
  the control layer) against ``recall_own_p50_ms``, the agent's own recall, over 2,000
  memories with the hash embedder (the check, not the embedder, is what is measured).

Usage: ``python benchmarks/control.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import log, pct
from habitus import Habitat, Settings
from habitus.memory import HashEmbedder


def _per_call_us(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def run(quick: bool) -> dict[str, Any]:
    n_calls = 20_000 if quick else 200_000
    n_sends = 300 if quick else 3_000
    n_recalls = 50 if quick else 300
    root = Path(tempfile.mkdtemp(prefix="habitus-control-bench-", dir=os.environ.get("HABITUS_BENCH_DIR")))
    try:
        settings = Settings.resolve(config_file=None, environ={}, path=root / "h", mailbox_capacity=1_000_000)
        async with await Habitat.init(settings.path, settings=settings) as hab:
            hab.use_embedder(HashEmbedder(dim=384))
            for agent in ("a", "b"):
                await hab.agents.spawn(agent, behaviour="bench", owner="human:ada")
            for i in range(1_000):  # grants to others, so the uncached check has something to look through
                await hab.control.grant(f"agent:other-{i}", "memory:read", f"scope:group:g{i}")
            control = hab.control
            key = ("agent:a", "message:send", "agent:b")
            table = {key: True}
            dict_us = _per_call_us(lambda: table[key], n_calls)
            control.decide(*key)
            cached_us = _per_call_us(lambda: control.decide(*key), n_calls)

            def uncached() -> None:
                control._memo.clear()
                control.decide(*key)

            clear_us = _per_call_us(control._memo.clear, n_calls)
            uncached_us = _per_call_us(uncached, n_calls // 10) - clear_us
            denied_us = _per_call_us(lambda: control.decide("agent:a", "tool:call", "tool:shell"), n_calls // 10)
            log(f"decide: cached {cached_us:.2f} us, uncached {uncached_us:.2f} us, dict {dict_us:.3f} us")

            checked: list[float] = []
            system: list[float] = []
            acting = hab.acting_as("agent:a")
            for i in range(n_sends):
                t = time.perf_counter()
                await acting.send("b", i)
                checked.append(time.perf_counter() - t)
                t = time.perf_counter()
                await hab.messages.send("b", i, sender="system")
                system.append(time.perf_counter() - t)
            log(f"send: checked p50 {pct(checked, 0.5):.3f} ms, system {pct(system, 0.5):.3f} ms")

            await hab.memory("a").remember_many([f"note {i} about the greenhouse vent {i % 37}" for i in range(2_000)])
            owner = hab.acting_as("human:ada").memory("a")
            own = hab.memory("a")
            by_owner: list[float] = []
            by_self: list[float] = []
            for i in range(n_recalls):
                t = time.perf_counter()
                await owner.recall(f"vent {i % 37}", mode="lexical")
                by_owner.append(time.perf_counter() - t)
                t = time.perf_counter()
                await own.recall(f"vent {i % 37}", mode="lexical")
                by_self.append(time.perf_counter() - t)
            log(f"recall: owner p50 {pct(by_owner, 0.5):.2f} ms, own {pct(by_self, 0.5):.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "decide_cached_us": round(cached_us, 3),
        "dict_lookup_us": round(dict_us, 3),
        "decide_uncached_us": round(uncached_us, 2),
        "decide_denied_us": round(denied_us, 2),
        "send_checked_p50_ms": round(pct(checked, 0.5), 3),
        "send_system_p50_ms": round(pct(system, 0.5), 3),
        "send_check_overhead_ms": round(pct(checked, 0.5) - pct(system, 0.5), 3),
        "recall_checked_p50_ms": round(pct(by_owner, 0.5), 2),
        "recall_own_p50_ms": round(pct(by_self, 0.5), 2),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: fewer calls")
    parser.add_argument("--json", action="store_true", help="print only one JSON object on stdout")
    args = parser.parse_args()
    result = asyncio.run(run(args.quick))
    print(json.dumps(result, indent=None if args.json else 2))
    sys.exit(0)


if __name__ == "__main__":
    main()
