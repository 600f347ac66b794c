"""Pack a stream of recipients into bulk-send batches that respect every plan cap at once.

The provider does not refuse volume beyond the plan's hourly or daily cap: it
"overflows into queue" and goes out whenever the provider likes. Keeping each
clock hour and each UTC day within its cap is therefore the client's job, and
it is done here, one recipient at a time, so the caller can stream a list of
any size through it without holding the list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

API_MAX_RECIPIENTS_PER_REQUEST = 1000


@dataclass(frozen=True)
class PlanCaps:
    max_batch_size: int
    hourly_cap: int
    daily_cap: int

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "hourly_cap", "daily_cap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_batch_size > API_MAX_RECIPIENTS_PER_REQUEST:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} exceeds the API limit of "
                f"{API_MAX_RECIPIENTS_PER_REQUEST} recipients per request"
            )


@dataclass(frozen=True)
class Batch:
    batch_number: int
    send_at: datetime
    recipient_count: int


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class BatchPacker:
    """Assign recipients, in arrival order, to numbered batches.

    A batch closes when it reaches ``max_batch_size`` or its hour slot reaches
    ``hourly_cap``; a slot is skipped once its UTC day has reached ``daily_cap``.
    Batches in one hour slot share that slot's ``send_at`` (the slot's start, or
    ``start_at`` itself for the first, possibly partial, slot).

    The caps are the account's, not the campaign's: ``occupied`` gives the
    recipients already scheduled per hour slot (by other campaigns), and those
    count against both the hour's and the day's cap.
    """

    def __init__(
        self, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
    ) -> None:
        if start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (UTC)")
        self._caps = caps
        self._start_at = start_at.astimezone(UTC)
        self._occupied: Counter[datetime] = Counter()
        self._occupied_days: Counter[date] = Counter()
        for moment, count in (occupied or {}).items():
            slot = _hour_floor(moment.astimezone(UTC))
            self._occupied[slot] += count
            self._occupied_days[slot.date()] += count
        self._slot = _hour_floor(self._start_at)
        self._slot_used = self._occupied[self._slot]
        self._day_used = self._occupied_days[self._slot.date()]
        self._open: Batch | None = None
        self._closed: list[Batch] = []

    def assign(self) -> tuple[int, Batch | None]:
        """Place one recipient. Returns its batch number and the batch this closed, if any."""
        closed = None
        if self._open is None or not self._open_has_room():
            closed = self._close_open_batch()
            self._open_next_batch()
        assert self._open is not None
        self._open = Batch(self._open.batch_number, self._open.send_at, self._open.recipient_count + 1)
        self._slot_used += 1
        self._day_used += 1
        return self._open.batch_number, closed

    def finish(self) -> Batch | None:
        """Close the last batch; returns it (or None when nothing was assigned)."""
        return self._close_open_batch()

    @property
    def batches(self) -> list[Batch]:
        """Closed batches so far. Small: one descriptor per request, not per recipient."""
        return list(self._closed)

    def _open_has_room(self) -> bool:
        assert self._open is not None
        return (
            self._open.recipient_count < self._caps.max_batch_size
            and self._slot_used < self._caps.hourly_cap
            and self._day_used < self._caps.daily_cap
        )

    def _close_open_batch(self) -> Batch | None:
        closed, self._open = self._open, None
        if closed is not None:
            self._closed.append(closed)
        return closed

    def _open_next_batch(self) -> None:
        while self._slot_used >= self._caps.hourly_cap or self._day_used >= self._caps.daily_cap:
            if self._day_used >= self._caps.daily_cap:
                next_slot = (self._slot + timedelta(days=1)).replace(hour=0)
            else:
                next_slot = self._slot + timedelta(hours=1)
            if next_slot.date() != self._slot.date():
                self._day_used = self._occupied_days[next_slot.date()]
            self._slot, self._slot_used = next_slot, self._occupied[next_slot]
        number = len(self._closed) + 1
        self._open = Batch(number, max(self._slot, self._start_at), 0)


def plan_batches(
    recipient_count: int, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> list[Batch]:
    """Plan batches for a known number of recipients (the same packing, without a stream)."""
    packer = BatchPacker(caps, start_at, occupied)
    for _ in range(recipient_count):
        packer.assign()
    packer.finish()
    return packer.batches
