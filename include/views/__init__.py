"""What people see of the campaigns in the Airflow UI: HTML pages and SVG charts, from
``include.campaign.report``'s figures (served by ``plugins/migosmtp_campaigns.py``)."""
