"""NCRONTAB schedules as Azure Functions timer triggers read them: six fields, seconds first.

`{second} {minute} {hour} {day} {month} {day-of-week}`. Parsing and the next occurrence come from croniter, which
reads six-field expressions with the seconds first (`second_at_beginning`) and, with `day_or=False`, matches a
restricted day of month AND a restricted day of week together, as NCrontab does (unlike Vixie cron). What this
module adds is what the Functions host refuses at indexing and croniter lets through: a field count other than
six, and a range that runs backwards. Times are naive or UTC; the local host uses UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from croniter import CroniterBadDateError, CroniterError, croniter

_FIELD_NAMES = ("second", "minute", "hour", "day", "month", "day-of-week")
# A leap day on a given weekday recurs within 28 years; a schedule with nothing in 29 never fires.
_SEARCH_YEARS = 29
_RANGE = re.compile(r"^(\d+)-(\d+)$")
# NCrontab also takes full month and day names (January, monday); croniter takes the three-letter ones.
_FULL_NAMES = {name: name[:3] for name in ("january", "february", "march", "april", "june", "july", "august",
                                           "september", "october", "november", "december", "sunday", "monday",
                                           "tuesday", "wednesday", "thursday", "friday", "saturday")}
_WORD = re.compile(r"[A-Za-z]+")


class ScheduleError(ValueError):
    """The expression is not a valid six-field NCRONTAB schedule; the message says which part."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule."""

    expression: str
    _options: dict = field(default_factory=lambda: {"second_at_beginning": True, "day_or": False}, repr=False)

    def matches(self, dt: datetime) -> bool:
        """True when `dt` (to the second) is an occurrence of the schedule."""
        return croniter.match(self.expression, dt.replace(microsecond=0), **self._options)

    def next_after(self, dt: datetime) -> datetime:
        """The first occurrence strictly after `dt` (same tzinfo as `dt`); ScheduleError if it never fires."""
        try:
            it = croniter(self.expression, dt, max_years_between_matches=_SEARCH_YEARS, **self._options)
            return it.get_next(datetime)
        except CroniterBadDateError:
            raise ScheduleError(f"NCRONTAB schedule {self.expression!r} has no occurrence: no date matches its day, "
                                "month and day of week") from None


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression (seconds first); ScheduleError names the offending part."""
    parts = expression.split()
    if len(parts) != 6:
        raise ScheduleError(f"NCRONTAB schedule {expression!r} must have 6 fields "
                            f"(second minute hour day month day-of-week), got {len(parts)}")
    for name, text in zip(_FIELD_NAMES, parts):
        for part in text.split(","):
            bounds = _RANGE.match(part.partition("/")[0])
            if bounds and int(bounds.group(1)) > int(bounds.group(2)):
                raise ScheduleError(f"NCRONTAB schedule {expression!r}: range {part!r} of the {name} field runs "
                                    "backwards")
    schedule = Schedule(_WORD.sub(lambda m: _FULL_NAMES.get(m.group().lower(), m.group()), " ".join(parts)))
    try:
        croniter(schedule.expression, datetime(2000, 1, 1), **schedule._options)
    except CroniterError as exc:
        # croniter's own message shows the fields reordered (seconds last); keep only what it says is wrong.
        reason = str(exc).rsplit("]", 1)[-1].strip(" ,") or "not acceptable"
        raise ScheduleError(f"NCRONTAB schedule {expression!r} is not valid (second minute hour day month "
                            f"day-of-week): {reason}") from None
    schedule.next_after(datetime(2000, 1, 1))  # refuses a schedule that never fires (30 February)
    return schedule
