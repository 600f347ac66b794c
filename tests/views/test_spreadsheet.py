"""include/views/spreadsheet.py: OWASP's rule against CSV injection, in every column."""

from __future__ import annotations

import csv
import io

import pytest

from include.views.spreadsheet import cell, csv_chunks


@pytest.mark.parametrize(
    "value, written",
    [
        ('=HYPERLINK("http://other.example","x")', '\'=HYPERLINK("http://other.example","x")'),
        ("@SUM(1+1)", "'@SUM(1+1)"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        (-5, "'-5"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        (" =1", " =1"),
        ("'=1", "'=1"),
        (7, "7"),
        (None, ""),
    ],
)
def test_a_cell_that_a_spreadsheet_would_run_is_made_text(value, written):
    assert cell(value) == written


def test_the_names_come_once_then_every_chunks_rows():
    chunks = [(["email", "=name"], [("=1", None)]), (["email", "=name"], [("@x", 2)])]

    text = "".join(csv_chunks(chunks))

    assert list(csv.reader(io.StringIO(text, newline=""))) == [["email", "'=name"], ["'=1", ""], ["'@x", "2"]]
    assert list(csv_chunks([])) == []
