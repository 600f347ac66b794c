"""Sending windows in the recipient's zone (``include.campaign.windows``): the Params' parsing, and
the earliest instant of an hour inside a window, checked against a minute-by-minute walk in zones
with half- and three-quarter-hour offsets and across the days the clocks change."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.campaign.windows import ALL_DAYS, SendWindow, WindowError, known_zones, parse_days, parse_hours

HOUR = timedelta(hours=1)
# Kathmandu +5:45, India +5:30, Lord Howe +10:30 with a half-hour DST (+11), and two DST zones.
ZONES = ["Asia/Kathmandu", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Berlin", "America/New_York", "UTC"]
WORK_HOURS = SendWindow.parse(["mon", "tue", "wed", "thu", "fri"], "09:00-17:00")


def walked(window: SendWindow, zone: str, lo: datetime, hi: datetime) -> datetime | None:
    """The reference: every whole minute (and ``lo`` itself) from ``lo`` to ``hi``, in order."""
    tz = ZoneInfo(zone)
    moment = lo
    while moment < hi:
        local = moment.astimezone(tz)
        clock = local.time()
        if (
            local.weekday() in window.days
            and window.start <= clock
            and (window.end is None or clock < window.end)
        ):
            return moment
        moment = (moment + timedelta(minutes=1)).replace(second=0, microsecond=0)
    return None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestParams:
    def test_days_by_short_or_full_name_in_any_case(self):
        assert parse_days(["Mon", "tuesday", " FRI "]) == {0, 1, 4}

    @pytest.mark.parametrize("value", [[], ["someday"], "mon", [1], None])
    def test_a_bad_day_list_is_refused_naming_it(self, value):
        with pytest.raises(WindowError, match="send_days"):
            parse_days(value)

    def test_hours_start_included_end_excluded_and_24_00_the_days_end(self):
        assert parse_hours("09:00-17:30") == (time(9), time(17, 30))
        assert parse_hours("00:00-24:00") == (time(0), None)

    @pytest.mark.parametrize("value", ["17:00-09:00", "09:00-09:00", "9-17", "24:00-24:00", "09:00-24:30", 9])
    def test_a_bad_span_is_refused_naming_it(self, value):
        with pytest.raises(WindowError, match="send_hours"):
            parse_hours(value)

    def test_the_whole_week_and_day_is_always_and_names_no_zone(self):
        window = SendWindow.parse(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "00:00-24:00")
        assert window.always and window.days == ALL_DAYS
        assert window.earliest("Not/A_Zone", utc(2026, 12, 7, 3), utc(2026, 12, 7, 4)) == utc(2026, 12, 7, 3)

    def test_zone_names_are_the_tz_databases_only(self):
        assert {"Europe/Berlin", "Asia/Kathmandu", "UTC"} <= known_zones()
        assert "../../etc/passwd" not in known_zones() and "europe/berlin" not in known_zones()


class TestEarliest:
    @pytest.mark.parametrize(
        ("zone", "opens"),
        [
            ("Asia/Kathmandu", utc(2026, 12, 7, 3, 15)),  # 09:00 +05:45
            ("Asia/Kolkata", utc(2026, 12, 7, 3, 30)),  # 09:00 +05:30
            ("Australia/Lord_Howe", utc(2026, 12, 6, 22)),  # 09:00 +11:00 (summer there)
            ("Europe/Berlin", utc(2026, 12, 7, 8)),
            ("America/New_York", utc(2026, 12, 7, 14)),
        ],
    )
    def test_a_monday_morning_in_each_zone(self, zone, opens):
        hour = opens.replace(minute=0)
        assert WORK_HOURS.earliest(zone, hour, hour + HOUR) == opens
        assert WORK_HOURS.earliest(zone, hour - HOUR, hour) is None  # 08:xx local: not yet

    def test_europe_springs_forward_inside_a_window_hour(self):
        # 2027-03-28 01:00 UTC: Berlin goes from 02:00 CET to 03:00 CEST; 02:00-04:00 local opens then.
        window = SendWindow.parse(["sun"], "02:00-04:00")
        assert window.earliest("Europe/Berlin", utc(2027, 3, 28, 0, 30), utc(2027, 3, 28, 1, 30)) == utc(
            2027, 3, 28, 1
        )

    def test_new_york_falls_back_and_the_repeated_hour_is_inside_twice(self):
        # 2027-11-07 06:00 UTC: 02:00 EDT back to 01:00 EST; 01:00-02:00 local is 05:00-07:00 UTC.
        window = SendWindow.parse(["sun"], "01:00-02:00")
        assert window.earliest("America/New_York", utc(2027, 11, 7, 5), utc(2027, 11, 7, 6)) == utc(
            2027, 11, 7, 5
        )
        assert window.earliest("America/New_York", utc(2027, 11, 7, 6), utc(2027, 11, 7, 7)) == utc(
            2027, 11, 7, 6
        )
        assert window.earliest("America/New_York", utc(2027, 11, 7, 7), utc(2027, 11, 7, 8)) is None

    def test_lord_howe_moves_its_clock_by_half_an_hour(self):
        # 2027-04-03 15:00 UTC (Sunday 02:00 there): Lord Howe goes from +11 back to 01:30 +10:30,
        # so 01:30-02:00 local happens twice: 14:30-15:00 and 15:00-15:30 UTC.
        window = SendWindow.parse(["sun"], "01:30-02:00")
        lord_howe = "Australia/Lord_Howe"
        assert window.earliest(lord_howe, utc(2027, 4, 3, 14), utc(2027, 4, 3, 15)) == utc(2027, 4, 3, 14, 30)
        assert window.earliest(lord_howe, utc(2027, 4, 3, 15), utc(2027, 4, 3, 16)) == utc(2027, 4, 3, 15)
        assert window.earliest(lord_howe, utc(2027, 4, 3, 15, 30), utc(2027, 4, 3, 16)) is None

    @settings(max_examples=300, deadline=None)
    @given(
        zone=st.sampled_from(ZONES),
        days=st.sets(st.integers(0, 6), min_size=1),
        span=st.tuples(st.integers(0, 24 * 60 - 1), st.integers(1, 24 * 60)).filter(lambda s: s[0] < s[1]),
        # Hours across 2027, the DST weeks of Europe, the US and Lord Howe among them.
        hour=st.integers(0, 365 * 24),
        offset_minutes=st.integers(0, 59),
    )
    def test_the_answer_is_the_first_minute_a_walk_finds(self, zone, days, span, hour, offset_minutes):
        start, end = span
        window = SendWindow(
            frozenset(days),
            time(start // 60, start % 60),
            None if end == 24 * 60 else time(end // 60, end % 60),
        )
        slot = utc(2027, 1, 1) + timedelta(hours=hour)
        lo = slot + timedelta(minutes=offset_minutes, seconds=offset_minutes % 7)
        assert window.earliest(zone, lo, slot + HOUR) == walked(window, zone, lo, slot + HOUR)
