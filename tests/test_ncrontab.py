"""The NCRONTAB parser of the local host's timer triggers: fields, errors, and next occurrences checked against a
brute-force search."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatft_local.ncrontab import ScheduleError, parse


def test_fields_take_values_ranges_steps_lists_and_names():
    s = parse("*/15 5-10/2 1,3,5 */10 JAN-mar MON-Fri")
    assert s.next_after(datetime(2026, 1, 1)) == datetime(2026, 1, 1, 1, 5, 0)  # Thursday the 1st
    assert s.next_after(datetime(2026, 1, 1, 1, 5, 0)) == datetime(2026, 1, 1, 1, 5, 15)
    assert s.next_after(datetime(2026, 1, 1, 5, 9, 45)) == datetime(2026, 1, 21, 1, 5, 0)  # 11th is a Sunday
    assert parse("10/20 * * * * *").next_after(datetime(2026, 1, 1, 0, 0, 30)) == datetime(2026, 1, 1, 0, 0, 50)
    assert parse("0 0 0 * * sunday,sat").next_after(datetime(2026, 1, 1)) == datetime(2026, 1, 3)


@pytest.mark.parametrize("expression, says", [
    ("* * * * *", "6 fields"),
    ("* * * * * * *", "6 fields"),
    ("60 * * * * *", "out of range"),
    ("* * 24 * * *", "out of range"),
    ("* * * 0 * *", "out of range"),
    ("* * * * 13 *", "out of range"),
    ("*/0 * * * * *", "step"),
    ("*/x * * * * *", "not valid"),
    ("* 10-5 * * * *", "runs backwards"),
    ("* * * * FOO *", "not valid"),
    ("* * * * * 1-", "not valid"),
    ("a * * * * *", "not valid"),
    ("0 0 0 30 2 *", "no occurrence"),
    ("0 0 0 31 4,6,9,11 *", "no occurrence"),
])
def test_invalid_expressions_say_what_is_wrong(expression, says):
    with pytest.raises(ScheduleError, match=says) as caught:
        parse(expression)
    assert repr(expression) in str(caught.value)


@pytest.mark.parametrize("expression, after, expected", [
    ("* * * * * *", datetime(2024, 1, 1, 0, 0, 0, 500000), datetime(2024, 1, 1, 0, 0, 1)),
    ("0 0 2 * * *", datetime(2024, 1, 1, 2, 0, 0), datetime(2024, 1, 2, 2, 0, 0)),
    ("0 0 2 * * *", datetime(2024, 1, 1, 1, 59, 59), datetime(2024, 1, 1, 2, 0, 0)),
    ("*/15 * * * * *", datetime(2024, 1, 1, 2, 0, 59), datetime(2024, 1, 1, 2, 1, 0)),
    ("0 30 9 * * MON-FRI", datetime(2024, 1, 5, 10, 0, 0), datetime(2024, 1, 8, 9, 30, 0)),  # Fri -> Mon
    ("0 0 0 1 * *", datetime(2024, 12, 15), datetime(2025, 1, 1)),
    ("0 0 0 31 * *", datetime(2024, 4, 1), datetime(2024, 5, 31)),  # April has no 31st
    ("0 0 0 29 2 *", datetime(2024, 3, 1), datetime(2028, 2, 29)),
    # As NCrontab: a restricted day of month and day of week must both match (Friday the 13th).
    ("0 0 0 13 * FRI", datetime(2024, 1, 1), datetime(2024, 9, 13)),
])
def test_next_after(expression, after, expected):
    assert parse(expression).next_after(after) == expected


def test_next_after_keeps_the_time_zone():
    after = datetime(2024, 1, 1, 23, 59, 59, tzinfo=timezone.utc)
    assert parse("0 0 0 * * *").next_after(after) == datetime(2024, 1, 2, tzinfo=timezone.utc)


def _brute_force(matches, after: datetime, step: timedelta, first: datetime) -> datetime:
    t = first
    while not (t > after and matches(t)):
        t += step
    return t


def _field_text(values: list[int]) -> str:
    return ",".join(str(v) for v in sorted(set(values)))


@settings(max_examples=60, deadline=None)
@given(
    seconds=st.lists(st.integers(0, 59), min_size=1, max_size=4),
    minutes=st.lists(st.integers(0, 59), min_size=1, max_size=4),
    after=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
)
def test_next_after_is_the_first_matching_second(seconds, minutes, after):
    schedule = parse(f"{_field_text(seconds)} {_field_text(minutes)} * * * *")
    first = after.replace(microsecond=0)
    expected = _brute_force(lambda t: t.second in seconds and t.minute in minutes, after, timedelta(seconds=1), first)
    assert schedule.next_after(after) == expected
    assert schedule.matches(expected)


@settings(max_examples=60, deadline=None)
@given(
    hours=st.lists(st.integers(0, 23), min_size=1, max_size=3),
    days=st.lists(st.integers(1, 31), min_size=1, max_size=3) | st.just([]),
    months=st.lists(st.integers(1, 12), min_size=1, max_size=3) | st.just([]),
    weekdays=st.lists(st.integers(0, 6), min_size=1, max_size=3) | st.just([]),
    after=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
)
def test_next_after_is_the_first_matching_hour(hours, days, months, weekdays, after):
    text = [_field_text(v) if v else "*" for v in (days, months, weekdays)]
    try:
        schedule = parse(f"0 0 {_field_text(hours)} {text[0]} {text[1]} {text[2]}")
    except ScheduleError:
        return  # no such date (30 February); covered above
    try:
        found = schedule.next_after(after)
    except ScheduleError:  # only Feb 29 on a weekday can be that rare
        assert months == [2] * len(months) and set(days) <= {29, 30, 31}
        return

    def matches(t: datetime) -> bool:  # NCrontab: every restricted field must match, day and weekday alike
        return (t.hour in hours and (not days or t.day in days) and (not months or t.month in months)
                and (not weekdays or (t.weekday() + 1) % 7 in weekdays))

    first = after.replace(minute=0, second=0, microsecond=0)
    assert found == _brute_force(matches, after, timedelta(hours=1), first)
