"""``SendBatchOperator``: one batch, which waits deferred until shortly before its slot, then goes.

A TaskFlow task cannot resume from a trigger, so the batch is a small operator: each time it runs
(first, and on every wake) it asks ``send.send_batch`` against the state of now, which either
sends the batch or says how long to wait; waiting is a deferral to ``BatchDueTrigger``, so a
waiting batch holds no worker process and, pools counting no deferred task by default, no
``migosmtp_api`` slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class SendBatchOperator(BaseOperator):
    """Send one planned batch (``batch``: its XCom descriptor) at its submit time, exactly once."""

    ui_color = "#e8f0fe"

    def __init__(self, *, batch: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch = batch

    def execute(self, context: Context) -> None:
        self._go(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        self._go(context)

    def _go(self, context: Context) -> None:
        from include.campaign.send import Wait, send_batch
        from include.campaign.triggers import POLL_SECONDS, BatchDueTrigger
        from include.warehouse import utc_text

        dag_run = context["dag_run"]
        step = send_batch(
            self.batch,
            context["params"],
            dag_run.run_id,
            dag_id=dag_run.dag_id,
            logical_date=dag_run.logical_date,
        )
        # The outcome goes to the ledger and the log; no XCom, which would cost every batch
        # another round trip through the API server and nobody reads it.
        if isinstance(step, Wait):
            trigger = BatchDueTrigger(step.campaign_id, utc_text(step.until), POLL_SECONDS)
            self.defer(trigger=trigger, method_name="execute_complete")
