"""Send a MigoSMTP bulk email campaign from a warehouse table, within the plan's caps.

Manual: trigger it from the Airflow UI's form or the REST API with a campaign_id.
plan -> send_batch (one mapped task per batch, each with its send_at) -> close_ledger;
see ``include/campaign/dag_factory.py`` and the README for Connections and Params.
"""

from __future__ import annotations

# Keep this comment: Airflow only parses files that mention both "airflow" and "dag".
from include.campaign.dag_factory import campaign_dag

dag = campaign_dag("bulk_email_campaign")
