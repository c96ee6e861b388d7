"""Topic patterns: dot-separated segments, ``*`` matches one segment, ``#`` any number (even none)."""

from __future__ import annotations

import functools
import re

from habitus.errors import InvalidRequestError

__all__ = ["check_topic", "matches"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_topic(topic: str, *, pattern: bool = False) -> str:
    """Return ``topic`` if it is well formed (a pattern may use ``*`` and ``#``), else raise."""
    parts = topic.split(".") if isinstance(topic, str) else []
    ok = bool(parts) and len(topic) <= 256 and all(_SEGMENT.match(p) or (pattern and p in ("*", "#")) for p in parts)
    if not ok:
        what = "topic pattern" if pattern else "topic"
        raise InvalidRequestError(
            f"{what} {topic!r} must be dot-separated names of letters, digits, '_' or '-'"
            + (" (or '*' for one segment, '#' for any number)" if pattern else "")
        )
    return topic


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for segment in pattern.split("."):
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == "#":
            parts.append(r"(?:[^.]+(?:\.[^.]+)*)?")
        else:
            parts.append(re.escape(segment))
    regex = r"\.".join(parts)
    # '#' may also swallow its neighbouring dot when it matches nothing ("a.#" matches "a").
    regex = regex.replace(r"\.(?:[^.]+(?:\.[^.]+)*)?", r"(?:\.[^.]+)*").replace(
        r"(?:[^.]+(?:\.[^.]+)*)?\.", r"(?:[^.]+\.)*"
    )
    return re.compile(f"^{regex}$")


def matches(pattern: str, topic: str) -> bool:
    """True if ``topic`` matches ``pattern``."""
    return _compile(pattern).match(topic) is not None
