"""UUIDv7 identifiers (RFC 9562 §5.7): globally unique and ordered by creation time.

Within one process ids are strictly increasing: ``rand_a`` (12 bits) is used as a
counter inside a millisecond (RFC 9562 §6.2, method 1), and when it overflows the
timestamp is advanced by one millisecond rather than breaking the order.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id", "new_ids", "random_bytes"]

_lock = threading.Lock()
_state = [0, 0]  # last millisecond, counter within it
_POOL_SIZE = 1 << 16


class _Pool:
    data = b""  # bytes from os.urandom
    used = 0  # how many of them were handed out


_pool = _Pool()


def random_bytes(count: int) -> bytes:
    """``count`` bytes from the OS's CSPRNG, served from a pool refilled 64 KiB at a time.

    Ids and content salts need a few random bytes per event; one ``os.urandom``
    call per event was a measurable share of a small append. After ``fork`` the
    child must not reuse the parent's pool (``os.register_at_fork`` clears it).
    """
    if count > _POOL_SIZE // 4:
        return os.urandom(count)
    with _lock:
        return _take(count)


def _take(count: int) -> bytes:
    """``count`` bytes of the pool (the caller holds ``_lock``)."""
    pool, used = _pool.data, _pool.used
    if used + count > len(pool):
        pool, used = os.urandom(_POOL_SIZE), 0
        _pool.data = pool
    _pool.used = used + count
    return pool[used : used + count]


def _forget_pool() -> None:
    _pool.data, _pool.used = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


_MASK_TAIL = 0x3FFF_FFFF_FFFF_FFFF  # the 62 random bits after the variant
_VARIANT = 0x8000_0000_0000_0000


def new_ids(count: int) -> list[bytes]:
    """Return ``count`` new UUIDv7 ids as 16-byte big-endian values, in increasing order."""
    if count <= 0:
        return []
    rand = random_bytes(8 * count)
    now = time.time_ns() // 1_000_000
    out: list[bytes] = []
    with _lock:
        ms, counter = _state
        if now > ms:
            ms, counter = now, -1
        for i in range(count):
            counter += 1
            if counter > 0xFFF:
                ms += 1
                counter = 0
            tail = int.from_bytes(rand[8 * i : 8 * i + 8], "big") & _MASK_TAIL
            value = (ms << 80) | (0x7000 | counter) << 64 | _VARIANT | tail
            out.append(value.to_bytes(16, "big"))
        _state[0], _state[1] = ms, counter
    return out


def new_id() -> bytes:
    """One new UUIDv7 id (``new_ids(1)[0]``, without the list: a handler stages one at a time)."""
    now = time.time_ns() // 1_000_000
    with _lock:
        ms, counter = _state
        if now > ms:
            ms, counter = now, 0
        else:
            counter += 1
            if counter > 0xFFF:
                ms += 1
                counter = 0
        _state[0], _state[1] = ms, counter
        rand = _take(8)  # under the same lock: one acquisition an id
    tail = int.from_bytes(rand, "big") & _MASK_TAIL
    return ((ms << 80) | (0x7000 | counter) << 64 | _VARIANT | tail).to_bytes(16, "big")
