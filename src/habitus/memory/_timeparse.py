"""Time expressions in recall queries: "last week", "in May 2023", "before the trip".

:func:`parse_time` finds the first time expression in an English query and turns it
into a :class:`TimeFilter` (a half-open UTC interval, or an anchor the caller resolves
by searching memories), and returns the query with the expression cut out so the rest
can go to lexical and dense retrieval.

What it understands (case-insensitive, months full or abbreviated)::

    dates        2023-05-08, 8 May 2023, the 8th of May, May 8, 2023, Monday 8 May
    months       May 2023, in May, last May, next June, the month of May
    years        in 2022, the year 2022, the 1990s, the 90s, Q1 2023, the first quarter of 2023
    days         today, yesterday, tomorrow, tonight, this morning, last night, on the 8th
    weekdays     Monday, on Monday, last Monday, this Friday, next Tuesday
    weekends     this weekend, last weekend, over the weekend
    relative     last/this/next week|month|quarter|year, 3 days ago, a few weeks ago,
                 the past week, the last 3 days, the past few months
    seasons      last summer, in the winter, summer 2022, the autumn of 2021
    parts        early June, mid-2023, late May 2023, the end of last year
    ranges       between May and July 2023, from 2020 to 2022
    relations    before/until/till/prior to X, after X, since X, the day/week/weekend/month/year
                 before/after X, where X is any of the above
    anchors      before/after/until <something that is not a date>, e.g. "before the trip"

Conventions:

* Calendar arithmetic happens in the time zone of ``now`` (UTC when ``now`` is naive),
  so "yesterday" is the user's yesterday; the resulting bounds are converted to UTC.
* A month, day or season without a year is the most recent one that has started at or
  before ``now`` ("in May" asked in March 2024 means May 2023).
* Weeks start on Monday. "last week" is the calendar week before this one; "the past
  week" / "the last week" / "the last 7 days" are rolling windows ending now (``start``
  only, relation ``"after"``).
* "N days ago" is that whole day; "N weeks/months/years ago" the whole calendar week,
  month or year; "a few/several/a couple of X ago" spans the plausible range.
* "last Monday" is the most recent Monday before today; "last summer" the most recent
  summer that has ended; "last weekend" the weekend of last calendar week.
* Seasons are meteorological and northern-hemisphere: spring = March to May, summer =
  June to August, autumn/fall = September to November, winter = December to February
  (``winter 2022`` starts in December 2022).
* "early/mid/late X" is the first/middle/last third of X (of a year: January-April,
  May-August, September-December; of a decade: years 0-2, 3-6, 7-9). "early may" counts
  as the month, the way "in may" does.
* "before X" / "until X" end at the start of X; "after X" starts at the end of X;
  "since X" starts at the start of X.
* A bare month or year, a bare season and "the 8th" count only after a preposition
  (in, on, during, throughout, of, before, after, since, until, till, between, from ...
  to) or inside a longer form, so "may" the verb, "March" the verb and "fall" stay words;
  "May 8" and "May 2023" count anywhere. Matches never start or end inside a word
  ("Mayday", "marching").
* Numeric dates other than ISO (``08/05/2023``) are ambiguous between countries and
  are not recognised.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from habitus.memory._calendar import (
    _ONE_DAY,
    _add_months,
    _amount,
    _day,
    _floor,
    _Interval,
    _midnight,
    _month,
    _month_number,
    _season,
    _shift,
    _Span,
    _thirds,
    _unit,
    _week_start,
    _year,
)

__all__ = ["TimeFilter", "parse_time"]

Relation = Literal["within", "before", "after"]


@dataclass(frozen=True)
class TimeFilter:
    """A time constraint read from a query.

    Attributes:
        start: Inclusive lower bound, tz-aware UTC; ``None`` when unbounded.
        end: Exclusive upper bound, tz-aware UTC; ``None`` when unbounded.
        expression: The matched text, exactly as it appears in the query.
        anchor: For "before/after <something that is not a date>" (e.g. ``"the trip"``):
            the caller finds when that happened by searching memories; ``start`` and
            ``end`` are then both ``None``.
        relation: ``"within"`` for an interval, ``"before"`` / ``"after"`` for an open
            bound or an anchor.
    """

    start: datetime | None
    end: datetime | None
    expression: str
    anchor: str | None = None
    relation: Relation = "within"


_FLAGS = re.IGNORECASE | re.ASCII

# --- vocabulary -------------------------------------------------------------------

_MONTH = (
    r"(?:january|february|march|april|may|june|july|august|september|october|november|december"
    r"|(?:jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)(?:\.(?=\s*[0-9]))?)(?!\w)"
)
_YEAR = r"[12][0-9]{3}(?![0-9])"
_DAY = r"(?P<d>[12][0-9]|3[01]|0?[1-9])(?:st|nd|rd|th)?(?![0-9])"
_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)(?!\w)"
_SEASON = r"(?:spring|summer|autumn|fall|winter)(?!\w)"
_QUAL = r"(?:last|this|next|previous|coming|current)"
_NUM = (
    r"(?:[0-9]{1,4}|a\s+couple\s+of|a\s+couple|couple\s+of|a\s+few|few|several|an|a|one|two|three|four"
    r"|five|six|seven|eight|nine|ten|eleven|twelve)"
)
_DECADE = r"(?:(?:the\s+)?(?P<c>[12][0-9])(?P<d>[0-9])0|the\s+'?(?P<d2>[0-9])0)'?s(?!\w)"
_SHORT_DECADE = re.compile(r"'?[0-9]0'?s", _FLAGS)
_UNIT = r"(?:minute|min|hour|hr|day|week|fortnight|month|year)s?(?!\w)"

_WEEKDAYS = {
    name: i for i, name in enumerate(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])
}
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4}
_DAY_PARTS = {"morning": (5, 12), "afternoon": (12, 18), "evening": (18, 24), "night": (18, 30)}

_ONE_WEEK = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class _Ctx:
    now: datetime  # naive wall-clock time in the caller's zone
    year: int | None = None  # year for yearless forms (the "A" of "between A and B 2023")

    @property
    def today(self) -> datetime:
        return _midnight(self.now)


# --- forms: each is a regex with named groups and a function giving its span -------

_Handler = Callable[[re.Match[str], _Ctx], "_Span | None"]


def _opt(m: re.Match[str], name: str) -> str | None:
    """The text of an optional group, or None where it did not match or the form lacks it."""
    value: str | None = m.groupdict().get(name)
    return value or None


def _h_iso_day(m: re.Match[str], c: _Ctx) -> _Span:
    return _day(datetime(int(m["y"]), int(m["m"]), int(m["d"])))


def _h_iso_month(m: re.Match[str], c: _Ctx) -> _Span:
    return _month(int(m["y"]), int(m["m"]))


def _h_day_month(m: re.Match[str], c: _Ctx) -> _Span:
    month, day = _month_number(m["mon"]), int(m["d"])
    if m["y"]:
        return _day(datetime(int(m["y"]), month, day))
    if c.year is not None:
        return _day(datetime(c.year, month, day))
    start = datetime(c.now.year, month, day)
    if start > c.today:
        start = start.replace(year=c.now.year - 1)
    return _day(start)


def _h_month_year(m: re.Match[str], c: _Ctx) -> _Span:
    return _month(int(m["y"]), _month_number(m["mon"]))


def _h_month(m: re.Match[str], c: _Ctx) -> _Span:
    month = _month_number(m["mon"])
    if c.year is not None:
        return _month(c.year, month)
    return _month(c.now.year if month <= c.now.month else c.now.year - 1, month)


def _h_qual_month(m: re.Match[str], c: _Ctx) -> _Span:
    month, qual, now = _month_number(m["mon"]), m["q"].lower(), c.now
    if qual in ("last", "previous"):
        year = now.year if month < now.month else now.year - 1
    elif qual in ("next", "coming"):
        year = now.year if month > now.month else now.year + 1
    else:
        year = now.year
    return _month(year, month)


def _h_year(m: re.Match[str], c: _Ctx) -> _Span:
    return _year(int(m["y"]))


def _h_season(m: re.Match[str], c: _Ctx) -> _Span:
    name, now, year_text = m["s"], c.now, _opt(m, "y")
    if year_text:
        return _season(name, int(year_text))
    qual = (_opt(m, "q") or "").lower()
    year = now.year
    if qual in ("last", "previous"):
        while _season(name, year)[1] > now:  # the latest that has ended
            year -= 1
    elif qual in ("next", "coming"):
        while _season(name, year)[0] <= now:
            year += 1
    elif qual in ("this", "current"):
        prior = _season(name, year - 1)
        if prior[0] <= now < prior[1]:
            year -= 1
    elif _season(name, year)[0] > now:  # bare: the latest that has started
        year -= 1
    return _season(name, year)


def _h_part(m: re.Match[str], c: _Ctx) -> _Span | None:
    text = m["t"]
    target = _interpret("the " + text if _SHORT_DECADE.fullmatch(text) else text, c)  # "mid 90s"
    if target is None:
        return None
    return _thirds(target, m["part"].lower().split()[0])


def _h_weekday(m: re.Match[str], c: _Ctx) -> _Span:
    wanted, today = _WEEKDAYS[m["wd"].lower()], c.today
    qual = (m["q"] or "").lower()
    if qual in ("this", "current"):
        return _day(_week_start(today) + timedelta(days=wanted))
    if qual in ("next", "coming"):
        return _day(today + timedelta(days=(wanted - today.weekday() - 1) % 7 + 1))
    back = (today.weekday() - wanted) % 7
    if qual in ("last", "previous") and back == 0:
        back = 7
    return _day(today - timedelta(days=back))


def _weekend_of(week_start: datetime) -> _Interval:
    saturday = week_start + timedelta(days=5)
    return saturday, saturday + 2 * _ONE_DAY


def _h_weekend(m: re.Match[str], c: _Ctx) -> _Span:
    qual, week = (_opt(m, "q") or "").lower(), _week_start(c.today)
    if qual in ("last", "previous"):
        return _weekend_of(week - _ONE_WEEK)
    if qual in ("next", "coming"):
        return _weekend_of(week + _ONE_WEEK)
    if qual in ("this", "current"):
        return _weekend_of(week)
    saturday = _weekend_of(week)[0]  # bare "the weekend": the latest that has started
    return _weekend_of(week if saturday <= c.today else week - _ONE_WEEK)


def _day_part(day: datetime, part: str) -> _Interval:
    first, last = _DAY_PARTS[part.lower()]
    return day + timedelta(hours=first), day + timedelta(hours=last)


def _h_day_word(m: re.Match[str], c: _Ctx) -> _Span:
    offset = {"today": 0, "this": 0, "tonight": 0, "yesterday": -1, "last": -1, "tomorrow": 1}[m["w"].lower()]
    day = c.today + timedelta(days=offset)
    part = _opt(m, "part") or ("night" if m["w"].lower() in ("tonight", "last") else None)
    return _day_part(day, part) if part else _day(day)


def _h_ago(m: re.Match[str], c: _Ctx) -> _Span:
    unit, per = _unit(m["u"])
    low, high = _amount(m["n"])
    start = _floor(unit, _shift(unit, c.now, -high * per))
    end = _shift(unit, _floor(unit, _shift(unit, c.now, -low * per)), 1)
    return start, end


def _h_rolling(m: re.Match[str], c: _Ctx) -> _Span:
    unit, per = _unit(m["u"])
    amount = _opt(m, "n")
    count = _amount(amount)[1] if amount else 1
    return _shift(unit, c.now, -count * per), None


def _h_qual_unit(m: re.Match[str], c: _Ctx) -> _Span:
    qual, unit, now = m["q"].lower(), m["u"].lower(), c.now
    step = {"last": -1, "previous": -1, "next": 1, "coming": 1}.get(qual, 0)
    if unit == "week":
        start = _week_start(now) + step * _ONE_WEEK
        return start, start + _ONE_WEEK
    if unit == "quarter":
        start = _add_months(datetime(now.year, 3 * ((now.month - 1) // 3) + 1, 1), 3 * step)
        return start, _add_months(start, 3)
    if unit == "month":
        start = _add_months(datetime(now.year, now.month, 1), step)
        return start, _add_months(start, 1)
    return _year(now.year + step)


def _h_quarter(m: re.Match[str], c: _Ctx) -> _Span:
    number, year_text = _opt(m, "q"), _opt(m, "y")
    quarter = int(number) if number else _ORDINALS[m["qo"].lower()]
    year = int(year_text) if year_text else c.now.year
    start = datetime(year, 3 * quarter - 2, 1)
    if not year_text and start > c.now:
        start = start.replace(year=year - 1)
    return start, _add_months(start, 3)


def _h_decade(m: re.Match[str], c: _Ctx) -> _Span:
    if m["c"]:
        year = int(m["c"] + m["d"] + "0")
    else:
        year = c.now.year // 100 * 100 + int(m["d2"]) * 10
        if year > c.now.year:
            year -= 100
    return datetime(year, 1, 1), datetime(year + 10, 1, 1)


def _h_nth(m: re.Match[str], c: _Ctx) -> _Span | None:
    day, first = int(m["d"]), datetime(c.now.year, c.now.month, 1)
    for back in range(13):
        month = _add_months(first, -back)
        if day <= calendar.monthrange(month.year, month.month)[1] and month.replace(day=day) <= c.today:
            return _day(month.replace(day=day))
    return None


@dataclass(frozen=True, slots=True)
class _Form:
    source: str
    handler: _Handler
    needs_cue: bool  # only after a preposition (or inside a range or relation)


def _form(source: str, handler: _Handler, *, needs_cue: bool = False) -> _Form:
    return _Form(source, handler, needs_cue)


_FORMS: tuple[_Form, ...] = (
    _form(
        r"(?P<y>[0-9]{4})[-/](?P<m>[0-9]{1,2})[-/](?P<d>[0-9]{1,2})(?![0-9])"
        r"(?:T[0-9:.]+(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?",
        _h_iso_day,
    ),
    _form(r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})(?![0-9-])", _h_iso_month),
    _form(
        rf"(?:{_WEEKDAY},?\s+)?(?:the\s+)?{_DAY}(?:\s+of)?\s+(?P<mon>{_MONTH})(?:,?\s+(?P<y>{_YEAR}))?",
        _h_day_month,
    ),
    _form(rf"(?:{_WEEKDAY},?\s+)?(?P<mon>{_MONTH})\s+(?:the\s+)?{_DAY}(?:,?\s+(?P<y>{_YEAR}))?", _h_day_month),
    _form(rf"(?:the\s+month\s+of\s+)?(?P<mon>{_MONTH})(?:\s+of)?,?\s+(?P<y>{_YEAR})", _h_month_year),
    _form(rf"(?:the\s+)?month\s+of\s+(?P<mon>{_MONTH})", _h_month),
    _form(rf"(?:the\s+)?year\s+(?:of\s+)?(?P<y>{_YEAR})", _h_year),
    _form(rf"(?P<q>{_QUAL})\s+(?P<mon>{_MONTH})", _h_qual_month),
    _form(rf"(?P<q>{_QUAL})\s+(?P<s>{_SEASON})", _h_season),
    _form(rf"(?:the\s+)?(?P<s>{_SEASON})\s+(?:of\s+)?(?P<y>{_YEAR})", _h_season),
    _form(
        r"(?:the\s+)?(?P<part>early|mid|late|(?:start|beginning|middle|end)\s+of)(?:\s+|-)"
        rf"(?P<t>{_MONTH}(?:,?\s+{_YEAR})?|{_YEAR}|(?:last|this|next)\s+(?:month|year)(?!\w)|{_DECADE}|'?[0-9]0'?s(?!\w))",
        _h_part,
    ),
    _form(rf"(?:(?P<q>{_QUAL})\s+)?(?P<wd>{_WEEKDAY})", _h_weekday),
    _form(rf"(?P<q>{_QUAL})\s+weekend(?!\w)", _h_weekend),
    _form(r"(?:over|at|during|on)\s+the\s+weekend(?!\w)", _h_weekend),
    _form(r"(?P<w>today|yesterday|tomorrow)(?:\s+(?P<part>morning|afternoon|evening|night))?(?!\w)", _h_day_word),
    _form(r"(?P<w>this)\s+(?P<part>morning|afternoon|evening)(?!\w)", _h_day_word),
    _form(r"(?P<w>tonight)(?!\w)", _h_day_word),
    _form(r"(?P<w>last)\s+night(?!\w)", _h_day_word),
    _form(rf"(?P<n>{_NUM})\s+(?P<u>{_UNIT})\s+ago(?!\w)", _h_ago),
    _form(rf"(?:the\s+)?(?:past|last|previous)\s+(?P<n>{_NUM})\s+(?P<u>{_UNIT})", _h_rolling),
    _form(rf"(?:(?:the\s+)?past|the\s+last)\s+(?P<u>{_UNIT})", _h_rolling),
    _form(rf"(?P<q>{_QUAL})\s+(?P<u>week|month|quarter|year)(?!\w)", _h_qual_unit),
    _form(rf"q(?P<q>[1-4])(?:\s+(?P<y>{_YEAR}))?(?!\w)", _h_quarter),
    _form(
        rf"(?:the\s+)?(?P<qo>first|second|third|fourth|1st|2nd|3rd|4th)\s+quarter\s+(?:of\s+)?(?P<y>{_YEAR})",
        _h_quarter,
    ),
    _form(_DECADE, _h_decade),
    _form(rf"(?P<mon>{_MONTH})", _h_month, needs_cue=True),
    _form(rf"(?P<y>{_YEAR})", _h_year, needs_cue=True),
    _form(rf"(?:the\s+)?(?P<s>{_SEASON})", _h_season, needs_cue=True),
    _form(r"the\s+weekend(?!\w)", _h_weekend, needs_cue=True),
    _form(r"the\s+(?P<d>[12][0-9]|3[01]|0?[1-9])(?:st|nd|rd|th)(?!\w)", _h_nth, needs_cue=True),
)


_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


def _unnamed(source: str) -> str:
    """A form's regex without group names, to embed it (more than once) in the combined pattern."""
    return _NAMED_GROUP.sub("(?:", source)


_STRICT = "|".join(_unnamed(f.source) for f in _FORMS if not f.needs_cue)
_ANY = "|".join(_unnamed(f.source) for f in _FORMS)

# Words that cannot begin an anchor ("after all", "before that") or that end one.
_ANCHOR_STOP = (
    r"(?:before|after|since|until|till|all|long|that|this|then|now|which|what|when|where|who|how"
    r"|it|i|we|you|he|she|they|us|them|him|her|me|and|or|but|a\s+while)"
)
_ANCHOR_END = r"(?:and|or|but|when|where|while|because|so|if|then|who|which|did|do|does|was|were|is|are|has|have|had)"
_WORD = r"[^\s?.!,;:()\"]+"

_EXPRESSION = (
    r"(?<!\w)(?:"
    rf"(?:(?:in\s+)?between|from)\s+(?P<a>{_ANY})\s+(?:and|to|until|till|through|thru)\s+(?P<b>{_ANY})"
    r"|(?:(?P<cue>in|on|during|throughout|of)\s+|(?:within|from|over|at|for)\s+)?"
    r"(?:"
    rf"(?:the\s+)?(?P<unit>day|week|weekend|month|year)\s+(?P<urel>before|after)\s+(?P<ux>{_ANY})"
    rf"|(?P<rel>before|after|since|until|till|prior\s+to)\s+(?P<x>{_ANY})"
    rf"|(?P<arel>before|after|until|till|prior\s+to)\s+(?!{_ANCHOR_STOP}(?!\w))"
    rf"(?P<anchor>{_WORD}(?:\s+(?!{_ANCHOR_END}(?!\w)){_WORD}){{0,5}})"
    rf"|(?P<atom>(?(cue)(?:{_ANY})|(?:{_STRICT})))"
    r"))(?!\w)"
)


@functools.cache
def _compiled() -> tuple[re.Pattern[str], tuple[tuple[re.Pattern[str], _Handler], ...]]:
    """The combined pattern and each form's own; compiled on first use (about 40 ms), not at import."""
    return re.compile(_EXPRESSION, _FLAGS), tuple((re.compile(f.source, _FLAGS), f.handler) for f in _FORMS)


_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([?.!,;:])")
_DANGLING = re.compile(r"^[\s,;:]+|[,;:]+(?=[?.!]|$)")
_WORD_CHAR = re.compile(r"\w")


def _interpret(text: str, ctx: _Ctx) -> _Span | None:
    for regex, handler in _compiled()[1]:
        match = regex.fullmatch(text)
        if match is not None:
            span = handler(match, ctx)
            if span is not None:
                return span
    return None


def _weekend_around(point: datetime, *, before: bool) -> _Interval:
    """The latest weekend ending by ``point`` (``before``), or the first starting at or after it."""
    if before:
        saturday = _midnight(point) - 2 * _ONE_DAY
        saturday -= timedelta(days=(saturday.weekday() - 5) % 7)
    else:
        saturday = _midnight(point) + (_ONE_DAY if point != _midnight(point) else timedelta(0))
        saturday += timedelta(days=(5 - saturday.weekday()) % 7)
    return saturday, saturday + 2 * _ONE_DAY


def _next_to(unit: str, relation: str, span: _Span) -> _Span | None:
    """The day/week/weekend/month/year just before or just after ``span``."""
    start, end = span
    if relation == "before":
        if unit == "weekend":
            return _weekend_around(start, before=True)
        if unit in ("month", "year"):
            return _add_months(start, -1 if unit == "month" else -12), start
        return start - (_ONE_DAY if unit == "day" else _ONE_WEEK), start
    if end is None:
        return None
    if unit == "weekend":
        return _weekend_around(end, before=False)
    if unit in ("month", "year"):
        return end, _add_months(end, 1 if unit == "month" else 12)
    return end, end + (_ONE_DAY if unit == "day" else _ONE_WEEK)


def _between(a_text: str, b_text: str, ctx: _Ctx) -> _Span | None:
    b = _interpret(b_text, ctx)
    if b is None or b[1] is None:
        return None
    # A yearless first bound takes the second's year ("between May and July 2023"),
    # or the year before when that would put it after the second ("from November to February").
    a = _interpret(a_text, _Ctx(ctx.now, b[0].year))
    if a is not None and a[0] >= b[0]:
        a = _interpret(a_text, _Ctx(ctx.now, b[0].year - 1))
    if a is None or a[1] is None:
        return None
    return min(a[0], b[0]), max(a[1], b[1])


def _to_utc(value: datetime | None, zone: tzinfo) -> datetime | None:
    return None if value is None else value.replace(tzinfo=zone).astimezone(UTC)


def _filter(match: re.Match[str], ctx: _Ctx, zone: tzinfo) -> TimeFilter | None:
    expression = match.group(0)
    relation: Relation = "within"
    if match["arel"] is not None:
        relation = "after" if match["arel"].lower() == "after" else "before"
        return TimeFilter(None, None, expression, anchor=match["anchor"], relation=relation)
    span: _Span | None
    if match["a"] is not None:
        span = _between(match["a"], match["b"], ctx)
    elif match["unit"] is not None:
        target = _interpret(match["ux"], ctx)
        span = None if target is None else _next_to(match["unit"].lower(), match["urel"].lower(), target)
    elif match["rel"] is not None:
        target = _interpret(match["x"], ctx)
        word = match["rel"].lower()
        if target is None:
            span = None
        elif word == "after":
            span = None if target[1] is None else (target[1], None)
        elif word == "since":
            span = (target[0], None)
        else:
            return TimeFilter(None, _to_utc(target[0], zone), expression, relation="before")
    else:
        span = _interpret(match["atom"], ctx)
    if span is None:
        return None
    if span[1] is None:
        relation = "after"
    return TimeFilter(_to_utc(span[0], zone), _to_utc(span[1], zone), expression, relation=relation)


def _tidy(text: str) -> str:
    text = _DANGLING.sub("", _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", text))).strip()
    return text if _WORD_CHAR.search(text) else ""


def parse_time(query: str, now: datetime) -> tuple[TimeFilter | None, str]:
    """Find the first time expression in ``query`` and resolve it against ``now``.

    When several expressions appear ("in May 2023, before the trip"), only the first
    (leftmost) one is used; the others stay in the returned query text.

    Args:
        query: A recall query in English, e.g. ``"what did Alice do last week?"``.
        now: The reference time. Its time zone is the user's: "yesterday" and month
            boundaries are computed there. A naive ``now`` is taken as UTC.

    Returns:
        The filter (``None`` when the query has no time expression) and the query with
        the expression removed and whitespace tidied (unchanged when there is none).
    """
    zone = now.tzinfo if now.tzinfo is not None and now.utcoffset() is not None else UTC
    ctx = _Ctx(now.replace(tzinfo=None))
    position, expression = 0, _compiled()[0]
    while (match := expression.search(query, position)) is not None:
        try:
            found = _filter(match, ctx, zone)
        except (ValueError, OverflowError):  # an impossible date ("31 February"), or past year 9999
            found = None
        if found is not None:
            return found, _tidy(query[: match.start()] + " " + query[match.end() :])
        position = max(match.end(), match.start() + 1)  # not "February 2023" out of "31 February 2023"
    return None, query
