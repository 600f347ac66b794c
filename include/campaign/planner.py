"""Pack a stream of recipients into bulk-send batches that respect every plan cap at once.

The provider does not refuse volume beyond the plan's hourly or daily cap: it
"overflows into queue" and goes out whenever the provider likes. Keeping each
clock hour and each UTC day within its cap is therefore the client's job, and
it is done here, in arrival order and a chunk at a time, so the caller can
stream a list of any size through it without holding the list.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
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


# The article's 30k plan: 150 recipients per clock hour, 1,500 per UTC day; the API's 1,000 per
# request. The campaign Params' defaults.
DEFAULT_CAPS = PlanCaps(max_batch_size=API_MAX_RECIPIENTS_PER_REQUEST, hourly_cap=150, daily_cap=1500)


@dataclass(frozen=True)
class Batch:
    batch_number: int
    send_at: datetime
    recipient_count: int


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class SlotCalendar:
    """Recipients per clock hour and per UTC day, held against the caps.

    The caps are the account's, not one campaign's: ``occupied`` (recipients
    already scheduled, by send_at) counts against both the hour and the day.
    """

    def __init__(self, caps: PlanCaps, occupied: Mapping[datetime, int] | None = None) -> None:
        self._caps = caps
        self._hours: Counter[datetime] = Counter()
        self._days: Counter[date] = Counter()
        for moment, count in (occupied or {}).items():
            self.take(hour_floor(moment), count)

    def room(self, slot: datetime) -> int:
        return max(
            0,
            min(self._caps.hourly_cap - self._hours[slot], self._caps.daily_cap - self._days[slot.date()]),
        )

    def take(self, slot: datetime, count: int) -> None:
        self._hours[slot] += count
        self._days[slot.date()] += count

    def copy(self) -> SlotCalendar:
        twin = SlotCalendar(self._caps)
        twin._hours, twin._days = Counter(self._hours), Counter(self._days)
        return twin

    def first_slot_with_room(self, slot: datetime, needed: int = 1) -> datetime:
        """The first hour from ``slot`` on with room for ``needed``; days without room are skipped whole."""
        if needed > min(self._caps.hourly_cap, self._caps.daily_cap):
            raise ValueError(
                f"{needed} recipients can never fit one slot under hourly_cap {self._caps.hourly_cap} "
                f"and daily_cap {self._caps.daily_cap}"
            )
        while self.room(slot) < needed:
            if self._days[slot.date()] + needed > self._caps.daily_cap:
                slot = (slot + timedelta(days=1)).replace(hour=0)
            else:
                slot += timedelta(hours=1)
        return slot


class BatchPacker:
    """Assign recipients, in arrival order, to numbered batches.

    A batch closes when it reaches ``max_batch_size`` or its hour slot has no
    room left (hourly or daily cap). Batches in one hour slot share that slot's
    ``send_at``: the slot's start, or ``start_at`` itself for the first,
    possibly partial, slot.
    """

    def __init__(
        self, caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
    ) -> None:
        if start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (UTC)")
        self._caps = caps
        self._start_at = start_at.astimezone(UTC)
        self._calendar = SlotCalendar(caps, occupied)
        self._slot = hour_floor(self._start_at)
        self._open: Batch | None = None  # number and send_at; its count is _open_count
        self._open_count = 0
        self._closed: list[Batch] = []

    def take(self, count: int) -> list[tuple[int, int]]:
        """Place ``count`` recipients in arrival order; returns ``(batch_number, recipients)`` runs.

        The same packing as ``count`` calls of ``assign``, a run at a time: a chunk of
        tens of thousands of recipients costs a few calls per batch, not one per recipient.
        """
        runs: list[tuple[int, int]] = []
        while count > 0:
            room = self._calendar.room(self._slot)
            if self._open is None or self._open_count >= self._caps.max_batch_size or not room:
                self._close_open_batch()
                self._slot = self._calendar.first_slot_with_room(self._slot)
                self._open = Batch(len(self._closed) + 1, max(self._slot, self._start_at), 0)
                room = self._calendar.room(self._slot)
            placed = min(count, self._caps.max_batch_size - self._open_count, room)
            self._open_count += placed
            self._calendar.take(self._slot, placed)
            runs.append((self._open.batch_number, placed))
            count -= placed
        return runs

    def copy(self) -> BatchPacker:
        """An independent packer in the same state: place a chunk on it, keep it once written."""
        twin = copy.copy(self)
        twin._calendar = self._calendar.copy()
        twin._closed = list(self._closed)
        return twin

    @property
    def closed_count(self) -> int:
        return len(self._closed)

    def assign(self) -> tuple[int, Batch | None]:
        """Place one recipient. Returns its batch number and the batch this closed, if any."""
        closed_before = len(self._closed)
        [(batch_number, _)] = self.take(1)
        return batch_number, self._closed[-1] if len(self._closed) > closed_before else None

    def finish(self) -> Batch | None:
        """Close the last batch; returns it (or None when nothing was assigned)."""
        return self._close_open_batch()

    @property
    def batches(self) -> list[Batch]:
        """Closed batches so far. Small: one descriptor per request, not per recipient."""
        return list(self._closed)

    def _close_open_batch(self) -> Batch | None:
        if self._open is None:
            return None
        closed = Batch(self._open.batch_number, self._open.send_at, self._open_count)
        self._open, self._open_count = None, 0
        self._closed.append(closed)
        return closed


def place_whole_batches(
    sizes: Sequence[int], caps: PlanCaps, start_at: datetime, occupied: Mapping[datetime, int] | None = None
) -> list[datetime]:
    """New send_at for batches that must keep their recipients (a resume): each goes, whole, into
    the first slot from ``start_at`` with room for it."""
    if start_at.tzinfo is None:
        raise ValueError("start_at must be timezone-aware (UTC)")
    calendar = SlotCalendar(caps, occupied)
    first = hour_floor(start_at)
    placed = []
    for size in sizes:
        slot = calendar.first_slot_with_room(first, size)
        calendar.take(slot, size)
        placed.append(max(slot, start_at.astimezone(UTC)))
    return placed
