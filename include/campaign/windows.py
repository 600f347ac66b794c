"""Sending windows in the recipient's own time zone: which UTC instants a recipient may be mailed at.

A window is a set of weekdays and one daily span of local clock time (``send_days``,
``send_hours``), the same for every recipient and read in each recipient's zone
(``timezone`` column, else ``default_timezone``). The planner asks one question of it,
``earliest(zone, lo, hi)``: the first instant in ``[lo, hi)`` (one UTC clock hour, or
less) at which the local clock in ``zone`` is inside the window. Offsets of half and
three quarters of an hour (India, Kathmandu, Lord Howe's half-hour DST) and the days the
clocks change are handled by reading the zone's offset, never by assuming it whole hours
or constant.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALL_DAYS = frozenset(range(7))
DEFAULT_TIMEZONE = "UTC"
WHOLE_DAY = "00:00-24:00"
_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")
MINUTE = timedelta(minutes=1)


class WindowError(ValueError):
    """A window or zone Param that cannot be read; the message names it and says why."""


@cache
def known_zones() -> frozenset[str]:
    """The IANA names this machine's tz database has. A name is looked up in this set before it is
    loaded, so a cell such as ``../../etc/passwd`` never reaches the file system."""
    return frozenset(zoneinfo.available_timezones()) | {DEFAULT_TIMEZONE}


@cache
def zone(name: str) -> tzinfo:
    if name not in known_zones():
        raise WindowError(f"{name!r} is not an IANA time zone (such as Europe/Berlin)")
    return UTC if name == DEFAULT_TIMEZONE else zoneinfo.ZoneInfo(name)


def parse_days(value: object) -> frozenset[int]:
    """``send_days``: a list of weekdays, ``mon`` .. ``sun`` or in full, in any case; none is an error."""
    if not isinstance(value, list | tuple) or not value:
        raise WindowError(f"send_days {value!r} must be a non-empty list of weekdays ({', '.join(WEEKDAYS)})")
    days = set()
    for day in value:
        name = day.strip().lower() if isinstance(day, str) else None
        if name in FULL_WEEKDAYS:
            name = WEEKDAYS[FULL_WEEKDAYS.index(name)]
        if name not in WEEKDAYS:
            raise WindowError(f"send_days holds {day!r}, not a weekday ({', '.join(WEEKDAYS)})")
        days.add(WEEKDAYS.index(name))
    return frozenset(days)


def parse_hours(value: object) -> tuple[time, time | None]:
    """``send_hours``: ``HH:MM-HH:MM`` local, start included, end excluded; ``24:00`` is midnight at
    the day's end (None). A span that ends before it starts would cross midnight: refused, since a
    batch's weekday would then be ambiguous (give two campaigns, or widen the span)."""
    found = _SPAN.match(value.strip()) if isinstance(value, str) else None
    if not found:
        raise WindowError(f"send_hours {value!r} is not a local span such as 09:00-17:00")
    h0, m0, h1, m1 = (int(g) for g in found.groups())
    if h1 == 24 and m1:
        raise WindowError(f"send_hours {value!r} ends after 24:00")
    start, end = time(h0, m0), (None if h1 == 24 else time(h1, m1))
    if end is not None and end <= start:
        raise WindowError(
            f"send_hours {value!r} ends before it starts; a span crossing midnight is not allowed"
        )
    return start, end


@dataclass(frozen=True)
class SendWindow:
    days: frozenset[int] = ALL_DAYS
    start: time = time(0)
    end: time | None = None  # None: to the end of the day

    @classmethod
    def parse(cls, send_days: object, send_hours: object) -> SendWindow:
        return cls(parse_days(send_days), *parse_hours(send_hours))

    @property
    def always(self) -> bool:
        """Every instant is inside: time zones change nothing, and the plan is the UTC-only one."""
        return self.days == ALL_DAYS and self.start == time(0) and self.end is None

    @property
    def hours_text(self) -> str:
        return f"{self.start:%H:%M}-{'24:00' if self.end is None else f'{self.end:%H:%M}'}"

    def allows(self, local: datetime) -> bool:
        """Is this local (zone-aware) moment inside the window?"""
        clock = local.time()
        return local.weekday() in self.days and self.start <= clock and (self.end is None or clock < self.end)

    def earliest(self, zone_name: str, lo: datetime, hi: datetime) -> datetime | None:
        """The first UTC instant in ``[lo, hi)`` inside the window in ``zone_name``, or None.

        Within a span with one UTC offset the local clock runs with UTC, so the answer is read off
        the local day's window directly. A span in which the zone's offset changes (a DST change;
        at most an hour is ever asked) is walked minute by minute: window bounds are whole local
        minutes and every current offset is a whole number of minutes.
        """
        if self.always:
            return lo
        tz = zone(zone_name)
        if lo.utcoffset() is None or lo >= hi:
            raise ValueError("lo must be an aware instant before hi")
        offset = lo.astimezone(tz).utcoffset()
        if (hi - MINUTE).astimezone(tz).utcoffset() == offset:
            return _earliest_fixed(self, lo, hi, offset)
        moment = lo
        while moment < hi:
            if self.allows(moment.astimezone(tz)):
                return moment
            moment = (moment + MINUTE).replace(second=0, microsecond=0)
        return None


def _earliest_fixed(window: SendWindow, lo: datetime, hi: datetime, offset: timedelta) -> datetime | None:
    """``earliest`` for a span with a single UTC ``offset``: local wall time is UTC plus it."""
    local_lo, local_hi = (lo.astimezone(UTC) + offset).replace(tzinfo=None), (hi.astimezone(UTC) + offset)
    local_hi = local_hi.replace(tzinfo=None)
    day: date = local_lo.date()
    while datetime.combine(day, time(0)) < local_hi:
        if day.weekday() in window.days:
            opens = datetime.combine(day, window.start)
            closes = (
                datetime.combine(day + timedelta(days=1), time(0))
                if window.end is None
                else (datetime.combine(day, window.end))
            )
            first = max(opens, local_lo)
            if first < min(closes, local_hi):
                return (first - offset).replace(tzinfo=UTC)
        day += timedelta(days=1)
    return None
