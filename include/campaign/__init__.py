"""What a campaign is: its Params, its audience, its batch plan, its ledger, and the steps that run it.

Provider-neutral: only ``provider`` (the gateway) and ``dag_factory`` (the retry policy it hands
to Airflow) import ``include.migosmtp``. Nothing is imported here, so a DAG file that needs one
name pays for one module.
"""
