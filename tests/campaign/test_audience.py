"""Unit tests of recipient screening: ``screen_chunk`` and the address/id normalisers, through both
ways of screening a chunk (the ``screener`` fixture).

Rows are fed as plain dicts and as ``DataFrame.to_dict("records")`` rows of a
real pandas DataFrame, which is how ``plan_campaign`` hands them over (an
INTEGER column with a NULL arrives as float, a missing text cell as NaN).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from include.campaign.audience import (
    Recipient,
    Rejection,
    is_valid_email,
    normalize_email,
    normalize_recipient_id,
)
from tests.helpers import screen_chunk

# 64 + 1 + (63 + 1 + 63 + 1 + 61) = 254 characters, every label within 63.
LONGEST_VALID_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61
TOO_LONG_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 62


@pytest.fixture(autouse=True, params=["rows", "frame"])
def screener(request, monkeypatch):
    """Each screening test holds both for the row-by-row definition and for the DataFrame
    screening the plan uses (``screening.screen_frame``, issue 24)."""
    if request.param == "frame":
        import include.campaign.audience as audience
        import tests.helpers
        from include.campaign.screening import screen_frame

        monkeypatch.setattr(tests.helpers, "screen_rows", screen_frame)
        monkeypatch.setattr(audience, "screen_rows", screen_frame)
    return request.param


def row(recipient_id, email, **extra):
    return {"recipient_id": recipient_id, "email": email, **extra}


def screen(rows, first_source_row=1, known_emails=(), known_ids=()):
    return screen_chunk(rows, first_source_row, set(known_emails), set(known_ids))


def reasons(screened) -> list[tuple[int, str]]:
    return [(r.source_row, r.reason) for r in screened.rejected]


class TestIsValidEmail:
    @pytest.mark.parametrize(
        "email",
        [
            "jane@example.com",
            "jane+newsletter@example.com",
            "jane.doe@mail.example.co.uk",
            "o'brien@example.com",
            "j_d-1@sub-domain.example.io",
            "JANE@EXAMPLE.COM",
            "x@123.example.com",
            LONGEST_VALID_EMAIL,
        ],
    )
    def test_accepts(self, email):
        assert is_valid_email(email) is True

    @pytest.mark.parametrize(
        "email",
        [
            "jane.example.com",
            "jane@@example.com",
            "jane@doe@example.com",
            "jane doe@example.com",
            "jane@exa mple.com",
            "jane@localhost",
            ".jane@example.com",
            "jane.@example.com",
            "jane..doe@example.com",
            "jane@example..com",
            "jane@.example.com",
            "jane@example.com.",
            "jane@-example.com",
            "jane@example-.com",
            "@example.com",
            "jane@",
            "",
            "jane@example.com\n",
            TOO_LONG_EMAIL,
        ],
    )
    def test_rejects(self, email):
        assert is_valid_email(email) is False

    def test_the_length_limit_is_254_characters(self):
        assert (len(LONGEST_VALID_EMAIL), len(TOO_LONG_EMAIL)) == (254, 255)


class TestNormalizeEmail:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Jane.Doe@Example.COM", "jane.doe@example.com"),
            ("  jane@example.com\t", "jane@example.com"),
            ("jane+Tag@example.com", "jane+tag@example.com"),
            ("", None),
            ("   ", None),
            (None, None),
            (float("nan"), None),
            (np.float64("nan"), None),
        ],
    )
    def test_normalises(self, value, expected):
        assert normalize_email(value) == expected


class TestNormalizeRecipientId:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (7, "7"),
            (7.0, "7"),
            (np.int64(7), "7"),
            (np.float64(7.0), "7"),
            (7.5, "7.5"),
            (" r-7 ", "r-7"),
            ("007", "007"),
            ("", None),
            ("  ", None),
            (None, None),
            (float("nan"), None),
            (np.float64("nan"), None),
        ],
    )
    def test_normalises(self, value, expected):
        assert normalize_recipient_id(value) == expected


class TestScreenChunk:
    def test_valid_rows_are_accepted_with_normalised_id_and_email(self):
        screened = screen(
            [row(1, "Jane@Example.com", first_name="Jane"), row("r2", " bob@example.org ", first_name="Bob")]
        )

        assert screened.accepted == [
            Recipient("1", "jane@example.com", {"first_name": "Jane"}),
            Recipient("r2", "bob@example.org", {"first_name": "Bob"}),
        ]
        assert screened.rejected == []

    @pytest.mark.parametrize(
        ("bad_row", "reason", "rejected_id", "rejected_email"),
        [
            (row(None, "a@example.com"), "missing_recipient_id", None, "a@example.com"),
            (row("  ", "a@example.com"), "missing_recipient_id", None, "a@example.com"),
            (row(float("nan"), "a@example.com"), "missing_recipient_id", None, "a@example.com"),
            (row(5, None), "missing_email", "5", None),
            (row(5, "   "), "missing_email", "5", "   "),
            (row(5, float("nan")), "missing_email", "5", None),
            (row(5, "not-an-email"), "invalid_email", "5", "not-an-email"),
            (row(5, "a@b@example.com"), "invalid_email", "5", "a@b@example.com"),
            (row(5, "a@example.com", variables="{not json"), "invalid_variables", "5", "a@example.com"),
            (row(5, "a@example.com", variables="[1, 2]"), "invalid_variables", "5", "a@example.com"),
            (row(5, "a@example.com", variables='"text"'), "invalid_variables", "5", "a@example.com"),
        ],
    )
    def test_a_bad_row_is_rejected_with_its_reason(self, bad_row, reason, rejected_id, rejected_email):
        screened = screen([row(1, "ok@example.com"), bad_row], first_source_row=10)

        assert [r.recipient_id for r in screened.accepted] == ["1"]
        assert screened.rejected == [Rejection(11, rejected_id, rejected_email, reason)]

    def test_rejection_keeps_the_email_as_written(self):
        screened = screen([row(1, "Jane@Example.com"), row(2, " JANE@example.COM ")])

        assert screened.rejected == [Rejection(2, "2", " JANE@example.COM ", "duplicate_email")]

    def test_duplicate_email_is_case_insensitive_and_the_first_one_wins(self):
        screened = screen(
            [row(1, "jane@example.com"), row(2, "bob@example.com"), row(3, "JANE@EXAMPLE.COM")],
            first_source_row=1,
        )

        assert [(r.recipient_id, r.email) for r in screened.accepted] == [
            ("1", "jane@example.com"),
            ("2", "bob@example.com"),
        ]
        assert reasons(screened) == [(3, "duplicate_email")]

    def test_duplicate_email_against_earlier_chunks_leaves_known_emails_unchanged(self):
        known = {"jane@example.com"}

        screened = screen_chunk([row(10, "Jane@Example.com"), row(11, "new@example.com")], 1, known, set())

        assert [r.recipient_id for r in screened.accepted] == ["11"]
        assert reasons(screened) == [(1, "duplicate_email")]
        assert known == {"jane@example.com"}

    def test_duplicate_recipient_id_and_the_first_one_wins(self):
        screened = screen([row(7, "a@example.com"), row(7.0, "b@example.com"), row("7", "c@example.com")])

        assert [(r.recipient_id, r.email) for r in screened.accepted] == [("7", "a@example.com")]
        assert reasons(screened) == [(2, "duplicate_recipient_id"), (3, "duplicate_recipient_id")]

    def test_duplicate_recipient_id_against_earlier_chunks_leaves_known_ids_unchanged(self):
        known = {"7"}

        screened = screen_chunk([row(7, "a@example.com"), row(8, "b@example.com")], 1, set(), known)

        assert [r.recipient_id for r in screened.accepted] == ["8"]
        assert reasons(screened) == [(1, "duplicate_recipient_id")]
        assert known == {"7"}

    def test_a_rejected_row_does_not_reserve_its_email_or_id(self):
        screened = screen(
            [
                row(None, "jane@example.com"),
                row(1, "jane@example.com", variables="[]"),
                row(1, "jane@example.com"),
            ]
        )

        assert [(r.recipient_id, r.email) for r in screened.accepted] == [("1", "jane@example.com")]
        assert reasons(screened) == [(1, "missing_recipient_id"), (2, "invalid_variables")]

    def test_extra_columns_become_variables_and_the_json_variables_column_wins(self):
        screened = screen(
            [
                row(
                    1,
                    "jane@example.com",
                    first_name="Column",
                    city="Oslo",
                    points=12,
                    vip=True,
                    variables='{"first_name": "Json", "tier": "gold"}',
                )
            ]
        )

        assert screened.accepted == [
            Recipient(
                "1",
                "jane@example.com",
                {"first_name": "Json", "city": "Oslo", "points": 12, "vip": True, "tier": "gold"},
            )
        ]

    def test_a_variables_dict_is_taken_as_is(self):
        screened = screen([row(1, "jane@example.com", variables={"first_name": "Jane"})])

        assert screened.accepted[0].variables == {"first_name": "Jane"}

    def test_null_extra_columns_and_a_null_variables_column_are_omitted(self):
        screened = screen(
            [row(1, "jane@example.com", first_name=None, city=float("nan"), tier="gold", variables=None)]
        )

        assert screened.accepted[0].variables == {"tier": "gold"}

    def test_source_rows_continue_from_first_source_row(self):
        rows = [row(1, "a@example.com"), row(None, "b@example.com"), row(3, "bad"), row(1, "d@example.com")]

        screened = screen(rows, first_source_row=501)

        assert reasons(screened) == [
            (502, "missing_recipient_id"),
            (503, "invalid_email"),
            (504, "duplicate_recipient_id"),
        ]

    def test_an_empty_chunk_screens_to_nothing(self):
        screened = screen([], first_source_row=1001, known_emails={"a@example.com"})

        assert (screened.accepted, screened.rejected) == ([], [])


class TestScreenChunkOnDataFrameRows:
    """Rows as they come from ``hook.get_df_by_chunks(...)`` then ``chunk.to_dict("records")``."""

    @pytest.fixture
    def records(self):
        frame = pd.DataFrame(
            {
                # An INTEGER column with a NULL: pandas makes it float64 (7.0, NaN).
                "recipient_id": [7, 8, None, 10, 7, 12],
                "email": [
                    "Ann@Example.com",
                    None,
                    "c@example.com",
                    "ANN@example.com",
                    "e@example.com",
                    "bad",
                ],
                "first_name": ["Ann", "Bob", "Cy", None, "Eve", "Fay"],
                "points": [5, 6, 7, 8, 9, 10],
                "variables": ['{"tier": "gold"}', None, None, None, None, None],
            }
        )
        assert frame["recipient_id"].dtype == np.float64
        return frame.to_dict("records")

    def test_rows_are_screened_with_float_ids_turned_back_into_integers(self, records):
        screened = screen_chunk(records, 1, set(), set())

        assert screened.accepted == [
            Recipient("7", "ann@example.com", {"first_name": "Ann", "points": 5, "tier": "gold"}),
        ]
        assert [(r.source_row, r.recipient_id, r.email, r.reason) for r in screened.rejected] == [
            (2, "8", None, "missing_email"),
            (3, None, "c@example.com", "missing_recipient_id"),
            (4, "10", "ANN@example.com", "duplicate_email"),
            (5, "7", "e@example.com", "duplicate_recipient_id"),
            (6, "12", "bad", "invalid_email"),
        ]

    def test_integer_variables_stay_integers(self, records):
        screened = screen_chunk(records, 1, set(), set())

        assert type(screened.accepted[0].variables["points"]) is int

    def test_a_null_text_variable_is_omitted(self):
        frame = pd.DataFrame(
            {"recipient_id": [1, 2], "email": ["a@example.com", "b@example.com"], "city": ["Oslo", None]}
        )

        screened = screen_chunk(frame.to_dict("records"), 1, set(), set())

        assert [r.variables for r in screened.accepted] == [{"city": "Oslo"}, {}]

    def test_a_float_variable_column_with_a_null_omits_the_null(self):
        frame = pd.DataFrame({"recipient_id": [1, 2], "email": ["a@x.io", "b@x.io"], "score": [1.5, None]})

        screened = screen_chunk(frame.to_dict("records"), 1, set(), set())

        assert [r.variables for r in screened.accepted] == [{"score": 1.5}, {}]
        assert not any(
            isinstance(v, float) and math.isnan(v) for r in screened.accepted for v in r.variables.values()
        )

    def test_a_null_timestamp_variable_is_omitted(self):
        frame = pd.DataFrame(
            {
                "recipient_id": [1, 2],
                "email": ["a@example.com", "b@example.com"],
                "signed_up": pd.to_datetime(["2026-01-02", None]),
            }
        )

        screened = screen_chunk(frame.to_dict("records"), 1, set(), set())

        assert [r.variables for r in screened.accepted] == [{"signed_up": "2026-01-02 00:00:00"}, {}]


class TestVariablesJson:
    @pytest.mark.parametrize(
        "variables",
        [
            {},
            {"b": 1, "a": "x"},
            {"name": "Zoë 😀", "quote": 'say "hi"\n', "n": -3, "f": 2.5, "big": 1e300},
            {"ok": True, "no": False, "none": None, "nested": {"z": [1, {"y": 2}], "a": {}}},
        ],
    )
    def test_is_written_as_json_dumps_with_sorted_keys_writes_it(self, variables):
        from include.campaign.audience import _encode_variables

        assert _encode_variables(variables) == json.dumps(variables, sort_keys=True)


class TestHostileVariables:
    """Issue 20: variables that would not encode, or would swell a request, are refused at screening."""

    DEEP = "[" * 100_000 + "]" * 100_000

    @staticmethod
    def _screen(rows, columns=("recipient_id", "email", "variables")):
        from include.campaign.audience import screen_rows

        return screen_rows(list(columns), rows, 1, lambda emails, ids: (set(), set()))

    @pytest.mark.parametrize(
        "raw",
        [
            '{"a": NaN}',
            '{"a": Infinity}',
            '{"a": -Infinity}',
            '{"a": 1e999}',
            '{"a": [1, -1e999]}',
            '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
            '{"a": ' + "[" * 33 + "]" * 33 + "}",
            '{"a": "' + "x" * 20_000 + '"}',
            "[1, 2]",
            "not json",
            {"a": float("nan")},
            {"a": float("inf")},
        ],
        ids=[
            "nan",
            "inf",
            "-inf",
            "1e999",
            "nested-1e999",
            "deep-100000",
            "deep-34",
            "20kB",
            "array",
            "text",
            "dict-nan",
            "dict-inf",
        ],
    )
    def test_a_hostile_variables_value_rejects_only_its_row(self, raw):
        screened = self._screen([["1", "a@example.com", raw], ["2", "b@example.com", '{"ok": 1}']])

        assert [(r.recipient_id, r.reason) for r in screened.rejected] == [("1", "invalid_variables")]
        assert [a[:3] for a in screened.accepted] == [("2", "b@example.com", '{"ok": 1}')]

    def test_a_deeply_nested_dict_from_a_driver_is_refused_without_recursion(self):
        value: dict = {}
        node = value
        for _ in range(100_000):
            node["a"] = {}
            node = node["a"]

        screened = self._screen([["1", "a@example.com", value]])

        assert [r.reason for r in screened.rejected] == ["invalid_variables"]

    def test_nesting_up_to_the_limit_is_accepted(self):
        from include.campaign.audience import MAX_VARIABLES_DEPTH

        raw = '{"a": ' + "[" * (MAX_VARIABLES_DEPTH - 1) + "]" * (MAX_VARIABLES_DEPTH - 1) + "}"
        screened = self._screen([["1", "a@example.com", raw]])

        assert screened.rejected == [] and len(screened.accepted) == 1

    def test_variables_just_within_the_size_limit_are_accepted_and_just_over_rejected(self):
        from include.campaign.audience import MAX_VARIABLES_CHARS

        fits = '{"a": "' + "x" * (MAX_VARIABLES_CHARS - 9) + '"}'
        assert len(fits) == MAX_VARIABLES_CHARS
        over = '{"a": "' + "x" * (MAX_VARIABLES_CHARS - 8) + '"}'
        screened = self._screen([["1", "a@example.com", fits], ["2", "b@example.com", over]])

        assert [a[0] for a in screened.accepted] == ["1"]
        assert [(r.recipient_id, r.reason) for r in screened.rejected] == [("2", "invalid_variables")]

    def test_the_size_limit_applies_to_variables_built_from_other_columns(self):
        columns = ("recipient_id", "email", "note")
        screened = self._screen(
            [["1", "a@example.com", "y" * 10_000_000], ["2", "b@example.com", "short"]], columns
        )

        assert [(r.recipient_id, r.reason) for r in screened.rejected] == [("1", "invalid_variables")]
        assert [a[:3] for a in screened.accepted] == [("2", "b@example.com", '{"note": "short"}')]

    def test_the_size_limit_applies_to_the_staged_json_of_columns_and_variables_together(self):
        from include.campaign.audience import MAX_VARIABLES_CHARS

        half = "z" * (MAX_VARIABLES_CHARS // 2)
        columns = ("recipient_id", "email", "note", "variables")
        screened = self._screen([["1", "a@example.com", half, '{"b": "' + half + '"}']], columns)

        assert [r.reason for r in screened.rejected] == ["invalid_variables"]

    def test_escaped_text_counts_at_its_encoded_length(self):
        from include.campaign.audience import MAX_VARIABLES_CHARS

        # 😀 is 12 characters once encoded as ASCII JSON; 2,000 of them fit the cell but not the stage.
        raw = '{"a": "' + "😀" * 2_000 + '"}'
        assert len(raw) < MAX_VARIABLES_CHARS
        screened = self._screen([["1", "a@example.com", raw]])

        assert [r.reason for r in screened.rejected] == ["invalid_variables"]

    def test_the_log_names_the_cause_but_never_the_value(self, caplog):
        with caplog.at_level("WARNING"):
            self._screen([["1", "a@example.com", '{"secret": NaN}']])

        assert "NaN" in caplog.text and "secret" not in caplog.text
