"""Opening hours of an `hours` node: is the call center open at a given moment?

The schedule is wall-clock time in the node's time zone, so a DST change moves the opening
instant in UTC but not the hour on the office clock. A day range may wrap around the week
(`fri-mon` is Friday to Monday), because the schema accepts any pair of days and a range that
silently meant nothing would be worse than one that wraps.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ivr.flows.model import DAYS, HoursNode


def days_of(spec: str) -> list[int]:
    """The weekdays (0 = Monday) a day spec names: `mon`, `mon-fri`, or a wrapping `fri-mon`."""
    first, _, last = spec.partition("-")
    start, end = DAYS.index(first), DAYS.index(last or first)
    return [(start + offset) % 7 for offset in range((end - start) % 7 + 1)]


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def weekly_ranges(node: HoursNode) -> dict[int, list[tuple[int, int]]]:
    """Weekday (0 = Monday) -> its opening ranges as [start, end) minutes after midnight,
    sorted and merged: a day named by several specs gets all their ranges."""
    ranges: dict[int, list[tuple[int, int]]] = {day: [] for day in range(7)}
    for spec, texts in node.weekly.items():
        for text in texts:
            start, end = text.split("-")
            for day in days_of(spec):
                ranges[day].append((_minutes(start), _minutes(end)))
    return {day: _merged(day_ranges) for day, day_ranges in ranges.items()}


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def is_open(node: HoursNode, now: datetime) -> bool:
    """Whether `now` (timezone-aware, any zone) falls in the node's opening hours, read on the
    node's local clock: closed all day on a listed holiday, else open inside a range of that
    weekday (`24:00` as an end means midnight)."""
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive time would be read in the server's zone: right on one host, wrong on another.
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(ZoneInfo(node.timezone))
    if local.date() in node.holidays:
        return False
    minute = local.hour * 60 + local.minute
    return any(start <= minute < end for start, end in weekly_ranges(node)[local.weekday()])


__all__ = ["days_of", "is_open", "weekly_ranges"]
