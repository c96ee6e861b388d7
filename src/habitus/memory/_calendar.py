"""Calendar arithmetic for the time-expression parser: spans, months, weeks, seasons, thirds.

Everything works on naive wall-clock datetimes in the caller's zone; :mod:`._timeparse`
converts to UTC at the end.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

__all__: list[str] = []  # private to habitus.memory._timeparse

_ONE_DAY = timedelta(days=1)

# Spans are in the caller's wall-clock time (naive): [start, end); an open end is None.
_Interval = tuple[datetime, datetime]
_Span = tuple[datetime, datetime | None]

# Literal English names: the calendar module's follow the process locale.
_MONTHS = {
    name: i
    for i, name in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_SEASON_START = {"spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12}
_NUMBERS: dict[str, tuple[int, int]] = {
    **{
        word: (i, i)
        for i, word in enumerate(
            ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"], 1
        )
    },
    "a": (1, 1),
    "an": (1, 1),
    "couple": (2, 3),
    "few": (2, 5),
    "several": (3, 7),
}


def _midnight(dt: datetime) -> datetime:
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


def _week_start(dt: datetime) -> datetime:
    return _midnight(dt) - timedelta(days=dt.weekday())


def _add_months(dt: datetime, n: int) -> datetime:
    year, month = divmod(dt.year * 12 + dt.month - 1 + n, 12)
    month += 1
    if not 1 <= year <= 9999:
        raise ValueError("year out of range")
    return dt.replace(year=year, month=month, day=min(dt.day, calendar.monthrange(year, month)[1]))


def _day(dt: datetime) -> _Interval:
    start = _midnight(dt)
    return start, start + _ONE_DAY


def _month(year: int, month: int) -> _Interval:
    start = datetime(year, month, 1)
    return start, _add_months(start, 1)


def _year(year: int) -> _Interval:
    return datetime(year, 1, 1), datetime(year + 1, 1, 1)


def _month_number(name: str) -> int:
    return _MONTHS[name.rstrip(".").lower()[:3]]


def _floor(unit: str, dt: datetime) -> datetime:
    if unit == "minute":
        return dt.replace(second=0, microsecond=0)
    if unit == "hour":
        return dt.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return _midnight(dt)
    if unit == "week":
        return _week_start(dt)
    if unit == "month":
        return _midnight(dt.replace(day=1))
    return _midnight(dt.replace(month=1, day=1))


def _shift(unit: str, dt: datetime, n: int) -> datetime:
    if unit == "minute":
        return dt + timedelta(minutes=n)
    if unit == "hour":
        return dt + timedelta(hours=n)
    if unit == "day":
        return dt + timedelta(days=n)
    if unit == "week":
        return dt + timedelta(weeks=n)
    if unit == "month":
        return _add_months(dt, n)
    return _add_months(dt, 12 * n)


def _unit(text: str) -> tuple[str, int]:
    """Normalise a unit word; returns the unit and how many of it one word means."""
    word = text.lower().rstrip("s")
    if word == "fortnight":
        return "week", 2
    return {"min": "minute", "hr": "hour"}.get(word, word), 1


def _amount(text: str) -> tuple[int, int]:
    word = text.lower().split()
    key = word[1] if word[0] == "a" and len(word) > 1 else word[0]
    return _NUMBERS[key] if key in _NUMBERS else (int(key), int(key))


def _season(name: str, year: int) -> _Interval:
    start = datetime(year, _SEASON_START[name.lower()], 1)
    return start, _add_months(start, 3)


def _thirds(span: _Span, part: str) -> _Span | None:
    start, end = span
    if end is None:
        return None
    if start.month == 1 and start.day == 1 and end == start.replace(year=start.year + 1):
        cuts = [start, _add_months(start, 4), _add_months(start, 8), end]
    elif start.month == 1 and start.day == 1 and end == start.replace(year=start.year + 10):  # a decade
        cuts = [start, start.replace(year=start.year + 3), start.replace(year=start.year + 7), end]
    else:
        third = (end - start) / 3
        cuts = [start, _midnight(start + third), _midnight(start + 2 * third), end]
    index = {"early": 0, "start": 0, "beginning": 0, "mid": 1, "middle": 1, "late": 2, "end": 2}[part]
    return cuts[index], cuts[index + 1]
