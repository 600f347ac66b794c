"""A recurring campaign: the newsletter, Mondays at 09:00 UTC, to the table newsletter_subscribers.

Copy this file for a campaign of your own. Each run is the campaign
``weekly_newsletter-<logical date>``; clearing a failed run finishes it, and
``airflow backfill create`` sends missed weeks. ``catchup=False``: a newsletter
deployed today does not mail every past week; backfill the weeks you want.
"""

from __future__ import annotations

# Keep this comment: Airflow only parses files that mention both "airflow" and "dag".
from include.campaign.dag_factory import campaign_dag

dag = campaign_dag(
    "weekly_newsletter",
    schedule="0 9 * * 1",
    catchup=False,
    recipients_table="newsletter_subscribers",
    subject="This week at Example",
    html_body="<p>Hi {{first_name}}, here is what happened this week.</p>",
    text_body="Hi {{first_name}}, here is what happened this week.",
)
