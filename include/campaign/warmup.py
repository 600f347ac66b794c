"""The account's warm-up ramp: a new sending domain or IP sends a little more each UTC day.

It lives in the Airflow Variable ``migosmtp_warmup``, account-wide like the caps it lowers:
``{"start": "2026-12-07", "daily": [50, 100, 200, 400, 800]}`` holds the UTC day ``start``
to 50 recipients, the next to 100, and so on; after the list the plan's own ``daily_cap``
rules again. Days before ``start`` are held to the first limit: a domain that has not
begun to warm is colder than on its first day. Every plan and every re-placement reads it,
and the planner counts all campaigns' batches against it, as it counts them against the
daily cap (``planner.SlotCalendar``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date

VARIABLE = "migosmtp_warmup"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_DAYS = 366  # a ramp is weeks long; a year bounds the list a typo could make


class WarmupError(ValueError):
    """The Variable cannot be read as a ramp; the message says why."""


@dataclass(frozen=True)
class Ramp:
    start: date
    daily: tuple[int, ...]

    def limit(self, day: date) -> int | None:
        """The ramp's limit for this UTC day, or None once the ramp is over."""
        index = max(0, (day - self.start).days)
        return self.daily[index] if index < len(self.daily) else None

    @property
    def text(self) -> str:
        return f"from {self.start.isoformat()}: {', '.join(str(n) for n in self.daily)}"


def parse(raw: str | None) -> Ramp | None:
    """The Variable's value as a ramp; None (no Variable, or empty) is no ramp."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise WarmupError(f"Variable {VARIABLE} is not JSON ({err})") from None
    if not isinstance(value, dict) or set(value) != {"start", "daily"}:
        raise WarmupError(
            f'Variable {VARIABLE} must be an object with exactly "start" and "daily", e.g. '
            '{"start": "2026-12-07", "daily": [50, 100, 200]}'
        )
    start = value["start"]
    if not isinstance(start, str) or not _DATE.match(start):
        raise WarmupError(f"Variable {VARIABLE}: start {start!r} is not a date YYYY-MM-DD")
    try:
        first = date.fromisoformat(start)
    except ValueError:
        raise WarmupError(f"Variable {VARIABLE}: start {start!r} is not a date") from None
    daily = value["daily"]
    if not isinstance(daily, list) or not daily:
        raise WarmupError(f"Variable {VARIABLE}: daily must be a non-empty list of daily limits")
    if len(daily) > MAX_DAYS:
        raise WarmupError(f"Variable {VARIABLE}: daily has {len(daily)} days; at most {MAX_DAYS}")
    for n, limit in enumerate(daily, 1):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise WarmupError(f"Variable {VARIABLE}: daily limit {n} ({limit!r}) is not a positive integer")
    return Ramp(first, tuple(daily))


def from_airflow() -> Ramp | None:
    """The ramp in the Variable, read through the Task SDK (a task's view of Variables)."""
    from airflow.sdk import Variable

    return parse(Variable.get(VARIABLE, default=None))


def for_task() -> Ramp | None:
    """``from_airflow`` for a task: a malformed Variable fails it without retries, saying why."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return from_airflow()
    except WarmupError as err:
        raise AirflowFailException(f"{err}; fix or delete the Variable") from err
