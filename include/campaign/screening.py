"""Screening a chunk as a pandas DataFrame: ``audience.screen_rows``' rules, a column at a time.

The rules are audience.py's, and its ``screen_rows`` stays their row-by-row definition (the
tests hold this module to it on hostile rows): the same reasons in the same precedence, the
same rows accepted, the same variables text. What differs is how. A column whose cells are
all text is trimmed, lower-cased and matched with pandas' string methods; a column holding
anything else (numbers, NaN for a driver's NULL, dates, dicts) goes through audience.py's
per-cell functions, so an odd cell is never guessed at. Duplicates within the chunk come
from ``duplicated``; only the few rows that share a key with another candidate are decided
one at a time, because a rejected row reserves neither its email nor its id. The variables
text of a row whose cells are plain is built in one tight loop (decode, merge, encode); a
row that fails there, or whose cells are not plain, is encoded by ``staged_variables``
itself, which also gives the exact cause that is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from include.campaign import audience
from include.campaign.audience import (
    _DECODER,
    MAX_EMAIL_LENGTH,
    MAX_VARIABLES_CHARS,
    MAX_VARIABLES_DEPTH,
    Rejection,
    ScreenedRows,
    StagedLookup,
    _encode_variables,
    _zone_name,
    layout,
    normalize_email,
    normalize_recipient_id,
    staged_variables,
)
from include.campaign.windows import DEFAULT_TIMEZONE, known_zones

log = logging.getLogger(__name__)

_NONE = type(None)
# Cells passed to the variables as they are: what audience._variable returns unchanged.
_PLAIN = {str, int, bool, _NONE}
# Cells whose equality is their text's: the key of a combination encoded once per chunk.
_KEYS = {str, int, _NONE}


def _text(column: pd.Series, normalize: Callable[[Any], str | None], lower: bool) -> pd.Series:
    """A key column trimmed (and lower-cased), None where NULL or empty; as ``normalize`` would."""
    kinds = set(map(type, column))
    if kinds <= {str, _NONE}:  # .str keeps None as it is
        text = column.str.strip()
        if lower:
            text = text.str.lower()
        return text.where(text != "", None)
    if kinds <= {int} and not lower:  # an INTEGER id column
        return column.map(str)
    return pd.Series(list(map(normalize, column)), index=column.index, dtype=object)


def _zones(column: pd.Series, default_zone: str) -> pd.Series:
    """Each row's zone name to check (``audience._zone_name``): trimmed, NULL or empty the default."""
    if set(map(type, column)) <= {str, _NONE}:
        text = column.str.strip()
        return text.where(text.notna() & (text != ""), default_zone)
    return pd.Series([_zone_name(cell, default_zone) for cell in column], index=column.index, dtype=object)


def _plain_variables(names: list[str], values_of: Sequence[tuple], raws: Sequence[Any]) -> list[str | None]:
    """Each row's variables text, or None where the row must go through ``staged_variables`` (a
    cell that is not plain, a bound that may be broken, anything that raised): the same decoder
    and encoder, without a function call per step."""
    out: list[str | None] = [None] * len(raws)
    # Text in the extra columns past the bound is refused before the variables column can replace
    # it; where even the longest cells together are within it, no row needs the count.
    longest = sum(
        max(map(len, [v for v in cells if type(v) is str]), default=0)
        for cells in zip(*values_of, strict=True)
    )
    count_text = longest > MAX_VARIABLES_CHARS
    scan, encode = _DECODER.scan_once, _encode_variables  # scan_once: what decode() runs, unwrapped
    for k, (values, raw) in enumerate(zip(values_of, raws, strict=True)):
        if count_text and sum(len(v) for v in values if type(v) is str) > MAX_VARIABLES_CHARS:
            continue
        variables = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        if raw is not None:
            if type(raw) is not str or len(raw) > MAX_VARIABLES_CHARS:
                continue
            if raw.count("{") + raw.count("[") > MAX_VARIABLES_DEPTH:
                continue  # may be nested too deep: the exact path walks it
            try:
                parsed, end = scan(raw, 0)
            except Exception:  # StopIteration, a JSONDecodeError, a refused NaN: the exact path says why
                continue
            if end != len(raw) or type(parsed) is not dict:  # whitespace around it, or not an object
                continue
            variables.update(parsed)
        try:
            encoded = encode(variables)
        except Exception:
            continue
        if len(encoded) <= MAX_VARIABLES_CHARS:
            out[k] = encoded
    return out


def _distinct(columns: list[list[Any]], count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's combination of these cells as a code, and one row of each code; None when the
    cells' types could make unequal texts equal (a bool equals an int, a float too)."""
    if not all(set(map(type, cells)) <= _KEYS for cells in columns):
        return None
    codes = np.zeros(count, dtype=np.int64)
    for cells in columns:
        column_codes, uniques = pd.factorize(np.array(cells, dtype=object), use_na_sentinel=False)
        codes, _ = pd.factorize(codes * len(uniques) + column_codes)  # dense again: below count
    _, first = np.unique(codes, return_index=True)
    return codes, first


def _variables_column(
    names: list[str], extras: list[list[Any]], raws: list[Any] | None, count: int
) -> list[str | None]:
    """The plain loop's text for each row; a combination of cells seen before in the chunk is
    encoded once (lists repeat their variables: a segment, a locale, a first name)."""
    if not all(set(map(type, cells)) <= _PLAIN for cells in extras):
        return [None] * count
    raws = raws if raws is not None else [None] * count
    distinct = _distinct([*extras, raws], count)
    if distinct is None or len(distinct[1]) == count:
        return _plain_variables(names, list(zip(*extras, strict=True)) or [()] * count, raws)
    codes, first = distinct
    values_of = list(zip(*[[cells[k] for k in first] for cells in extras], strict=True)) or [()] * len(first)
    texts = np.empty(len(first), dtype=object)
    texts[:] = _plain_variables(names, values_of, [raws[k] for k in first])
    return texts[codes].tolist()


def screen_frame(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    first_source_row: int,
    staged: StagedLookup,
    suppressed: Callable[[set[str]], set[str]] | None = None,
    default_zone: str = DEFAULT_TIMEZONE,
) -> ScreenedRows:
    """``audience.screen_rows``, with the chunk as a DataFrame (same arguments, same result)."""
    columns = list(columns)
    # dtype object: the driver's values as they are (pandas would make an INTEGER column with a
    # NULL float, and ids past 2**53 inexact). Columns are addressed by position, as screen_rows does.
    frame = pd.DataFrame(list(rows), columns=range(len(columns)), dtype=object)
    i_id, i_email, i_vars, i_zone, extra = layout(columns)

    ids = _text(frame[i_id], normalize_recipient_id, lower=False)
    emails = _text(frame[i_email], normalize_email, lower=True)
    valid = emails.str.len().le(MAX_EMAIL_LENGTH) & emails.str.fullmatch(audience.EMAIL_PATTERN, na=False)
    id_of, email_of = ids.to_numpy(), emails.to_numpy()
    # Reasons by precedence: each assignment overrides the ones before it.
    reason = np.full(len(frame), None, dtype=object)
    zone_of = None
    if i_zone is not None:
        zones = _zones(frame[i_zone], default_zone)
        zone_of = zones.to_numpy()
        reason[~zones.isin(known_zones()).to_numpy()] = "invalid_timezone"
    reason[~valid.to_numpy()] = "invalid_email"
    reason[emails.isna().to_numpy()] = "missing_email"
    reason[ids.isna().to_numpy()] = "missing_recipient_id"

    # One set-based look-up for the chunk's well-formed keys, as screen_rows makes.
    well_formed = pd.isna(reason)
    chunk_emails = set(email_of[well_formed])
    seen_emails, seen_ids = staged(chunk_emails, set(id_of[well_formed]))
    blocked = suppressed(chunk_emails) if suppressed is not None else set()
    open_ = well_formed.copy()
    for rejected, why in (
        (emails.isin(blocked), "suppressed"),
        (ids.isin(seen_ids), "duplicate_recipient_id"),
        (emails.isin(seen_emails), "duplicate_email"),
    ):
        hit = open_ & rejected.to_numpy()
        reason[hit] = why
        open_ &= ~hit
    # A staged email's row is still a duplicate_recipient_id if an earlier winner has its id.
    staged_email_rows = np.flatnonzero(hit)

    # Variables of the candidates: the plain loop, then the exact path for what it left.
    candidates = np.flatnonzero(open_)
    names = [name for name, _ in extra]
    extras = [frame[i].take(candidates).tolist() for _, i in extra]
    raws = frame[i_vars].take(candidates).tolist() if i_vars is not None else None
    variables = np.full(len(frame), None, dtype=object)
    variables[candidates] = _variables_column(names, extras, raws, len(candidates))
    causes: dict[int, ValueError | TypeError] = {}
    for position in candidates[pd.isna(variables[candidates])].tolist():
        row = [frame.iat[position, i] for i in range(len(columns))]
        try:
            variables[position] = staged_variables(row, extra, None if i_vars is None else row[i_vars])
        except (ValueError, TypeError) as err:
            causes[position] = err

    # Among candidates with variables, the first row of an id or an email wins; a row that shares
    # neither with any other wins outright, the others are decided in order.
    winners = open_.copy()
    winners[list(causes)] = False
    contenders = np.flatnonzero(winners)
    shared = ids.take(contenders).duplicated(keep=False) | emails.take(contenders).duplicated(keep=False)
    taken_ids: set[str] = set()
    taken_emails: set[str] = set()
    for position in contenders[shared.to_numpy()].tolist():
        if id_of[position] in taken_ids:
            reason[position] = "duplicate_recipient_id"
            winners[position] = False
        elif email_of[position] in taken_emails:
            reason[position] = "duplicate_email"
            winners[position] = False
        else:
            taken_ids.add(id_of[position])
            taken_emails.add(email_of[position])
    # Rows whose reason depends on the winners before them: one with a staged email, one whose
    # variables failed (named a duplicate if an earlier winner holds its key).
    won = np.flatnonzero(winners).tolist()
    if causes or len(staged_email_rows):
        first_by_id = dict(zip(id_of[won].tolist(), won, strict=True))
        first_by_email = dict(zip(email_of[won].tolist(), won, strict=True))
        for position in staged_email_rows.tolist():
            if first_by_id.get(id_of[position], position) < position:
                reason[position] = "duplicate_recipient_id"
        for position in causes:
            if first_by_id.get(id_of[position], position) < position:
                reason[position] = "duplicate_recipient_id"
            elif first_by_email.get(email_of[position], position) < position:
                reason[position] = "duplicate_email"
            else:
                reason[position] = "invalid_variables"

    screened = ScreenedRows(
        id_of[won].tolist(),
        email_of[won].tolist(),
        variables[won].tolist(),
        [first_source_row + position for position in won],
        zone_of[won].tolist() if zone_of is not None else [None] * len(won),
    )
    raw_emails = frame[i_email].to_numpy()
    for position in np.flatnonzero(~pd.isna(reason)).tolist():
        raw_email = audience._scalar(raw_emails[position])
        screened.rejected.append(
            Rejection(
                first_source_row + position,
                id_of[position],
                None if raw_email is None else str(raw_email),
                reason[position],
            )
        )
    invalid = [p for p in causes if reason[p] == "invalid_variables"]
    if invalid:  # the cause, never the values (they may be personal data)
        first = min(invalid)
        log.warning(
            "%d row(s) rejected as invalid_variables (first: %s)",
            len(invalid),
            f"source row {first_source_row + first}, {audience._cause(causes[first])}",
        )
    return screened
