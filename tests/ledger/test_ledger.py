"""The ledger's behaviour as a user of the Python API meets it."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from habitus import (
    Draft,
    Event,
    Habitat,
    Message,
    Settings,
    SyncHabitat,
    caused_by,
    check_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from habitus.agents._models import message_from_row
from habitus.errors import (
    ContentTooLargeError,
    EventNotFoundError,
    InvalidEventError,
    InvalidMetaError,
    InvalidRequestError,
    StorageError,
    UnknownCauseError,
    UnknownKindError,
)

# -- appending --------------------------------------------------------------------------------


async def test_events_get_ids_seqs_and_times_in_order(habitat: Habitat) -> None:
    ledger = habitat.ledger
    events = [await ledger.append("note.recorded", actor="human:ada", content=f"note {i}") for i in range(5)]
    events += list(await ledger.append_many([Draft(kind="note.recorded", actor="agent:x", content="b")] * 5))
    assert [e.seq for e in events] == list(range(2, 12))  # seq 1 is habitat.created
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.id.version == 7 for e in events)
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert all(e.ts.tzinfo is not None for e in events)
    first = await ledger.get_seq(1)
    assert first.kind == "habitat.created"
    assert first.actor == "system"


async def test_content_round_trips_as_text_json_and_bytes(habitat: Habitat) -> None:
    ledger = habitat.ledger
    samples: list[object] = ["héllo ✓", {"a": [1, 2.5, None, True], "b": "x"}, [1, "two"], b"\x00\xff raw"]
    for content in samples:
        event = await ledger.append("note.recorded", actor="human:ada", content=content)
        stored = await ledger.get(event.id)
        assert stored.content == content
        assert stored.digest is not None and len(stored.digest) == 64
    assert (await ledger.get(str(event.id))).content_type == "bytes"


async def test_world_time_thread_and_meta_are_kept(habitat: Habitat) -> None:
    at = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    event = await habitat.ledger.append(
        "observation.recorded",
        actor="source:sensor-1",
        content="22 °C",
        at=at,
        thread="greenhouse",
        meta={"source": "north", "tags": ["temp"]},
    )
    stored = await habitat.ledger.get(event.id)
    assert stored.at == at
    assert stored.thread == "greenhouse"
    assert stored.meta == {"source": "north", "tags": ["temp"]}


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"kind": "no.such", "actor": "human:a", "content": "x"}, UnknownKindError, "'no.such'"),
        ({"kind": "note.recorded", "actor": "ada", "content": "x"}, InvalidEventError, "'ada'"),
        ({"kind": "note.recorded", "actor": "human:a"}, InvalidEventError, "requires content"),
        (
            {
                "kind": "habitat.created",
                "actor": "system",
                "content": "x",
                "meta": {"name": "n", "habitus_version": "1"},
            },
            InvalidEventError,
            "takes no content",
        ),
        ({"kind": "message.sent", "actor": "human:a", "content": "x"}, InvalidMetaError, "to"),
        (
            {"kind": "message.sent", "actor": "human:a", "content": "x", "meta": {"to": "agent:b", "extra": 1}},
            InvalidMetaError,
            "extra",
        ),
        ({"kind": "message.sent", "actor": "human:a", "content": "x", "meta": {"to": 5}}, InvalidMetaError, "to"),
        ({"kind": "note.recorded", "actor": "human:a", "content": {1, 2}}, InvalidEventError, "set"),
        ({"kind": "note.recorded", "actor": "human:a", "content": float("nan")}, InvalidEventError, "JSON"),
        ({"kind": "note.recorded", "actor": "human:a", "content": "x", "thread": ""}, InvalidEventError, "thread"),
        (
            {"kind": "note.recorded", "actor": "human:a", "content": "x", "at": datetime(2024, 1, 1)},
            InvalidEventError,
            "timezone",
        ),
        ({"kind": "note.recorded", "actor": "human:a", "content": "\udc80"}, InvalidEventError, "encode"),
        (
            {"kind": "note.recorded", "actor": "human:a", "content": "x", "at": "2024-01-01"},
            InvalidEventError,
            "datetime",
        ),
        (
            {"kind": "note.recorded", "actor": "human:a", "content": "x", "causes": [uuid.UUID(int=7)]},
            UnknownCauseError,
            "00000000-0000-0000-0000-000000000007",
        ),
        (
            {"kind": "note.recorded", "actor": "human:a", "content": "x", "causes": ["not-a-uuid"]},
            InvalidRequestError,
            "'not-a-uuid'",
        ),
    ],
)
async def test_bad_input_is_refused_with_a_specific_error_and_nothing_is_written(
    habitat: Habitat, kwargs: dict[str, object], error: type[Exception], fragment: str
) -> None:
    before = await habitat.ledger.count()
    kind = kwargs.pop("kind")
    with pytest.raises(error, match=None) as caught:
        await habitat.ledger.append(kind, **kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    assert await habitat.ledger.count() == before
    assert (await habitat.ledger.verify()).ok


async def test_size_limits_are_enforced(tmp_path: Path) -> None:
    settings = Settings.resolve(
        config_file=None, environ={}, path=tmp_path / "h", max_content_bytes=100, max_meta_bytes=64
    )
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.ledger.append("note.recorded", actor="human:a", content="x" * 100)
        with pytest.raises(ContentTooLargeError, match="101 bytes, over the limit of 100"):
            await hab.ledger.append("note.recorded", actor="human:a", content="x" * 101)
        with pytest.raises(ContentTooLargeError, match="meta is"):
            await hab.ledger.append("note.recorded", actor="human:a", content="x", meta={"tags": ["y" * 80]})


async def test_drafts_accept_events_as_causes(habitat: Habitat) -> None:
    first = await habitat.ledger.append("note.recorded", actor="human:a", content="first")
    (second,) = await habitat.ledger.append_many(
        [Draft(kind="note.recorded", actor="human:a", content="2", causes=[first])]
    )
    assert second.causes == (first.id,)


async def test_a_bad_draft_in_a_batch_writes_nothing(habitat: Habitat) -> None:
    before = await habitat.ledger.count()
    drafts = [Draft(kind="note.recorded", actor="human:a", content=str(i)) for i in range(10)]
    drafts.insert(7, Draft(kind="note.recorded", actor="nobody", content="bad"))
    with pytest.raises(InvalidEventError, match="event 7"):
        await habitat.ledger.append_many(drafts)
    assert await habitat.ledger.count() == before


async def test_a_failed_write_keeps_nothing_and_the_ledger_recovers(
    habitat: Habitat, monkeypatch: pytest.MonkeyPatch
) -> None:
    from habitus.storage import SQLiteStore

    ledger = habitat.ledger
    await ledger.append("note.recorded", actor="human:a", content="before")
    real_write = SQLiteStore.write
    calls = {"n": 0}

    def failing_write(self: SQLiteStore, batch: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("disk full (simulated)")
        real_write(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLiteStore, "write", failing_write)
    with pytest.raises(StorageError, match="disk full"):
        await ledger.append_many([Draft(kind="note.recorded", actor="human:a", content="lost")] * 3)
    after = await ledger.append("note.recorded", actor="human:a", content="after")
    assert after.seq == 3
    page = await ledger.query(limit=100)
    assert [e.content for e in page.events][1:] == ["before", "after"]
    assert (await ledger.verify()).ok


# -- causality --------------------------------------------------------------------------------


async def test_why_walks_back_across_principals_to_the_origin(habitat: Habitat) -> None:
    ledger = habitat.ledger
    ask = await ledger.append("message.sent", actor="human:ada", content="check", meta={"to": "agent:scout"})
    seen = await ledger.append("observation.recorded", actor="agent:scout", content="hot", causes=[ask])
    tell = await ledger.append(
        "message.sent", actor="agent:scout", content="hot!", meta={"to": "agent:planner"}, causes=[seen]
    )
    act = await ledger.append("decision.made", actor="agent:planner", meta={"action": "vent"}, causes=[tell, ask])
    graph = await ledger.why(act)
    assert {n.id for n in graph.nodes} == {ask.id, seen.id, tell.id, act.id}
    assert [o.id for o in graph.origins()] == [ask.id]
    assert graph.depth[str(ask.id)] == 1  # the shortest path: act was also caused by ask directly
    assert not graph.truncated
    effects = await ledger.effects(ask)
    assert {n.id for n in effects.nodes} == {ask.id, seen.id, tell.id, act.id}


async def test_walks_stop_at_depth_and_limit_and_say_so(habitat: Habitat) -> None:
    ledger = habitat.ledger
    chain = [await ledger.append("note.recorded", actor="agent:a", content="0")]
    for i in range(1, 60):
        chain.append(await ledger.append("note.recorded", actor="agent:a", content=str(i), causes=[chain[-1]]))
    full = await ledger.why(chain[-1], depth=100)
    assert len(full.nodes) == 60 and not full.truncated
    deep = await ledger.why(chain[-1], depth=50)
    assert len(deep.nodes) == 51 and deep.truncated
    assert max(deep.depth.values()) == 50
    small = await ledger.why(chain[-1], depth=100, limit=10)
    assert len(small.nodes) == 10 and small.truncated
    forward = await ledger.effects(chain[0], depth=5)
    assert [n.seq for n in forward.nodes] == [e.seq for e in chain[:6]]
    assert forward.truncated
    with pytest.raises(EventNotFoundError):
        await ledger.why(uuid.UUID(int=1))


async def test_causal_context_fills_causes_and_thread_across_tasks(habitat: Habitat) -> None:
    ledger = habitat.ledger
    request = await ledger.append("message.sent", actor="human:ada", content="go", meta={"to": "agent:b"})
    extra = await ledger.append("note.recorded", actor="agent:b", content="context")

    async def side_task() -> uuid.UUID:
        return (await ledger.append("note.recorded", actor="agent:b", content="in a task")).id

    with caused_by(request, thread="t-1"):
        inside = await ledger.append("note.recorded", actor="agent:b", content="inside", causes=[extra])
        task_event_id = await asyncio.create_task(side_task())
        with caused_by(extra):
            nested = await ledger.append("note.recorded", actor="agent:b", content="nested")
    outside = await ledger.append("note.recorded", actor="agent:b", content="outside")
    assert inside.causes == (request.id, extra.id) and inside.thread == "t-1"
    task_event = await ledger.get(task_event_id)
    assert task_event.causes == (request.id,) and task_event.thread == "t-1"
    assert nested.causes == (request.id, extra.id)
    assert outside.causes == () and outside.thread is None


# -- queries ----------------------------------------------------------------------------------


async def test_queries_filter_and_paginate(habitat: Habitat) -> None:
    ledger = habitat.ledger
    drafts = []
    for i in range(120):
        kind = ["note.recorded", "observation.recorded", "message.sent"][i % 3]
        meta = {"to": "agent:z"} if kind == "message.sent" else {}
        drafts.append(
            Draft(kind=kind, actor=f"agent:a{i % 4}", content=str(i), meta=meta, thread="t" if i % 5 == 0 else None)
        )
    await ledger.append_many(drafts[:60])
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await ledger.append_many(drafts[60:])

    by_actor = await ledger.query(actor="agent:a1", limit=1000)
    assert [e.content for e in by_actor.events] == [str(i) for i in range(120) if i % 4 == 1]
    by_kind = await ledger.query(kind="message.sent", limit=1000)
    assert len(by_kind.events) == 40 and all(e.kind == "message.sent" for e in by_kind.events)
    family = await ledger.query(kind="message.*", limit=1000)
    assert [e.id for e in family.events] == [e.id for e in by_kind.events]
    by_thread = await ledger.query(thread="t", limit=1000)
    assert [e.content for e in by_thread.events] == [str(i) for i in range(0, 120, 5)]
    both = await ledger.query(actor="agent:a0", kind="note.recorded", limit=1000)
    assert [e.content for e in both.events] == [str(i) for i in range(120) if i % 4 == 0 and i % 3 == 0]
    later = await ledger.query(since=middle, actor="agent:a2", limit=1000)
    assert [e.content for e in later.events] == [str(i) for i in range(60, 120) if i % 4 == 2]
    earlier = await ledger.query(until=middle, kind="note.recorded", limit=1000)
    assert [e.content for e in earlier.events] == [str(i) for i in range(60) if i % 3 == 0]

    pages: list[str] = []
    cursor = None
    while True:
        page = await ledger.query(actor="agent:a3", limit=7, cursor=cursor, order="desc")
        pages += [str(e.content) for e in page.events]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [str(i) for i in reversed(range(120)) if i % 4 == 3]

    with pytest.raises(UnknownKindError):
        await ledger.query(kind="nothing.*")
    with pytest.raises(InvalidRequestError, match="limit"):
        await ledger.query(limit=0)


async def test_tail_yields_new_events_as_they_commit(habitat: Habitat) -> None:
    ledger = habitat.ledger
    await ledger.append("note.recorded", actor="human:a", content="old")
    received: list[object] = []

    async def consume() -> None:
        async for event in ledger.tail():
            received.append(event.content)
            if len(received) == 3:
                return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    for text in ("one", "two", "three"):
        await ledger.append("note.recorded", actor="human:a", content=text)
    await asyncio.wait_for(consumer, 5)
    assert received == ["one", "two", "three"]
    replay = ledger.tail(after=0)
    assert (await anext(replay)).kind == "habitat.created"
    await replay.aclose()  # type: ignore[attr-defined]


# -- proofs and checkpoints -------------------------------------------------------------------


async def test_inclusion_and_consistency_proofs_verify_without_the_store(habitat: Habitat) -> None:
    ledger = habitat.ledger
    events = list(
        await ledger.append_many([Draft(kind="note.recorded", actor="human:a", content=str(i)) for i in range(300)])
    )
    old_size, old_root = await ledger.root(100)
    for event in (events[0], events[77], events[-1]):
        proof = await ledger.inclusion_proof(event)
        path = [bytes.fromhex(p) for p in proof.path]
        assert verify_inclusion(
            bytes.fromhex(proof.leaf), event.seq - 1, proof.tree_size, path, bytes.fromhex(proof.root)
        )
        assert not verify_inclusion(
            bytes.fromhex(proof.leaf), event.seq, proof.tree_size, path, bytes.fromhex(proof.root)
        )
    consistency = await ledger.consistency_proof(old_size)
    assert consistency.old_root == old_root
    assert verify_consistency(
        old_size,
        consistency.new_size,
        bytes.fromhex(consistency.old_root),
        bytes.fromhex(consistency.new_root),
        [bytes.fromhex(p) for p in consistency.path],
    )
    with pytest.raises(InvalidRequestError):
        await ledger.consistency_proof(10_000)


async def test_checkpoints_are_signed_automatically_and_on_request(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", checkpoint_every=50)
    hab = await Habitat.init(settings.path, settings=settings)
    await hab.ledger.append_many([Draft(kind="note.recorded", actor="human:a", content="x")] * 120)
    auto = await hab.ledger.checkpoints()
    assert [c.tree_size for c in auto] == [1, 121]  # the one at init, then one per >= 50 new events
    manual = await hab.ledger.checkpoint()
    assert manual.tree_size == 121 and check_checkpoint(manual)
    forged = manual.model_copy(update={"root": "00" * 32})
    assert not check_checkpoint(forged)
    await hab.ledger.append("note.recorded", actor="human:a", content="after")
    await hab.close()
    reopened = await Habitat.open(settings.path, settings=settings)
    last = (await reopened.ledger.checkpoints())[-1]
    assert last.tree_size == 122  # closing signed the tail
    assert (await reopened.ledger.verify()).checkpoints == 3
    await reopened.close()


async def test_reopening_continues_the_same_tree(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h")
    for round_ in range(3):
        async with await Habitat.open(settings.path, create=True, settings=settings) as hab:
            await hab.ledger.append_many([Draft(kind="note.recorded", actor="human:a", content=str(round_))] * 77)
            report = await hab.ledger.verify()
            assert report.ok and report.events == 1 + 77 * (round_ + 1)


# -- erasure ----------------------------------------------------------------------------------


def _files_containing(directory: Path, needle: bytes) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_erasure_removes_the_text_from_every_file_and_the_ledger_still_verifies(habitat: Habitat) -> None:
    ledger = habitat.ledger
    secret = "Ada's phone is +44 7700 900123"
    target = await ledger.append("note.recorded", actor="human:ada", content=secret)
    for i in range(500):  # enough writes for the secret's page to be copied around
        await ledger.append("note.recorded", actor="agent:b", content=f"filler {i}", causes=[target] if i % 50 else [])
    assert _files_containing(habitat.path, secret.encode()), "the test must see the secret before erasing it"

    erasure = await ledger.erase(target, reason="right to be forgotten", by="human:ada")
    assert erasure.scrubbed
    assert erasure.event.kind == "content.erased"
    assert erasure.event.causes == (target.id,)
    assert erasure.event.meta["target_seq"] == target.seq
    stored = await ledger.get(target)
    assert stored.erased and stored.content is None and stored.digest == target.digest
    assert _files_containing(habitat.path, secret.encode()) == []
    assert (await ledger.verify()).ok
    assert (await ledger.why(erasure.event)).nodes[0].erased
    with pytest.raises(InvalidRequestError, match="already erased"):
        await ledger.erase(target, reason="again", by="human:ada")
    with pytest.raises(InvalidRequestError, match="no content"):
        await ledger.erase(erasure.event, reason="nothing there", by="human:ada")


async def test_content_gone_without_an_erasure_event_is_reported(habitat: Habitat) -> None:
    import sqlite3

    event = await habitat.ledger.append("note.recorded", actor="human:ada", content="quietly removed")
    await habitat.close()
    conn = sqlite3.connect(habitat.path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE events SET salt = NULL, body = NULL WHERE seq = ?", (event.seq,))
    conn.close()
    async with await Habitat.open(habitat.path, read_only=True) as reader:
        report = await reader.ledger.verify()
    assert not report.ok and report.first_bad_seq == event.seq
    assert report.problems[0].where == "erasure"


async def test_world_time_in_another_zone_is_the_same_instant(habitat: Habitat) -> None:
    local = datetime(2024, 3, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    event = await habitat.ledger.append("note.recorded", actor="human:a", content="x", at=local)
    stored = await habitat.ledger.get(event.id)
    assert stored.at == local and stored.at == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


async def test_full_durability_commits_through_the_writer_thread(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", durability="full")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        singles = [await hab.ledger.append("note.recorded", actor="human:a", content=str(i)) for i in range(20)]
        batch = await hab.ledger.append_many([Draft(kind="note.recorded", actor="human:a", content="b")] * 40)
        assert [e.seq for e in singles] == list(range(2, 22))
        assert batch[-1].seq == 61
        assert (await hab.ledger.verify()).ok


# -- transactions -----------------------------------------------------------------------------


async def test_a_transaction_commits_its_events_together_with_internal_causes(habitat: Habitat) -> None:
    ledger = habitat.ledger
    outside = await ledger.append("message.sent", actor="human:ada", content="go", meta={"to": "agent:s"})
    async with ledger.transaction() as tx:
        seen = tx.append("observation.recorded", actor="agent:s", content="hot", causes=[outside])
        act = tx.append("decision.made", actor="agent:s", meta={"action": "vent"}, causes=[seen])
        assert tx.staged == 2
        assert await ledger.count() == 2  # nothing is written before the block ends
    first, second = tx.events
    assert (first.id, second.id) == (seen, act)
    assert second.seq == first.seq + 1 == outside.seq + 2
    assert second.causes == (seen,)
    trail = await ledger.why(act)
    assert [o.id for o in trail.origins()] == [outside.id]
    assert (await ledger.effects(outside)).nodes[-1].id == act
    assert (await ledger.verify()).ok


async def test_a_failed_transaction_writes_nothing(habitat: Habitat) -> None:
    ledger = habitat.ledger
    before = await ledger.count()
    with pytest.raises(RuntimeError, match="handler failed"):
        async with ledger.transaction() as tx:
            tx.append("note.recorded", actor="agent:s", content="half done")
            raise RuntimeError("handler failed")
    with pytest.raises(UnknownCauseError):
        async with ledger.transaction() as tx:
            tx.append("note.recorded", actor="agent:s", content="a")
            tx.append("note.recorded", actor="agent:s", content="b", causes=[uuid.UUID(int=9)])
    async with ledger.transaction() as tx:
        with pytest.raises(InvalidEventError):
            tx.append("note.recorded", actor="nobody", content="bad")
        tx.append("note.recorded", actor="agent:s", content="good")
    assert [e.content for e in tx.events] == ["good"]
    assert await ledger.count() == before + 1
    with pytest.raises(InvalidRequestError, match="has committed"):
        tx.append("note.recorded", actor="agent:s", content="late")
    async with ledger.transaction() as empty:
        pass
    assert list(empty.events) == []


async def test_transactions_committing_together_each_keep_their_own_events(habitat: Habitat) -> None:
    # Transactions that end in the same loop iteration are sealed and written as one batch; each
    # still gets exactly its own events, causes within it resolve, and a failing one writes nothing.
    ledger = habitat.ledger
    outside = await ledger.append("note.recorded", actor="human:ada", content="start")
    before = await ledger.count()

    async def one(i: int) -> Sequence[Event]:
        async with ledger.transaction() as tx:
            first = tx.append("note.recorded", actor=f"agent:t{i}", content={"i": i}, causes=[outside])
            for j in range(i % 3):
                tx.append("note.recorded", actor=f"agent:t{i}", content={"i": i, "j": j}, causes=[first])
            if i % 5 == 4:
                raise RuntimeError(f"transaction {i} fails")
            if i % 7 == 6:
                tx.append("note.recorded", actor=f"agent:t{i}", content="orphan", causes=[uuid.UUID(int=i)])
        return tx.events

    results = await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)
    committed = 0
    for i, result in enumerate(results):
        if i % 5 == 4:
            assert isinstance(result, RuntimeError)
            continue
        if i % 7 == 6:
            assert isinstance(result, UnknownCauseError)
            continue
        assert not isinstance(result, BaseException)
        assert [e.content for e in result] == [{"i": i}] + [{"i": i, "j": j} for j in range(i % 3)]
        assert {e.actor for e in result} == {f"agent:t{i}"}
        assert [e.seq for e in result] == list(range(result[0].seq, result[0].seq + len(result)))
        assert result[0].causes == (outside.id,) and all(e.causes == (result[0].id,) for e in result[1:])
        committed += len(result)
    assert await ledger.count() == before + committed
    assert (await ledger.verify()).ok


def test_transactions_from_the_sync_facade(sync_habitat: SyncHabitat) -> None:
    with sync_habitat.ledger.transaction() as tx:
        a = tx.append("note.recorded", actor="agent:s", content="a")
        tx.append("note.recorded", actor="agent:s", content="b", causes=[a])
    assert [e.content for e in tx.events] == ["a", "b"]
    with pytest.raises(ZeroDivisionError), sync_habitat.ledger.transaction() as failed:
        failed.append("note.recorded", actor="agent:s", content="never")
        _ = 1 / 0
    assert sync_habitat.ledger.count() == 3


async def test_checked_meta_is_remembered_without_confusing_true_and_one(habitat: Habitat) -> None:
    ledger = habitat.ledger
    meta = {"to": "agent:b", "expects_reply": True}
    for _ in range(2):  # the second append is served from the cache of checked metas
        event = await ledger.append("message.sent", actor="human:a", content="x", meta=meta)
        assert event.meta == meta
    with pytest.raises(InvalidMetaError, match="expects_reply"):
        await ledger.append("message.sent", actor="human:a", content="x", meta={"to": "agent:b", "expects_reply": 1})
    for shorter in ({"to": "agent:b"}, {"to": "agent:b"}, {"to": "agent:bb"}):  # a prefix of a remembered meta
        assert (await ledger.append("message.sent", actor="human:a", content="x", meta=shorter)).meta == shorter


async def test_events_and_messages_built_without_validation_equal_validated_ones(habitat: Habitat) -> None:
    # The write and delivery paths build Event and Message without pydantic's validation.
    cause = await habitat.ledger.append("note.recorded", actor="human:ada", content="why")
    meta = {"to": "agent:b", "type": "ask", "expects_reply": True, "in_reply_to": str(cause.id)}
    for content in ({"k": [1, "é", None, 2.5]}, "text", b"\x00bytes", [0]):
        sent = await habitat.ledger.append(
            "message.sent", actor="human:ada", content=content, meta=meta, causes=[cause], thread="t-1"
        )
        for event in (sent, await habitat.ledger.get(sent.id)):
            validated = Event.model_validate(event.model_dump())
            assert event == validated and event.model_fields_set == validated.model_fields_set
            message = Message.from_event(event, attempt=2)
            checked = Message.model_validate(message.model_dump())
            assert message == checked and message.model_fields_set == checked.model_fields_set
            (row,) = habitat._store.rows_by_seq([event.seq])
            from_row = message_from_row(row, attempt=2)  # the delivery path's one-pass build
            assert from_row == message and from_row.event == event
            assert from_row.model_fields_set == checked.model_fields_set
            assert (message.to, message.type, message.expects_reply, message.in_reply_to) == (
                "agent:b",
                "ask",
                True,
                cause.id,
            )


async def test_cancelling_one_transaction_leaves_those_committing_with_it_alone(habitat: Habitat) -> None:
    ledger = habitat.ledger

    async def commit(i: int) -> Sequence[Event]:
        async with ledger.transaction() as tx:
            tx.append("note.recorded", actor=f"agent:c{i}", content={"i": i})
        return tx.events

    first, second = asyncio.ensure_future(commit(1)), asyncio.ensure_future(commit(2))
    await asyncio.sleep(0)  # both have staged their event and wait for the same commit
    first.cancel()
    assert [e.content for e in await second] == [{"i": 2}]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await ledger.count()) >= 2  # the cancelled one may still have been written: cancelling is not rollback
