"""The demo campaign (``python -m demo``) and the synthetic audience it, the tests and the benchmarks seed;
the webhook receiver on loopback, and ``airflow_stack``: a real Airflow stack on loopback, which the
deployment tests and ``benchmarks/send_rate.py`` start.

Development only: a deployment ships ``dags/``, ``include/`` and ``plugins/``, not this.
"""
