"""The Campaigns view's HTML: the list of campaigns and one campaign's page.

Plain server-rendered HTML with one stylesheet and SVG (``chart``): it works offline and inside
the Airflow UI's iframe. All of it is made by ``markup.el``, so every value from the warehouse is
escaped and every link is built from percent-encoded segments; a value that is not what the
warehouse should hold is shown as malformed. Links into Airflow target the top window, so they
leave the iframe.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from include.campaign.report import OUTCOMES
from include.views import markup
from include.views.chart import bar_chart
from include.views.markup import Markup, document, el, join, path

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 12px; background: #eee; }
.badge.dry-run { background: #fff3bf; } .badge.halted { background: #ffd8d8; }
.badge.scheduled, .badge.delivered { background: #d3f9d8; }
.badge.incomplete, .badge.failed, .badge.plan_failed { background: #ffd8d8; }
.badge.planning { background: #d0ebff; }
.error { color: #a61e1e; max-width: 420px; } .empty { color: #666; }
.malformed { color: #a61e1e; font-style: italic; }
svg .title { font-weight: 600; font-size: 13px; } svg .axis { font-size: 11px; fill: #555; }
"""

# Sent by the view with every response. The pages have no script and no style attribute, and
# their one <style> element is STYLE, allowed by its hash; they are framed only by the Airflow
# UI, which shows external views in an iframe from the same origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; "
        f"style-src 'sha256-{base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()}'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",  # frame-ancestors, for browsers that predate it
}


def _malformed(value: Any, cls: str = "malformed") -> Markup:
    return el("td", "malformed", class_=cls, title=repr(value)[:200])


def _count(value: Any) -> int | None:
    if value is None:
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _n(value: Any) -> Markup:
    n = _count(value)
    return _malformed(value, "n malformed") if n is None else el("td", f"{n:,}", class_="n")


def _td(value: Any, cls: str | None = None) -> Markup:
    return el("td", value, class_=cls)


def _link(text: Any, url: Any, **attributes: Any) -> Markup:
    """A link, or only its text when ``path`` could make none (an id that is empty, . or ..)."""
    return el("a", text, href=url, **attributes) if url else markup.text(text)


def _badge(text: Any, kind: Any = None) -> Markup:
    return el("span", text, class_=f"badge {kind or text}")


def _status(c: dict[str, Any]) -> Markup:
    return _badge("dry run", "dry-run") if c["dry_run"] else _badge(c["status"])


def _by_status(counts: Any) -> Markup:
    """``{status: batches}``, which ``report`` reads from a JSON text (None when that was malformed)."""
    if not isinstance(counts, dict) or any(_count(n) is None for n in counts.values()):
        return _malformed(counts)
    return _td(", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: str(i[0]))))


def _row(*cells: Markup, **attributes: Any) -> Markup:
    return el("tr", *cells, **attributes)


def _head(*names: str) -> Markup:
    # A heading for a number column is right-aligned: its name starts with "#".
    return _row(*(el("th", n[1:], class_="n") if n.startswith("#") else el("th", n) for n in names))


def campaign_list(rows: list[dict[str, Any]]) -> str:
    head = _head(
        "Campaign",
        "DAG",
        "Planned by run",
        "Created",
        "Status",
        "#Recipients",
        "Batches by status",
        *(f"#{o.capitalize()}" for o in OUTCOMES),
        "First send_at",
        "Last send_at",
        "Halted",
    )
    body = [
        _row(
            _td(_link(c["campaign_id"], path(c["campaign_id"]))),
            _td(c["dag_id"]),
            _td(c["planned_by_run"]),
            _td(c["created_at"]),
            _td(_status(c)),
            _n(c["recipients"]),
            _by_status(c["batches_by_status"]),
            *(_n(c[o]) for o in OUTCOMES),
            _td(c["first_send_at"]),
            _td(c["last_send_at"]),
            _td(_badge("halted") if c["halts"] else "no"),
            data_campaign=c["campaign_id"],
        )
        for c in rows
    ]
    table = el("table", head, *body) if body else el("p", "No campaign has been planned yet.", class_="empty")
    return document("Campaigns", STYLE, el("h1", "Campaigns"), table)


def _task_link(c: dict[str, Any], batch_number: Any) -> Markup:
    """The batch's send_batch task in the Airflow UI (its map index is the batch number - 1)."""
    n = _count(batch_number)
    if n is None:
        return _malformed(batch_number)
    segments = (c["dag_id"], "runs", c["planned_by_run"], "tasks", "send_batch", "mapped", n - 1)
    return _td(_link(n, path(*segments, prefix="/dags/"), target="_top"))


def campaign_page(c: dict[str, Any]) -> str:
    cid = c["campaign_id"]
    title = f"Campaign {cid}"

    def amount(value: Any, unit: str) -> str:
        n = _count(value)
        return f"{n:,} {unit}" if n is not None else f"malformed {unit}"

    def value(key: str) -> str:
        return "" if c[key] is None else str(c[key])

    summary = el(
        "p",
        _status(c),
        " ",
        el("span", amount(c["batches"], "batches"), id="batch-count"),
        f", {amount(c['recipients'], 'recipients')}, "
        f"from {value('first_send_at')} to {value('last_send_at')}. "
        f"DAG {value('dag_id')}, planned by run {value('planned_by_run')} at {value('created_at')}."
        + (" A dry run: planned and recorded, nothing sent." if c["dry_run"] else ""),
    )
    per_day_table = el(
        "table",
        _head("UTC day", "#Recipients", "#Scheduled", "#Delivered", "#Bounced"),
        *(
            _row(
                _td(day),
                _n(v["scheduled"] + v["planned"]),
                *(_n(v[k]) for k in ("scheduled", "delivered", "bounced")),
                data_day=day,
            )
            for day, v in c["per_day"].items()
        ),
        id="per-day",
    )
    ledger_table = el(
        "table",
        _head(
            "Batch",
            "Status",
            "send_at",
            "#Recipients",
            "#Attempts",
            "batch_id",
            *(f"#{o.capitalize()}" for o in OUTCOMES),
            "Last error",
        ),
        *(
            _row(
                _task_link(c, b["batch_number"]),
                _td(_badge(b["status"])),
                _td(b["send_at"]),
                _n(b["recipient_count"]),
                _n(b["attempts"]),
                _td(b["batch_id"]),
                *(_n(b[o]) for o in OUTCOMES),
                _td(b["last_error"], "error"),
                data_batch=b["batch_number"],
            )
            for b in c["ledger"]
        ),
        id="ledger",
    )
    rejected = c["rejected"]
    if rejected:
        total = sum(n for n in rejected.values() if _count(n))
        download = f"Download the {total:,} rejected rows (CSV)"
        reasons = (_row(_td(r), _n(n)) for r, n in rejected.items())
        rejected_html = join(
            [
                el("table", _head("Reason", "#Rows"), *reasons, id="rejected"),
                el("p", _link(download, path(cid, suffix="/rejected.csv"))),
            ]
        )
    else:
        rejected_html = el("p", "No row was rejected.", class_="empty")
    halts_html = (
        el(
            "table",
            _head("Run", "Batch", "Halted at", "Reason"),
            *(
                _row(_td(h["run_id"]), _n(h["batch_number"]), _td(h["halted_at"]), _td(h["reason"], "error"))
                for h in c["halts"]
            ),
            id="halts",
        )
        if c["halts"]
        else el("p", "Never halted.", class_="empty")
    )
    return document(
        title,
        STYLE,
        el("p", el("a", "All campaigns", href=path(prefix="./"))),
        el("h1", title),
        summary,
        el("h2", "Recipients per day"),
        bar_chart(c["per_day"], "Recipients per UTC day"),
        per_day_table,
        el("h2", "Recipients per hour"),
        bar_chart(c["per_hour"], "Recipients per UTC hour"),
        el("h2", "Ledger"),
        ledger_table,
        el("h2", "Rejected rows"),
        rejected_html,
        el("h2", "Halts"),
        halts_html,
    )
