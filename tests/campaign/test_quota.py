"""The quota pre-flight on its own: the arithmetic, and each policy against the real sandbox's
quota and a real warehouse (the DAG-level runs are in tests/dags/test_quota_preflight.py)."""

from __future__ import annotations

from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.campaign import ledger, quota
from include.campaign.quota import QuotaCheckFailed, QuotaProjection, split_to_fit, within_quota
from include.campaign.settings import CampaignSettings
from include.warehouse import ensure_schema, fetch_dicts
from tests.conftest import point_migosmtp_at
from tests.helpers import MINIMAL_PARAMS

PARAMS = MINIMAL_PARAMS
SEND_AT = datetime.now(UTC) + timedelta(days=1)


def batches(*sizes: int) -> list[dict]:
    return [{"batch_number": n, "recipient_count": size} for n, size in enumerate(sizes, start=1)]


def settings(**params) -> CampaignSettings:
    return CampaignSettings.from_params({**PARAMS, **params})


def plan_in_ledger(hook, campaign_id: str, sizes: tuple[int, ...]) -> None:
    """A finished plan's ledger rows, as staging writes them."""
    ensure_schema(hook)
    now = "2026-01-01T00:00:00Z"
    rows = [
        ledger.planned_row(
            campaign_id, n, f"k-{campaign_id}-{n}", [f"r{i}" for i in range(size)], SEND_AT, now
        )
        for n, size in enumerate(sizes, start=1)
    ]
    with closing(hook.get_conn()) as conn:
        ledger.insert_planned(conn, hook.placeholder, rows)
        conn.commit()


class TestArithmetic:
    def test_what_is_left_is_the_limit_less_used_and_held_never_below_zero(self):
        assert QuotaProjection(needed=10, limit=100, used=60, held=30).left == 10
        assert QuotaProjection(needed=10, limit=100, used=60, held=30).fits
        assert QuotaProjection(needed=11, limit=100, used=60, held=30).fits is False
        assert QuotaProjection(needed=1, limit=100, used=90, held=30).left == 0

    def test_the_batches_that_fit_are_a_prefix_in_planned_order(self):
        assert split_to_fit(batches(5, 5, 5), 12) == (batches(5, 5), batches(5, 5, 5)[2:])
        # A smaller batch later would fit, but the campaign goes out in order.
        assert split_to_fit(batches(10, 1), 5) == ([], batches(10, 1))
        assert split_to_fit(batches(5, 5), 10) == (batches(5, 5), [])


class TestPolicies:
    def test_a_campaign_that_fits_keeps_every_batch(self, warehouse, clean_sandbox):
        ensure_schema(warehouse)
        clean_sandbox.update_settings(monthly_limit=100, monthly_used=0)
        planned = batches(40, 40)
        assert within_quota(warehouse, settings(), planned, new_plan=False) == planned

    def test_refuse_names_what_is_needed_and_what_is_left(self, warehouse, clean_sandbox):
        plan_in_ledger(warehouse, "other", (30,))  # another campaign's unsent batch holds 30
        clean_sandbox.update_settings(monthly_limit=100, monthly_used=20)
        with pytest.raises(
            AirflowFailException, match=r"needs 80 sends; 50 left.*used 20.*unsent batches 30"
        ):
            within_quota(warehouse, settings(), batches(40, 40), new_plan=False)

    def test_send_what_fits_maps_the_prefix_and_leaves_the_rest_planned_with_the_reason(
        self, warehouse, clean_sandbox
    ):
        plan_in_ledger(warehouse, "c1", (40, 40, 40))
        clean_sandbox.update_settings(monthly_limit=100, monthly_used=0)
        planned = [{**b, "send_at": "x"} for b in batches(40, 40, 40)]

        fitting = within_quota(warehouse, settings(quota_policy="send_what_fits"), planned, new_plan=False)

        assert [b["batch_number"] for b in fitting] == [1, 2]
        rows = {r["batch_number"]: r for r in ledger.rows(warehouse, "c1")}
        assert rows[1]["last_error"] is None and rows[3]["status"] == ledger.PLANNED
        assert rows[3]["last_error"].startswith("waiting for quota")

    def test_a_dry_run_that_does_not_fit_keeps_its_preview(self, warehouse, clean_sandbox):
        ensure_schema(warehouse)
        clean_sandbox.update_settings(monthly_limit=10, monthly_used=0)
        planned = batches(40)
        assert within_quota(warehouse, settings(dry_run=True), planned, new_plan=True) == planned

    def test_ignore_does_not_ask_the_provider(self, warehouse, clean_sandbox):
        ensure_schema(warehouse)
        planned = batches(10**6)
        assert within_quota(warehouse, settings(quota_policy="ignore"), planned, new_plan=True) == planned
        assert clean_sandbox.requests() == []

    def test_a_refused_new_plan_is_removed(self, warehouse, clean_sandbox):
        plan_in_ledger(warehouse, "c1", (40,))
        clean_sandbox.update_settings(monthly_limit=10, monthly_used=0)
        with pytest.raises(AirflowFailException):
            within_quota(warehouse, settings(), batches(40), new_plan=True)
        assert ledger.rows(warehouse, "c1") == []


class TestProviderFailures:
    def test_a_server_error_is_retried_by_the_plan_task_and_removes_a_new_plan(
        self, warehouse, clean_sandbox
    ):
        plan_in_ledger(warehouse, "c1", (5,))
        clean_sandbox.set_faults([{"action": "status", "status": 503, "endpoint": "quota"}])
        with pytest.raises(QuotaCheckFailed, match="cannot check the MigoSMTP quota.*nothing was sent"):
            within_quota(warehouse, settings(), batches(5), new_plan=True)
        assert fetch_dicts(warehouse, "SELECT COUNT(*) AS n FROM email_batch_ledger", ())[0]["n"] == 0

    def test_a_refused_key_fails_without_retries(self, warehouse, clean_sandbox, monkeypatch):
        ensure_schema(warehouse)
        point_migosmtp_at(monkeypatch, clean_sandbox, password="wrong-key")
        with pytest.raises(AirflowFailException, match="quota_policy=ignore"):
            within_quota(warehouse, settings(), batches(5), new_plan=False)

    def test_a_dry_run_goes_on_without_the_projection(self, warehouse, clean_sandbox):
        ensure_schema(warehouse)
        clean_sandbox.set_faults([{"action": "status", "status": 503, "endpoint": "quota"}])
        planned = batches(5)
        assert within_quota(warehouse, settings(dry_run=True), planned, new_plan=True) == planned

    def test_an_error_that_is_not_the_providers_propagates_as_it_is(
        self, warehouse, clean_sandbox, monkeypatch
    ):
        ensure_schema(warehouse)

        def broken(self):
            raise KeyError("not the provider")

        monkeypatch.setattr(quota.provider.Provider, "monthly_quota", broken)
        with pytest.raises(KeyError):
            within_quota(warehouse, settings(), batches(5), new_plan=False)
