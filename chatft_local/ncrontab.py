"""NCRONTAB schedules as Azure Functions timer triggers read them: six fields, seconds first.

`{second} {minute} {hour} {day} {month} {day-of-week}`, each `*`, a value, a range `a-b`, a step `*/n`, `a-b/n`
or `a/n` (from a to the field's end), or a comma list of those. Months and days of the week also take names
(JAN, February, mon, ...; any prefix, as NCrontab). As in NCrontab, and unlike Vixie cron, a restricted day of
month AND a restricted day of week must both match. Times are naive or UTC; the local host uses UTC.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")

# (field name, lowest, highest, value names starting at `lowest`)
_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
)

# Feb 29 on a given weekday recurs within 28 years; a schedule with nothing in that span never fires.
_SEARCH_YEARS = 29


class ScheduleError(ValueError):
    """The expression is not a valid six-field NCRONTAB schedule; the message says which part."""


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.isdigit():
        value = int(text)
    else:
        matches = [i for i, full in enumerate(names) if text and full.startswith(text.lower())]
        if not matches:
            raise ScheduleError(f"{text!r} is not a valid {name} value")
        value = matches[0] + low
    if not low <= value <= high:
        raise ScheduleError(f"{name} value {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ScheduleError(f"{part!r} has an invalid step in the {name} field")
        step = int(step_text) if slash else 1
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = _value(start, name, low, high, names), _value(end, name, low, high, names)
            if first > last:
                raise ScheduleError(f"range {span!r} of the {name} field runs backwards")
        else:
            first = _value(span, name, low, high, names)
            last = high if slash else first  # `a/n` means from a to the end, every n
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the allowed values of each field."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    def matches(self, dt: datetime) -> bool:
        """True when `dt` (to the second) is an occurrence of the schedule."""
        return (dt.second in self.seconds and dt.minute in self.minutes and dt.hour in self.hours
                and self._day_matches(dt.year, dt.month, dt.day))

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # Python's Monday=0 -> cron's Sunday=0
        return month in self.months and day in self.days and weekday in self.weekdays

    def next_after(self, dt: datetime) -> datetime:
        """The first occurrence strictly after `dt` (same tzinfo as `dt`); ScheduleError if it never fires."""
        start = dt.replace(microsecond=0) + timedelta(seconds=1)
        day = start.date()
        limit = day.replace(year=day.year + _SEARCH_YEARS, day=min(day.day, 28))
        first_day = True
        while day < limit:
            if self._day_matches(day.year, day.month, day.day):
                floor = (start.hour, start.minute, start.second) if first_day else (0, 0, 0)
                found = self._first_time_from(floor)
                if found is not None:
                    return dt.replace(year=day.year, month=day.month, day=day.day, hour=found[0],
                                      minute=found[1], second=found[2], microsecond=0)
            day += timedelta(days=1)
            first_day = False
        raise ScheduleError("the schedule has no occurrence: no date matches its day, month and day of week")

    def _first_time_from(self, floor: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """Earliest (hour, minute, second) in the schedule at or after `floor` within one day."""
        for hour in sorted(h for h in self.hours if h >= floor[0]):
            min_floor = floor[1] if hour == floor[0] else 0
            for minute in sorted(m for m in self.minutes if m >= min_floor):
                sec_floor = floor[2] if (hour, minute) == floor[:2] else 0
                second = min((s for s in self.seconds if s >= sec_floor), default=None)
                if second is not None:
                    return hour, minute, second
        return None


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression (seconds first); ScheduleError names the offending part."""
    parts = expression.split()
    if len(parts) != 6:
        raise ScheduleError(f"NCRONTAB schedule {expression!r} must have 6 fields "
                            f"(second minute hour day month day-of-week), got {len(parts)}")
    fields = [_field(text, *spec) for text, spec in zip(parts, _FIELDS)]
    schedule = Schedule(*fields)
    if not any(day <= _longest_month(month) for month in schedule.months for day in schedule.days):
        raise ScheduleError(f"NCRONTAB schedule {expression!r} names no day that exists in its months")
    return schedule


def _longest_month(month: int) -> int:
    return calendar.monthrange(2000, month)[1]  # 2000 is a leap year: February has 29 days
