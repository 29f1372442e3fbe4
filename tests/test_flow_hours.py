"""Opening hours: weekly ranges on the node's local clock, holidays, DST, wrapping day ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ivr.flows.hours import days_of, is_open, weekly_ranges
from ivr.flows.model import HoursNode

NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def hours(weekly, timezone="America/New_York", holidays=()):
    return HoursNode.model_validate(
        {
            "type": "hours",
            "timezone": timezone,
            "weekly": weekly,
            "holidays": list(holidays),
            "open": "agents",
            "closed": "closed_message",
        }
    )


def local(*parts, zone=NEW_YORK):
    return datetime(*parts, tzinfo=zone)


OFFICE = hours({"mon-fri": "08:00-17:30", "sat": ["09:00-12:00", "13:00-15:00"]})
# 2026-03-02 is a Monday.
MONDAY, SATURDAY, SUNDAY = date(2026, 3, 2), date(2026, 3, 7), date(2026, 3, 8)


# Day specs


@pytest.mark.parametrize(
    ("spec", "days"),
    [
        ("mon", [0]),
        ("sun", [6]),
        ("mon-fri", [0, 1, 2, 3, 4]),
        ("mon-sun", [0, 1, 2, 3, 4, 5, 6]),
        ("fri-mon", [4, 5, 6, 0]),
        ("sun-tue", [6, 0, 1]),
        ("wed-wed", [2]),
    ],
)
def test_a_day_spec_names_its_weekdays_and_ranges_wrap_around_the_week(spec, days):
    assert days_of(spec) == days


def test_a_wrapping_range_is_open_on_each_of_its_days_only():
    weekend = hours({"fri-mon": "10:00-14:00"})
    opened = [is_open(weekend, local(2026, 3, 2 + offset, 11, 0)) for offset in range(7)]
    # Monday 2 … Sunday 8 March 2026
    assert opened == [True, False, False, False, True, True, True]


def test_a_day_in_several_specs_gets_all_their_ranges():
    node = hours({"mon-fri": "09:00-12:00", "mon": "14:00-16:00", "fri-mon": "18:00-19:00"})
    assert weekly_ranges(node)[0] == [(540, 720), (840, 960), (1080, 1140)]
    assert weekly_ranges(node)[1] == [(540, 720)]
    assert is_open(node, local(2026, 3, 2, 15, 0))  # Monday afternoon
    assert not is_open(node, local(2026, 3, 3, 15, 0))  # not on Tuesday
    assert is_open(node, local(2026, 3, 2, 18, 30))


def test_overlapping_ranges_are_merged():
    node = hours({"mon": ["09:00-12:00", "11:00-13:00", "13:00-14:00"]})
    assert weekly_ranges(node)[0] == [(540, 840)]


def test_a_day_without_ranges_is_closed():
    node = hours({"mon": [], "tue": "09:00-10:00"})
    assert weekly_ranges(node)[0] == []
    assert not is_open(node, local(2026, 3, 2, 9, 30))


# Ranges


@pytest.mark.parametrize(
    ("day", "clock", "expected"),
    [
        (MONDAY, (7, 59), False),
        (MONDAY, (8, 0), True),
        (MONDAY, (17, 29), True),
        (MONDAY, (17, 30), False),
        (SATURDAY, (11, 59), True),
        (SATURDAY, (12, 30), False),
        (SATURDAY, (13, 0), True),
        (SUNDAY, (10, 0), False),
    ],
)
def test_ranges_include_their_start_and_exclude_their_end(day, clock, expected):
    assert is_open(OFFICE, local(day.year, day.month, day.day, *clock)) is expected


def test_the_last_second_before_closing_is_still_open():
    assert is_open(OFFICE, local(2026, 3, 2, 17, 29, 59, 999999))


def test_24_00_as_an_end_means_until_midnight():
    node = hours({"mon": "20:00-24:00"})
    assert is_open(node, local(2026, 3, 2, 23, 59, 59))
    assert not is_open(node, local(2026, 3, 3, 0, 0))  # Tuesday has no range


def test_around_the_clock_is_open_at_midnight_and_just_before():
    node = hours({"mon-sun": "00:00-24:00"})
    assert is_open(node, local(2026, 3, 2, 0, 0))
    assert is_open(node, local(2026, 3, 8, 23, 59))


# Time zones


def test_the_time_is_read_on_the_nodes_clock_whatever_zone_it_comes_in():
    # 13:30 UTC on a winter Monday is 08:30 in New York (UTC-5): open.
    assert is_open(OFFICE, datetime(2026, 3, 2, 13, 30, tzinfo=UTC))
    # 12:30 UTC is 07:30 in New York: closed, though it is 21:30 in Tokyo.
    assert not is_open(OFFICE, datetime(2026, 3, 2, 12, 30, tzinfo=UTC))
    assert is_open(OFFICE, datetime(2026, 3, 2, 22, 30, tzinfo=TOKYO))
    plus_two = timezone(timedelta(hours=2))
    assert not is_open(OFFICE, datetime(2026, 3, 2, 10, 0, tzinfo=plus_two))  # 03:00 there
    assert is_open(OFFICE, datetime(2026, 3, 2, 16, 0, tzinfo=plus_two))  # 09:00 there


def test_the_weekday_is_the_local_one():
    # Saturday 01:00 UTC is still Friday 20:00 in New York.
    late_friday = hours({"fri": "19:00-21:00"})
    assert is_open(late_friday, datetime(2026, 3, 7, 1, 0, tzinfo=UTC))
    tokyo_monday = hours({"mon": "08:00-10:00"}, timezone="Asia/Tokyo")
    # Sunday 23:30 UTC is Monday 08:30 in Tokyo.
    assert is_open(tokyo_monday, datetime(2026, 3, 1, 23, 30, tzinfo=UTC))


def test_a_naive_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(OFFICE, datetime(2026, 3, 2, 9, 0))  # naive: no zone


# DST: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.


def test_opening_follows_the_office_clock_across_the_spring_change():
    weekend = hours({"sat-sun": "08:00-17:00"})
    # The day before the change, 08:00 in New York is 13:00 UTC (EST, UTC-5)…
    assert not is_open(weekend, datetime(2026, 3, 7, 12, 59, tzinfo=UTC))
    assert is_open(weekend, datetime(2026, 3, 7, 13, 0, tzinfo=UTC))
    # …on the day of the change it is 12:00 UTC (EDT, UTC-4), and so is the closing hour.
    assert not is_open(weekend, datetime(2026, 3, 8, 11, 59, tzinfo=UTC))
    assert is_open(weekend, datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
    assert is_open(weekend, datetime(2026, 3, 8, 20, 59, tzinfo=UTC))
    assert not is_open(weekend, datetime(2026, 3, 8, 21, 0, tzinfo=UTC))


def test_a_range_starting_in_the_skipped_hour_opens_when_the_clock_jumps():
    night = hours({"sun": "02:30-04:00"})
    # 06:59 UTC is 01:59 EST; one minute later the clock reads 03:00 EDT, inside the range.
    assert not is_open(night, datetime(2026, 3, 8, 6, 59, tzinfo=UTC))
    assert is_open(night, datetime(2026, 3, 8, 7, 0, tzinfo=UTC))


def test_the_repeated_autumn_hour_is_open_both_times():
    night = hours({"sun": "01:00-02:00"})
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST, an hour later
    assert first.astimezone(NEW_YORK).hour == second.astimezone(NEW_YORK).hour == 1
    assert is_open(night, first)
    assert is_open(night, second)
    assert not is_open(night, datetime(2026, 11, 1, 7, 0, tzinfo=UTC))  # 02:00 EST


# Holidays


def test_a_holiday_is_closed_all_day_on_the_local_date():
    node = hours({"mon-sun": "00:00-24:00"}, holidays=[date(2026, 12, 25)])
    assert not is_open(node, local(2026, 12, 25, 0, 0))
    assert not is_open(node, local(2026, 12, 25, 23, 59))
    assert is_open(node, local(2026, 12, 24, 23, 59))
    assert is_open(node, local(2026, 12, 26, 0, 0))


def test_a_holiday_follows_the_local_date_not_the_utc_one():
    node = hours({"mon-sun": "00:00-24:00"}, holidays=[date(2026, 12, 25)])
    # 26 December 02:00 UTC is still 25 December 21:00 in New York.
    assert not is_open(node, datetime(2026, 12, 26, 2, 0, tzinfo=UTC))
    # 25 December 03:00 UTC is still Christmas Eve in New York.
    assert is_open(node, datetime(2026, 12, 25, 3, 0, tzinfo=UTC))


def test_holidays_written_as_text_in_yaml_are_dates():
    node = hours({"mon-sun": "00:00-24:00"}, holidays=["2027-01-01"])
    assert not is_open(node, local(2027, 1, 1, 12, 0))
