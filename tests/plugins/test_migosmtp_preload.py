"""plugins/migosmtp_preload.py: Airflow's plugin manager loads it, and loading it imports the send path.

That the scheduler loads it before forking the LocalExecutor workers is checked on a real
stack (tests/deployment/test_local_executor.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SEND_PATH = [
    "aiohttp",
    "airflow.providers.http.hooks.http",
    "airflow.sdk.execution_time.cache",
    "airflow.sdk.lineage",
    "include.campaign.plan",
    "include.campaign.provider",
    "include.campaign.send",
    "include.campaign.close",
    "include.migosmtp.client",
]

PROBE = f"""
import json, sys
before = {{name: name in sys.modules for name in {SEND_PATH!r}}}
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
print(json.dumps({{
    "before": before,
    "after": {{name: name in sys.modules for name in {SEND_PATH!r}}},
    "plugins": [p["name"] for p in plugins_manager.get_plugin_info()],
    "errors": plugins_manager.get_import_errors(),
}}))
"""


def test_loading_the_plugins_imports_the_send_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=str(REPO_ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert "migosmtp_preload" in result["plugins"]
    # A fresh Airflow process has none of it until the plugins load.
    assert not any(result["before"].values()), result["before"]
    assert all(result["after"].values()), result["after"]
