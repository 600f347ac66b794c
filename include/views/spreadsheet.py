"""CSV for a spreadsheet: the rejected rows' download, with no cell a spreadsheet would run.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula (or
starts one) in Excel, LibreOffice and Google Sheets; OWASP's rule is to prefix it with ``'``,
which makes it text. Every cell is treated so, numbers too: the columns hold what the warehouse
holds, and a rejected row is by definition one the planner did not trust.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def csv_chunks(chunks: Iterable[tuple[Sequence[str], Sequence[Sequence[Any]]]]) -> Iterator[str]:
    """CSV text per ``(column names, rows)`` chunk (``warehouse.stream_rows``), the names first."""
    for i, (columns, rows) in enumerate(chunks):
        out = io.StringIO()
        writer = csv.writer(out)
        if i == 0:
            writer.writerow([cell(c) for c in columns])
        writer.writerows([cell(v) for v in row] for row in rows)
        yield out.getvalue()
