"""What a campaign is: its Params, its audience, its batch plan, its ledger, and the tasks that run it.

Provider-neutral except where ``tasks``, ``deliveries`` and ``dag_factory`` use ``include.migosmtp``.
Nothing is imported here, so a DAG file that needs one name pays for one module.
"""
