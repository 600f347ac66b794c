"""``[core] hostname_callable`` for the stack's Celery workers.

Both workers run on this one machine, so the default (the FQDN) would give every
task instance the same hostname; each worker process gets its own name through
``DEPLOYMENT_WORKER_HOSTNAME`` instead, which is what the task instances report.
"""

from __future__ import annotations

import os
import socket

HOSTNAME_ENV = "DEPLOYMENT_WORKER_HOSTNAME"


def hostname() -> str:
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()
