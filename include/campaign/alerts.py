"""One alert per halted campaign run, and one per run whose batches gave up on server errors,
as an Airflow notifier on the batches' failure callback.

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
GAVE_UP = "gave_up_on_server_errors"
CHAT_TIMEOUT_SECONDS = 10


class AlertNotDelivered(RuntimeError):
    """The alert connection did not take the alert. Names the connection, never its URL: a chat
    webhook's URL path is its token."""


def halt_message(campaign_id: str, run_id: str, batch_number: int, error: BaseException) -> str:
    return (
        f"MigoSMTP campaign {campaign_id!r} halted in run {run_id} by batch {batch_number}: {error} "
        "Batches not yet sent were not attempted and are marked 'halted' in email_batch_ledger. "
        "Fix the cause, then trigger the DAG with mode=retry_failed for this campaign_id."
    )


def gave_up_message(campaign_id: str, run_id: str, batch_number: int, error: BaseException) -> str:
    return (
        f"MigoSMTP campaign {campaign_id!r}: batch {batch_number} gave up in run {run_id} after "
        f"MigoSMTP's server errors or timeouts outlasted every retry: {error} The run goes on with "
        "its other batches; those that fail are 'failed' in email_batch_ledger (this alert is sent "
        "once per run). Once MigoSMTP is healthy, trigger the DAG with mode=retry_failed for this "
        "campaign_id: each batch asks the API by idempotency key before it is sent again."
    )


def _first_alert_of_run(kind: str, campaign_id: str, run_id: str, batch_number: int) -> bool:
    """True for the first batch of the run to claim this alert (the table's key decides)."""
    from include.warehouse import ALERTS_TABLE, get_warehouse_hook, insert_once, utc_now_text

    row = {
        "campaign_id": campaign_id,
        "run_id": run_id,
        "kind": kind,
        "batch_number": batch_number,
        "sent_at": utc_now_text(),
    }
    return insert_once(get_warehouse_hook(), ALERTS_TABLE, row, key=("campaign_id", "run_id", "kind"))


def _batch_of(context: Context) -> tuple[str, str, int]:
    """The failed batch's campaign, run and number, as the task itself derived them."""
    from include.campaign.settings import for_task

    dag_run = context["dag_run"]
    settings = for_task(context["params"], dag_run.dag_id, dag_run.logical_date)
    return settings.campaign_id, dag_run.run_id, int(context["task"].batch["batch_number"])


class CampaignHaltNotifier(BaseNotifier):
    """Alerts when a batch's failure halted its campaign run, and once per run when a batch gave up
    on server errors; stays silent for every other failure (the run's failure says enough)."""

    template_fields = ()

    def __init__(self, conn_id: str = ALERTS_CONN_ID) -> None:
        super().__init__()
        self.conn_id = conn_id

    def notify(self, context: Context) -> None:
        from include.campaign import halts, provider
        from include.warehouse import get_warehouse_hook

        error = context.get("exception")
        halting, gave_up = provider.halts_run(error), provider.alerts_once_when_given_up(error)
        if not (halting or gave_up):
            return
        campaign_id, run_id, number = _batch_of(context)
        if halting:
            # The halt's row names the batch that raised it, so concurrent 402s make one alert.
            stop = halts.current(get_warehouse_hook(), campaign_id, run_id)
            if stop is None or stop["batch_number"] != number:
                return
            message = halt_message(campaign_id, run_id, number, error)
        else:
            # The task only fails on these once the retry policy has given up on them.
            if not _first_alert_of_run(GAVE_UP, campaign_id, run_id, number):
                self.log.error("Batch %d gave up on server errors; the run was already alerted", number)
                return
            message = gave_up_message(campaign_id, run_id, number, error)
        self.deliver(message)

    def deliver(self, message: str) -> None:
        """Log the alert and send it to the alert connection, if there is one. Also what a pause,
        resume or cancel of a campaign raises (campaign/steering.py), outside any failure."""
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
        import requests
        from airflow.providers.http.hooks.http import HttpHook

        # The hook's session (auth, proxies, TLS, headers), but not HttpHook.run: it logs a failed
        # request's error, whose text quotes the URL.
        hook = HttpHook(method="POST", http_conn_id=self.conn_id)
        failure = None
        try:
            response = hook.get_conn().post(
                hook.url_from_endpoint(None), json={"text": message}, timeout=CHAT_TIMEOUT_SECONDS
            )
        except requests.RequestException as err:
            failure = type(err).__name__  # its text (and so its traceback) holds the URL
        else:
            if not response.ok:
                failure = f"HTTP {response.status_code}"
        if failure:  # raised outside the except block, so the URL's error is not its context either
            raise AlertNotDelivered(
                f"the alert above was not delivered to connection {self.conn_id!r} ({failure}); "
                "check the connection's webhook URL"
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
