"""Screen recipient rows: who can be sent to, and why the others cannot.

Works on one chunk at a time. De-duplication across chunks asks the staging
table (indexed by email and by recipient id) instead of keeping a growing set
in memory, so planning memory stays flat however long the list is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

REQUIRED_COLUMNS = ("recipient_id", "email")
VARIABLES_COLUMN = "variables"

# Pragmatic address check: a local part, an '@', and a dotted domain of valid labels.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"{_LOCAL}@{_LABEL}(\.{_LABEL})+")


@dataclass(frozen=True)
class Recipient:
    recipient_id: str
    email: str
    variables: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    source_row: int
    recipient_id: str | None
    email: str | None
    reason: str


@dataclass
class ScreenedChunk:
    accepted: list[Recipient] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _scalar(value: Any) -> Any:
    """A pandas/NumPy cell as a plain Python value; None for SQL NULL (None, NaN, NaT, NA)."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if hasattr(value, "item"):  # NumPy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():  # an INTEGER column with NULLs arrives as float: 30.0 means 30
            return int(value)
    return value


def normalize_recipient_id(value: Any) -> str | None:
    value = _scalar(value)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def normalize_email(value: Any) -> str | None:
    value = _scalar(value)
    if value is None:
        return None
    text = str(value).strip().lower()
    return text or None


def is_valid_email(email: str) -> bool:
    return len(email) <= 254 and _EMAIL.fullmatch(email) is not None


def _variables(row: dict[str, Any], extra_columns: list[str]) -> dict[str, Any]:
    """Extra columns are template variables; a JSON ``variables`` column adds (and wins over) them."""
    variables = {}
    for column in extra_columns:
        value = _scalar(row[column])
        if value is not None:
            variables[column] = value if isinstance(value, (str, int, float, bool)) else str(value)
    raw = _scalar(row.get(VARIABLES_COLUMN))
    if raw is not None:
        parsed = raw if isinstance(raw, dict) else json.loads(raw)
        if not isinstance(parsed, dict):
            raise ValueError("variables is not a JSON object")
        variables.update(parsed)
    return variables


def screen_chunk(
    rows: list[dict[str, Any]],
    first_source_row: int,
    known_emails: set[str],
    known_ids: set[str],
) -> ScreenedChunk:
    """Split one chunk into sendable recipients and rejections with a reason.

    ``known_emails``/``known_ids`` are those already staged by earlier chunks
    (looked up for this chunk only); duplicates within the chunk are caught too.
    """
    extra_columns = [c for c in (rows[0] if rows else {}) if c not in (*REQUIRED_COLUMNS, VARIABLES_COLUMN)]
    seen_emails, seen_ids = set(known_emails), set(known_ids)
    screened = ScreenedChunk()
    for offset, row in enumerate(rows):
        source_row = first_source_row + offset
        recipient_id = normalize_recipient_id(row["recipient_id"])
        email = normalize_email(row["email"])
        reason = None
        if recipient_id is None:
            reason = "missing_recipient_id"
        elif email is None:
            reason = "missing_email"
        elif not is_valid_email(email):
            reason = "invalid_email"
        elif recipient_id in seen_ids:
            reason = "duplicate_recipient_id"
        elif email in seen_emails:
            reason = "duplicate_email"
        if reason is None:
            try:
                variables = _variables(row, extra_columns)
            except (ValueError, TypeError):
                reason = "invalid_variables"
        if reason is not None:
            raw_email = _scalar(row["email"])
            screened.rejected.append(
                Rejection(source_row, recipient_id, None if raw_email is None else str(raw_email), reason)
            )
            continue
        seen_emails.add(email)
        seen_ids.add(recipient_id)
        screened.accepted.append(Recipient(recipient_id, email, variables))
    return screened
