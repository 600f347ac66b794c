"""Pack a stream of recipients into bulk-send batches that respect every plan cap at once.

The provider does not refuse volume beyond the plan's hourly or daily cap: it
"overflows into queue" and goes out whenever the provider likes. Keeping each
clock hour and each UTC day within its cap is therefore the client's job, and
it is done here, in arrival order and a chunk at a time, so the caller can
stream a list of any size through it without holding the list.

With a sending window (``windows.SendWindow``: weekdays and local hours), each
recipient's time zone is a lane: a batch holds one zone's recipients, and its
slot is the first clock hour with room that has an instant inside that zone's
window, its ``send_at`` that instant. The caps stay the account's, in UTC, shared
by every lane. A warm-up ramp (``warmup.Ramp``) lowers each UTC day's cap.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from include.campaign.windows import SendWindow

if TYPE_CHECKING:
    from include.campaign.warmup import Ramp

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
    timezone: str | None = None  # its recipients' zone, when a window groups them by zone


HOUR = timedelta(hours=1)
ALWAYS = SendWindow()
# The first instant of a clock hour a batch may go at (clipped to start_at), or None.
Opening = Callable[[datetime], "datetime | None"]


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class SlotCalendar:
    """Recipients per clock hour and per UTC day, held against the caps.

    The caps are the account's, not one campaign's: ``occupied`` (recipients
    already scheduled, by send_at) counts against both the hour and the day. A
    ``ramp`` holds each UTC day to the smaller of ``daily_cap`` and its limit.
    """

    def __init__(
        self, caps: PlanCaps, occupied: Mapping[datetime, int] | None = None, ramp: Ramp | None = None
    ) -> None:
        self._caps = caps
        self._ramp = ramp
        self._hours: Counter[datetime] = Counter()
        self._days: Counter[date] = Counter()
        for moment, count in (occupied or {}).items():
            self.take(hour_floor(moment), count)

    def daily_limit(self, day: date) -> int:
        ramped = self._ramp.limit(day) if self._ramp is not None else None
        return self._caps.daily_cap if ramped is None else min(ramped, self._caps.daily_cap)

    def room(self, slot: datetime) -> int:
        day = slot.date()
        return max(0, min(self._caps.hourly_cap - self._hours[slot], self.daily_limit(day) - self._days[day]))

    def take(self, slot: datetime, count: int) -> None:
        self._hours[slot] += count
        self._days[slot.date()] += count

    def copy(self) -> SlotCalendar:
        twin = SlotCalendar(self._caps, ramp=self._ramp)
        twin._hours, twin._days = Counter(self._hours), Counter(self._days)
        return twin

    def first_slot_with_room(self, slot: datetime, needed: int = 1, opens: Opening | None = None) -> datetime:
        """The first hour from ``slot`` on with room for ``needed`` (and, given ``opens``, an
        instant a batch may go at); days without room are skipped whole."""
        if needed > min(self._caps.hourly_cap, self._caps.daily_cap):
            raise ValueError(
                f"{needed} recipients can never fit one slot under hourly_cap {self._caps.hourly_cap} "
                f"and daily_cap {self._caps.daily_cap}"
            )
        while True:
            day = slot.date()
            if self._days[day] + needed > self.daily_limit(day):
                slot = (slot + timedelta(days=1)).replace(hour=0)
            elif self.room(slot) >= needed and (opens is None or opens(slot) is not None):
                return slot
            else:
                slot += HOUR


def opening(start_at: datetime, window: SendWindow, zone: str | None) -> Opening:
    """When, in a given clock hour, a batch of ``zone``'s recipients may go (``None``: never); a
    batch of no one zone (``zone`` None, or no window) goes at the hour's start, or ``start_at``."""

    def opens(slot: datetime) -> datetime | None:
        lo = max(slot, start_at)
        if lo >= slot + HOUR:
            return None
        return lo if zone is None or window.always else window.earliest(zone, lo, slot + HOUR)

    return opens


@dataclass
class _Lane:
    """One zone's place in the plan: its current hour and the batch it is filling."""

    slot: datetime
    open: Batch | None = None  # number, send_at and zone; its count is ``count``
    count: int = 0


class BatchPacker:
    """Assign recipients, in arrival order, to numbered batches.

    A batch closes when it reaches ``max_batch_size`` or its hour slot has no
    room left (hourly or daily cap). Batches in one hour slot share that slot's
    ``send_at``: the slot's start, or ``start_at`` itself for the first,
    possibly partial, slot. With a ``window``, each zone (``take``'s ``lane``)
    fills its own batches, each sent at the first instant of its hour inside
    the window in that zone; numbers follow the order batches open in.
    """

    def __init__(
        self,
        caps: PlanCaps,
        start_at: datetime,
        occupied: Mapping[datetime, int] | None = None,
        *,
        window: SendWindow = ALWAYS,
        ramp: Ramp | None = None,
    ) -> None:
        if start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (UTC)")
        self._caps = caps
        self._start_at = start_at.astimezone(UTC)
        self._window = window
        self._calendar = SlotCalendar(caps, occupied, ramp)
        self._lanes: dict[str, _Lane] = {}
        self._numbers = 0
        self._closed: list[Batch] = []

    @property
    def zoned(self) -> bool:
        """Does a recipient's zone decide its batch? Not without a window: the UTC-only plan."""
        return not self._window.always

    def opening(self, zone: str | None) -> Opening:
        return opening(self._start_at, self._window, zone)

    def take(self, count: int, lane: str | None = None) -> list[tuple[int, int]]:
        """Place ``count`` recipients of one zone (``lane``; ignored without a window) in arrival
        order; returns ``(batch_number, recipients)`` runs.

        The same packing as ``count`` calls of ``assign``, a run at a time: a chunk of
        tens of thousands of recipients costs a few calls per batch, not one per recipient.
        """
        zone = lane if self.zoned else None
        state = self._lanes.get(zone or "")
        if state is None:
            state = self._lanes[zone or ""] = _Lane(hour_floor(self._start_at))
        runs: list[tuple[int, int]] = []
        while count > 0:
            room = self._calendar.room(state.slot)
            if state.open is None or state.count >= self._caps.max_batch_size or not room:
                self._close(state)
                opens = self.opening(zone)
                state.slot = self._calendar.first_slot_with_room(state.slot, opens=opens)
                self._numbers += 1
                state.open = Batch(self._numbers, opens(state.slot), 0, zone)
                room = self._calendar.room(state.slot)
            placed = min(count, self._caps.max_batch_size - state.count, room)
            state.count += placed
            self._calendar.take(state.slot, placed)
            runs.append((state.open.batch_number, placed))
            count -= placed
        return runs

    def next_send_at(self, lane: str | None = None) -> datetime:
        """The send_at the next recipient of ``lane`` would get, without placing it."""
        zone = lane if self.zoned else None
        state = self._lanes.get(zone or "")
        if state is not None and state.open is not None:
            if state.count < self._caps.max_batch_size and self._calendar.room(state.slot):
                return state.open.send_at
        opens = self.opening(zone)
        start = state.slot if state is not None else hour_floor(self._start_at)
        return opens(self._calendar.first_slot_with_room(start, opens=opens))

    def copy(self) -> BatchPacker:
        """An independent packer in the same state: place a chunk on it, keep it once written."""
        twin = copy.copy(self)
        twin._calendar = self._calendar.copy()
        twin._lanes = {name: copy.copy(state) for name, state in self._lanes.items()}
        twin._closed = list(self._closed)
        return twin

    @property
    def closed_count(self) -> int:
        return len(self._closed)

    def assign(self, lane: str | None = None) -> tuple[int, Batch | None]:
        """Place one recipient. Returns its batch number and the batch this closed, if any."""
        closed_before = len(self._closed)
        [(batch_number, _)] = self.take(1, lane)
        return batch_number, self._closed[-1] if len(self._closed) > closed_before else None

    def finish(self) -> Batch | None:
        """Close every open batch; returns the last closed (or None when nothing was assigned)."""
        closed = None
        for state in sorted(self._lanes.values(), key=lambda s: s.open.batch_number if s.open else 0):
            closed = self._close(state) or closed
        return closed

    @property
    def batches(self) -> list[Batch]:
        """Closed batches so far, in the order they closed. Small: one descriptor per request."""
        return list(self._closed)

    def _close(self, state: _Lane) -> Batch | None:
        if state.open is None:
            return None
        closed = Batch(state.open.batch_number, state.open.send_at, state.count, state.open.timezone)
        state.open, state.count = None, 0
        self._closed.append(closed)
        return closed


def place_whole_batches(
    sizes: Sequence[int],
    caps: PlanCaps,
    start_at: datetime,
    occupied: Mapping[datetime, int] | None = None,
    *,
    zones: Sequence[str | None] | None = None,
    window: SendWindow = ALWAYS,
    ramp: Ramp | None = None,
) -> list[datetime]:
    """New send_at for batches that must keep their recipients (a resume): each goes, whole, into
    the first slot from ``start_at`` with room for it, inside its zone's window (``zones``, one
    per batch; None for a batch of no one zone, which any hour suits)."""
    if start_at.tzinfo is None:
        raise ValueError("start_at must be timezone-aware (UTC)")
    start_at = start_at.astimezone(UTC)
    calendar = SlotCalendar(caps, occupied, ramp)
    first = hour_floor(start_at)
    placed = []
    for size, zone in zip(sizes, zones or [None] * len(sizes), strict=True):
        opens = opening(start_at, window, zone)
        slot = calendar.first_slot_with_room(first, size, opens)
        calendar.take(slot, size)
        placed.append(opens(slot))
    return placed
