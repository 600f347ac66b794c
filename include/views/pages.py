"""The Campaigns view's HTML: the list of campaigns and one campaign's page.

Plain server-rendered HTML with inline CSS and SVG (``chart``): it works offline
and inside the Airflow UI's iframe. Every value from the warehouse is escaped.
Links into Airflow target the top window, so they leave the iframe.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from include.views.chart import bar_chart

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 22px 0 8px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 12px; background: #eee; }
.badge.dry-run { background: #fff3bf; } .badge.halted { background: #ffd8d8; }
.badge.scheduled, .badge.delivered { background: #d3f9d8; }
.badge.incomplete, .badge.failed { background: #ffd8d8; }
.error { color: #a61e1e; max-width: 420px; } .empty { color: #666; }
svg .title { font-weight: 600; font-size: 13px; } svg .axis { font-size: 11px; fill: #555; }
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _badge(text: str, kind: str | None = None) -> str:
    return f'<span class="badge {escape(kind or text)}">{escape(text)}</span>'


def _n(value: Any) -> str:
    return f'<td class="n">{int(value or 0):,}</td>'


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def campaign_list(rows: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th>Campaign</th><th>DAG</th><th>Planned by run</th><th>Created</th><th>Status</th>"
        '<th class="n">Recipients</th><th>Batches by status</th><th class="n">Delivered</th>'
        '<th class="n">Bounced</th><th class="n">Deferred</th><th class="n">Complained</th>'
        "<th>First send_at</th><th>Last send_at</th><th>Halted</th></tr>"
    )
    body = []
    for c in rows:
        by_status = ", ".join(f"{n} {_text(s)}" for s, n in sorted(c["batches_by_status"].items()))
        status = _badge("dry run", "dry-run") if c["dry_run"] else _badge(c["status"])
        body.append(
            f'<tr data-campaign="{_text(c["campaign_id"])}">'
            f'<td><a href="{quote(c["campaign_id"])}">{_text(c["campaign_id"])}</a></td>'
            f"<td>{_text(c['dag_id'])}</td><td>{_text(c['planned_by_run'])}</td>"
            f"<td>{_text(c['created_at'])}</td><td>{status}</td>{_n(c['recipients'])}"
            f"<td>{by_status}</td>{_n(c['delivered'])}{_n(c['bounced'])}{_n(c['deferred'])}"
            f"{_n(c['complained'])}<td>{_text(c['first_send_at'])}</td><td>{_text(c['last_send_at'])}</td>"
            f"<td>{_badge('halted') if c['halts'] else 'no'}</td></tr>"
        )
    table = (
        f"<table>{head}{''.join(body)}</table>"
        if body
        else '<p class="empty">No campaign has been planned yet.</p>'
    )
    return _page("Campaigns", f"<h1>Campaigns</h1>{table}")


def campaign_page(c: dict[str, Any]) -> str:
    cid = c["campaign_id"]
    title = f"Campaign {cid}"
    status = _badge("dry run", "dry-run") if c["dry_run"] else _badge(c["status"])
    summary = (
        f'<p>{status} <span id="batch-count">{c["batches"]:,} batches</span>, '
        f"{c['recipients']:,} recipients, from {_text(c['first_send_at'])} to {_text(c['last_send_at'])}. "
        f"DAG {_text(c['dag_id'])}, planned by run {_text(c['planned_by_run'])} at {_text(c['created_at'])}."
        + (" A dry run: planned and recorded, nothing sent." if c["dry_run"] else "")
        + "</p>"
    )
    per_day = "".join(
        f'<tr data-day="{_text(day)}"><td>{_text(day)}</td>{_n(v["scheduled"] + v["planned"])}'
        f"{_n(v['scheduled'])}{_n(v['delivered'])}{_n(v['bounced'])}</tr>"
        for day, v in c["per_day"].items()
    )
    per_day_table = (
        '<table id="per-day"><tr><th>UTC day</th><th class="n">Recipients</th><th class="n">Scheduled</th>'
        f'<th class="n">Delivered</th><th class="n">Bounced</th></tr>{per_day}</table>'
    )
    ledger_rows = []
    for b in c["ledger"]:
        task_url = (
            f"/dags/{quote(c['dag_id'])}/runs/{quote(c['planned_by_run'])}/tasks/send_batch/"
            f"mapped/{int(b['batch_number']) - 1}"
        )
        ledger_rows.append(
            f'<tr data-batch="{int(b["batch_number"])}">'
            f'<td><a href="{task_url}" target="_top">{int(b["batch_number"])}</a></td>'
            f"<td>{_badge(b['status'])}</td><td>{_text(b['send_at'])}</td>{_n(b['recipient_count'])}"
            f"{_n(b['attempts'])}<td>{_text(b['batch_id'])}</td>{_n(b['delivered'])}{_n(b['bounced'])}"
            f'{_n(b["deferred"])}{_n(b["complained"])}<td class="error">{_text(b["last_error"])}</td></tr>'
        )
    ledger_table = (
        '<table id="ledger"><tr><th>Batch</th><th>Status</th><th>send_at</th><th class="n">Recipients</th>'
        '<th class="n">Attempts</th><th>batch_id</th><th class="n">Delivered</th><th class="n">Bounced</th>'
        '<th class="n">Deferred</th><th class="n">Complained</th><th>Last error</th></tr>'
        f"{''.join(ledger_rows)}</table>"
    )
    rejected = c["rejected"]
    rejected_html = (
        '<table id="rejected"><tr><th>Reason</th><th class="n">Rows</th></tr>'
        + "".join(f"<tr><td>{_text(r)}</td>{_n(n)}</tr>" for r, n in rejected.items())
        + f'</table><p><a href="{quote(cid)}/rejected.csv">Download the {sum(rejected.values()):,} '
        "rejected rows (CSV)</a></p>"
        if rejected
        else '<p class="empty">No row was rejected.</p>'
    )
    halts_html = (
        '<table id="halts"><tr><th>Run</th><th>Batch</th><th>Halted at</th><th>Reason</th></tr>'
        + "".join(
            f"<tr><td>{_text(h['run_id'])}</td>{_n(h['batch_number'])}<td>{_text(h['halted_at'])}</td>"
            f'<td class="error">{_text(h["reason"])}</td></tr>'
            for h in c["halts"]
        )
        + "</table>"
        if c["halts"]
        else '<p class="empty">Never halted.</p>'
    )
    body = (
        f'<p><a href="./">All campaigns</a></p><h1>{escape(title)}</h1>{summary}'
        f"<h2>Recipients per day</h2>{bar_chart(c['per_day'], 'Recipients per UTC day')}{per_day_table}"
        f"<h2>Recipients per hour</h2>{bar_chart(c['per_hour'], 'Recipients per UTC hour')}"
        f"<h2>Ledger</h2>{ledger_table}<h2>Rejected rows</h2>{rejected_html}<h2>Halts</h2>{halts_html}"
    )
    return _page(title, body)
