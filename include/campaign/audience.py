"""Screen recipient rows: who can be sent to, and why the others cannot.

``screen_rows`` is the rules' definition, row by row. A plan screens with
``screening.screen_frame``, the same rules a column at a time on a DataFrame,
which the tests hold to this one.

Works on one chunk at a time, as the DB-API driver returns it (a list of
tuples). What earlier chunks staged comes from the caller (``screen_rows``'
``staged`` callable; the planner asks the staging table, see
``campaign/staging.py``), never from a growing set in memory, so planning
memory stays flat however long the list is. Cells are plain Python values; pandas and NumPy cells (a
DataFrame's records) are understood too, without importing pandas here.

A recipient's template variables are bounded (``MAX_VARIABLES_CHARS`` of JSON as
read and as staged, ``MAX_VARIABLES_DEPTH`` levels of nesting) and must be
strict JSON: no ``NaN``/``Infinity`` and no float that only decodes to one
(``1e999``). A row that breaks a bound is rejected ``invalid_variables`` while
it is screened, so nothing staged fails to encode or swells a request later.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from include.campaign.windows import DEFAULT_TIMEZONE, known_zones

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("recipient_id", "email")
VARIABLES_COLUMN = "variables"
# An optional IANA zone per recipient (campaign/windows.py): a column of the plan, not a variable.
TIMEZONE_COLUMN = "timezone"
# One recipient's variables: at most this many characters of JSON, both as the ``variables``
# cell holds it (checked before it is decoded) and as staged (ASCII: characters are bytes).
# 16 kB is far above what a template fills (names, a few links), and keeps a full request of
# 1,000 recipients within about 16 MB; a larger value is a data error, not a personalisation.
MAX_VARIABLES_CHARS = 16_384
# Objects and arrays nested in one recipient's variables, the object itself being level 1.
# Templates read a few levels at most; past this a value is refused, and decoding never
# recurses deep enough to raise RecursionError.
MAX_VARIABLES_DEPTH = 32

# Pragmatic address check: a local part, an '@', and a dotted domain of valid labels.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"{_LOCAL}@{_LABEL}(\.{_LABEL})+"  # also the From address's (campaign/settings.py)
_EMAIL = re.compile(EMAIL_PATTERN)
MAX_EMAIL_LENGTH = 254  # RFC 5321's path limit less the angle brackets


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
class ScreenedRows:
    """A chunk screened for staging, column by column: each accepted recipient's id, email,
    variables JSON, source row and time zone (None: the table has no ``timezone`` column), in
    order; and the rejections. Columns, because the staging rows are zipped from them."""

    ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)
    zones: list[str | None] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def accepted(self) -> list[tuple[str, str, str, int]]:
        """The accepted as ``(recipient_id, email, variables JSON, source row)``."""
        return list(zip(self.ids, self.emails, self.variables, self.source_rows, strict=True))

    def add(self, recipient_id: str, email: str, variables: str, source_row: int, zone: str | None) -> None:
        self.ids.append(recipient_id)
        self.emails.append(email)
        self.variables.append(variables)
        self.source_rows.append(source_row)
        self.zones.append(zone)


# Variables are stored as JSON with sorted keys, exactly as json.dumps(..., sort_keys=True) writes
# them. JSONEncoder.encode builds a new C encoder on every call, which costs more than encoding a
# small dict; the C encoder is made once here instead (with the pure-Python one as a fallback).
_VARIABLES_JSON = json.JSONEncoder(sort_keys=True, allow_nan=False)
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_encoder is not None:
    # The arguments JSONEncoder.iterencode passes: no circular check (depth is bounded before
    # encoding), ASCII, no indent, the default separators, sort_keys, no skipkeys, and no NaN or
    # infinity (ValueError): the request's encoding refuses them too.
    _c_encode = _c_encoder(
        None,
        _VARIABLES_JSON.default,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        True,
        False,
        False,
    )

    def _encode_variables(variables: dict[str, Any]) -> str:
        return "".join(_c_encode(variables, 0))
else:  # pragma: no cover - CPython always has the C encoder
    _encode_variables = _VARIABLES_JSON.encode


class InvalidVariables(ValueError):
    """A row's template variables cannot be staged; the message says why (never the values)."""


def _refuse_constant(name: str) -> Any:
    raise InvalidVariables(f"variables holds {name}, which is not JSON")


# Strict JSON: NaN, Infinity and -Infinity are refused as they are read (the C scanner calls
# parse_constant for them). A float that overflows (1e999) decodes to inf; the encoder refuses it.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_decode_json = _DECODER.decode
# Looks up which of a chunk's emails and recipient ids earlier chunks staged.
StagedLookup = Callable[[set[str], set[str]], tuple[set[str], set[str]]]


def _is_pandas_null(value: Any) -> bool:
    pd = sys.modules.get("pandas")  # a pandas null can only exist once pandas is imported
    return pd is not None and (value is pd.NaT or value is pd.NA)


def _scalar(value: Any) -> Any:
    """A cell as a plain Python value; None for SQL NULL (None, NaN, pandas' NaT and NA).

    A float that is a whole number becomes an int (an INTEGER column with NULLs arrives
    in pandas as float: 30.0 means 30), and a Decimal a float, as pandas reads both.
    """
    if value is None:
        return None
    kind = type(value)
    if kind is str or kind is int:  # nearly every cell: done
        return value
    if _is_pandas_null(value):
        return None
    if hasattr(value, "item"):  # NumPy scalar
        value = value.item()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
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
    return len(email) <= MAX_EMAIL_LENGTH and _EMAIL.fullmatch(email) is not None


def _variable(value: Any) -> Any:
    """A template variable's value: JSON scalars as they are, anything else (a date) as text."""
    kind = type(value)
    if kind is str or kind is int:
        return value
    value = _scalar(value)
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _check_shape(value: Any) -> None:
    """Refuse a decoded value nested deeper than ``MAX_VARIABLES_DEPTH`` or certainly longer than
    ``MAX_VARIABLES_CHARS`` once encoded; without recursion, and stopping at the first excess."""
    budget = MAX_VARIABLES_CHARS  # a lower bound of the encoded length is taken from it
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
            budget -= 2 + sum(len(key) + 4 if type(key) is str else 4 for key in node)
        elif isinstance(node, list | tuple):
            children = node
            budget -= 2 + 2 * max(len(node) - 1, 0)  # the brackets and the separators
        else:
            budget -= len(node) + 2 if type(node) is str else 1
            if budget < 0:
                raise InvalidVariables(f"variables longer than {MAX_VARIABLES_CHARS} characters of JSON")
            continue
        if depth > MAX_VARIABLES_DEPTH:
            raise InvalidVariables(f"variables nested deeper than {MAX_VARIABLES_DEPTH} levels")
        if budget < 0:
            raise InvalidVariables(f"variables longer than {MAX_VARIABLES_CHARS} characters of JSON")
        stack.extend((child, depth + 1) for child in children)


def _parsed_variables(raw: Any) -> dict[str, Any]:
    """A ``variables`` cell (JSON text, or an object a driver already decoded) within the bounds."""
    if isinstance(raw, str):
        if len(raw) > MAX_VARIABLES_CHARS:  # before decoding: a huge cell costs no parse
            raise InvalidVariables(f"variables longer than {MAX_VARIABLES_CHARS} characters of JSON")
        try:
            parsed = _decode_json(raw)
        except RecursionError:
            raise InvalidVariables(f"variables nested deeper than {MAX_VARIABLES_DEPTH} levels") from None
        # Nesting needs one bracket per level: most rows have too few to need the walk.
        if raw.count("{") + raw.count("[") > MAX_VARIABLES_DEPTH:
            _check_shape(parsed)
    elif isinstance(raw, dict):
        parsed = raw
        _check_shape(parsed)
    else:
        raise InvalidVariables(f"variables is not a JSON object (a {type(raw).__name__})")
    if not isinstance(parsed, dict):
        raise InvalidVariables("variables is not a JSON object")
    return parsed


def _variables(row: Sequence[Any], extra: Sequence[tuple[str, int]], raw: Any) -> dict[str, Any]:
    """Extra columns are template variables; a JSON ``variables`` column adds (and wins over) them."""
    variables = {}
    text_chars = 0
    for column, index in extra:
        value = _variable(row[index])
        if value is not None:
            variables[column] = value
            if type(value) is str:
                text_chars += len(value)
    if text_chars > MAX_VARIABLES_CHARS:  # certainly too long once encoded: spare the encoding
        raise InvalidVariables(f"variables longer than {MAX_VARIABLES_CHARS} characters of JSON")
    raw = _scalar(raw)
    if raw is not None:
        variables.update(_parsed_variables(raw))
    return variables


def staged_variables(row: Sequence[Any], extra: Sequence[tuple[str, int]], raw: Any) -> str:
    """A row's variables as staged: canonical JSON (sorted keys, ASCII), finite numbers only, at
    most ``MAX_VARIABLES_CHARS``. Every path to the staging table goes through here; raises
    ``ValueError`` (``InvalidVariables`` with the cause, or the encoder's) for a row to reject."""
    encoded = _encode_variables(_variables(row, extra, raw))
    if len(encoded) > MAX_VARIABLES_CHARS:
        raise InvalidVariables(f"variables longer than {MAX_VARIABLES_CHARS} characters of JSON")
    return encoded


def layout(columns: Sequence[str]) -> tuple[int, int, int | None, int | None, list[tuple[str, int]]]:
    """Where a chunk's own columns are (recipient_id, email, and variables and timezone if present),
    and the extra ones, each a template variable, as ``(name, index)``."""
    i_id, i_email = columns.index("recipient_id"), columns.index("email")
    i_vars = columns.index(VARIABLES_COLUMN) if VARIABLES_COLUMN in columns else None
    i_zone = columns.index(TIMEZONE_COLUMN) if TIMEZONE_COLUMN in columns else None
    own = (*REQUIRED_COLUMNS, VARIABLES_COLUMN, TIMEZONE_COLUMN)
    return i_id, i_email, i_vars, i_zone, [(c, i) for i, c in enumerate(columns) if c not in own]


def screen_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    first_source_row: int,
    staged: StagedLookup,
    suppressed: Callable[[set[str]], set[str]] | None = None,
    default_zone: str = DEFAULT_TIMEZONE,
) -> ScreenedRows:
    """Split one chunk into sendable recipients and rejections with a reason.

    ``staged`` is asked once, for the chunk's well-formed emails and ids, which of them
    earlier chunks staged; duplicates within the chunk are caught here. ``suppressed``, if
    given, is asked once which of the emails are on the suppression list (reason
    ``suppressed``). The first of two rows wins, and a row rejected for any reason reserves
    neither its email nor its id. A ``timezone`` cell, trimmed, must name an IANA zone this
    machine knows (reason ``invalid_timezone``); an empty one is ``default_zone``.
    """
    known = known_zones()
    i_id, i_email, i_vars, i_zone, extra = layout(columns)
    # Pass 1, row by row but without look-ups: normalise, and reject what is missing or malformed.
    checked: list[tuple[str | None, str | None, str | None]] = []
    zones: list[str | None] = []
    for row in rows:
        raw_id, raw_email = row[i_id], row[i_email]
        kind = type(raw_id)
        if kind is int:
            recipient_id = str(raw_id)
        elif kind is str:
            recipient_id = raw_id.strip() or None
        else:
            recipient_id = normalize_recipient_id(raw_id)
        email = (raw_email.strip().lower() or None) if type(raw_email) is str else normalize_email(raw_email)
        if recipient_id is None:
            reason = "missing_recipient_id"
        elif email is None:
            reason = "missing_email"
        elif not is_valid_email(email):
            reason = "invalid_email"
        else:
            reason = None
        if i_zone is not None:
            zone = _zone_name(row[i_zone], default_zone)
            if reason is None and zone not in known:
                reason = "invalid_timezone"
            zones.append(zone)
        checked.append((recipient_id, email, reason))
    # One set-based look-up for the whole chunk, then pass 2 in order: duplicates and variables.
    well_formed = {e for _, e, reason in checked if reason is None}
    seen_emails, seen_ids = staged(well_formed, {i for i, _, reason in checked if reason is None})
    blocked = suppressed(well_formed) if suppressed is not None else ()
    screened = ScreenedRows()
    invalid_variables, first_cause = 0, ""
    for offset, (row, (recipient_id, email, reason)) in enumerate(zip(rows, checked, strict=True)):
        if reason is None:
            if email in blocked:
                reason = "suppressed"
            elif recipient_id in seen_ids:
                reason = "duplicate_recipient_id"
            elif email in seen_emails:
                reason = "duplicate_email"
            else:
                try:
                    encoded = staged_variables(row, extra, None if i_vars is None else row[i_vars])
                except (ValueError, TypeError) as err:
                    reason = "invalid_variables"
                    invalid_variables += 1
                    if invalid_variables == 1:
                        first_cause = f"source row {first_source_row + offset}, {_cause(err)}"
        if reason is not None:
            raw_email = _scalar(row[i_email])
            screened.rejected.append(
                Rejection(
                    first_source_row + offset,
                    recipient_id,
                    None if raw_email is None else str(raw_email),
                    reason,
                )
            )
            continue
        seen_emails.add(email)
        seen_ids.add(recipient_id)
        zone = zones[offset] if i_zone is not None else None
        screened.add(recipient_id, email, encoded, first_source_row + offset, zone)
    if invalid_variables:  # the cause, never the values (they may be personal data)
        log.warning("%d row(s) rejected as invalid_variables (first: %s)", invalid_variables, first_cause)
    return screened


def _zone_name(cell: Any, default_zone: str) -> str:
    """A ``timezone`` cell as a zone name to check: trimmed, empty or NULL the default; a cell that
    is not text names no zone."""
    value = _scalar(cell)
    if value is None:
        return default_zone
    return (value.strip() or default_zone) if isinstance(value, str) else ""


def _cause(err: Exception) -> str:
    """Why a row's variables were refused, without quoting them."""
    if isinstance(err, InvalidVariables):
        return str(err)
    if isinstance(err, json.JSONDecodeError):
        return f"variables is not JSON ({err.msg} at character {err.pos})"
    if isinstance(err, ValueError) and "not JSON compliant" in str(err):
        return "variables holds a number out of range (NaN or infinite)"
    return f"variables cannot be encoded as JSON ({type(err).__name__})"
