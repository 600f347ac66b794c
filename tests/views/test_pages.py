"""include/views/pages.py: a value from the warehouse is only ever text, a link stays in the view,
and a malformed value is shown as malformed; for the examples of issue 20 and for values
Hypothesis makes (run through ``report``'s parsing as the view runs them)."""

from __future__ import annotations

import itertools
import json
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from include.campaign import report
from include.views import pages

ORIGIN = "http://airflow.test"
LIST_URL = f"{ORIGIN}/campaigns/"
NASTY = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)",
    "//other.example/x",
    "..",
    ".",
    "",
    "javascript:alert(1)",
    "\\\\other.example\\x",
    "&amp;",
    "</td></tr><tr><td>",
    "<!--",
    "]]>",
    "%2e%2e",
    "\t//x",
    "</style><style>",
    '=HYPERLINK("x")',
]
values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(NASTY),
    st.tuples(st.text(max_size=4), st.sampled_from(NASTY), st.text(max_size=4)).map("".join),
)
optional = st.none() | values
counts = st.integers(0, 10**6)
# A count column can hold a number, or, on SQLite (which keeps what it is given), anything.
loose_counts = st.one_of(counts, st.integers(), st.none(), values, st.floats(), st.booleans())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(values, inner, max_size=3),
    max_leaves=6,
)
batches_by_status = st.one_of(
    st.dictionaries(values, counts, max_size=4).map(json.dumps),  # what definition.summarize writes
    st.dictionaries(values, counts, max_size=4).map(lambda d: json.dumps(d, ensure_ascii=False)),
    st.dictionaries(values, json_values, min_size=1, max_size=3).map(json.dumps),  # non-numeric counts
    json_values.map(json.dumps),  # not an object
    values,  # not JSON
    st.none(),
)
campaign_rows = st.fixed_dictionaries(
    {
        "campaign_id": values,
        "dag_id": values,
        "planned_by_run": values,
        "created_at": values,
        "status": values,
        "dry_run": st.booleans(),
        "batches_by_status": batches_by_status,
        "recipients": counts,
        "batches": counts,
        "first_send_at": optional,
        "last_send_at": optional,
        **{o: counts for o in report.OUTCOMES},
        "halts": st.integers(0, 2),
    }
)
ledger_rows = st.fixed_dictionaries(
    {
        "batch_number": st.integers(1, 50) | loose_counts,
        "batch_id": optional,
        "recipient_count": loose_counts,
        "status": values | st.sampled_from(["planned", "scheduled", "delivered"]),
        "send_at": values,
        "attempts": loose_counts,
        "last_error": optional,
        **{o: loose_counts for o in report.OUTCOMES},
    }
)
halt_rows = st.fixed_dictionaries(
    {"run_id": values, "batch_number": loose_counts, "reason": values, "halted_at": values}
)


def listed(raw: dict[str, Any]) -> dict[str, Any]:
    """A row of ``report.campaigns`` from what the warehouse held, parsed as ``report`` parses it."""
    return {**raw, "batches_by_status": report.batch_counts(raw["batches_by_status"])}


def page_of(raw: dict[str, Any], ledger: list, halts: list, rejected: dict) -> dict[str, Any]:
    """What ``report.campaign`` returns for those rows."""
    return {
        **listed(raw),
        "ledger": ledger,
        "halts": halts,
        "rejected": rejected,
        "per_hour": report._series(ledger, 13),
        "per_day": report._series(ledger, 10),
    }


class Parsed(HTMLParser):
    """A page as a browser's tokenizer sees it: its elements (with attribute names), texts, links."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.skeleton: list[tuple] = []
        self.texts: list[str] = []  # and attribute values
        self.hrefs: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.skeleton.append((tag, *(name for name, _ in attrs)))
        self.texts.extend(value or "" for _, value in attrs)
        self.hrefs.extend(value for name, value in attrs if name == "href")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        self.skeleton.append(("/" + tag,))

    def handle_data(self, data):
        self.texts.append(data)

    def handle_comment(self, data):
        self.skeleton.append(("<!--",))

    def handle_decl(self, decl):
        self.skeleton.append(("<!", decl))

    def handle_pi(self, data):
        self.skeleton.append(("<?",))

    def unknown_decl(self, data):
        self.skeleton.append(("<![",))


# The fields whose keys are warehouse values too (a status, a rejection reason, a UTC day or hour).
KEYED_BY_VALUES = ("batches_by_status", "rejected", "per_day", "per_hour")


def benign(value: Any, names=None) -> Any:
    """The same input with every text replaced by a plain one of the same kind for the page (a
    distinct name, or itself if no link can be made to it): the page the template makes."""
    names = itertools.count() if names is None else names
    if isinstance(value, str):
        return value if value in ("", ".", "..") else f"v{next(names)}"
    if isinstance(value, list):
        return [benign(v, names) for v in value]
    if isinstance(value, dict):
        return {
            k: {benign(kk, names): vv for kk, vv in v.items()}
            if k in KEYED_BY_VALUES and isinstance(v, dict)
            else benign(v, names)
            for k, v in value.items()
        }
    return value


def assert_only_text(render, data: Any, shown: list[str]) -> Parsed:
    """The page of ``data`` has exactly the elements and attributes of the template's page (the
    page of ``benign(data)``), and shows each of ``shown`` whole, as text."""
    parsed = Parsed(render(data))
    assert parsed.skeleton == Parsed(render(benign(data))).skeleton
    for value in shown:
        assert any(value in text for text in parsed.texts), value
    return parsed


def assert_links_stay_in_the_view(parsed: Parsed, page_url: str, campaign_ids: set[str]) -> None:
    """Every link is a plain path: to a campaign listed (or its CSV, or the list), or to a batch's task
    in the Airflow UI; never another origin, and never a step up out of the view."""
    for href in parsed.hrefs:
        assert re.fullmatch(r"[A-Za-z0-9._~%/-]+", href) and not href.startswith("//"), href
        # A browser reads %2e as "." in a path (WHATWG URL); urljoin resolves the dot segments.
        resolved = urlsplit(urljoin(page_url, re.sub("%2e", ".", href, flags=re.I)))
        assert (resolved.scheme, resolved.netloc, resolved.query) == ("http", "airflow.test", ""), href
        if view := re.fullmatch(r"/campaigns/([^/]*)(/rejected\.csv)?", resolved.path):
            assert unquote(view[1]) in campaign_ids | {""}, href
        else:
            assert re.fullmatch(r"/dags/[^/]+/runs/[^/]+/tasks/send_batch/mapped/-?\d+", resolved.path), href


def shown_in_list(c: dict[str, Any]) -> list[str]:
    texts = [c["campaign_id"], c["dag_id"], c["planned_by_run"], c["created_at"]]
    texts += [c[k] for k in ("first_send_at", "last_send_at") if c[k] is not None]
    texts += [] if c["dry_run"] else [c["status"]]
    return texts + list(c["batches_by_status"] or ())


@settings(deadline=None, max_examples=150)
@given(st.lists(campaign_rows, max_size=4))
def test_the_list_shows_any_warehouse_value_as_text_and_links_only_into_the_view(raws):
    rows = [listed(r) for r in raws]

    parsed = assert_only_text(pages.campaign_list, rows, [t for c in rows for t in shown_in_list(c)])

    assert_links_stay_in_the_view(parsed, LIST_URL, {c["campaign_id"] for c in rows})
    malformed = sum(c["batches_by_status"] is None for c in rows)
    assert pages.campaign_list(rows).count('<td class="malformed"') == malformed


@settings(deadline=None, max_examples=150)
@given(
    campaign_rows,
    st.lists(ledger_rows, max_size=5),
    st.lists(halt_rows, max_size=2),
    st.dictionaries(values, st.integers(1, 1000), max_size=3),
)
def test_a_campaign_page_shows_any_warehouse_value_as_text_and_links_only_into_the_view(
    raw, ledger, halts, rejected
):
    c = page_of(raw, ledger, halts, rejected)
    shown = [c["campaign_id"], c["dag_id"], c["planned_by_run"], c["created_at"], *rejected, *c["per_hour"]]
    shown += [b[k] for b in ledger for k in ("batch_id", "last_error", "send_at", "status") if b[k]]
    shown += [h[k] for h in halts for k in ("run_id", "reason", "halted_at")]

    parsed = assert_only_text(pages.campaign_page, c, shown)

    page_url = f"{LIST_URL}{quote(c['campaign_id'], safe='')}"
    assert_links_stay_in_the_view(parsed, page_url, {c["campaign_id"]})


ROW = {
    "campaign_id": "x",
    "dag_id": "bulk_email_campaign",
    "planned_by_run": "manual__2026-12-01T09:00:00+00:00",
    "created_at": "2026-12-01T09:00:00Z",
    "status": "planned",
    "dry_run": False,
    "batches_by_status": '{"planned": 1}',
    "recipients": 1,
    "batches": 1,
    "first_send_at": None,
    "last_send_at": None,
    **dict.fromkeys(report.OUTCOMES, 0),
    "halts": 0,
}


def test_values_from_the_warehouse_are_escaped():
    html = pages.campaign_list([listed({**ROW, "dag_id": "<script>alert(1)</script>"})])

    assert "<script>" not in html and "&lt;script&gt;" in html


def test_markup_in_batches_by_status_is_text_or_malformed():
    html = pages.campaign_list(
        [
            listed({**ROW, "campaign_id": "key", "batches_by_status": '{"<img src=x onerror=alert(1)>": 2}'}),
            listed({**ROW, "campaign_id": "count", "batches_by_status": '{"planned": "<img src=x>"}'}),
        ]
    )

    assert "<img" not in html and "2 &lt;img src=x onerror=alert(1)&gt;" in html
    assert '<td class="malformed" title="None">malformed</td>' in html


def test_a_campaign_id_that_is_a_url_links_to_its_own_page():
    html = pages.campaign_list([listed({**ROW, "campaign_id": "//other.example/x"})])

    assert Parsed(html).hrefs == ["%2F%2Fother.example%2Fx"]
    assert Parsed(pages.campaign_list([listed({**ROW, "campaign_id": ".."})])).hrefs == []  # no page to link


def test_a_malformed_row_is_shown_as_malformed_and_the_others_as_they_are():
    bad = ["[1]", '"planned"', "not json", '{"planned": "many"}', '{"planned": 1.5}', '{"a": true}']
    rows = [listed({**ROW, "campaign_id": f"bad{i}", "batches_by_status": t}) for i, t in enumerate(bad)]

    html = pages.campaign_list([*rows, listed(ROW)])

    assert html.count(">malformed</td>") == 6 and "<td>1 planned</td>" in html


def test_a_count_that_is_not_a_number_is_shown_as_malformed():
    batch = {
        "batch_number": "two",
        "batch_id": None,
        "recipient_count": "ten",
        "status": "planned",
        "send_at": "2026-12-01T09:00:00Z",
        "attempts": 0,
        "last_error": None,
        **dict.fromkeys(report.OUTCOMES, 0),
    }
    html = pages.campaign_page(page_of({**ROW, "batches": "4"}, [batch], [], {}))

    assert html.count(">malformed</td>") == 2 and '<span id="batch-count">malformed batches</span>' in html


def test_the_security_policy_allows_the_pages_one_stylesheet_and_nothing_else():
    import base64
    import hashlib

    policy = pages.SECURITY_HEADERS["Content-Security-Policy"]
    digest = base64.b64encode(hashlib.sha256(pages.STYLE.encode()).digest()).decode()
    html = pages.campaign_list([])

    assert f"<style>{pages.STYLE}</style>" in html and html.count("<style") == 1
    assert policy.startswith("default-src 'none'; ") and f"style-src 'sha256-{digest}';" in policy
    assert "frame-ancestors 'self'" in policy and "unsafe" not in policy
    assert " style=" not in html and "<script" not in html
    assert pages.SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
