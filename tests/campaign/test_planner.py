"""Unit tests of the batch planner: ``PlanCaps``, ``BatchPacker`` and ``plan_batches``.

First the article's numbers (5,000 recipients on the 30k plan: 1,500 a day over
4 days in batches of 150; 1,000 recipients in 4 bulk requests), then worked
examples of each cap, then the packing invariants checked over a grid of
recipient counts, caps and start times.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from include.campaign.planner import (
    API_MAX_RECIPIENTS_PER_REQUEST,
    Batch,
    BatchPacker,
    PlanCaps,
    plan_batches,
)

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
HUGE_CAP = 10**9


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A UTC instant in December 2026."""
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


def hour_slot(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def layout(batches: list[Batch]) -> list[tuple[int, datetime, int]]:
    return [(b.batch_number, b.send_at, b.recipient_count) for b in batches]


def per_hour(batches: list[Batch]) -> Counter[datetime]:
    totals: Counter[datetime] = Counter()
    for batch in batches:
        totals[hour_slot(batch.send_at)] += batch.recipient_count
    return totals


def per_day(batches: list[Batch]) -> Counter[date]:
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


# The invariants below hold for every plan; they are checked over this grid.
COUNTS = (0, 1, 149, 150, 151, 1499, 1500, 1501, 4999, 5000)
CAPS = {
    "article": PlanCaps(max_batch_size=150, hourly_cap=150, daily_cap=1500),
    "batch>hourly": PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500),
    "batch<hourly": PlanCaps(max_batch_size=40, hourly_cap=150, daily_cap=1500),
    "daily-not-multiple": PlanCaps(max_batch_size=100, hourly_cap=150, daily_cap=400),
    "hourly>daily": PlanCaps(max_batch_size=1000, hourly_cap=200, daily_cap=150),
    "all-equal": PlanCaps(max_batch_size=1000, hourly_cap=1000, daily_cap=1000),
    "huge": PlanCaps(max_batch_size=250, hourly_cap=HUGE_CAP, daily_cap=HUGE_CAP),
    "tiny-odd": PlanCaps(max_batch_size=7, hourly_cap=10, daily_cap=25),
}
STARTS = {
    "midnight": at(1, 0),
    "14:00": at(1, 14),
    "mid-hour": at(1, 14, 37, 12),
    "23:00": at(1, 23),
    "23:59:59.5": datetime(2026, 12, 1, 23, 59, 59, 500000, tzinfo=UTC),
    "+05:30": datetime(2026, 12, 2, 5, 7, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),
}
GRID = [
    pytest.param(count, CAPS[caps], STARTS[start], id=f"{count}-{caps}-{start}")
    for count, caps, start in itertools.product(COUNTS, CAPS, STARTS)
]


@functools.cache
def cached_plan(count: int, caps: PlanCaps, start_at: datetime) -> tuple[Batch, ...]:
    return tuple(plan_batches(count, caps, start_at))


@pytest.mark.parametrize(("count", "caps", "start_at"), GRID)
class TestPlanInvariants:
    def test_every_recipient_is_planned_exactly_once(self, count, caps, start_at):
        batches = cached_plan(count, caps, start_at)

        assert sum(b.recipient_count for b in batches) == count
        assert all(b.recipient_count >= 1 for b in batches)
        assert (len(batches) == 0) == (count == 0)

    def test_no_batch_exceeds_max_batch_size(self, count, caps, start_at):
        batches = cached_plan(count, caps, start_at)

        assert all(b.recipient_count <= caps.max_batch_size for b in batches)

    def test_no_clock_hour_exceeds_hourly_cap(self, count, caps, start_at):
        totals = per_hour(cached_plan(count, caps, start_at))

        assert all(total <= caps.hourly_cap for total in totals.values()), totals

    def test_no_utc_day_exceeds_daily_cap(self, count, caps, start_at):
        totals = per_day(cached_plan(count, caps, start_at))

        assert all(total <= caps.daily_cap for total in totals.values()), totals

    def test_batch_numbers_run_from_1_without_gaps(self, count, caps, start_at):
        batches = cached_plan(count, caps, start_at)

        assert [b.batch_number for b in batches] == list(range(1, len(batches) + 1))

    def test_send_at_never_goes_back(self, count, caps, start_at):
        send_ats = [b.send_at for b in cached_plan(count, caps, start_at)]

        assert send_ats == sorted(send_ats)

    def test_batches_in_one_hour_slot_share_its_send_at(self, count, caps, start_at):
        send_ats_by_slot: dict[datetime, set[datetime]] = defaultdict(set)
        for batch in cached_plan(count, caps, start_at):
            send_ats_by_slot[hour_slot(batch.send_at)].add(batch.send_at)

        assert all(len(send_ats) == 1 for send_ats in send_ats_by_slot.values()), send_ats_by_slot

    def test_first_send_at_is_start_at_and_later_slots_start_on_the_hour_in_utc(self, count, caps, start_at):
        batches = cached_plan(count, caps, start_at)
        if not batches:
            return

        assert batches[0].send_at == start_at
        assert all(b.send_at.utcoffset() == timedelta(0) for b in batches)
        first_slot = hour_slot(start_at)
        later = [b.send_at for b in batches if hour_slot(b.send_at) != first_slot]
        assert all(s == hour_slot(s) for s in later), later
        assert all(s > start_at for s in later)

    def test_only_the_last_batch_of_an_hour_slot_may_be_smaller_than_max_batch_size(
        self, count, caps, start_at
    ):
        batches = cached_plan(count, caps, start_at)

        for batch, following in itertools.pairwise(batches):
            if hour_slot(following.send_at) == hour_slot(batch.send_at):
                assert batch.recipient_count == caps.max_batch_size, (batch, following)

    def test_no_hour_slot_is_skipped_or_left_short_while_its_hour_and_its_day_had_room(
        self, count, caps, start_at
    ):
        """Greedy packing: every clock hour from start_at's hour up to (not including) the
        last hour used is either filled to hourly_cap, or lies in a UTC day whose total
        reached daily_cap. So an hour is only empty or short because its day is full."""
        batches = cached_plan(count, caps, start_at)
        if not batches:
            return
        hours, days = per_hour(batches), per_day(batches)

        slot, last_slot = hour_slot(start_at), hour_slot(batches[-1].send_at)
        while slot < last_slot:
            assert hours[slot] == caps.hourly_cap or days[slot.date()] == caps.daily_cap, (
                slot,
                hours[slot],
                days[slot.date()],
            )
            slot += timedelta(hours=1)

    def test_streaming_assign_agrees_with_plan_batches(self, count, caps, start_at):
        packer = BatchPacker(caps, start_at)
        numbers: list[int] = []
        closed: list[Batch] = []
        for _ in range(count):
            number, just_closed = packer.assign()
            if just_closed is not None:
                # A batch is closed by the first recipient of the next one.
                assert just_closed.batch_number == number - 1
                closed.append(just_closed)
            numbers.append(number)
            assert packer.batches == closed
        last = packer.finish()

        if count == 0:
            assert last is None
        else:
            assert last is not None and last.batch_number == numbers[-1]
            closed.append(last)
        expected = list(cached_plan(count, caps, start_at))
        assert closed == expected
        assert packer.batches == expected
        assert numbers == sorted(numbers)
        assert Counter(numbers) == {b.batch_number: b.recipient_count for b in expected}


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
