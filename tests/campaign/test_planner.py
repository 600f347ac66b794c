"""Unit tests of the batch planner: ``PlanCaps``, ``BatchPacker``, ``plan_batches``, and the
re-placement of whole batches on a resume (``SlotCalendar.first_slot_with_room``,
``place_whole_batches``).

First the article's numbers (5,000 recipients on the 30k plan: 1,500 a day over
4 days in batches of 150; 1,000 recipients in 4 bulk requests), then worked
examples of each cap and of hours other campaigns already booked. Then property
tests (Hypothesis): over generated recipient counts, caps, start times and
booked slots, the planner must give exactly the plan of ``reference_plan``, a
packer written here to be obviously right rather than fast. Last, whole-batch
re-placement, by example and against ``reference_placement``.

Every instant is a fixed one: no test reads the clock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.campaign.planner import (
    API_MAX_RECIPIENTS_PER_REQUEST,
    Batch,
    BatchPacker,
    PlanCaps,
    SlotCalendar,
    place_whole_batches,
)
from tests.helpers import plan_batches

HUGE_CAP = 10**9
ONE_HOUR = timedelta(hours=1)

Layout = list[tuple[int, datetime, int]]


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A UTC instant in December 2026."""
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def hour_slot(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def layout(batches: Sequence[Batch]) -> Layout:
    return [(b.batch_number, b.send_at, b.recipient_count) for b in batches]


def per_hour(batches: Sequence[Batch]) -> Counter[datetime]:
    totals: Counter[datetime] = Counter()
    for batch in batches:
        totals[hour_slot(batch.send_at)] += batch.recipient_count
    return totals


def per_day(batches: Sequence[Batch]) -> Counter[date]:
    totals: Counter[date] = Counter()
    for batch in batches:
        totals[batch.send_at.astimezone(UTC).date()] += batch.recipient_count
    return totals


class TestArticleNumbers:
    """The figures in the bulk-sending article are requirements."""

    @pytest.mark.parametrize("max_batch_size", [150, API_MAX_RECIPIENTS_PER_REQUEST])
    @pytest.mark.parametrize("start_at", [at(1, 0), at(1, 14)], ids=["00:00Z", "14:00Z"])
    def test_5000_recipients_on_the_30k_plan_go_in_34_batches_over_4_utc_days(self, start_at, max_batch_size):
        caps = PlanCaps(max_batch_size=max_batch_size, hourly_cap=150, daily_cap=1500)

        batches = plan_batches(5000, caps, start_at)

        assert len(batches) == 34
        assert [b.recipient_count for b in batches] == [150] * 33 + [50]
        assert per_day(batches) == {
            date(2026, 12, 1): 1500,
            date(2026, 12, 2): 1500,
            date(2026, 12, 3): 1500,
            date(2026, 12, 4): 500,
        }

    @pytest.mark.parametrize(
        ("start_at", "first_day_hours"),
        [(at(1, 0), range(0, 10)), (at(1, 14), range(14, 24))],
        ids=["00:00Z", "14:00Z"],
    )
    def test_5000_recipients_are_sent_one_batch_per_clock_hour(self, start_at, first_day_hours):
        caps = PlanCaps(max_batch_size=150, hourly_cap=150, daily_cap=1500)

        batches = plan_batches(5000, caps, start_at)

        expected = (
            [at(1, h) for h in first_day_hours]
            + [at(2, h) for h in range(10)]
            + [at(3, h) for h in range(10)]
            + [at(4, h) for h in range(4)]
        )
        assert [b.send_at for b in batches] == expected
        assert [b.batch_number for b in batches] == list(range(1, 35))

    def test_1000_recipients_at_max_batch_size_250_go_in_4_requests(self):
        caps = PlanCaps(max_batch_size=250, hourly_cap=HUGE_CAP, daily_cap=HUGE_CAP)

        batches = plan_batches(1000, caps, at(1, 9))

        assert layout(batches) == [(n, at(1, 9), 250) for n in (1, 2, 3, 4)]


class TestPlanExamples:
    """Small plans worked out by hand, one per rule of the packing."""

    def test_mid_hour_start_sends_the_first_slot_at_start_at_and_the_next_on_the_hour(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500)

        batches = plan_batches(300, caps, at(1, 14, 37, 12))

        assert layout(batches) == [(1, at(1, 14, 37, 12), 150), (2, at(1, 15), 150)]

    def test_max_batch_size_below_hourly_cap_splits_an_hour_into_several_requests(self):
        caps = PlanCaps(max_batch_size=50, hourly_cap=150, daily_cap=1500)

        batches = plan_batches(200, caps, at(1, 0))

        assert layout(batches) == [(1, at(1, 0), 50), (2, at(1, 0), 50), (3, at(1, 0), 50), (4, at(1, 1), 50)]

    def test_daily_cap_not_a_multiple_of_hourly_cap_leaves_a_short_last_hour(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=400)

        batches = plan_batches(1000, caps, at(1, 0))

        assert layout(batches) == [
            (1, at(1, 0), 150),
            (2, at(1, 1), 150),
            (3, at(1, 2), 100),
            (4, at(2, 0), 150),
            (5, at(2, 1), 150),
            (6, at(2, 2), 100),
            (7, at(3, 0), 150),
            (8, at(3, 1), 50),
        ]

    def test_hourly_cap_above_daily_cap_sends_one_batch_a_day(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=500, daily_cap=200)

        batches = plan_batches(500, caps, at(1, 14, 37, 12))

        assert layout(batches) == [(1, at(1, 14, 37, 12), 200), (2, at(2, 0), 200), (3, at(3, 0), 100)]

    def test_start_at_23h_rolls_into_the_next_utc_day_with_a_fresh_daily_cap(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=200)

        batches = plan_batches(500, caps, at(1, 23))

        assert layout(batches) == [
            (1, at(1, 23), 150),
            (2, at(2, 0), 150),
            (3, at(2, 1), 50),
            (4, at(3, 0), 150),
        ]

    def test_days_are_utc_days_even_when_start_at_has_another_offset(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=200)
        # 00:30 at UTC+1 is 23:30 UTC the day before: the first UTC day ends after 30 minutes.
        start_at = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))

        batches = plan_batches(400, caps, start_at)

        assert layout(batches) == [
            (1, datetime(2026, 11, 30, 23, 30, tzinfo=UTC), 150),
            (2, at(1, 0), 150),
            (3, at(1, 1), 50),
            (4, at(2, 0), 50),
        ]
        assert all(b.send_at.utcoffset() == timedelta(0) for b in batches)

    def test_zero_recipients_plan_no_batches(self):
        caps = PlanCaps(max_batch_size=150, hourly_cap=150, daily_cap=1500)

        assert plan_batches(0, caps, at(1, 0)) == []

        packer = BatchPacker(caps, at(1, 0))
        assert packer.finish() is None
        assert packer.batches == []

    def test_naive_start_at_is_refused(self):
        caps = PlanCaps(max_batch_size=150, hourly_cap=150, daily_cap=1500)

        with pytest.raises(ValueError, match="timezone-aware"):
            BatchPacker(caps, datetime(2026, 12, 1, 9, 0))
        with pytest.raises(ValueError, match="timezone-aware"):
            plan_batches(10, caps, datetime(2026, 12, 1, 9, 0))


class TestPlanCaps:
    FIELDS = ("max_batch_size", "hourly_cap", "daily_cap")
    VALID = {"max_batch_size": 150, "hourly_cap": 150, "daily_cap": 1500}

    @pytest.mark.parametrize("field", FIELDS)
    @pytest.mark.parametrize("value", [0, -1, 1.5, 150.0, "150", None])
    def test_rejects_a_cap_that_is_not_a_positive_integer_naming_the_field(self, field, value):
        with pytest.raises(ValueError, match=f"^{field} must be a positive integer"):
            PlanCaps(**{**self.VALID, field: value})

    @pytest.mark.parametrize("field", FIELDS)
    def test_rejects_a_boolean_cap(self, field):
        with pytest.raises(ValueError, match=field):
            PlanCaps(**{**self.VALID, field: True})

    def test_rejects_max_batch_size_above_the_api_limit_of_1000(self):
        with pytest.raises(ValueError, match="^max_batch_size 1001 exceeds the API limit of 1000"):
            PlanCaps(max_batch_size=1001, hourly_cap=150, daily_cap=1500)

    def test_accepts_the_api_limit_and_the_smallest_caps(self):
        assert PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500).max_batch_size == 1000
        assert PlanCaps(max_batch_size=1, hourly_cap=1, daily_cap=1) == PlanCaps(1, 1, 1)


class TestOccupiedSlots:
    """The caps are the account's: what other campaigns scheduled counts against them."""

    CAPS = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500)

    def test_a_partly_used_hour_takes_only_what_is_left(self):
        batches = plan_batches(200, self.CAPS, at(1, 9), {at(1, 9): 100, at(1, 10): 120})

        assert layout(batches) == [(1, at(1, 9), 50), (2, at(1, 10), 30), (3, at(1, 11), 120)]

    def test_entries_within_one_hour_add_up(self):
        batches = plan_batches(100, self.CAPS, at(1, 9), {at(1, 9): 60, at(1, 9, 30): 60})

        assert layout(batches) == [(1, at(1, 9), 30), (2, at(1, 10), 70)]

    def test_a_day_already_full_is_skipped_whole(self):
        occupied = {at(1, hour): 150 for hour in range(10)}

        batches = plan_batches(10, self.CAPS, at(1, 9), occupied)

        assert layout(batches) == [(1, at(2, 0), 10)]

    def test_the_daily_cap_counts_hours_before_start_at(self):
        batches = plan_batches(300, self.CAPS, at(1, 12), {at(1, hour): 150 for hour in range(9)})

        assert per_day(batches) == {date(2026, 12, 1): 150, date(2026, 12, 2): 150}

    def test_an_overfull_hour_is_skipped_not_made_worse(self):
        batches = plan_batches(10, self.CAPS, at(1, 9), {at(1, 9): 400})

        assert layout(batches) == [(1, at(1, 10), 10)]

    def test_a_partly_used_day_leaves_only_its_remainder(self):
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=400)

        batches = plan_batches(300, caps, at(1, 9), {at(1, 3): 300})

        assert layout(batches) == [(1, at(1, 9), 100), (2, at(2, 0), 150), (3, at(2, 1), 50)]

    def test_what_was_booked_earlier_in_start_at_s_hour_counts(self):
        batches = plan_batches(100, self.CAPS, at(1, 9, 30), {at(1, 9, 5): 100})

        assert layout(batches) == [(1, at(1, 9, 30), 50), (2, at(1, 10), 50)]


# Property tests: the planner against a reference packer.


def booked(occupied: Mapping[datetime, int] | None) -> tuple[Counter[datetime], Counter[date]]:
    """What other campaigns booked, per clock hour and per UTC day."""
    hours: Counter[datetime] = Counter()
    days: Counter[date] = Counter()
    for moment, count in (occupied or {}).items():
        hours[hour_slot(moment)] += count
        days[hour_slot(moment).date()] += count
    return hours, days


def reference_plan(
    count: int, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> Layout:
    """The plan worked out slowly and obviously, to hold the planner to.

    Walk the clock hours from start_at's; put in each hour as many recipients as
    are left and as its hour and its UTC day have room for (what others booked
    counts), and cut them into batches of max_batch_size, sent at the hour's
    start (at start_at itself in start_at's hour).
    """
    start = start_at.astimezone(UTC)
    used_in_hour, used_in_day = booked(occupied)
    plan: Layout = []
    hour, left = hour_slot(start), count
    while left:
        room = min(caps.hourly_cap - used_in_hour[hour], caps.daily_cap - used_in_day[hour.date()])
        placed = max(0, min(left, room))
        used_in_hour[hour] += placed
        used_in_day[hour.date()] += placed
        left -= placed
        for done in range(0, placed, caps.max_batch_size):
            plan.append((len(plan) + 1, max(hour, start), min(caps.max_batch_size, placed - done)))
        hour += ONE_HOUR
    return plan


def reference_placement(
    sizes: Sequence[int], caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> list[datetime]:
    """Whole batches, in turn, each into the first clock hour from start_at's where the hour and
    its UTC day both still have room for all of it (at start_at itself in start_at's hour)."""
    start = start_at.astimezone(UTC)
    used_in_hour, used_in_day = booked(occupied)
    placed = []
    for size in sizes:
        hour = hour_slot(start)
        while used_in_hour[hour] + size > caps.hourly_cap or used_in_day[hour.date()] + size > caps.daily_cap:
            hour += ONE_HOUR
        used_in_hour[hour] += size
        used_in_day[hour.date()] += size
        placed.append(max(hour, start))
    return placed


def check_invariants(
    batches: Sequence[Batch],
    count: int,
    caps: PlanCaps,
    start_at: datetime,
    occupied: Mapping[datetime, int] | None = None,
) -> None:
    """What every plan must keep, whatever the reference says."""
    assert [b.batch_number for b in batches] == list(range(1, len(batches) + 1))
    assert sum(b.recipient_count for b in batches) == count
    assert all(1 <= b.recipient_count <= caps.max_batch_size for b in batches)
    # The caps are the account's: what others booked counts in every hour and day this plan uses.
    booked_hours, booked_days = booked(occupied)
    for hour, placed in per_hour(batches).items():
        assert placed + booked_hours[hour] <= caps.hourly_cap, (hour, placed, booked_hours[hour])
    for day, placed in per_day(batches).items():
        assert placed + booked_days[day] <= caps.daily_cap, (day, placed, booked_days[day])
    send_ats = [b.send_at for b in batches]
    assert send_ats == sorted(send_ats)
    assert all(s.utcoffset() == timedelta(0) for s in send_ats)
    assert all(s == start_at or (s > start_at and s == hour_slot(s)) for s in send_ats), send_ats
    for batch, following in itertools.pairwise(batches):
        if hour_slot(following.send_at) == hour_slot(batch.send_at):
            # One send_at per hour, and only the hour's last batch may be short.
            assert following.send_at == batch.send_at
            assert batch.recipient_count == caps.max_batch_size, (batch, following)


# Generated inputs. Examples are drawn from a fixed seed (derandomize) so that a CI
# run checks what a local run checked; no example database is written to disk.


def checked(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


OFFSETS = (
    UTC,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=5, minutes=45)),
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
)


def near(*values: int) -> list[int]:
    """Each finite cap and its neighbours: where off-by-one mistakes live."""
    return sorted({n for v in values if v < HUGE_CAP for n in (v - 1, v, v + 1) if n >= 1})


@st.composite
def instants(draw) -> datetime:
    """Any instant (often on the hour, often in the last hours of a UTC day), in one of several offsets."""
    day = draw(
        st.dates(date(2026, 1, 1), date(2028, 12, 31))
        | st.sampled_from([date(2026, 12, 31), date(2028, 2, 28), date(2028, 2, 29)])
    )
    hour = draw(st.integers(0, 23) | st.sampled_from([0, 22, 23]))
    minute = draw(st.just(0) | st.integers(0, 59))
    second = draw(st.just(0) | st.integers(0, 59))
    microsecond = draw(st.just(0) | st.integers(0, 999_999))
    utc = datetime(day.year, day.month, day.day, hour, minute, second, microsecond, tzinfo=UTC)
    return utc.astimezone(draw(st.sampled_from(OFFSETS)))


@st.composite
def plan_caps(draw) -> PlanCaps:
    """Caps of every shape: tiny, huge, hourly above daily, daily a multiple of hourly or not."""
    hourly = draw(st.integers(1, 40) | st.integers(41, 400) | st.integers(401, 2000) | st.just(HUGE_CAP))
    daily_choices = st.integers(1, 200) | st.integers(201, 10_000) | st.just(HUGE_CAP)
    if hourly < HUGE_CAP:
        daily_choices |= st.integers(1, 24).map(lambda hours: hours * hourly)
        daily_choices |= st.integers(2, 24).map(lambda hours: hours * hourly + 1)
    daily = draw(daily_choices)
    max_batch_size = draw(
        st.integers(1, 40)
        | st.integers(41, API_MAX_RECIPIENTS_PER_REQUEST)
        | st.sampled_from([API_MAX_RECIPIENTS_PER_REQUEST, *near(hourly, daily)[:3]])
    )
    return PlanCaps(min(max_batch_size, API_MAX_RECIPIENTS_PER_REQUEST), hourly, daily)


@st.composite
def occupied_slots(draw, caps: PlanCaps, start_at: datetime) -> dict[datetime, int]:
    """What other campaigns booked, mostly near start_at but from the day before to three
    days after: hours and days partly used, exactly full or overfull, several entries in one
    hour, any offset; and sometimes nothing."""
    if draw(st.integers(0, 3)) == 3:
        return {}
    first_hour = hour_slot(start_at)

    def moment(hours: int, minute: int, offset: timezone) -> datetime:
        return (first_hour + timedelta(hours=hours, minutes=minute)).astimezone(offset)

    moments = st.builds(
        moment,
        st.integers(-2, 4) | st.integers(-30, 72),
        st.just(0) | st.integers(0, 59),
        st.sampled_from(OFFSETS),
    )
    part_of_an_hour = max(1, min(caps.hourly_cap, 5000) - 1)
    counts = (
        st.integers(1, part_of_an_hour)
        | st.integers(1, part_of_an_hour)
        | st.integers(1, min(2 * caps.daily_cap, 20_000))
        | st.sampled_from(near(caps.hourly_cap, caps.daily_cap) or [1])
    )
    return draw(st.dictionaries(moments, counts, min_size=1, max_size=12))


class Plan(NamedTuple):
    count: int
    caps: PlanCaps
    start_at: datetime
    occupied: dict[datetime, int]


@st.composite
def plans(draw, max_count: int = 3000) -> Plan:
    caps = draw(plan_caps())
    start_at = draw(instants())
    occupied = draw(occupied_slots(caps, start_at))
    # At most 20 days' worth, so that a one-a-day plan stays quick.
    limit = min(max_count, 20 * caps.daily_cap)
    edges = [n for n in near(caps.max_batch_size, caps.hourly_cap, caps.daily_cap) if n <= limit]
    count = draw(
        st.integers(min(limit, caps.daily_cap), limit) | st.integers(0, limit) | st.sampled_from(edges or [0])
    )
    return Plan(count, caps, start_at, occupied)


class Placement(NamedTuple):
    sizes: list[int]
    caps: PlanCaps
    start_at: datetime
    occupied: dict[datetime, int]


@st.composite
def placements(draw) -> Placement:
    caps = draw(plan_caps())
    start_at = draw(instants())
    occupied = draw(occupied_slots(caps, start_at))
    biggest = min(caps.max_batch_size, caps.hourly_cap, caps.daily_cap)
    sizes = draw(st.lists(st.integers(1, biggest) | st.just(biggest), min_size=1, max_size=15))
    return Placement(sizes, caps, start_at, occupied)


class TestPlanAgainstReference:
    """Over generated plans, the planner's batches are the reference's, number for number."""

    @checked(200)
    @given(plans())
    def test_plan_batches_is_the_reference_plan(self, plan):
        assert layout(plan_batches(*plan)) == reference_plan(*plan)

    @checked(60)
    @given(plans())
    def test_every_plan_places_each_recipient_once_within_every_cap(self, plan):
        check_invariants(plan_batches(*plan), *plan)

    @checked(60)
    @given(plans(), st.data())
    def test_streaming_chunks_through_copies_gives_the_same_plan(self, plan, data):
        """As the staging writer streams a list: each chunk is placed on a copy of the packer,
        kept once written; a copy that was not kept leaves no trace."""
        cuts = sorted(data.draw(st.lists(st.integers(0, plan.count), max_size=6), label="cuts"))
        packer = BatchPacker(plan.caps, plan.start_at, plan.occupied)
        runs: list[tuple[int, int]] = []
        for chunk in (b - a for a, b in itertools.pairwise([0, *cuts, plan.count])):
            if data.draw(st.booleans(), label="a dropped try first"):
                packer.copy().take(chunk)
            attempt = packer.copy()
            chunk_runs = attempt.take(chunk)
            assert sum(placed for _, placed in chunk_runs) == chunk
            runs += chunk_runs
            packer = attempt
        packer.finish()

        assert layout(packer.batches) == reference_plan(*plan)
        assert [number for number, _ in runs] == sorted(number for number, _ in runs)
        per_batch: Counter[int] = Counter()
        for number, placed in runs:
            per_batch[number] += placed
        assert per_batch == {b.batch_number: b.recipient_count for b in packer.batches}

    @checked(40)
    @given(plans(max_count=300))
    def test_assigning_one_recipient_at_a_time_gives_the_same_plan(self, plan):
        packer = BatchPacker(plan.caps, plan.start_at, plan.occupied)
        numbers: list[int] = []
        closed: list[Batch] = []
        for _ in range(plan.count):
            number, just_closed = packer.assign()
            if just_closed is not None:
                # A batch is closed by the first recipient of the next one.
                assert just_closed.batch_number == number - 1
                closed.append(just_closed)
            assert packer.batches == closed
            numbers.append(number)
        last = packer.finish()

        assert (last is None) == (plan.count == 0)
        closed += [last] if last else []
        expected = reference_plan(*plan)
        assert layout(closed) == expected
        assert numbers == sorted(numbers)
        assert Counter(numbers) == {number: count for number, _, count in expected}

    def test_the_reference_gives_the_worked_examples(self):
        """The reference is checked by hand too: it gives the layouts worked out above."""
        assert reference_plan(300, PlanCaps(1000, 150, 1500), at(1, 14, 37, 12)) == [
            (1, at(1, 14, 37, 12), 150),
            (2, at(1, 15), 150),
        ]
        assert reference_plan(200, PlanCaps(50, 150, 1500), at(1, 0)) == [
            (1, at(1, 0), 50),
            (2, at(1, 0), 50),
            (3, at(1, 0), 50),
            (4, at(1, 1), 50),
        ]
        assert reference_plan(500, PlanCaps(1000, 500, 200), at(1, 14, 37, 12)) == [
            (1, at(1, 14, 37, 12), 200),
            (2, at(2, 0), 200),
            (3, at(3, 0), 100),
        ]
        assert reference_plan(200, PlanCaps(1000, 150, 1500), at(1, 9), {at(1, 9): 100, at(1, 10): 120}) == [
            (1, at(1, 9), 50),
            (2, at(1, 10), 30),
            (3, at(1, 11), 120),
        ]

    def test_an_under_filled_early_hour_keeps_every_invariant_but_is_not_the_reference_plan(self):
        """Why the comparison is exact: 100, 150, 150 against 150 an hour and 400 a day breaks
        no cap, places everyone once, and is short in an hour only on a day that reached its
        cap. Only the reference says the first hour should have had 150."""
        caps = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=400)
        under_filled = [Batch(1, at(1, 0), 100), Batch(2, at(1, 1), 150), Batch(3, at(1, 2), 150)]

        check_invariants(under_filled, 400, caps, at(1, 0))
        assert per_day(under_filled) == {date(2026, 12, 1): caps.daily_cap}
        assert layout(under_filled) != reference_plan(400, caps, at(1, 0))
        assert reference_plan(400, caps, at(1, 0)) == [
            (1, at(1, 0), 150),
            (2, at(1, 1), 150),
            (3, at(1, 2), 100),
        ]
        assert layout(plan_batches(400, caps, at(1, 0))) == reference_plan(400, caps, at(1, 0))


class TestFirstSlotWithRoom:
    """The first clock hour from a slot where the hour and its UTC day have room for ``needed``."""

    CAPS = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500)
    SHORT_DAY = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=400)

    def test_an_empty_hour_is_its_own_first_slot_up_to_the_hourly_cap(self):
        assert SlotCalendar(self.CAPS).first_slot_with_room(at(1, 9), 150) == at(1, 9)

    def test_a_partly_used_hour_holds_what_is_left_and_no_more(self):
        calendar = SlotCalendar(self.CAPS, {at(1, 9, 20): 60, at(1, 9, 45): 40})

        assert calendar.first_slot_with_room(at(1, 9), 50) == at(1, 9)
        assert calendar.first_slot_with_room(at(1, 9), 51) == at(1, 10)

    def test_hours_without_room_for_all_needed_are_passed_one_by_one(self):
        calendar = SlotCalendar(self.CAPS, {at(1, 9): 100, at(1, 10): 120, at(1, 11): 150, at(1, 12): 91})

        assert calendar.first_slot_with_room(at(1, 9), 50) == at(1, 9)
        assert calendar.first_slot_with_room(at(1, 9), 51) == at(1, 12)
        assert calendar.first_slot_with_room(at(1, 9), 60) == at(1, 13)

    def test_a_day_without_room_for_all_needed_is_skipped_to_the_next_utc_midnight(self):
        calendar = SlotCalendar(self.SHORT_DAY, {at(1, 0): 150, at(1, 5): 150})

        # The day has 100 left; 05:00 is full, so exactly 100 still fit at 06:00.
        assert calendar.first_slot_with_room(at(1, 5), 100) == at(1, 6)
        assert calendar.first_slot_with_room(at(1, 5), 101) == at(2, 0)
        assert calendar.first_slot_with_room(at(1, 4), 100) == at(1, 4)

    def test_the_last_hour_of_a_day_rolls_over_into_the_next_day_month_and_year(self):
        new_years_eve = datetime(2026, 12, 31, 23, tzinfo=UTC)
        calendar = SlotCalendar(self.CAPS, {at(1, 23): 100, new_years_eve: 100})

        assert calendar.first_slot_with_room(at(1, 23), 60) == at(2, 0)
        assert calendar.first_slot_with_room(new_years_eve, 60) == datetime(2027, 1, 1, tzinfo=UTC)

    def test_overfull_hours_and_days_are_skipped(self):
        assert SlotCalendar(self.CAPS, {at(1, 9): 400}).first_slot_with_room(at(1, 9)) == at(1, 10)
        assert SlotCalendar(self.SHORT_DAY, {at(1, 3): 900}).first_slot_with_room(at(1, 9)) == at(2, 0)

    def test_booked_instants_in_other_offsets_count_in_their_utc_hour(self):
        # 14:30 at UTC+05:30 is 09:00 UTC.
        calendar = SlotCalendar(
            self.CAPS, {datetime(2026, 12, 1, 14, 30, tzinfo=timezone(timedelta(hours=5.5))): 150}
        )

        assert calendar.first_slot_with_room(at(1, 9)) == at(1, 10)

    def test_finding_a_slot_books_nothing(self):
        calendar = SlotCalendar(self.CAPS, {at(1, 9): 100})

        assert calendar.first_slot_with_room(at(1, 9), 50) == at(1, 9)
        assert calendar.first_slot_with_room(at(1, 9), 50) == at(1, 9)
        assert calendar.room(at(1, 9)) == 50

    @pytest.mark.parametrize(
        ("caps", "needed"),
        [(PlanCaps(1000, 150, 1500), 151), (PlanCaps(1000, 500, 200), 201)],
        ids=["over-hourly", "over-daily"],
    )
    def test_more_than_one_slot_can_ever_hold_is_refused_naming_the_caps(self, caps, needed):
        message = (
            f"^{needed} recipients can never fit one slot under hourly_cap {caps.hourly_cap} "
            f"and daily_cap {caps.daily_cap}$"
        )
        with pytest.raises(ValueError, match=message):
            SlotCalendar(caps).first_slot_with_room(at(1, 9), needed)
        assert SlotCalendar(caps).first_slot_with_room(at(1, 9), needed - 1) == at(1, 9)


class TestPlaceWholeBatches:
    """A resume re-places batches whose slot has passed: each keeps its recipients, whole."""

    CAPS = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500)
    SHORT_DAY = PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=400)

    def test_no_batches_place_nothing(self):
        assert place_whole_batches([], self.CAPS, at(1, 9)) == []

    def test_the_first_slot_is_start_at_itself_and_later_ones_are_on_the_hour(self):
        placed = place_whole_batches([150, 150, 100], self.CAPS, at(1, 9, 37, 12))

        assert placed == [at(1, 9, 37, 12), at(1, 10), at(1, 11)]
        assert all(s.utcoffset() == timedelta(0) for s in placed)

    def test_a_batch_goes_to_the_first_hour_with_room_for_all_of_it(self):
        occupied = {at(1, 9): 100}

        assert place_whole_batches([50], self.CAPS, at(1, 9, 30), occupied) == [at(1, 9, 30)]
        assert place_whole_batches([60], self.CAPS, at(1, 9, 30), occupied) == [at(1, 10)]

    def test_batches_are_placed_in_turn_each_counting_the_ones_before(self):
        placed = place_whole_batches([100, 100, 100], self.CAPS, at(1, 9))

        assert placed == [at(1, 9), at(1, 10), at(1, 11)]

    def test_a_later_smaller_batch_takes_an_earlier_gap(self):
        """First fit, not batch order: the third batch fits where the second did not."""
        placed = place_whole_batches([100, 100, 50], self.CAPS, at(1, 9))

        assert placed == [at(1, 9), at(1, 10), at(1, 9)]

    def test_a_whole_batch_that_the_rest_of_the_day_cannot_hold_skips_to_the_next_day(self):
        placed = place_whole_batches([150, 150, 150, 100], self.SHORT_DAY, at(1, 9))

        # After 300, the day has room for 100: not for the third batch, but for the fourth.
        assert placed == [at(1, 9), at(1, 10), at(2, 0), at(1, 11)]

    def test_a_day_booked_by_others_sends_the_batch_to_the_next_day_even_from_a_mid_hour_start(self):
        occupied = {at(1, 2): 150, at(1, 3): 150}

        assert place_whole_batches([101], self.SHORT_DAY, at(1, 22, 15), occupied) == [at(2, 0)]
        assert place_whole_batches([100], self.SHORT_DAY, at(1, 22, 15), occupied) == [at(1, 22, 15)]

    def test_start_at_in_another_offset_is_placed_in_utc(self):
        start_at = datetime(2026, 12, 1, 15, 7, tzinfo=timezone(timedelta(hours=5, minutes=30)))  # 09:37 UTC

        placed = place_whole_batches([150, 150], self.CAPS, start_at)

        assert placed == [at(1, 9, 37), at(1, 10)]
        assert all(s.utcoffset() == timedelta(0) for s in placed)

    @pytest.mark.parametrize(
        ("caps", "size"),
        [(PlanCaps(1000, 150, 1500), 151), (PlanCaps(1000, 500, 200), 201)],
        ids=["over-hourly", "over-daily"],
    )
    def test_a_batch_no_slot_can_ever_hold_is_refused_naming_it_and_the_caps(self, caps, size):
        message = (
            f"^{size} recipients can never fit one slot under hourly_cap {caps.hourly_cap} "
            f"and daily_cap {caps.daily_cap}$"
        )
        with pytest.raises(ValueError, match=message):
            place_whole_batches([100, size, 100], caps, at(1, 9))

    def test_naive_start_at_is_refused(self):
        with pytest.raises(ValueError, match="timezone-aware"):
            place_whole_batches([10], self.CAPS, datetime(2026, 12, 1, 9, 0))

    @checked(120)
    @given(placements())
    def test_place_whole_batches_is_the_reference_placement(self, placement):
        assert place_whole_batches(*placement) == reference_placement(*placement)

    @checked(40)
    @given(placements())
    def test_whole_batches_and_what_others_booked_stay_within_every_cap(self, placement):
        sizes, caps, start_at, occupied = placement

        placed = place_whole_batches(sizes, caps, start_at, occupied)

        assert all(s == start_at or (s > start_at and s == hour_slot(s)) for s in placed)
        booked_hours, booked_days = booked(occupied)
        hours: Counter[datetime] = Counter()
        days: Counter[date] = Counter()
        for send_at, size in zip(placed, sizes, strict=True):
            hours[hour_slot(send_at)] += size
            days[hour_slot(send_at).date()] += size
        assert all(n + booked_hours[hour] <= caps.hourly_cap for hour, n in hours.items())
        assert all(n + booked_days[day] <= caps.daily_cap for day, n in days.items())
