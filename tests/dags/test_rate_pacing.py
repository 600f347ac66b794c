"""The send endpoint's rate window, paced by its X-RateLimit headers through the real DAG.

The sandbox's window is shortened to 3 s and its limit to 2 sends, so five
batches sent back to back would be refused; paced, they wait for the window.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from demo.audience import create_recipients_table
from tests.conftest import DAY
from tests.helpers import sends

WINDOW_SECONDS = 3.0
CONTROL_WINDOW_SECONDS = 10.0
LIMIT = 2
BATCHES = 5
CONF = {"max_batch_size": 10, "hourly_cap": 1000, "daily_cap": 1000, "start_at": f"{DAY}T09:00:00Z"}


@pytest.fixture
def tight_window(warehouse, clean_sandbox, request):
    create_recipients_table(warehouse, "recipients", BATCHES * 10)
    window = getattr(request, "param", WINDOW_SECONDS)
    clean_sandbox.update_settings(requests_per_minute=LIMIT, rate_window_seconds=window)
    return clean_sandbox


@pytest.mark.parametrize("reserve", ["1", "many"])
def test_batches_wait_for_the_window_instead_of_hitting_429(run_campaign, tight_window, monkeypatch, reserve):
    # "many" is not a reserve: a warning, and the default (a tenth of the limit, at least 1).
    monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_RATE_LIMIT_RESERVE", reserve)

    run = run_campaign(**CONF)

    assert run.state == "success"
    posts = sends(tight_window)
    assert [r["status_code"] for r in posts] == [202] * BATCHES
    # Five sends at two per window span at least two whole windows: the slot was held. (Within 2 s:
    # a request's "at" is when the sandbox logged it, which on a busy machine lagged the window's
    # own clock by 1.3 s once.)
    first, last = (datetime.fromisoformat(posts[i]["at"]) for i in (0, -1))
    assert (last - first).total_seconds() >= 2 * WINDOW_SECONDS - 2


# The control's window is longer: back-to-back sends on a loaded machine were once spaced so far apart
# (over 1.5 s per task) that no 3 s window saw a third send, and no 429 came.
@pytest.mark.parametrize("tight_window", [CONTROL_WINDOW_SECONDS], indirect=True)
def test_without_pacing_headers_the_same_run_is_refused(run_campaign, tight_window, monkeypatch):
    """The control: what the window does to sends that do not wait (a 429, retried after Retry-After)."""
    import include.migosmtp.client as client

    monkeypatch.setattr(client.RateWindow, "from_headers", classmethod(lambda cls, headers: None))

    run = run_campaign(**CONF)

    assert run.state == "success"
    assert 429 in [r["status_code"] for r in sends(tight_window)]
