"""The quota pre-flight: does the campaign fit in what is left of the month's quota?

The plan asks the provider for the month's limit and use before any batch is sent.
What is left for this campaign is that, less what other campaigns already
hold: their batches not yet at the provider (planned, failed or halted; dry
runs and unfinished plans aside), which will take quota when they are sent or
resumed (``ledger.held_by_others``, the rule the caps use too). It errs on the safe side:
a batch that will only be resumed after the reset still holds quota now.
By ``quota_policy`` a campaign that does not fit is refused, or sends the batches that fit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from include.campaign import ledger, provider, staging
from include.campaign.settings import IGNORE, REFUSE, CampaignSettings

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

log = logging.getLogger(__name__)


class QuotaCheckFailed(RuntimeError):
    """The quota could not be read (server error, timeout, a malformed answer): nothing was sent."""


@dataclass(frozen=True)
class QuotaProjection:
    """What the campaign needs against what the month has left for it, in recipients."""

    needed: int
    limit: int
    used: int
    held: int

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used - self.held)

    @property
    def fits(self) -> bool:
        return self.needed <= self.left

    def describe(self) -> str:
        return (
            f"needs {self.needed:,} sends; {self.left:,} left this month "
            f"(limit {self.limit:,}, used {self.used:,}, held by other campaigns' unsent batches "
            f"{self.held:,})"
        )


def split_to_fit(batches: Sequence[dict[str, Any]], left: int) -> tuple[list[dict], list[dict]]:
    """The batches that fit in ``left`` recipients, in order, and the rest (from the first that
    does not fit on, so the campaign goes out in its planned order)."""
    total = 0
    for i, batch in enumerate(batches):
        total += batch["recipient_count"]
        if total > left:
            return list(batches[:i]), list(batches[i:])
    return list(batches), []


def _projection(
    hook: DbApiHook, settings: CampaignSettings, batches: Sequence[dict[str, Any]], new_plan: bool
):
    """Ask the provider; a failure sends nothing (a refused new plan is removed) and says how to
    go on. None: a dry run goes on without the projection."""
    campaign_id = settings.campaign_id
    try:
        quota = provider.Provider().monthly_quota()
    except Exception as err:
        if not provider.is_provider_error(err):
            raise
        if settings.dry_run:
            log.warning("Quota projection unavailable (the dry run goes on without it): %s", err)
            return None
        if new_plan:
            staging.clear_plan(hook, campaign_id)
        message = (
            f"cannot check the MigoSMTP quota before sending campaign {campaign_id!r}, so nothing was "
            f"sent: {err}. Set quota_policy=ignore to send without the check."
        )
        if not provider.retry_may_help(err):
            raise AirflowFailException(message) from err
        raise QuotaCheckFailed(message) from err  # the plan task's retry asks again
    return QuotaProjection(
        needed=sum(b["recipient_count"] for b in batches),
        limit=quota.limit,
        used=quota.used,
        held=ledger.held_by_others(hook, campaign_id),
    )


def within_quota(
    hook: DbApiHook, settings: CampaignSettings, batches: list[dict[str, Any]], *, new_plan: bool
) -> list[dict[str, Any]]:
    """The batches this run may send, by ``quota_policy``.

    A refused new plan is removed, so that it holds no quota or slots for other campaigns; a
    refused resume keeps its batches (they are still the campaign's to send).
    """
    campaign_id = settings.campaign_id
    if settings.quota_policy == IGNORE or not batches:
        return batches
    projection = _projection(hook, settings, batches, new_plan)
    if projection is None:
        return batches
    fitting, waiting = split_to_fit(batches, projection.left)
    if projection.fits:
        log.info("Quota: campaign %s %s: it fits", campaign_id, projection.describe())
        return batches
    if settings.dry_run:
        log.warning(
            "Quota (dry run): campaign %s %s: quota_policy=refuse would send nothing, "
            "send_what_fits %d of %d batches",
            campaign_id,
            projection.describe(),
            len(fitting),
            len(batches),
        )
        return batches
    if settings.quota_policy == REFUSE:
        if new_plan:
            staging.clear_plan(hook, campaign_id)
        raise AirflowFailException(
            f"campaign {campaign_id!r} does not fit in this month's MigoSMTP quota: it "
            f"{projection.describe()}. This run sent nothing. Wait for the monthly reset or raise the "
            f"plan's quota; or trigger it with quota_policy=send_what_fits to send the {len(fitting)} "
            f"of {len(batches)} batches that fit now."
        )
    reason = (
        f"waiting for quota: left unsent by the quota pre-flight "
        f"({projection.describe()}); resume after the monthly reset with mode=retry_failed"
    )
    ledger.record_waiting(hook, campaign_id, [b["batch_number"] for b in waiting], reason)
    log.warning(
        "Quota: campaign %s %s: sending the %d of %d batches that fit (%d recipients); %d stay planned",
        campaign_id,
        projection.describe(),
        len(fitting),
        len(batches),
        sum(b["recipient_count"] for b in fitting),
        len(waiting),
    )
    return fitting
