"""One alert per halted campaign run, as an Airflow notifier on the batches' failure callback.

Always written to the task log. If a connection ``campaign_alerts`` exists it is
also delivered there: an HTTP connection is a chat webhook (its host is the full
webhook URL; the body is ``{"text": ...}``, which Slack, Mattermost and Teams
incoming webhooks accept), an SMTP connection sends email to the addresses in
its extra ``{"to": "ops@example.com"}``.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

ALERTS_CONN_ID = "campaign_alerts"


def halt_message(campaign_id: str, run_id: str, batch_number: int, error: BaseException) -> str:
    return (
        f"MigoSMTP campaign {campaign_id!r} halted in run {run_id} by batch {batch_number}: {error} "
        "Batches not yet sent were not attempted and are marked 'halted' in email_batch_ledger. "
        "Fix the cause, then trigger the DAG with mode=retry_failed for this campaign_id."
    )


class CampaignHaltNotifier(BaseNotifier):
    """Alerts when a batch's failure halted its campaign run; stays silent for every other failure."""

    template_fields = ()

    def __init__(self, conn_id: str = ALERTS_CONN_ID) -> None:
        super().__init__()
        self.conn_id = conn_id

    def notify(self, context: Context) -> None:
        error = context.get("exception")
        # Set by the batch that raised the halt, so concurrent 402s still make one alert.
        halted = getattr(error, "halted_campaign", None)
        if halted is None:
            return
        message = halt_message(*halted, error)
        self.log.error("%s", message)
        try:
            connection = BaseHook.get_connection(self.conn_id)
        except Exception:  # no alert connection configured: the log line above is the alert
            return
        if connection.conn_type == "http":
            self._post_to_chat(message)
        elif connection.conn_type in ("smtp", "email"):
            self._send_email(message, connection.extra_dejson)
        else:
            self.log.warning(
                "Connection %s has type %r; alerts go to http or smtp", self.conn_id, connection.conn_type
            )

    def _post_to_chat(self, message: str) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        HttpHook(method="POST", http_conn_id=self.conn_id).run(
            None, json={"text": message}, extra_options={"timeout": 10}
        )

    def _send_email(self, message: str, extra: dict[str, Any]) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        recipients = extra.get("to")
        if not recipients:
            raise ValueError(f"connection {self.conn_id!r} has no 'to' address in its extra")
        with SmtpHook(smtp_conn_id=self.conn_id) as smtp:
            smtp.send_email_smtp(
                to=recipients,
                subject="MigoSMTP campaign halted",
                html_content=f"<p>{html.escape(message)}</p>",
                from_email=extra.get("from_email"),
            )
