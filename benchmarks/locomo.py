"""LoCoMo retrieval benchmark: remember every turn of long conversations, then recall each question's evidence.

Reads every LoCoMo-format JSON file in ``--data`` (layout and scoring: ``shared/data/README.md``),
creates a fresh habitat with one agent per conversation, and remembers each session's turns
(``remember_many``, one batch per session) with:

* text: the turn, plus ``[shares a photo of <caption>]`` where the turn shared a photo;
* ``at``: the session's date (world time); ``thread``: the session; ``kind``: ``message``;
* ``meta={"speaker": ...}``: who said it.

Then, for each question with evidence (category 5 excluded), ``recall(question, k=10,
now=<the conversation's last session date>)`` and scores recall@k = |evidence ∩ top-k| / |evidence|
(evidence ids are cleaned first: ``"D8:6; D9:17"`` is split, ``"D:11:26"`` repaired, ids that
name no turn dropped; a question left with no evidence is skipped). No language model anywhere.

Prints one JSON object: ``recall@5``, ``recall@10``, ``per_category`` (the same two per category),
``questions``, ``ingest_s``, ``latency_p50_ms``, ``latency_p95_ms`` (each recall end to end: embedding
the query, searching, ranking, and appending its ``memory.recalled`` event), ``embedder``, ``cores``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import fail, log, pct
from habitus import Habitat, Settings

_ID = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
TARGET_5, TARGET_10 = 0.65, 0.75  # the targets on locomo-dev


def parse_date(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` as a UTC datetime."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turn_id(raw: str) -> str | None:
    m = _ID.fullmatch(raw.strip())
    return f"D{int(m.group(1))}:{int(m.group(2))}" if m else None


def clean_evidence(evidence: list[Any], known: set[str]) -> list[str]:
    """Split multi-id entries, repair ``D:11:26``, drop ids that name no turn."""
    out: list[str] = []
    for entry in evidence:
        for part in re.split(r"[;,\s]+", str(entry)):
            tid = turn_id(part) if part else None
            if tid and tid in known and tid not in out:
                out.append(tid)
    return out


def load(path: Path) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]], datetime]:
    """Sessions (each a list of memories to remember), questions, and the last session's date."""
    data = json.loads(path.read_text(encoding="utf-8"))
    numbers = sorted(int(m.group(1)) for k in data if (m := _SESSION.fullmatch(k)))
    sessions: list[list[dict[str, Any]]] = []
    last = datetime(1970, 1, 1, tzinfo=UTC)
    for n in numbers:
        at = parse_date(data[f"session_{n}_date_time"])
        last = max(last, at)
        turns = []
        for t in data[f"session_{n}"]:
            tid = turn_id(t["dia_id"])
            caption = t.get("blip_caption")
            text = t["text"] + (f" [shares a photo of {caption}]" if caption else "")
            turns.append({"id": tid, "text": text, "speaker": t["speaker"], "at": at, "thread": f"session_{n}"})
        sessions.append(turns)
    known = {t["id"] for s in sessions for t in s}
    questions = []
    for q in data.get("qa", []):
        if q.get("category") == 5:
            continue
        evidence = clean_evidence(q.get("evidence") or [], known)
        if evidence:
            questions.append({"question": q["question"], "category": int(q["category"]), "evidence": evidence})
    return sessions, questions, last


async def run(data_dir: Path, embedder: str, k_max: int) -> dict[str, Any]:
    files = sorted(data_dir.glob("*.json"))
    if not files:
        fail(f"no LoCoMo .json files in {data_dir}")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.resolve(config_file=None, environ={}, path=Path(tmp) / "habitat", embedder=embedder)
        async with await Habitat.init(settings.path, settings=settings) as hab:
            convs = []
            for path in files:
                sessions, questions, last = load(path)
                agent = f"conv-{path.stem}"
                await hab.agents.spawn(agent, behaviour="locomo", owner="service:benchmark")
                convs.append((agent, sessions, questions, last))
            log(f"{len(files)} conversations, {sum(len(c[2]) for c in convs)} questions; ingesting")
            turn_of: dict[str, str] = {}
            t0 = time.perf_counter()
            for agent, sessions, _, _ in convs:
                mem = hab.memory(agent)
                for turns in sessions:
                    records = await mem.remember_many(
                        {
                            "text": t["text"],
                            "at": t["at"],
                            "kind": "message",
                            "thread": t["thread"],
                            "meta": {"speaker": t["speaker"]},
                        }
                        for t in turns
                    )
                    for record, turn in zip(records, turns, strict=True):
                        turn_of[str(record.id)] = turn["id"]
            ingest_s = time.perf_counter() - t0
            log(f"ingested {len(turn_of)} turns in {ingest_s:.1f}s with {hab.memories.embedder.name}")
            scores: dict[int, list[tuple[float, float]]] = {}
            latencies: list[float] = []
            for agent, _, questions, last in convs:
                mem = hab.memory(agent)
                for q in questions:
                    t1 = time.perf_counter()
                    result = await mem.recall(q["question"], k=k_max, now=last)
                    latencies.append(time.perf_counter() - t1)
                    got = [turn_of[str(h.record.id)] for h in result.hits]
                    evidence = set(q["evidence"])
                    r5 = len(evidence & set(got[:5])) / len(evidence)
                    r10 = len(evidence & set(got[:10])) / len(evidence)
                    scores.setdefault(q["category"], []).append((r5, r10))
            name = hab.memories.embedder.name
    everything = [s for v in scores.values() for s in v]
    return {
        "recall@5": round(sum(a for a, _ in everything) / len(everything), 4),
        "recall@10": round(sum(b for _, b in everything) / len(everything), 4),
        "per_category": {
            CATEGORIES.get(c, str(c)): {
                "recall@5": round(sum(a for a, _ in v) / len(v), 4),
                "recall@10": round(sum(b for _, b in v) / len(v), 4),
                "questions": len(v),
            }
            for c, v in sorted(scores.items())
        },
        "questions": len(everything),
        "conversations": len(files),
        "memories": len(turn_of),
        "ingest_s": round(ingest_s, 2),
        "latency_p50_ms": pct(latencies, 0.5),
        "latency_p95_ms": pct(latencies, 0.95),
        "embedder": name,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/locomo-dev")
    parser.add_argument("--embedder", default="auto", help="the embedder setting (default: the local model)")
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 below the targets (recall@5 {TARGET_5}, recall@10 {TARGET_10})"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.data, args.embedder, 10))
    print(json.dumps(result, indent=None if args.json else 2))
    if args.check and (result["recall@5"] < TARGET_5 or result["recall@10"] < TARGET_10):
        fail(f"recall@5 {result['recall@5']} / recall@10 {result['recall@10']} is below {TARGET_5} / {TARGET_10}")


if __name__ == "__main__":
    main()
