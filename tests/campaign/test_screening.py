"""Issue 24: screening a chunk as a DataFrame gives what the row-by-row definition gives.

``audience.screen_rows`` is the oracle: on hostile chunks (every cell type a driver or a
DataFrame hands over, keys that collide within the chunk and with what is staged, bad
variables next to good ones) ``screening.screen_frame`` must accept the same rows with the same
variables text and reject the same rows with the same reasons, in the same order, and log the
same cause.
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.campaign.audience import MAX_VARIABLES_CHARS, screen_rows
from include.campaign.screening import screen_frame

POOL_IDS = ["1", " 1", "2", "02", "3 ", "", "  "]
POOL_EMAILS = [
    "a@example.com",
    " A@Example.com ",
    "b@example.com",
    "B@EXAMPLE.COM\t",
    "c@example.com",
    "\u212aate@example.com",  # Kelvin sign: lower-cases to a plain "k"
    "İ@example.com",
    "bad-at-example.com",
    "x@" + "a" * 250 + ".com",
    "",
    " ",
    "d@example.com\x1c",  # str.strip() removes the ASCII separators too
    "e@example.com\u00a0",
]
ZONES = ["Europe/Berlin", " Asia/Kathmandu ", "", "Mars/Olympus", "utc", "UTC"]
GOOD_VARIABLES = ['{"segment": "s1"}', '{"b": 1, "a": "x"}', "{}", ' {"sp": 1} ', '{"n": 1.5, "z": null}']
BAD_VARIABLES = [
    '{"a": NaN}',
    '{"a": 1e999}',
    "[1, 2]",
    "not json",
    '{"a": ' + "[" * 40 + "]" * 40 + "}",
    '{"a": "' + "x" * (MAX_VARIABLES_CHARS + 10) + '"}',
    '{"first_name": "short"}',
]

anything = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.just(pd.NA),
    st.just(pd.NaT),
    st.integers(-5, 5),
    st.just(2**60 + 1),  # past float precision: must not pass through a float
    st.floats(allow_nan=False, allow_infinity=True, width=32),
    st.just(3.0),
    st.booleans(),
    st.just(Decimal("4")),
    st.just(np.int64(7)),
    st.just(np.float64(8.0)),
    st.just(np.str_(" np@example.com ")),
    st.just(date(2026, 1, 2)),
    st.just(datetime(2026, 1, 2, 3, 4)),
    st.text(max_size=6),
)
ids = st.one_of(st.sampled_from(POOL_IDS), st.integers(0, 4), anything)
emails = st.one_of(st.sampled_from(POOL_EMAILS), anything)
variables = st.one_of(
    st.sampled_from(GOOD_VARIABLES),
    st.sampled_from(BAD_VARIABLES),
    st.just({"from": "a driver"}),
    st.just({"x": float("inf")}),
    anything,
)
zones = st.one_of(st.sampled_from(ZONES), anything)
first_names = st.one_of(st.sampled_from(["Ada", "Grace", " Zoë ", "x" * (MAX_VARIABLES_CHARS + 1)]), anything)


@st.composite
def chunks(draw):
    columns = ["recipient_id", "email"]
    for optional in ("variables", "timezone", "first_name", "tier"):
        if draw(st.booleans()):
            columns.append(optional)
    draw(st.randoms()).shuffle(columns)
    cell = {
        "recipient_id": ids,
        "email": emails,
        "variables": variables,
        "timezone": zones,
        "first_name": first_names,
        "tier": st.one_of(st.sampled_from(["gold", "silver"]), st.integers(0, 3), anything),
    }
    # Plain rows (the fast paths) mostly, hostile cells sometimes.
    plain = draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(0, 25))):
        row = []
        for column in columns:
            if plain and column == "recipient_id":
                row.append(draw(st.sampled_from(POOL_IDS[:5])))
            elif plain and column == "email":
                row.append(draw(st.sampled_from(POOL_EMAILS[:5])))
            elif plain and column == "variables":
                row.append(draw(st.sampled_from(GOOD_VARIABLES)))
            else:
                row.append(draw(cell[column]))
        rows.append(tuple(row))
    staged_emails = set(draw(st.lists(st.sampled_from(["a@example.com", "c@example.com"]), max_size=2)))
    staged_ids = set(draw(st.lists(st.sampled_from(["2", "3"]), max_size=2)))
    blocked = set(draw(st.lists(st.sampled_from(["b@example.com", "kate@example.com"]), max_size=2)))
    return columns, rows, staged_emails, staged_ids, blocked


def _screen(screen, chunk, caplog):
    columns, rows, staged_emails, staged_ids, blocked = chunk
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        screened = screen(
            columns,
            rows,
            101,
            lambda e, i: (e & staged_emails, i & staged_ids),
            lambda e: e & blocked,
            "Europe/Berlin",
        )
    logged = [r.getMessage() for r in caplog.records if "invalid_variables" in r.getMessage()]
    return screened.accepted, screened.rejected, screened.zones, logged


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN (a rejection keeps the raw email as written)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=chunks())
def test_a_chunk_screens_the_same_as_a_frame_and_row_by_row(chunk, caplog):
    accepted, rejected, zones, logged = _screen(screen_rows, chunk, caplog)
    f_accepted, f_rejected, f_zones, f_logged = _screen(screen_frame, chunk, caplog)

    assert f_accepted == accepted
    assert [tuple(map(type, a)) for a in f_accepted] == [tuple(map(type, a)) for a in accepted]
    assert [(r.source_row, r.reason) for r in f_rejected] == [(r.source_row, r.reason) for r in rejected]
    for mine, theirs in zip(f_rejected, rejected, strict=True):
        assert _same(mine.recipient_id, theirs.recipient_id) and _same(mine.email, theirs.email)
    assert f_zones == zones
    assert f_logged == logged


def test_the_duplicate_rules_worked_through_both(caplog):
    rows = [
        ("1", "a@example.com", '{"s": 1}'),
        ("1", "b@example.com", '{"s": 2}'),  # id taken: does not reserve b
        ("2", "B@example.com", '{"s": 3}'),  # b still free: accepted
        ("3", "c@example.com", "not json"),  # invalid_variables, reserves nothing
        ("3", "d@example.com", '{"s": 4}'),
        ("4", "a@example.com", "not json"),  # a taken by row 1: duplicate_email, not its variables
        ("5", "staged@example.com", "{}"),
    ]
    chunk = (["recipient_id", "email", "variables"], rows, {"staged@example.com"}, set(), set())

    accepted, rejected, _, logged = _screen(screen_frame, chunk, caplog)

    assert [(a[0], a[1], a[3]) for a in accepted] == [
        ("1", "a@example.com", 101),
        ("2", "b@example.com", 103),
        ("3", "d@example.com", 105),
    ]
    assert [(r.source_row, r.reason) for r in rejected] == [
        (102, "duplicate_recipient_id"),
        (104, "invalid_variables"),
        (106, "duplicate_email"),
        (107, "duplicate_email"),
    ]
    assert logged == [
        "1 row(s) rejected as invalid_variables (first: source row 104, variables is not JSON "
        "(Expecting value at character 0))"
    ]
    assert _screen(screen_rows, chunk, caplog) == (accepted, rejected, [None] * 3, logged)


def test_columns_of_nothing_but_nulls_screen_the_same(caplog):
    columns = ["recipient_id", "email", "timezone", "first_name", "variables"]
    for rows in (
        [(None, None, None, None, None)] * 3,
        [("1", "a@example.com", None, None, None), ("2", "b@example.com", None, None, None)],
        [(1, "a@example.com", float("nan"), float("nan"), float("nan"))],
    ):
        chunk = (columns, rows, set(), set(), set())
        assert _screen(screen_frame, chunk, caplog) == _screen(screen_rows, chunk, caplog)
