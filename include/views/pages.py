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
import math
from typing import Any

from include.campaign.ledger import CAMPAIGN_CANCELLED, CAMPAIGN_PAUSED, PLAN_FAILED, PLANNING
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
.badge.paused { background: #ffe3b3; } .badge.cancelled { background: #ced4da; }
.reason { color: #555; font-size: 12px; } td .reason { display: block; max-width: 320px; }
.next { font-size: 15px; font-weight: 600; }
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


def _reason(c: dict[str, Any]) -> Any:
    """Why the status is what it is ("resumed by run ..."), or None where ``next_step`` already
    says it (a pause, a cancel)."""
    stopped = not c["dry_run"] and c["status"] in (CAMPAIGN_PAUSED, CAMPAIGN_CANCELLED)
    return None if stopped or c["status_reason"] in (None, "") else c["status_reason"]


def _status_with_reason(c: dict[str, Any]) -> Markup:
    """The status badge, and under it ``_reason``."""
    return join([_status(c), el("span", _reason(c), class_="reason")])


def _share(value: Any) -> str:
    """A rate or a threshold as a percentage; ``none`` when not recorded."""
    if value is None:
        return "none"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "malformed"
    return f"{value:.2%}"


def _whole(value: Any) -> str:
    n = _count(value)
    return "malformed" if n is None else f"{n:,}"


def _batches(n: int, one: str, many: str) -> str:
    """``n`` batches and what they do, agreeing: ``_batches(1, "waits", "wait")`` is "1 batch waits"."""
    return f"1 batch {one}" if n == 1 else f"{n:,} batches {many}"


def _rate_cell(rate: float, threshold: Any) -> Markup:
    limit = "no threshold" if threshold is None else f"pauses above {_share(threshold)}"
    return el("td", f"{_share(rate)} ({limit})", class_="n")


def _stated(reason: Any, status: str) -> str:
    """A pause's or a cancel's recorded reason, which names the status itself ("paused by ...")."""
    if reason is None or str(reason) == "":
        return f"{status} (no reason recorded)"
    reason = str(reason)
    return reason if reason.startswith(status) else f"{status}: {reason}"


def next_step(c: dict[str, Any]) -> str:
    """What happens next to the campaign, in one line: why it is stopped, which batch goes when,
    or that nothing is left to go."""
    status, waiting, unsent = c["status"], c["waiting_batches"], c["unsent_batches"]
    if c["dry_run"]:
        return "nothing: a dry run is planned and recorded, never sent"
    if status == CAMPAIGN_CANCELLED:
        text = _stated(c["status_reason"], CAMPAIGN_CANCELLED)
        at_provider = c["at_provider_batches"]
        going = _batches(
            at_provider, "at the provider goes out at its slot", "at the provider go out at their slot"
        )
        return text + (f"; {going}" if at_provider else "")
    if status == CAMPAIGN_PAUSED:
        text = _stated(c["status_reason"], CAMPAIGN_PAUSED)
        held = waiting + unsent
        held_back = _batches(held, "not yet at the provider waits", "not yet at the provider wait")
        return text + (f"; {held_back} for mode=resume" if held else "")
    if status == PLANNING:
        return "the plan is being written; nothing is sent until it is whole"
    if status == PLAN_FAILED:
        return "the plan failed part-way and holds nothing; plan the campaign again"
    if waiting and c["next_batch"] is not None:
        when = c["next_submit_at"] or c["next_send_at"]
        text = f"batch {c['next_batch']} goes at {when}"
        if c["next_note"]:
            text = f"batch {c['next_batch']} waits ({c['next_note']}); it was to go at {when}"
        elif c["next_submit_at"] and c["next_submit_at"] != c["next_send_at"]:
            text += f", for its slot at {c['next_send_at']}"
        return text + (f"; {waiting - 1:,} more {'waits' if waiting == 2 else 'wait'}" if waiting > 1 else "")
    if unsent:
        return (
            f"{_batches(unsent, 'failed or halted', 'failed or halted')}: trigger mode=retry_failed to resend"
        )
    if c["at_provider_batches"]:
        return f"every batch is at the provider; the last goes out at {c['last_send_at']}"
    if c["delivered_batches"]:
        return "every batch is delivered"
    return "nothing left to send"


def _rates_line(c: dict[str, Any]) -> str:
    r = c["rates"]
    rates = (
        f"Over {r.results:,} final results: complaints {_share(r.complaint_rate)} ({r.complaints:,}), "
        f"hard bounces {_share(r.hard_bounce_rate)} ({r.hard_bounces:,}), "
        f"unsubscribes {r.unsubscribes:,}. "
    )
    thresholds = (c["max_complaint_rate"], c["max_hard_bounce_rate"], c["min_results_for_rates"])
    if all(t is None for t in thresholds):
        return rates + "No thresholds recorded: the reconcile does not pause this campaign."
    return rates + (
        f"The reconcile pauses it above {_share(c['max_complaint_rate'])} complaints or "
        f"{_share(c['max_hard_bounce_rate'])} hard bounces, once it has "
        f"{_whole(c['min_results_for_rates'])} final results."
    )


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
        "Next",
        "#Recipients",
        "Batches by status",
        *(f"#{o.capitalize()}" for o in OUTCOMES),
        "#Complaint rate",
        "#Hard-bounce rate",
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
            _td(_status_with_reason(c)),
            _td(next_step(c)),
            _n(c["recipients"]),
            _by_status(c["batches_by_status"]),
            *(_n(c[o]) for o in OUTCOMES),
            _rate_cell(c["rates"].complaint_rate, c["max_complaint_rate"]),
            _rate_cell(c["rates"].hard_bounce_rate, c["max_hard_bounce_rate"]),
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

    reason = _reason(c)
    summary = el(
        "p",
        _status(c),
        " ",
        el("span", None if reason is None else f"({reason}) ", class_="reason"),
        el("span", amount(c["batches"], "batches"), id="batch-count"),
        f", {amount(c['recipients'], 'recipients')}, "
        f"from {value('first_send_at')} to {value('last_send_at')}: "
        f"{c['waiting_batches']:,} waiting, {c['unsent_batches']:,} failed or halted, "
        f"{c['at_provider_batches']:,} at the provider, {c['delivered_batches']:,} delivered, "
        f"{c['cancelled_batches']:,} cancelled. "
        f"DAG {value('dag_id')}, planned by run {value('planned_by_run')} at {value('created_at')}."
        + (" A dry run: planned and recorded, nothing sent." if c["dry_run"] else ""),
    )
    upcoming = el("p", "Next: ", next_step(c), class_="next", id="next")
    rates = el("p", _rates_line(c), id="rates")
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
    per_local_hour_table = el(
        "table",
        _head("Local hour", "#Recipients", "By time zone"),
        *(
            _row(
                _td(hour),
                _n(sum(zones.values())),
                _td(", ".join(f"{name} {n:,}" for name, n in sorted(zones.items()))),
                data_local_hour=hour,
            )
            for hour, zones in c.get("per_local_hour", {}).items()
        ),
        id="per-local-hour",
    )
    ledger_table = el(
        "table",
        _head(
            "Batch",
            "Status",
            "send_at",
            "Submit at",
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
                _td(b["submit_at"]),
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
        upcoming,
        summary,
        rates,
        el("h2", "Recipients per day"),
        bar_chart(c["per_day"], "Recipients per UTC day"),
        per_day_table,
        el("h2", "Recipients per hour"),
        bar_chart(c["per_hour"], "Recipients per UTC hour"),
        el("h2", "Recipients per local hour"),
        el(
            "p",
            "The hour each recipient's own clock shows when their batch goes (their time zone).",
            class_="note",
        ),
        per_local_hour_table,
        el("h2", "Ledger"),
        ledger_table,
        el("h2", "Rejected rows"),
        rejected_html,
        el("h2", "Halts"),
        halts_html,
    )
