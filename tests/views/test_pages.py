"""include/views/pages.py: a value from the warehouse is only ever text, a link stays in the view,
and a malformed value is shown as malformed; for the examples of issue 20 and for values
Hypothesis makes (run through ``report``'s parsing as the view runs them)."""

from __future__ import annotations

import itertools
import json
import re
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import pytest
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
# A rate or a threshold as the warehouse returns it: a REAL, NULL, or (SQLite) anything.
rates = st.one_of(st.none(), st.floats(0, 1), st.floats(), st.integers(), values, st.booleans())
campaign_rows = st.fixed_dictionaries(
    {
        "campaign_id": values,
        "dag_id": values,
        "planned_by_run": values,
        "created_at": values,
        "status": values | st.sampled_from(["paused", "cancelled", "planned", "planning", "plan_failed"]),
        "status_reason": optional,
        "submit_ahead_minutes": st.none() | st.integers(0, 14400) | loose_counts,
        "max_complaint_rate": rates,
        "max_hard_bounce_rate": rates,
        "min_results_for_rates": st.none() | loose_counts,
        "dry_run": st.booleans(),
        "batches_by_status": batches_by_status,
        "recipients": counts,
        "batches": counts,
        "first_send_at": optional,
        "last_send_at": optional,
        **{k: st.integers(0, 3) for k in report._BATCH_STATES},
        "next_send_at": st.none() | st.just("2026-12-01T14:00:00Z") | values,
        "next_batch": st.none() | loose_counts,
        "next_note": optional,
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
    return report.progress({**raw, "batches_by_status": report.batch_counts(raw["batches_by_status"])})


def page_of(raw: dict[str, Any], ledger: list, halts: list, rejected: dict) -> dict[str, Any]:
    """What ``report.campaign`` returns for those rows."""
    ahead = raw["submit_ahead_minutes"]
    ledger = [
        {**b, "submit_at": report.submit_at(b["send_at"], ahead) if b["status"] == "planned" else None}
        for b in ledger
    ]
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
    texts += [c["status_reason"]] if c["status_reason"] else []
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
    stopped = not c["dry_run"] and c["status"] in ("paused", "cancelled")
    shown += [c["status_reason"]] if stopped and c["status_reason"] else []

    parsed = assert_only_text(pages.campaign_page, c, shown)

    page_url = f"{LIST_URL}{quote(c['campaign_id'], safe='')}"
    assert_links_stay_in_the_view(parsed, page_url, {c["campaign_id"]})


ROW = {
    "campaign_id": "x",
    "dag_id": "bulk_email_campaign",
    "planned_by_run": "manual__2026-12-01T09:00:00+00:00",
    "created_at": "2026-12-01T09:00:00Z",
    "status": "planned",
    "status_reason": None,
    "submit_ahead_minutes": 60,
    "max_complaint_rate": 0.003,
    "max_hard_bounce_rate": 0.05,
    "min_results_for_rates": 200,
    "dry_run": False,
    "batches_by_status": '{"planned": 1}',
    "recipients": 1,
    "batches": 1,
    "first_send_at": None,
    "last_send_at": None,
    **dict.fromkeys(report._BATCH_STATES, 0),
    "waiting_batches": 1,
    "next_send_at": "2026-12-01T14:00:00Z",
    "next_batch": 1,
    "next_note": None,
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


# -- what the campaign does next: paused, cancelled, waiting ------------------------------------

PAUSED_BY_RECONCILE = "paused by the reconcile at 10:05Z: complaints 0.41% > 0.30%"


@pytest.mark.parametrize(
    ("state", "next_line"),
    [
        ({}, "batch 1 goes at 2026-12-01T13:00:00Z, for its slot at 2026-12-01T14:00:00Z"),
        (
            {"next_batch": 12, "waiting_batches": 3},
            "batch 12 goes at 2026-12-01T13:00:00Z, for its slot at 2026-12-01T14:00:00Z; 2 more wait",
        ),
        ({"submit_ahead_minutes": None}, "batch 1 goes at 2026-12-01T14:00:00Z"),  # planned before the lead
        (
            {"next_note": "waiting for quota: left unsent by the quota pre-flight"},
            "batch 1 waits (waiting for quota: left unsent by the quota pre-flight); "
            "it was to go at 2026-12-01T13:00:00Z",
        ),
        (
            {"status": "paused", "status_reason": PAUSED_BY_RECONCILE, "unsent_batches": 1},
            f"{PAUSED_BY_RECONCILE}; 2 batches not yet at the provider wait for mode=resume",
        ),
        (
            {"status": "paused"},
            "paused (no reason recorded); 1 batch not yet at the provider waits for mode=resume",
        ),
        (
            {"status": "cancelled", "status_reason": "cancelled by run manual__2 at 2026-12-01T10:30Z"},
            "cancelled by run manual__2 at 2026-12-01T10:30Z",
        ),
        (
            {"status": "cancelled", "status_reason": "list was stale", "at_provider_batches": 2},
            "cancelled: list was stale; 2 batches at the provider go out at their slot",
        ),
        (
            {"waiting_batches": 0, "at_provider_batches": 2, "last_send_at": "2026-12-02T09:00:00Z"},
            "every batch is at the provider; the last goes out at 2026-12-02T09:00:00Z",
        ),
        ({"waiting_batches": 0, "delivered_batches": 4}, "every batch is delivered"),
        (
            {"waiting_batches": 0, "unsent_batches": 1, "delivered_batches": 3},
            "1 batch failed or halted: trigger mode=retry_failed to resend",
        ),
        ({"dry_run": True}, "nothing: a dry run is planned and recorded, never sent"),
        ({"status": "planning"}, "the plan is being written; nothing is sent until it is whole"),
    ],
    ids=[
        "next",
        "next-of-several",
        "no-lead",
        "waiting-for-quota",
        "paused",
        "paused-no-reason",
        "cancelled",
        "cancelled-late",
        "at-provider",
        "delivered",
        "failed",
        "dry-run",
        "planning",
    ],
)
def test_the_page_says_in_one_line_what_is_next(state, next_line):
    c = page_of({**ROW, **state}, [], [], {})

    assert pages.next_step(c) == next_line
    assert f'<p class="next" id="next">Next: {escape(next_line, quote=False)}</p>' in pages.campaign_page(c)


def test_a_paused_campaign_shows_why_its_rates_beside_its_thresholds_and_what_waits():
    raw = {
        **ROW,
        "status": "paused",
        "status_reason": PAUSED_BY_RECONCILE,
        "batches": 3,
        "waiting_batches": 1,
        "delivered_batches": 1,
        "cancelled_batches": 1,
        "next_batch": 2,
        "delivered": 240,
        "bounced": 3,
        "complained": 1,
        "unsubscribed": 2,
    }
    batch = {
        "batch_id": None,
        "recipient_count": 250,
        "attempts": 0,
        "last_error": None,
        **dict.fromkeys(report.OUTCOMES, 0),
    }
    ledger = [
        {
            **batch,
            "batch_number": 1,
            "status": "delivered",
            "send_at": "2026-12-01T09:00:00Z",
            "batch_id": "b1",
        },
        {**batch, "batch_number": 2, "status": "planned", "send_at": "2026-12-01T14:00:00Z"},
        {
            **batch,
            "batch_number": 3,
            "status": "cancelled",
            "send_at": "2026-12-01T15:00:00Z",
            "last_error": "x",
        },
    ]

    html = pages.campaign_page(page_of(raw, ledger, [], {}))
    listing = pages.campaign_list([listed(raw)])

    reason = escape(PAUSED_BY_RECONCILE, quote=False)
    assert f"Next: {reason}; 1 batch not yet at the provider waits for mode=resume</p>" in html
    assert "1 waiting, 0 failed or halted, 0 at the provider, 1 delivered, 1 cancelled." in html
    assert (
        "Over 246 final results: complaints 0.41% (1), hard bounces 1.22% (3), unsubscribes 2. "
        "The reconcile pauses it above 0.30% complaints or 5.00% hard bounces, once it has 200 final results."
    ) in html
    # The waiting batch's submit time beside its slot; the others have none.
    rows = {int(m[1]): m[2] for m in re.finditer(r'<tr data-batch="(\d+)">(.*?)</tr>', html)}
    assert "<td>2026-12-01T14:00:00Z</td><td>2026-12-01T13:00:00Z</td>" in rows[2]
    assert "<td>2026-12-01T09:00:00Z</td><td></td>" in rows[1]
    assert 'class="badge cancelled">cancelled</span>' in rows[3]
    # The list says why it is paused once, in its Next column.
    assert f"<td>{reason}; 1 batch not yet at the provider waits for mode=resume</td>" in listing
    assert '<span class="badge paused">paused</span><span class="reason"></span>' in listing
    assert (
        '<td class="n">0.41% (pauses above 0.30%)</td><td class="n">1.22% (pauses above 5.00%)</td>'
        in listing
    )


def test_a_resumed_campaign_says_who_resumed_it_beside_its_status():
    resumed = {**ROW, "status_reason": "resumed by run manual__3 at 2026-12-01T11:00Z"}

    page, listing = pages.campaign_page(page_of(resumed, [], [], {})), pages.campaign_list([listed(resumed)])

    assert '<span class="reason">(resumed by run manual__3 at 2026-12-01T11:00Z) </span>' in page
    assert '<span class="reason">resumed by run manual__3 at 2026-12-01T11:00Z</span>' in listing


def test_a_campaign_without_thresholds_says_it_is_never_paused():
    old = {**ROW, "max_complaint_rate": None, "max_hard_bounce_rate": None, "min_results_for_rates": None}

    html = pages.campaign_page(page_of(old, [], [], {}))

    assert "No thresholds recorded: the reconcile does not pause this campaign." in html
    assert '<td class="n">0.00% (no threshold)</td>' in pages.campaign_list([listed(old)])
