"""How a group commit travels to a writer process, and how its outcome comes back.

Frames are a 4-byte little-endian length and a :mod:`marshal` payload. Marshal
handles the plain tuples, ints, strings and bytes that rows are made of at C
speed (pickle is about three times slower on these batches, because of the
projection ops' dataclasses); the ops travel as ``(code, fields)`` pairs. Both
ends are the same Python, so marshal's format cannot differ between them.
"""

from __future__ import annotations

import marshal
import operator
from collections.abc import Callable
from dataclasses import fields
from typing import Any, get_args

from habitus.storage._abstract import WriteBatch
from habitus.storage._projections import Op

__all__ = [
    "FAILED",
    "OK",
    "READY",
    "STALE",
    "STALE_MESSAGE",
    "Reply",
    "decode",
    "encode",
    "frame",
    "read_reply",
    "reply",
]

OK, FAILED, STALE, READY = 0, 1, 2, 3
"""Reply codes: committed; failed (nothing of it kept); refused, prepared before a failure; started."""

STALE_MESSAGE = "an earlier write failed, so this append was not kept; retry it"

Reply = tuple[int, str, bool, bool]
"""``(code, error, scrubbed, fulltext_dirty)``."""

_OPS: tuple[type[Any], ...] = get_args(Op)  # every projection op class, memory ops included


def _getter(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]]:
    names = [f.name for f in fields(cls)]
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda op: (one(op),)
    return operator.attrgetter(*names)  # returns the tuple itself, in C


_ENCODE: dict[type[Any], tuple[int, Callable[[Any], tuple[Any, ...]]]] = {
    cls: (code, _getter(cls)) for code, cls in enumerate(_OPS)
}


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return len(payload).to_bytes(4, "little") + payload


def encode(batch: WriteBatch, *, generation: int, scrub: bool, fulltext_dirty: bool) -> bytes:
    """One framed commit: the batch, the writer generation it was prepared in, and whether to scrub after."""
    ops = []
    for op in batch.ops:
        code, get = _ENCODE[type(op)]
        ops.append((code, get(op)))
    rows, edges, nodes, erase = list(batch.rows), list(batch.edges), list(batch.nodes), list(batch.erase)
    payload = (generation, scrub, fulltext_dirty, rows, edges, nodes, batch.checkpoint, erase, ops)
    return frame(marshal.dumps(payload))


def decode(payload: bytes) -> tuple[int, bool, bool, WriteBatch]:
    """The inverse of :func:`encode` (without the frame): ``(generation, scrub, fulltext_dirty, batch)``."""
    generation, scrub, dirty, rows, edges, nodes, checkpoint, erase, ops = marshal.loads(payload)
    decoded: list[Op] = [_OPS[code](*values) for code, values in ops]
    return generation, scrub, dirty, WriteBatch(rows, edges, nodes, checkpoint, erase, decoded)


def reply(code: int, error: str = "", *, scrubbed: bool = False, fulltext_dirty: bool = False) -> bytes:
    """One framed reply."""
    return frame(marshal.dumps((code, error, scrubbed, fulltext_dirty)))


def read_reply(payload: bytes) -> Reply:
    """The inverse of :func:`reply` (without the frame)."""
    code, error, scrubbed, dirty = marshal.loads(payload)
    return int(code), str(error), bool(scrubbed), bool(dirty)
