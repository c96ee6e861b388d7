"""Ids and random bytes: ordered, unique, and never shared with a forked child."""

from __future__ import annotations

import os
import uuid

from habitus._ids import new_id, new_ids, random_bytes


def test_ids_are_increasing_uuid7s() -> None:
    ids = new_ids(5000) + new_ids(3)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(bytes=i).version == 7 for i in ids)


def test_single_ids_interleaved_with_batches_stay_increasing_past_the_counter_of_a_millisecond() -> None:
    ids = [new_id() for _ in range(5000)] + new_ids(3) + [new_id()] + new_ids(2)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(bytes=i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)


def test_a_forked_child_does_not_reuse_the_parents_random_pool() -> None:
    random_bytes(16)  # the pool now holds bytes a child must not hand out again
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, random_bytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != random_bytes(32)
