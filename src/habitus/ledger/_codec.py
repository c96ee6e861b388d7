"""Canonical bytes: how content, meta and leaves are encoded before hashing.

The leaf of an event covers every field but ``seq`` (which is the leaf's
position) and the content itself (only its salted digest)::

    leaf_data = "HBv1" || id(16) || ts(i64) || has_at(u8) || at(i64)
                || len(actor) actor || len(kind) kind || has_thread(u8) len(thread) thread
                || len(meta) meta || n_causes(u16) cause_id(16)*n || ctype(u8) || digest(32, if content)
    leaf      = SHA-256(0x00 || leaf_data)           (RFC 6962 leaf hash)
    digest    = SHA-256(salt(16) || ctype(u8) || body)

Lengths are big-endian u32, times are UTC microseconds, ``meta`` is JSON with
sorted keys and no whitespace. Erasing content deletes ``salt`` and ``body``
and keeps ``digest``, so the leaf can still be recomputed.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import json.scanner
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "CTYPE_BYTES",
    "CTYPE_JSON",
    "CTYPE_NAMES",
    "CTYPE_TEXT",
    "content_digest",
    "decode_content",
    "encode_content",
    "encode_meta",
    "from_micros",
    "leaf_hash",
    "loads_json",
    "to_micros",
]

CTYPE_TEXT = 1
CTYPE_JSON = 2
CTYPE_BYTES = 3
CTYPE_NAMES = {CTYPE_TEXT: "text", CTYPE_JSON: "json", CTYPE_BYTES: "bytes"}

_sha256 = hashlib.sha256
_HEAD = struct.Struct(">5s16sqBq")  # 0x00 leaf prefix + "HBv1", id, ts, has_at, at
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
# JSONEncoder.encode builds a new C encoder (and a closure) on every call, which is most of the cost of
# encoding the few bytes a message carries; this one is built once. Without a markers dict it keeps no
# state between calls (safe from any thread) and meets a cycle as a RecursionError, reported as one.
_c_make: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    _c_make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    if _c_make is not None
    else None
)
# The C scanner parses one value from the start of a string, with no wrapper around it.
_c_make_scanner: Any = getattr(json.scanner, "c_make_scanner", None)
_c_scan = _c_make_scanner(json.JSONDecoder()) if _c_make_scanner is not None else None


def _dumps(value: Any) -> str:
    """Canonical JSON text: sorted keys, no whitespace, no NaN."""
    if _c_encode is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_c_encode(value, 0))
    except RecursionError:
        raise ValueError("the value is nested too deeply or contains itself (a circular reference)") from None


def loads_json(text: str | bytes) -> Any:
    """Parse JSON text (``json.loads``, faster for the short values events carry)."""
    if _c_scan is not None:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            value, end = _c_scan(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return value
    return json.loads(text)  # whatever the fast path did not take, and the error messages


def encode_meta(meta: dict[str, Any]) -> str:
    """Canonical JSON text of a meta mapping."""
    return "{}" if not meta else _dumps(meta)


def encode_content(content: object) -> tuple[int, bytes] | None:
    """Return ``(ctype, body)`` for a content value, or ``None`` for no content.

    Raises:
        TypeError: For a value that is not text, bytes, or a JSON object, array, number or boolean.
        ValueError: For JSON with values that cannot be encoded (NaN, non-string keys...).
    """
    if content is None:
        return None
    if isinstance(content, str):
        return CTYPE_TEXT, content.encode("utf-8")
    if isinstance(content, bytes | bytearray | memoryview):
        return CTYPE_BYTES, bytes(content)
    if isinstance(content, dict | list | int | float):  # bool is an int
        return CTYPE_JSON, _dumps(content).encode("utf-8")
    raise TypeError(
        f"content must be text, bytes, or a JSON value (object, array, number, boolean), not {type(content).__name__}"
    )


def decode_content(ctype: int, body: bytes) -> Any:
    """Inverse of :func:`encode_content`."""
    if ctype == CTYPE_TEXT:
        return body.decode("utf-8")
    if ctype == CTYPE_JSON:
        return loads_json(body)
    return bytes(body)


def content_digest(salt: bytes, ctype: int, body: bytes) -> bytes:
    """SHA-256 over salt, content type and body."""
    return _sha256(salt + (_CTYPE_TAGS.get(ctype) or bytes((ctype,))) + body).digest()


def _segment(text: str) -> bytes:
    """``u32 length || utf-8 bytes`` of a string, memoised for the short strings that repeat."""
    segment = _SEGMENTS.get(text)
    if segment is None:
        # surrogateescape only matters when verifying rows whose text was tampered with
        raw = text.encode("utf-8", "surrogateescape")
        segment = _U32.pack(len(raw)) + raw
        if len(text) <= 256 and len(_SEGMENTS) < 65_536:
            _SEGMENTS[text] = segment
    return segment


_SEGMENTS: dict[str, bytes] = {}
_CTYPE_TAGS = {CTYPE_TEXT: b"\x01", CTYPE_JSON: b"\x02", CTYPE_BYTES: b"\x03"}


def leaf_hash(
    id_: bytes,
    ts: int,
    at: int | None,
    actor: str,
    kind: str,
    thread: str | None,
    meta: str,
    causes: bytes | None,
    ctype: int | None,
    digest: bytes | None,
) -> bytes:
    """RFC 6962 leaf hash of an event's canonical encoding (see the module docstring)."""
    return _sha256(
        b"".join(
            (
                _HEAD.pack(b"\x00HBv1", id_, ts, at is not None, at or 0),
                _segment(actor),
                _segment(kind),
                b"\x00" if thread is None else b"\x01" + _segment(thread),
                _segment(meta),
                _U16.pack(len(causes) // 16) + causes if causes else b"\x00\x00",
                b"\x00" if ctype is None else (_CTYPE_TAGS.get(ctype) or bytes((ctype,))) + (digest or b""),
            )
        )
    ).digest()


_last_time: tuple[int, datetime] = (-1, _EPOCH)


def to_micros(value: datetime) -> int:
    """UTC microseconds since the epoch; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Inverse of :func:`to_micros`, timezone-aware in UTC.

    The last answer is kept: the events sealed together share one commit time,
    and datetimes are immutable, so every event of a group can share one.
    """
    global _last_time  # one (micros, datetime) pair, replaced whole: other threads see a matching pair
    last = _last_time
    if last[0] == micros:
        return last[1]
    value = _EPOCH + timedelta(microseconds=micros)
    _last_time = (micros, value)
    return value
