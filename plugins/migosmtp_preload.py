"""Import the send path once, in the scheduler, so that no ``send_batch`` pays for it again.

Airflow loads plugins when a job starts (the listener manager, in
``Job.__init__``), which is before the scheduler's LocalExecutor forks its
workers; every task process is a fork of a worker. So the modules imported
here are already in each task process, and a batch does not import HttpHook
(aiohttp builds its SSL contexts on import), psycopg and the campaign code
for itself: on this project's 2-core machine that took a batch's own CPU from
0.80 s to 0.24 s, and the sending rate at pool 8 from about 100 to about 230
batches a minute (``benchmarks/send_rate.py``; the README has the figures).

The plugin adds nothing to Airflow; importing it is the whole point.
"""

from __future__ import annotations

# What send_batch imports when it runs (the HTTP hook, the client, both warehouse hooks
# the package supports), and the task code itself (plan, send, close and the provider gateway).
import airflow.providers.common.sql.hooks.sql  # noqa: F401
import airflow.providers.http.hooks.http  # noqa: F401
import airflow.providers.postgres.hooks.postgres  # noqa: F401
import airflow.providers.sqlite.hooks.sqlite  # noqa: F401

# What the Task SDK imports on a batch's first connection (the secrets cache) and first
# common-sql statement (hook lineage): a task that uses neither never pays for them.
import airflow.sdk.execution_time.cache  # noqa: F401
import airflow.sdk.lineage  # noqa: F401
from airflow.plugins_manager import AirflowPlugin

import include.campaign.close  # noqa: F401
import include.campaign.plan  # noqa: F401
import include.campaign.send  # noqa: F401
import include.migosmtp.client  # noqa: F401
import include.migosmtp.retry_policy  # noqa: F401


class MigoSmtpPreloadPlugin(AirflowPlugin):
    name = "migosmtp_preload"
