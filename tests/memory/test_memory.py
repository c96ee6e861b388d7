"""Memory: remember, recall, facts, forgetting, scopes, reindexing — through the public API.

Most tests use the deterministic ``HashEmbedder`` (fast, no model); the real local
model is exercised in ``test_real_model_recalls_a_paraphrase`` and in the LoCoMo benchmark.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest

from habitus import Habitat, Settings, SyncHabitat
from habitus.errors import InvalidRequestError, MemoryNotFoundError, ScopeDeniedError, UnknownAgentError
from habitus.memory import HashEmbedder


@pytest.fixture
async def hab(settings: Settings) -> AsyncIterator[Habitat]:
    h = await Habitat.init(settings.path, settings=settings)
    h.use_embedder(HashEmbedder(dim=128))
    for agent in ("ada", "bob", "cy"):
        await h.agents.spawn(agent, behaviour="noop", owner="human:test")
    try:
        yield h
    finally:
        await h.close()


def _day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, 12, tzinfo=UTC)


async def test_remember_then_recall_returns_the_best_match_with_provenance(hab: Habitat) -> None:
    seen = await hab.ledger.append("observation.recorded", actor="agent:ada", content="gate 4 is jammed")
    mem = hab.memory("ada")
    jammed = await mem.remember("The north gate is jammed and needs oil", source=[seen.id], kind="observation")
    await mem.remember("Lunch was soup and bread")
    await mem.remember("The greenhouse needs watering on Fridays")
    assert jammed.seq > 0 and jammed.agent == "ada" and jammed.scope == "agent:ada"

    result = await mem.recall("which gate is jammed?", k=2)
    assert result[0].record.id == jammed.id
    top = result[0]
    assert top.record.sources == [seen.id]
    assert top.provenance == [jammed.id, seen.id]
    assert "lexical" in top.why and "dense" in top.why
    # the recall is an event that lists what it returned and cites it
    assert result.event is not None
    event = await hab.ledger.get(result.event)
    assert event.kind == "memory.recalled" and event.content == "which gate is jammed?"
    assert event.meta["returned"] == [str(h.record.id) for h in result]
    assert jammed.id in event.causes
    # and why() on it reaches the observation the memory came from
    why = await hab.ledger.why(result.event)
    assert seen.id in {e.id for e in why.nodes}


async def test_remembered_memory_is_an_event_with_its_text_as_content(hab: Habitat) -> None:
    record = await hab.memory("ada").remember("Bob owes me a book", at=_day(2024, 3, 1), tags=["debt"])
    event = await hab.ledger.get(record.id)
    assert event.kind == "memory.remembered"
    assert event.actor == "agent:ada"
    assert event.content == "Bob owes me a book"
    assert event.at == _day(2024, 3, 1)
    assert event.meta["scope"] == "agent:ada" and event.meta["tags"] == ["debt"]
    again = await hab.memory("ada").get(record.id)
    assert again.text == "Bob owes me a book" and again.at == _day(2024, 3, 1) and again.tags == ["debt"]


async def test_time_expressions_in_the_query_prefer_memories_from_then(hab: Habitat) -> None:
    mem = hab.memory("ada")
    may = await mem.remember("We went hiking by the lake", at=_day(2023, 5, 14))
    await mem.remember("We went hiking in the hills", at=_day(2023, 8, 2))
    await mem.remember("We went hiking near the coast", at=_day(2022, 5, 20))
    result = await mem.recall("where did we go hiking in May 2023?", k=3, now=_day(2024, 1, 1))
    assert result.time_filter == "in May 2023"
    assert result[0].record.id == may.id
    assert result[0].why["time"] == "in May 2023"


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
async def test_after_an_event_is_resolved_with_the_signals_of_the_mode(
    hab: Habitat, mode: Literal["hybrid", "dense", "lexical"], monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = hab.memory("ada")
    earlier = await mem.remember("We went hiking in the hills", at=_day(2023, 3, 2))
    await mem.remember("The road trip to the coast was long", at=_day(2023, 6, 1))
    later = await mem.remember("We went hiking in the forest", at=_day(2023, 6, 20))
    store, svc = hab.memories._store, hab.memories
    searched, embedded = [], []
    real_search, real_embed = store.memory_search, svc.embed

    def search(*args: object) -> list[tuple[int, float]]:
        searched.append(args)
        return real_search(*args)  # type: ignore[arg-type]

    async def embed(texts: Sequence[str]) -> object:
        embedded.append(list(texts))
        return await real_embed(texts)

    monkeypatch.setattr(store, "memory_search", search)
    monkeypatch.setattr(svc, "embed", embed)
    result = await mem.recall("where did we go hiking after the road trip?", k=2, mode=mode)
    assert result.time_filter == "after the road trip"
    assert later.id in {h.record.id for h in result} and earlier.id not in {h.record.id for h in result}
    assert bool(searched) == (mode != "dense")  # a dense recall runs no full-text search, for the anchor either
    assert bool(embedded) == (mode != "lexical")  # and a lexical one embeds nothing


async def test_filters_since_until_kinds_tags_and_as_of(hab: Habitat) -> None:
    mem = hab.memory("ada")
    old = await mem.remember("apples are ripe", at=_day(2023, 1, 1), kind="observation", tags=["orchard"])
    new = await mem.remember("apples are ripe again", at=_day(2024, 1, 1), kind="note")
    got = await mem.recall("apples ripe", since=_day(2023, 6, 1))
    assert [h.record.id for h in got] == [new.id]
    got = await mem.recall("apples ripe", until=_day(2023, 6, 1))
    assert [h.record.id for h in got] == [old.id]
    got = await mem.recall("apples ripe", kinds=["observation"])
    assert [h.record.id for h in got] == [old.id]
    got = await mem.recall("apples ripe", tags=["orchard"])
    assert [h.record.id for h in got] == [old.id]
    got = await mem.recall("apples ripe", as_of=old.recorded_at)
    assert [h.record.id for h in got] == [old.id]


async def test_bad_input_is_refused_and_nothing_is_stored(hab: Habitat) -> None:
    mem = hab.memory("ada")
    before = await hab.ledger.count()
    with pytest.raises(InvalidRequestError, match="non-empty string"):
        await mem.remember("   ")
    with pytest.raises(InvalidRequestError, match="importance"):
        await mem.remember("x", importance=2)
    with pytest.raises(InvalidRequestError, match="memory scope"):
        await mem.remember("x", scope="team")
    with pytest.raises(InvalidRequestError, match="ttl"):
        await mem.remember("x", ttl=-1)
    with pytest.raises(InvalidRequestError, match="unknown fields"):
        await mem.remember_many(["fine", {"text": "bad", "colour": "red"}])
    with pytest.raises(InvalidRequestError, match="k must be"):
        await mem.recall("anything", k=0)
    with pytest.raises(InvalidRequestError, match="query"):
        await mem.recall("")
    with pytest.raises(UnknownAgentError):
        await hab.memory("nobody").remember("hello")
    assert await hab.ledger.count() == before
    assert await mem.memories() == []


async def test_facts_are_bitemporal_and_superseded_not_deleted(hab: Habitat) -> None:
    mem = hab.memory("ada")
    paris = await mem.assert_fact("bob", "lives_in", "Paris", valid_from=_day(2020, 1, 1))
    believed_paris = datetime.now(UTC)
    berlin = await mem.assert_fact("bob", "lives_in", "Berlin", valid_from=_day(2023, 6, 1))
    assert paris.current and berlin.current

    now = await mem.facts("bob")
    values = sorted((f.value, f.valid_from, f.valid_to) for f in now)
    # Berlin from mid-2023; Paris still believed for 2020..2023 (a truncated copy)
    assert values == [("Berlin", _day(2023, 6, 1), None), ("Paris", _day(2020, 1, 1), _day(2023, 6, 1))]
    # what was believed before the second assertion: Paris, open-ended
    then = await mem.facts("bob", as_of=believed_paris)
    assert [(f.value, f.valid_to) for f in then] == [("Paris", None)]
    # world-time questions
    assert [f.value for f in await mem.facts("bob", valid_at=_day(2021, 1, 1))] == ["Paris"]
    assert [f.value for f in await mem.facts("bob", valid_at=_day(2024, 1, 1))] == ["Berlin"]
    # nothing deleted: the original Paris assertion is in the history, superseded by Berlin
    history = await mem.facts("bob", history=True)
    original = next(f for f in history if f.id == paris.id and f.valid_to is None)
    assert original.superseded_by == berlin.id and not original.current
    # the supersession is in the ledger: Berlin's assertion cites Paris's
    event = await hab.ledger.get(berlin.id)
    assert paris.id in event.causes and event.meta["supersedes"] == [str(paris.id)]
    # asserting what is already believed records nothing new
    count = await hab.ledger.count()
    same = await mem.assert_fact("bob", "lives_in", "Berlin", valid_from=_day(2023, 6, 1))
    assert same.id == berlin.id and await hab.ledger.count() == count


async def test_fact_arguments_are_checked(hab: Habitat) -> None:
    mem = hab.memory("ada")
    with pytest.raises(InvalidRequestError, match="valid_to"):
        await mem.assert_fact("bob", "age", 40, valid_from=_day(2024, 1, 1), valid_to=_day(2023, 1, 1))
    with pytest.raises(InvalidRequestError, match="subject"):
        await mem.assert_fact("", "age", 40)
    with pytest.raises(InvalidRequestError, match="JSON"):
        await mem.assert_fact("bob", "age", object())


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.lower() in p.read_bytes().lower()]


async def test_forget_erases_the_text_from_every_file_and_verify_still_passes(hab: Habitat) -> None:
    mem = hab.memory("ada")
    secret = "the spare key hides under the zanzibarite stone by the quokkaberry bush"
    for i in range(30):  # enough others that the index has several segments
        await mem.remember(f"ordinary day number {i} in the garden")
    record = await mem.remember(secret, tags=["secret"])
    await mem.remember("another ordinary day")
    assert _files_containing(hab.path, b"zanzibarite")  # it is on disk before

    done = await mem.forget(record, reason="asked to forget")
    assert done.memory == record.id and done.scrubbed
    for word in (b"zanzibarite", b"quokkaberri", b"quokkaberry", b"spare key hides"):
        assert _files_containing(hab.path, word) == [], word
    with pytest.raises(MemoryNotFoundError):
        await mem.get(record.id)
    assert all(h.record.id != record.id for h in await mem.recall("zanzibarite stone key"))
    report = await hab.ledger.verify()
    assert report.ok, report.problems
    forgotten = await hab.ledger.get(done.event)
    assert forgotten.kind == "memory.forgotten" and forgotten.meta["memory"] == str(record.id)
    erased = await hab.ledger.get(record.id)
    assert erased.erased and erased.content is None
    with pytest.raises(MemoryNotFoundError):
        await mem.forget(record.id, reason="again")


async def test_scopes_isolate_agents_and_denials_are_recorded(hab: Habitat) -> None:
    ada, bob = hab.memory("ada"), hab.memory("bob")
    diary = await ada.remember("my diary: I am afraid of moths")
    assert all(h.record.id != diary.id for h in await bob.recall("afraid of moths"))
    with pytest.raises(ScopeDeniedError, match="agent:bob may not memory:read scope:agent:ada"):
        await bob.recall("moths", scope="agent:ada")
    with pytest.raises(ScopeDeniedError):
        await bob.get(diary.id)
    with pytest.raises(ScopeDeniedError):
        await bob.forget(diary.id, reason="snooping")
    with pytest.raises(ScopeDeniedError):
        await bob.remember("planted", scope="agent:ada")
    denials = (await hab.ledger.query(kind="policy.denied")).events
    assert [(d.meta["principal"], d.meta["action"], d.meta["resource"]) for d in denials] == [
        ("agent:bob", "memory:read", "scope:agent:ada"),
        ("agent:bob", "memory:read", "scope:agent:ada"),
        ("agent:bob", "memory:erase", "scope:agent:ada"),
        ("agent:bob", "memory:write", "scope:agent:ada"),
    ]
    # a grant opens ada's private scope to bob for reading only
    await ada.grant("private", to="bob")
    assert (await bob.recall("afraid of moths", scope="agent:ada"))[0].record.id == diary.id
    with pytest.raises(ScopeDeniedError):
        await bob.remember("planted", scope="agent:ada")
    await ada.revoke("private", "bob")
    with pytest.raises(ScopeDeniedError):
        await bob.recall("moths", scope="agent:ada")


async def test_group_and_public_scopes(hab: Habitat) -> None:
    await hab.memories.grant("group:crew", "ada", write=True)
    await hab.memories.grant("group:crew", "bob")
    shared = await hab.memory("ada").remember("the crew meets at dawn", scope="group:crew")
    assert (await hab.memory("bob").recall("when does the crew meet"))[0].record.id == shared.id
    with pytest.raises(ScopeDeniedError):
        await hab.memory("bob").remember("no", scope="group:crew")
    assert all(h.record.id != shared.id for h in await hab.memory("cy").recall("when does the crew meet"))
    with pytest.raises(ScopeDeniedError, match="agent:cy may not memory:write scope:public"):
        await hab.memory("cy").remember("the well water is safe", scope="public")  # public is read-only by default
    await hab.control.grant("agent:cy", "memory:write", "scope:public")
    public = await hab.memory("cy").remember("the well water is safe", scope="public")
    assert (await hab.memory("bob").recall("is the well water safe"))[0].record.id == public.id
    # a crafted scope string is refused, not interpreted
    with pytest.raises(InvalidRequestError):
        await hab.memory("bob").recall("x", scope="group:crew' OR 1=1 --")


async def test_reindex_after_changing_the_embedder(hab: Habitat) -> None:
    mem = hab.memory("ada")
    target = await mem.remember("the violin is in the attic")
    await mem.remember("bread rises overnight")
    hab.use_embedder(HashEmbedder(dim=64))  # another model: old vectors no longer count
    got = await mem.recall("violin attic")
    assert "dense" not in got[0].why  # found by words only
    count = await hab.memories.reindex()
    assert count == 2
    got = await mem.recall("violin attic")
    assert got[0].record.id == target.id and "dense" in got[0].why
    assert got[0].record.embedder == HashEmbedder(dim=64).name
    events = (await hab.ledger.query(kind="memory.reindexed")).events
    assert events and events[-1].meta["count"] == 2
    assert await hab.memories.reindex() == 0


async def test_lexical_only_habitat_recalls_by_words(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", embedder="lexical")
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.agents.spawn("ada", behaviour="noop")
        mem = hab.memory("ada")
        hit = await mem.remember("the copper kettle whistles")
        await mem.remember("rain on the roof")
        got = await mem.recall("kettle whistling")
        assert got[0].record.id == hit.id and set(got[0].why) == {"lexical"}
        assert got[0].record.embedder is None


async def test_ttl_and_capacity_forget_through_erasure(tmp_path: Path) -> None:
    settings = Settings.resolve(config_file=None, environ={}, path=tmp_path / "h", embedder="hash", memory_capacity=3)
    async with await Habitat.init(settings.path, settings=settings) as hab:
        await hab.agents.spawn("ada", behaviour="noop")
        mem = hab.memory("ada")
        keep = await mem.remember("important: the password rotates monthly", importance=0.9)
        for i in range(4):
            await mem.remember(f"trivia {i}", importance=0.1)
        kept = await mem.memories()
        assert len(kept) == 3 and keep.id in {r.id for r in kept}
        short = await mem.remember("a fleeting thought", ttl=60, importance=1.0)
        assert await hab.memories.sweep(now=datetime.now(UTC) + timedelta(minutes=2)) >= 1
        assert short.id not in {r.id for r in await mem.memories()}
        causes = {e.meta["cause"] for e in (await hab.ledger.query(kind="memory.forgotten")).events}
        assert causes == {"capacity", "ttl"}
        assert (await hab.ledger.verify()).ok


async def test_remember_many_is_all_or_nothing(hab: Habitat) -> None:
    mem = hab.memory("ada")
    records = await mem.remember_many(["one", {"text": "two", "kind": "observation"}, "three"])
    assert [r.text for r in records] == ["one", "two", "three"]
    assert records[0].seq < records[1].seq < records[2].seq
    with pytest.raises(InvalidRequestError):
        await mem.remember_many(["four", {"text": ""}])
    assert len(await mem.memories()) == 3


def test_sync_facade_with_the_real_model(sync_habitat: SyncHabitat) -> None:
    sync_habitat.spawn("ada")
    mem = sync_habitat.memory("ada")
    record = mem.remember("The ferry to the island leaves at seven in the morning")
    mem.remember("My sister collects old stamps")
    hits = mem.recall("when does the boat depart?")
    assert hits[0].record.id == record.id
    assert hits[0].record.embedder is not None and "MiniLM" in hits[0].record.embedder
    with pytest.raises(MemoryNotFoundError):
        mem.get(uuid.uuid4())


class _ByLength:
    """A stand-in reranker: prefers shorter texts (a real one would be a cross-encoder)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls.append((query, len(texts)))
        return [-float(len(t)) for t in texts]


async def test_a_reranker_reorders_the_best_candidates(hab: Habitat) -> None:
    mem = hab.memory("ada")
    long = await mem.remember("the red kite nests in the tall old beech tree at the far end of the valley")
    short = await mem.remember("red kite nest")
    before = await mem.recall("where does the red kite nest?", k=2)
    reranker = _ByLength()
    hab.memories.reranker = reranker
    after = await mem.recall("where does the red kite nest?", k=2)
    assert [h.record.id for h in after] == [short.id, long.id]
    assert reranker.calls == [("where does the red kite nest?", 2)]
    assert after[0].why["rerank"] == -len("red kite nest")
    assert {h.record.id for h in before} == {short.id, long.id}


async def test_approximate_statistics_find_what_exact_ones_find(hab: Habitat) -> None:
    from habitus.memory import Tuning

    mem = hab.memory("ada")
    target = await mem.remember("the lighthouse lamp was repaired by Orla on Tuesday")
    await mem.remember_many([f"an unrelated note about the harvest, number {i}" for i in range(40)])
    exact = await mem.recall("who repaired the lighthouse lamp?", k=3)
    hab.memories.tuning = Tuning(exact_below=5, candidates=10)  # 41 memories: approximate path
    approximate = await mem.recall("who repaired the lighthouse lamp?", k=3)
    assert exact[0].record.id == approximate[0].record.id == target.id
    assert "dense" in approximate[0].why and "lexical" in approximate[0].why


async def test_a_plain_dense_recall_over_many_memories_ranks_by_cosine_alone(hab: Habitat) -> None:
    """With nothing but the cosine to rank by, a dense recall takes fewer candidates from the
    index (see _Recalling._evidence); its order must still be the exact cosine order."""
    from habitus.memory import Tuning

    mem = hab.memory("ada")
    texts = [
        f"note {i}: the {w} by the {v} gate"
        for i, (w, v) in enumerate(
            (w, v)
            for w in ("fox", "heron", "kite", "otter", "badger", "owl")
            for v in ("north", "south", "mill", "bridge")
        )
    ]
    records = await mem.remember_many(texts * 3)
    hab.memories.tuning = Tuning(exact_below=5, candidates=60)
    query = "the heron by the mill gate"
    vectors = hab.memories.embedder.embed([query, *[r.text for r in records]])
    cosine = {r.id: float(vectors[0] @ vectors[i + 1]) for i, r in enumerate(records)}
    hits = await mem.recall(query, k=5, mode="dense")
    assert [h.why["dense"]["similarity"] for h in hits] == sorted((round(c, 4) for c in cosine.values()), reverse=True)[
        :5
    ]


async def test_a_dense_recall_naming_a_speaker_still_finds_their_memory(hab: Habitat) -> None:
    from habitus.memory import Tuning

    mem = hab.memory("ada")
    await mem.remember_many([f"someone mentioned the harbour crane, note {i}" for i in range(80)])
    theirs = await mem.remember("the crane", meta={"speaker": "Orla"})
    hab.memories.tuning = Tuning(exact_below=5, candidates=200)
    hits = await mem.recall("what did Orla say about the harbour crane?", k=3, mode="dense")
    assert hits[0].record.id == theirs.id and hits[0].why.get("speaker") == "Orla"


class _Broken:
    """An embedder whose model has gone away after the memories were stored."""

    name = HashEmbedder(dim=128).name
    dim = 128

    def embed(self, texts: Sequence[str]) -> object:
        raise RuntimeError("the model server went away")


async def test_a_recall_whose_query_cannot_be_embedded_fails_and_records_nothing(hab: Habitat) -> None:
    from habitus.errors import EmbedderError

    mem = hab.memory("ada")
    await mem.remember("the ferry leaves at dawn")
    before = await hab.ledger.count()
    working = hab.memories.embedder
    hab.use_embedder(_Broken())  # type: ignore[arg-type]
    with pytest.raises(EmbedderError, match="the model server went away"):
        await mem.recall("when does the ferry leave?")
    assert await hab.ledger.count() == before  # no memory.recalled for a recall that failed
    assert len(await mem.recall("when does the ferry leave?", mode="lexical")) == 1
    hab.use_embedder(working)
    assert (await mem.recall("when does the ferry leave?"))[0].record.text == "the ferry leaves at dawn"


async def test_over_many_memories_a_candidate_found_by_time_alone_still_gets_its_cosine(hab: Habitat) -> None:
    """Over many memories the vector index returns only its best candidates; a memory found by the
    query's time window alone is scored by its stored vector (read while the query is embedded)."""
    from habitus.memory import Tuning

    mem = hab.memory("ada")
    await mem.remember_many(
        [{"text": f"we walked the dog along the canal, walk {i}", "at": _day(2023, 8, 2)} for i in range(60)]
    )
    may = await mem.remember("the orchard was in bloom", at=_day(2023, 5, 14))
    hab.memories.tuning = Tuning(exact_below=5, candidates=10)
    hits = await mem.recall("what did we do with the dog in May 2023?", k=61, mode="dense", now=_day(2024, 1, 1))
    found = next(h for h in hits if h.record.id == may.id)
    assert found.why.get("time") and "dense" in found.why
    vectors = hab.memories.embedder.embed(["what did we do with the dog in May 2023?", may.text])
    assert found.why["dense"]["similarity"] == round(float(vectors[0] @ vectors[1]), 4)


async def test_pruning_window_candidates_by_cosine_keeps_the_same_top_hits(hab: Habitat) -> None:
    """Over many memories, the time window's candidates are read only if their cosine may reach the
    top; the hits must be those of reading them all (which a filter forces: it may drop rows)."""
    from habitus.memory import Tuning

    mem = hab.memory("ada")
    animals = ("fox", "heron", "kite", "otter", "badger", "owl", "vole", "stoat")
    places = ("mill", "bridge", "orchard", "canal", "quarry")
    await mem.remember_many(
        [
            {"text": f"saw a {a} near the {p}, sighting {i}", "at": _day(2023, 5, 1 + i % 28)}
            for i, (a, p) in enumerate((a, p) for a in animals for p in places for _ in range(3))
        ]
        + [{"text": f"saw a {a} by the {p} in autumn", "at": _day(2023, 10, 3)} for a in animals for p in places]
    )
    hab.memories.tuning = Tuning(exact_below=5, candidates=60)  # more window rows than it keeps
    query = "did we see an otter by the canal in May 2023?"
    now = _day(2024, 1, 1)
    pruned = await mem.recall(query, k=5, mode="dense", now=now)
    later = datetime.now(UTC) + timedelta(days=1)  # drops nothing, but a filter turns the pruning off
    everything = await mem.recall(query, k=5, mode="dense", now=now, as_of=later)
    assert [(h.record.id, h.score) for h in pruned] == [(h.record.id, h.score) for h in everything]
    assert pruned[0].why.get("time") and "otter" in pruned[0].record.text
