"""The ledger as an Airflow Asset: downstream reporting DAGs can be scheduled on its changes."""

from __future__ import annotations

from airflow.sdk import Asset

LEDGER_ASSET = Asset(name="email_batch_ledger", uri="warehouse://warehouse_default/email_batch_ledger")
