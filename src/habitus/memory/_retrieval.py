"""Hybrid ranking: five signals, normalised and weighted (measured on LoCoMo; see docs/memory.md).

Kept free of storage and I/O so the method can be read, tested and tuned on
its own. :func:`analyse` reads a query (its words and any time expression);
the memory service gathers each signal's evidence into :class:`Evidence`;
:func:`rank` scores the candidates.

A memory's score for a query is::

    context_weight * z(BM25 of the memory with the two before it in its thread)
  + thread_weight  * z(BM25 of its whole thread)
  + dense_weight   * z(cosine of the query and the memory's vector)
  + speaker_weight * [the query names exactly one known speaker, and it is this memory's]
  + time_weight    * [the memory's world time is in the window the query names]
  (+ recency_weight * 0.5 ** (age / half-life), when a half-life is set)

where ``z`` standardises a signal over every memory searched (a memory a
lexical signal does not match scores 0 there). Z-scores rather than ranks
keep how far ahead a strong match is; measured, reciprocal-rank fusion lost
4-5 points of recall@5.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from habitus.memory._timeparse import TimeFilter, parse_time
from habitus.storage._memory import MemoryRow

__all__ = ["Evidence", "QueryInfo", "Scored", "Tuning", "analyse", "fts_expression", "rank"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

STOPWORDS = frozenset(
    """
    a an the and or but if of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why how all any both
    each few more most other some such no nor not only own same so than too very s t can will just don should now
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom this that these those am is are
    was were be been being have has had having do does did doing would could might must shall may also ever
    """.split()  # noqa: SIM905 - a word list reads better as text
)
"""Words left out of lexical queries (a standard English list; measured: keeping them costs ~1 point)."""


@dataclass(frozen=True, slots=True)
class Tuning:
    """The ranking's parameters. Defaults were measured on LoCoMo conversations, leave-one-out.

    Attributes:
        context_weight: BM25 of a memory together with the memories before it in its thread.
        thread_weight: BM25 of the memory's whole thread.
        dense_weight: Cosine similarity of the embeddings.
        speaker_weight: Bonus when the query names exactly one known speaker and the memory is theirs.
        time_weight: Bonus when the memory's world time is inside the window the query names.
        time_slack_days: Reports come after the events they describe: a window is extended
            past its end by its own length, up to this many days.
        recency_half_life_days: If set, newer memories (by world time) gain up to
            ``recency_weight``, halving with this half-life.
        recency_weight: See above.
        candidates: Candidates each signal contributes when the memories searched are many.
        exact_below: Below this many memories searched, every memory's scores enter the
            statistics (exact); above, the top candidates and a sample do (approximate).
        rerank_depth: How many of the best candidates a reranker, when set, reorders.
    """

    context_weight: float = 1.0
    thread_weight: float = 1.0
    dense_weight: float = 1.5
    speaker_weight: float = 3.0
    time_weight: float = 3.0
    time_slack_days: float = 31.0
    recency_half_life_days: float | None = None
    recency_weight: float = 1.0
    candidates: int = 200
    exact_below: int = 5000
    rerank_depth: int = 30


@dataclass(frozen=True, slots=True)
class QueryInfo:
    """What a query says: its search words and, if it names one, a time window."""

    text: str
    words: tuple[str, ...]
    terms: tuple[str, ...]
    time: TimeFilter | None


@dataclass(slots=True)
class Evidence:
    """Everything the signals said about a query, gathered by the memory service.

    Attributes:
        total: How many memories were searched.
        lexical: ``rid -> BM25`` of the memories (in thread context) that match.
        threads: ``tid -> (BM25, memories in the thread)`` of the threads that match.
        dense: ``rid -> cosine`` for the candidates (every memory when ``dense_stats`` is exact).
        dense_stats: ``(mean, standard deviation)`` of the cosine over the memories searched.
        window: Memories inside the query's time window (candidates in their own right).
        speakers: The speakers the memories searched record.
        rows: The candidate memories.
    """

    total: int
    lexical: dict[int, float] = field(default_factory=dict)
    threads: dict[int, tuple[float, int]] = field(default_factory=dict)
    dense: dict[int, float] = field(default_factory=dict)
    dense_stats: tuple[float, float] = (0.0, 0.0)
    window: list[int] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    rows: dict[int, MemoryRow] = field(default_factory=dict)


@dataclass(slots=True)
class Scored:
    """One ranked memory and the evidence behind its score."""

    rid: int
    score: float
    why: dict[str, Any] = field(default_factory=dict)


def analyse(query: str, now: datetime) -> QueryInfo:
    """Read ``query``: its words, the terms to search (stop words dropped), a time window."""
    time, _ = parse_time(query, now)
    words = tuple(w.lower() for w in _WORD.findall(query))
    kept = [w for w in words if w not in STOPWORDS] or list(words)
    return QueryInfo(query, words, tuple(dict.fromkeys(kept)), time)


def fts_expression(terms: Sequence[str]) -> str | None:
    """An FTS5 expression matching any of ``terms`` (each quoted), or None if there are none."""
    quoted = ['"' + t.replace('"', '""') + '"' for t in terms]
    return " OR ".join(quoted) if quoted else None


def named_speaker(info: QueryInfo, speakers: Sequence[str]) -> str | None:
    """The one known speaker the query names (by a whole word of their name), or None if zero or several."""
    words = set(info.words)
    named = set()
    for speaker in speakers:
        parts = [p.lower() for p in _WORD.findall(speaker)]
        by_name = bool(parts) and parts[0] in words and parts[0] not in STOPWORDS
        by_principal = ":" in speaker and bool(parts) and parts[-1] in words  # e.g. agent:bob
        if speaker.lower() in words or by_name or by_principal:
            named.add(speaker)
    return named.pop() if len(named) == 1 else None


def window_micros(window: TimeFilter, slack_days: float) -> tuple[int | None, int | None]:
    """The window in UTC µs, its end extended by its own length up to ``slack_days``."""
    start = _micros(window.start) if window.start is not None else None
    end = _micros(window.end) if window.end is not None else None
    if start is not None and end is not None and window.relation == "within":
        end += min(end - start, int(timedelta(days=slack_days).total_seconds() * 1_000_000))
    return start, end


def _stats(values: Mapping[int, float] | Sequence[tuple[float, int]], total: int) -> tuple[float, float]:
    """Mean and standard deviation over ``total`` items, the unlisted ones counting 0."""
    if total <= 0:
        return 0.0, 0.0
    pairs = list(values) if isinstance(values, Sequence) else [(v, 1) for v in values.values()]
    s = sum(v * n for v, n in pairs)
    s2 = sum(v * v * n for v, n in pairs)
    mean = s / total
    var = max(0.0, s2 / total - mean * mean)
    return mean, math.sqrt(var)


def _z(value: float, stats: tuple[float, float]) -> float:
    mean, sd = stats
    return (value - mean) / sd if sd > 1e-12 else 0.0


def rank(info: QueryInfo, ev: Evidence, *, now: datetime, tuning: Tuning) -> list[Scored]:
    """Score every candidate in ``ev.rows``, best first (ties: the older memory first)."""
    lex_stats = _stats(ev.lexical, ev.total)
    thread_stats = _stats(list(ev.threads.values()), ev.total)
    speaker = named_speaker(info, ev.speakers) if tuning.speaker_weight else None
    window = None
    if info.time is not None and (info.time.start is not None or info.time.end is not None):
        window = window_micros(info.time, tuning.time_slack_days)
    now_us = _micros(now)
    out: list[Scored] = []
    for rid, row in ev.rows.items():
        why: dict[str, Any] = {}
        score = 0.0
        lex = ev.lexical.get(rid, 0.0)
        if ev.lexical:
            z = _z(lex, lex_stats)
            score += tuning.context_weight * z
            if lex:
                why["lexical"] = {"bm25": round(lex, 4), "z": round(z, 3)}
        thread = ev.threads.get(row.tid, (0.0, 0))[0] if row.tid is not None else 0.0
        if ev.threads:
            z = _z(thread, thread_stats)
            score += tuning.thread_weight * z
            if thread:
                why["thread"] = {"bm25": round(thread, 4), "z": round(z, 3)}
        cosine = ev.dense.get(rid)
        if cosine is not None:
            z = _z(cosine, ev.dense_stats)
            score += tuning.dense_weight * z
            why["dense"] = {"similarity": round(cosine, 4), "z": round(z, 3)}
        if speaker is not None and row.speaker == speaker:
            score += tuning.speaker_weight
            why["speaker"] = speaker
        if window is not None and row.at is not None and info.time is not None:
            start, end = window
            if (start is None or row.at >= start) and (end is None or row.at < end):
                score += tuning.time_weight
                why["time"] = info.time.expression
        if tuning.recency_half_life_days and row.at is not None:
            age_days = max(0.0, (now_us - row.at) / 86_400_000_000)
            bonus = tuning.recency_weight * math.pow(0.5, age_days / tuning.recency_half_life_days)
            score += bonus
            why["recency"] = round(bonus, 4)
        out.append(Scored(rid, score, why))
    out.sort(key=lambda s: (-s.score, s.rid))
    return out


def _micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)
