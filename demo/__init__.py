"""The demo campaign (``python -m demo``) and the synthetic audience it, the tests and the benchmarks seed.

Development only: a deployment ships ``dags/``, ``include/`` and ``plugins/``, not this.
"""
