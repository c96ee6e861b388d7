"""Time expressions in recall queries: what each phrasing resolves to, and what is left of the query."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habitus.memory._timeparse import Relation, TimeFilter, parse_time

# Wednesday 14 June 2023, mid-afternoon UTC.
NOW = datetime(2023, 6, 14, 15, 30, tzinfo=UTC)


def d(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# (query, start, end, expression, remaining query)
WITHIN = [
    ("what did Alice do last week?", d(2023, 6, 5), d(2023, 6, 12), "last week", "what did Alice do?"),
    ("in May 2023", d(2023, 5, 1), d(2023, 6, 1), "in May 2023", ""),
    ("what happened 3 days ago", d(2023, 6, 11), d(2023, 6, 12), "3 days ago", "what happened"),
    ("what happened in 2022?", d(2022, 1, 1), d(2023, 1, 1), "in 2022", "what happened?"),
    ("on 8 May 2023 who called", d(2023, 5, 8), d(2023, 5, 9), "on 8 May 2023", "who called"),
    ("the 8th of May, 2023", d(2023, 5, 8), d(2023, 5, 9), "the 8th of May, 2023", ""),
    ("May 8, 2023: the offsite", d(2023, 5, 8), d(2023, 5, 9), "May 8, 2023", "the offsite"),
    ("Monday, May 8th 2023", d(2023, 5, 8), d(2023, 5, 9), "Monday, May 8th 2023", ""),
    ("notes from 2023-05-08", d(2023, 5, 8), d(2023, 5, 9), "from 2023-05-08", "notes"),
    ("log 2023-05-08T09:30:00Z", d(2023, 5, 8), d(2023, 5, 9), "2023-05-08T09:30:00Z", "log"),
    ("in 2023-05", d(2023, 5, 1), d(2023, 6, 1), "in 2023-05", ""),
    ("what did I eat yesterday?", d(2023, 6, 13), d(2023, 6, 14), "yesterday", "what did I eat?"),
    ("today", d(2023, 6, 14), d(2023, 6, 15), "today", ""),
    ("plans for tomorrow", d(2023, 6, 15), d(2023, 6, 16), "for tomorrow", "plans"),
    ("last Monday", d(2023, 6, 12), d(2023, 6, 13), "last Monday", ""),
    ("last Wednesday", d(2023, 6, 7), d(2023, 6, 8), "last Wednesday", ""),
    ("on Wednesday", d(2023, 6, 14), d(2023, 6, 15), "on Wednesday", ""),
    ("what about Friday", d(2023, 6, 9), d(2023, 6, 10), "Friday", "what about"),
    ("this Friday", d(2023, 6, 16), d(2023, 6, 17), "this Friday", ""),
    ("next Tuesday", d(2023, 6, 20), d(2023, 6, 21), "next Tuesday", ""),
    ("last summer", d(2022, 6, 1), d(2022, 9, 1), "last summer", ""),
    ("this summer", d(2023, 6, 1), d(2023, 9, 1), "this summer", ""),
    ("next summer", d(2024, 6, 1), d(2024, 9, 1), "next summer", ""),
    ("last winter", d(2022, 12, 1), d(2023, 3, 1), "last winter", ""),
    ("in the fall", d(2022, 9, 1), d(2022, 12, 1), "in the fall", ""),
    ("in the summer", d(2023, 6, 1), d(2023, 9, 1), "in the summer", ""),
    ("the summer of 2021", d(2021, 6, 1), d(2021, 9, 1), "the summer of 2021", ""),
    ("winter 2022", d(2022, 12, 1), d(2023, 3, 1), "winter 2022", ""),
    ("early June", d(2023, 6, 1), d(2023, 6, 11), "early June", ""),
    ("mid-May", d(2023, 5, 11), d(2023, 5, 21), "mid-May", ""),
    ("late May 2022", d(2022, 5, 21), d(2022, 6, 1), "late May 2022", ""),
    ("the end of last year", d(2022, 9, 1), d(2023, 1, 1), "the end of last year", ""),
    ("early 2023", d(2023, 1, 1), d(2023, 5, 1), "early 2023", ""),
    ("in the late 1990s", d(1997, 1, 1), d(2000, 1, 1), "in the late 1990s", ""),
    ("between May and July 2023", d(2023, 5, 1), d(2023, 8, 1), "between May and July 2023", ""),
    ("from November to February", d(2022, 11, 1), d(2023, 3, 1), "from November to February", ""),
    ("between 2020 and 2022", d(2020, 1, 1), d(2023, 1, 1), "between 2020 and 2022", ""),
    ("from 3 May to 9 May 2023", d(2023, 5, 3), d(2023, 5, 10), "from 3 May to 9 May 2023", ""),
    ("the weekend before 9 June 2023", d(2023, 6, 3), d(2023, 6, 5), "the weekend before 9 June 2023", ""),
    ("the weekend after 9 June 2023", d(2023, 6, 10), d(2023, 6, 12), "the weekend after 9 June 2023", ""),
    ("the day before yesterday", d(2023, 6, 12), d(2023, 6, 13), "the day before yesterday", ""),
    ("the week before 9 June", d(2023, 6, 2), d(2023, 6, 9), "the week before 9 June", ""),
    ("the month after May 2023", d(2023, 6, 1), d(2023, 7, 1), "the month after May 2023", ""),
    ("next month", d(2023, 7, 1), d(2023, 8, 1), "next month", ""),
    ("this month", d(2023, 6, 1), d(2023, 7, 1), "this month", ""),
    ("last year", d(2022, 1, 1), d(2023, 1, 1), "last year", ""),
    ("last quarter", d(2023, 1, 1), d(2023, 4, 1), "last quarter", ""),
    ("Q3 2022", d(2022, 7, 1), d(2022, 10, 1), "Q3 2022", ""),
    ("the first quarter of 2023", d(2023, 1, 1), d(2023, 4, 1), "the first quarter of 2023", ""),
    ("this week", d(2023, 6, 12), d(2023, 6, 19), "this week", ""),
    ("last weekend", d(2023, 6, 10), d(2023, 6, 12), "last weekend", ""),
    ("over the weekend", d(2023, 6, 10), d(2023, 6, 12), "over the weekend", ""),
    ("a week ago", d(2023, 6, 5), d(2023, 6, 12), "a week ago", ""),
    ("two months ago", d(2023, 4, 1), d(2023, 5, 1), "two months ago", ""),
    ("3 years ago", d(2020, 1, 1), d(2021, 1, 1), "3 years ago", ""),
    ("an hour ago", d(2023, 6, 14, 14), d(2023, 6, 14, 15), "an hour ago", ""),
    ("a few days ago", d(2023, 6, 9), d(2023, 6, 13), "a few days ago", ""),
    ("last night", d(2023, 6, 13, 18), d(2023, 6, 14, 6), "last night", ""),
    ("this morning", d(2023, 6, 14, 5), d(2023, 6, 14, 12), "this morning", ""),
    ("on the 20th", d(2023, 5, 20), d(2023, 5, 21), "on the 20th", ""),
    ("in the 90s", d(1990, 1, 1), d(2000, 1, 1), "in the 90s", ""),
    ("in the month of May", d(2023, 5, 1), d(2023, 6, 1), "in the month of May", ""),
    ("in March", d(2023, 3, 1), d(2023, 4, 1), "in March", ""),
    ("in july", d(2022, 7, 1), d(2022, 8, 1), "in july", ""),  # the most recent July
    ("last May", d(2023, 5, 1), d(2023, 6, 1), "last May", ""),
    ("last June", d(2022, 6, 1), d(2022, 7, 1), "last June", ""),
    ("IN SEPT. 2021", d(2021, 9, 1), d(2021, 10, 1), "IN SEPT. 2021", ""),
    ("Jan 5", d(2023, 1, 5), d(2023, 1, 6), "Jan 5", ""),
    ("on Dec 25", d(2022, 12, 25), d(2022, 12, 26), "on Dec 25", ""),
]


@pytest.mark.parametrize(("query", "start", "end", "expression", "rest"), WITHIN)
def test_within(query: str, start: datetime, end: datetime, expression: str, rest: str) -> None:
    found, remaining = parse_time(query, NOW)
    assert found == TimeFilter(start, end, expression)
    assert remaining == rest


# (query, start, end, relation, expression)
OPEN = [
    ("since March", d(2023, 3, 1), None, "after", "since March"),
    ("after May 2023", d(2023, 6, 1), None, "after", "after May 2023"),
    ("since last week", d(2023, 6, 5), None, "after", "since last week"),
    ("before 2020", None, d(2020, 1, 1), "before", "before 2020"),
    ("until yesterday", None, d(2023, 6, 13), "before", "until yesterday"),
    ("before the 1990s", None, d(1990, 1, 1), "before", "before the 1990s"),
    ("the past week", d(2023, 6, 7, 15, 30), None, "after", "the past week"),
    ("in the last 3 days", d(2023, 6, 11, 15, 30), None, "after", "in the last 3 days"),
    ("within the last 2 hours", d(2023, 6, 14, 13, 30), None, "after", "within the last 2 hours"),
    ("the past few months", d(2023, 1, 14, 15, 30), None, "after", "the past few months"),
]


@pytest.mark.parametrize(("query", "start", "end", "relation", "expression"), OPEN)
def test_open_bounds(
    query: str, start: datetime | None, end: datetime | None, relation: Relation, expression: str
) -> None:
    found, _ = parse_time(query, NOW)
    assert found == TimeFilter(start, end, expression, relation=relation)


@pytest.mark.parametrize(
    ("query", "anchor", "relation", "rest"),
    [
        ("when did we meet before the trip", "the trip", "before", "when did we meet"),
        ("what did Bob say after the meeting with Carol?", "the meeting with Carol", "after", "what did Bob say?"),
        ("who called after lunch and why", "lunch", "after", "who called and why"),
        ("until Alice's wedding, what was planned", "Alice's wedding", "before", "what was planned"),
        ("notes prior to the launch", "the launch", "before", "notes"),
    ],
)
def test_anchors(query: str, anchor: str, relation: str, rest: str) -> None:
    found, remaining = parse_time(query, NOW)
    assert found is not None
    assert (found.start, found.end, found.anchor, found.relation) == (None, None, anchor, relation)
    assert remaining == rest


@pytest.mark.parametrize(
    "query",
    [
        "who sent the Mayday call",
        "were they marching",
        "Alice may come",
        "what did June say about the budget",
        "did the prices fall",
        "summer camp signups",
        "have we met before?",
        "after all, what is it",
        "before that, nothing",
        "how are you in their 20s",
        "room 2022 is booked",
        "the 3rd option",
        "",
        "   ",
    ],
)
def test_no_time_expression(query: str) -> None:
    assert parse_time(query, NOW) == (None, query)


@pytest.mark.parametrize(
    ("query", "expression", "rest"),
    [
        ("May I ask what we did in May?", "in May", "May I ask what we did?"),
        ("what may 2023 bring", "may 2023", "what bring"),
        ("Alice may visit on May 8", "on May 8", "Alice may visit"),
        ("what happened since may", "since may", "what happened"),
        ("everything before may", "before may", "everything"),
        ("the flowers of may", "of may", "the flowers"),
        ("during may we hiked", "during may", "we hiked"),
    ],
)
def test_may_is_a_month_only_where_it_must_be(query: str, expression: str, rest: str) -> None:
    found, remaining = parse_time(query, NOW)
    assert found is not None
    assert found.expression == expression
    assert remaining == rest


def test_the_first_expression_wins_and_the_rest_stays() -> None:
    found, remaining = parse_time("in May 2023, before the trip to Rome", NOW)
    assert found == TimeFilter(d(2023, 5, 1), d(2023, 6, 1), "in May 2023")
    assert remaining == "before the trip to Rome"


def test_calendar_days_are_the_callers() -> None:
    new_york = timezone(timedelta(hours=-4))
    now = datetime(2023, 6, 14, 2, 0, tzinfo=UTC).astimezone(new_york)  # 22:00 on 13 June there
    found, _ = parse_time("yesterday", now)
    assert found is not None
    assert (found.start, found.end) == (d(2023, 6, 12, 4), d(2023, 6, 13, 4))
    assert found.start is not None and found.start.tzinfo is UTC


def test_naive_now_is_utc() -> None:
    found, _ = parse_time("today", NOW.replace(tzinfo=None))
    assert found == TimeFilter(d(2023, 6, 14), d(2023, 6, 15), "today")


def test_impossible_dates_are_not_matched() -> None:
    assert parse_time("on 31 February 2023", NOW) == (None, "on 31 February 2023")
    found, _ = parse_time("2023-02-30 or yesterday", NOW)
    assert found is not None
    assert found.expression == "yesterday"


def test_parsing_is_fast() -> None:
    queries = [q for q, *_ in WITHIN] + ["who is responsible for the deployment pipeline and the on-call rota"]
    started = time.perf_counter()
    for _ in range(20):
        for query in queries:
            parse_time(query, NOW)
    per_query = (time.perf_counter() - started) / (20 * len(queries))
    assert per_query < 0.002  # typically ~0.02 ms; the bound leaves room for a loaded CI machine


_VOCABULARY = (
    "in on of since until before after between and from to the last next this past early mid late may june "
    "2023 2022 8 31 3rd 9th days weeks ago weekend summer monday yesterday q1 90s year month week trip , ? -"
)
_WORDS = st.sampled_from(_VOCABULARY.split())


@settings(max_examples=300)
@given(
    text=st.one_of(st.text(max_size=80), st.lists(_WORDS, max_size=12).map(" ".join)),
    now=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
)
def test_never_raises_and_intervals_are_ordered(text: str, now: datetime) -> None:
    found, remaining = parse_time(text, now)
    if found is None:
        assert remaining == text
        return
    assert found.expression in text
    if found.start is not None and found.end is not None:
        assert found.start < found.end
    for bound in (found.start, found.end):
        assert bound is None or bound.tzinfo is UTC
