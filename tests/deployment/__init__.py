"""Deployment tier: the DAG on a real Airflow stack (api-server, scheduler, dag-processor, ...)."""
