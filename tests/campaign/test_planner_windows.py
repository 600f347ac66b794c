"""The planner with recipients' time zones, a sending window and a warm-up ramp.

Worked examples first (Berlin, New York and Tokyo inside 09:00-11:00 local; a ramp of 50 then 100
under a daily cap of 150; whole batches re-placed inside their zone's window), then properties
(Hypothesis) against ``reference_plan``, a packer written here to be obviously right rather than
fast: it walks each hour minute by minute in the recipient's zone and steps one hour at a time.
Over generated zones (half- and three-quarter-hour offsets, Lord Howe's half-hour DST, the days
Europe and the US change their clocks), windows, ramps and caps, and with a second campaign
planned on the first one's calendar, the planner must give the reference's plan, and:
every batch's send_at is inside each of its recipients' windows; the hourly cap, the daily cap
and the ramp hold across both campaigns; no send_at is before start_at; every recipient is in
exactly one batch.

Every instant is a fixed one: no test reads the clock.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.campaign.planner import Batch, BatchPacker, PlanCaps, place_whole_batches
from include.campaign.warmup import Ramp
from include.campaign.windows import SendWindow

HOUR = timedelta(hours=1)
ZONES = (
    "UTC",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
)
NINE_TO_ELEVEN = SendWindow.parse(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "09:00-11:00")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def inside(window: SendWindow, zone: str, moment: datetime) -> bool:
    local = moment.astimezone(ZoneInfo(zone))
    clock = local.time()
    return (
        local.weekday() in window.days
        and window.start <= clock
        and (window.end is None or clock < window.end)
    )


def pack(zones: list[str], caps: PlanCaps, start_at: datetime, window: SendWindow, ramp=None, occupied=None):
    """The planner's plan, one recipient at a time in arrival order; its batches by number, and each
    recipient's batch number."""
    packer = BatchPacker(caps, start_at, occupied, window=window, ramp=ramp)
    members = [packer.take(1, zone)[0][0] for zone in zones]
    packer.finish()
    return sorted(packer.batches, key=lambda b: b.batch_number), members


def reference_plan(zones, caps, start_at, window, ramp=None, occupied=None):
    """The same plan, obviously: per zone (one lane without a window), fill the open batch while
    the hour has room and the batch is not full; else step hour by hour to the first with room and
    a minute inside the window, walking its minutes."""
    hours: Counter[datetime] = Counter()
    days: Counter[date] = Counter()
    for moment, count in (occupied or {}).items():
        hours[moment.replace(minute=0, second=0, microsecond=0)] += count
        days[moment.date()] += count

    def daily(day: date) -> int:
        limit = ramp.limit(day) if ramp else None
        return caps.daily_cap if limit is None else min(limit, caps.daily_cap)

    def room(hour: datetime) -> int:
        return min(caps.hourly_cap - hours[hour], daily(hour.date()) - days[hour.date()])

    @cache
    def first_inside(zone: str | None, hour: datetime) -> datetime | None:
        moment = max(hour, start_at)
        while moment < hour + HOUR:
            if zone is None or inside(window, zone, moment):
                return moment
            moment = (moment + timedelta(minutes=1)).replace(second=0, microsecond=0)
        return None

    lanes: dict[str | None, dict] = {}
    batches: dict[int, list] = {}
    members = []
    for zone in zones:
        key = None if window.always else zone
        lane = lanes.setdefault(
            key, {"hour": start_at.replace(minute=0, second=0, microsecond=0), "open": None}
        )
        if lane["open"] is None or batches[lane["open"]][2] == caps.max_batch_size or room(lane["hour"]) < 1:
            hour = lane["hour"]
            while room(hour) < 1 or first_inside(key, hour) is None:
                hour += HOUR
            lane["hour"], lane["open"] = hour, len(batches) + 1
            batches[lane["open"]] = [lane["open"], first_inside(key, hour), 0, key]
        batches[lane["open"]][2] += 1
        hours[lane["hour"]] += 1
        days[lane["hour"].date()] += 1
        members.append(lane["open"])
    return [Batch(*b) for b in batches.values()], members


def check_invariants(zones, members, batches, caps, start_at, window, ramp=None, occupied=None) -> None:
    by_number = {b.batch_number: b for b in batches}
    assert Counter(members) == {b.batch_number: b.recipient_count for b in batches}  # each in one batch
    for zone, number in zip(zones, members, strict=True):
        assert window.always or inside(window, zone, by_number[number].send_at), (zone, by_number[number])
    assert all(b.send_at >= start_at and 1 <= b.recipient_count <= caps.max_batch_size for b in batches)
    hours, days = Counter(), Counter()
    for moment, count in (occupied or {}).items():
        hours[moment.replace(minute=0, second=0, microsecond=0)] += count
        days[moment.date()] += count
    for b in batches:
        hours[b.send_at.replace(minute=0, second=0, microsecond=0)] += b.recipient_count
        days[b.send_at.date()] += b.recipient_count
    new_hours = {b.send_at.replace(minute=0, second=0, microsecond=0) for b in batches}
    assert all(hours[h] <= caps.hourly_cap for h in new_hours), hours
    for day in {h.date() for h in new_hours}:
        limit = ramp.limit(day) if ramp else None
        assert days[day] <= (caps.daily_cap if limit is None else min(limit, caps.daily_cap)), (
            day,
            days[day],
        )


class TestWorkedExamples:
    MONDAY = utc(2026, 12, 7)

    def test_berlin_new_york_and_tokyo_get_three_groups_of_slots_inside_09_to_11_local(self):
        zones = ["Europe/Berlin", "America/New_York", "Asia/Tokyo"] * 100
        batches, _ = pack(zones, PlanCaps(50, 150, 1500), self.MONDAY, NINE_TO_ELEVEN)

        by_zone: dict[str, list[tuple[str, int]]] = {}
        for b in batches:
            by_zone.setdefault(b.timezone, []).append((f"{b.send_at:%H:%M}", b.recipient_count))
        # 100 a zone, 50 a batch, 150 an hour for the account: each zone's first hour takes both.
        assert by_zone == {
            "Asia/Tokyo": [("00:00", 50), ("00:00", 50)],  # 09:00 in Tokyo
            "Europe/Berlin": [("08:00", 50), ("08:00", 50)],
            "America/New_York": [("14:00", 50), ("14:00", 50)],
        }

    def test_a_full_hour_moves_a_zone_on_to_its_windows_next_hour_then_to_the_next_day(self):
        zones = ["Europe/Berlin"] * 400
        batches, _ = pack(zones, PlanCaps(100, 150, 1500), self.MONDAY, NINE_TO_ELEVEN)

        assert [(f"{b.send_at:%d %H:%M}", b.recipient_count) for b in batches] == [
            ("07 08:00", 100),
            ("07 08:00", 50),
            ("07 09:00", 100),
            ("07 09:00", 50),
            ("08 08:00", 100),  # 11:00 in Berlin closes the window: Tuesday
        ]

    def test_a_ramp_of_50_then_100_spreads_300_recipients_then_the_plans_cap(self):
        ramp = Ramp(date(2026, 12, 7), (50, 100))
        batches, _ = pack(["UTC"] * 300, PlanCaps(50, 150, 150), self.MONDAY, SendWindow(), ramp)

        per_day = Counter()
        for b in batches:
            per_day[b.send_at.date().isoformat()] += b.recipient_count
        assert per_day == {"2026-12-07": 50, "2026-12-08": 100, "2026-12-09": 150}

    def test_days_before_the_ramps_start_are_held_to_its_first_limit(self):
        ramp = Ramp(date(2026, 12, 9), (20, 40))
        assert [ramp.limit(date(2026, 12, d)) for d in (7, 9, 10, 11)] == [20, 20, 40, None]

    def test_the_ramp_counts_every_campaign_of_the_account(self):
        ramp = Ramp(date(2026, 12, 7), (50, 100))
        occupied = {utc(2026, 12, 7, 9): 30}  # another campaign's batch, that day
        batches, _ = pack(["UTC"] * 70, PlanCaps(50, 150, 1500), self.MONDAY, SendWindow(), ramp, occupied)

        assert [(f"{b.send_at:%d %H}", b.recipient_count) for b in batches] == [("07 00", 20), ("08 00", 50)]

    def test_whole_batches_are_re_placed_inside_their_zones_window_and_the_ramp(self):
        ramp = Ramp(date(2026, 12, 7), (100,))
        placed = place_whole_batches(
            [80, 80, 50],
            PlanCaps(100, 150, 1500),
            utc(2026, 12, 7, 8, 30),
            zones=["Asia/Kolkata", "Europe/Berlin", None],
            window=NINE_TO_ELEVEN,
            ramp=ramp,
        )
        # Kolkata's window (03:30-05:30) has passed: Tuesday's. Berlin's is open now; with 80 taken
        # of Monday's ramp of 100, the last batch (any zone) goes on Tuesday too, from midnight.
        assert placed == [utc(2026, 12, 8, 3, 30), utc(2026, 12, 7, 8, 30), utc(2026, 12, 8, 0)]

    def test_without_a_window_zones_change_nothing(self):
        zones = ["Asia/Tokyo", "Europe/Berlin"] * 30
        windowless, _ = pack(zones, PlanCaps(25, 150, 1500), self.MONDAY, SendWindow())
        utc_only = BatchPacker(PlanCaps(25, 150, 1500), self.MONDAY)
        utc_only.take(60)
        utc_only.finish()
        assert windowless == utc_only.batches
        assert {b.timezone for b in windowless} == {None}


class Case(NamedTuple):
    zones: list[str]
    caps: PlanCaps
    start_at: datetime
    window: SendWindow
    ramp: Ramp | None


@st.composite
def windows(draw) -> SendWindow:
    days = frozenset(draw(st.sets(st.integers(0, 6), min_size=1)))
    start = draw(st.integers(0, 24 * 60 - 1) | st.sampled_from([0, 9 * 60, 22 * 60 + 30]))
    end = draw(st.integers(start + 1, 24 * 60) | st.just(24 * 60))
    return SendWindow(
        days, time(start // 60, start % 60), None if end == 24 * 60 else time(end // 60, end % 60)
    )


@st.composite
def cases(draw, max_count: int = 150) -> Case:
    # 2027, around the clock changes: Europe 28 March and 31 October, the US 14 March and
    # 7 November, Lord Howe 3 April and 2 October (UTC dates).
    day = draw(
        st.sampled_from([date(2027, 3, 13), date(2027, 3, 27), date(2027, 4, 2), date(2027, 10, 1)])
        | st.sampled_from([date(2027, 10, 30), date(2027, 11, 6), date(2027, 12, 31)])
        | st.dates(date(2027, 1, 1), date(2027, 12, 31))
    )
    start_at = datetime.combine(day, time(draw(st.integers(0, 23)), draw(st.integers(0, 59))), UTC)
    hourly = draw(st.integers(1, 60))
    daily = draw(st.integers(hourly, 24 * hourly) | st.integers(1, 400))
    caps = PlanCaps(draw(st.integers(1, min(hourly, daily, 50))), hourly, daily)
    ramp = None
    if draw(st.booleans()):
        ramp = Ramp(
            day + timedelta(days=draw(st.integers(-2, 2))),
            tuple(draw(st.lists(st.integers(1, 80), min_size=1, max_size=4))),
        )
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=max_count))
    window = draw(windows() | st.just(SendWindow()))
    return Case(zones, caps, start_at, window, ramp)


CHECKED = settings(max_examples=120, deadline=None)


class TestAgainstTheReference:
    @CHECKED
    @given(cases())
    def test_the_plan_is_the_references_and_keeps_every_rule(self, case):
        batches, members = pack(*case)

        assert (batches, members) == reference_plan(*case)
        check_invariants(case.zones, members, batches, *case[1:])

    @CHECKED
    @given(cases(max_count=80), cases(max_count=80))
    def test_a_second_campaign_planned_on_the_first_ones_calendar_keeps_the_caps_and_the_ramp(
        self, first, second
    ):
        # The second shares the first's caps, start and ramp: the account's.
        second = second._replace(caps=first.caps, start_at=first.start_at, ramp=first.ramp)
        first_batches, _ = pack(*first)
        occupied = Counter()
        for b in first_batches:
            occupied[b.send_at] += b.recipient_count
        batches, members = pack(*second, occupied=occupied)

        assert (batches, members) == reference_plan(*second, occupied=occupied)
        check_invariants(second.zones, members, batches, *second[1:], occupied=occupied)

    @CHECKED
    @given(cases(max_count=60), st.integers(1, 59))
    def test_stretches_of_one_zone_placed_at_once_are_one_at_a_time(self, case, cut):
        packer = BatchPacker(case.caps, case.start_at, window=case.window, ramp=case.ramp)
        members = []
        i = 0
        while i < len(case.zones):  # runs of one zone, as staging places them, cut at random
            j = i
            while j < len(case.zones) and case.zones[j] == case.zones[i] and j - i < cut:
                j += 1
            for number, n in packer.take(j - i, case.zones[i]):
                members += [number] * n
            i = j
        packer.finish()
        assert (sorted(packer.batches, key=lambda b: b.batch_number), members) == pack(*case)

    @CHECKED
    @given(cases(max_count=40))
    def test_next_send_at_is_where_the_next_recipient_goes(self, case):
        packer = BatchPacker(case.caps, case.start_at, window=case.window, ramp=case.ramp)
        for zone in case.zones:
            expected = packer.next_send_at(zone)
            [(number, _)] = packer.take(1, zone)
            opened = {b.batch_number: b for b in packer.batches}
            packer_copy = packer.copy()
            packer_copy.finish()
            assert {b.batch_number: b for b in packer_copy.batches}[number].send_at == expected
            assert opened.get(number) is None  # still open

    def test_a_zone_whose_window_never_opens_on_its_days_is_not_possible(self):
        # Every window has at least a minute on at least one weekday: some hour always opens.
        window = SendWindow(frozenset({6}), time(23, 59), None)
        batches, _ = pack(["Asia/Kathmandu"], PlanCaps(1, 1, 1), utc(2027, 1, 4), window)
        assert batches[0].send_at.astimezone(ZoneInfo("Asia/Kathmandu")).strftime("%a %H:%M") == "Sun 23:59"


@pytest.mark.parametrize("needed", [151, 1501])
def test_a_batch_larger_than_the_caps_can_never_be_placed(needed):
    with pytest.raises(ValueError, match="can never fit"):
        place_whole_batches(
            [needed], PlanCaps(100, 150, 1500), utc(2027, 1, 4), zones=["UTC"], window=NINE_TO_ELEVEN
        )
