"""The send-rate benchmark's probe DAG parses, and maps a task that does nothing in the API pool,
so its rate is Airflow's own floor for what ``send_batch`` does."""

from __future__ import annotations

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.mappedoperator import MappedOperator

from include.campaign.dag_factory import API_POOL
from tests.conftest import REPO_ROOT


def test_the_probe_maps_a_no_op_in_the_api_pool():
    bag = DagBag(dag_folder=str(REPO_ROOT / "benchmarks" / "probe_dags"))

    assert bag.import_errors == {}
    dag = bag.dags["noop_mapped_probe"]
    noop = dag.get_task("noop")
    assert isinstance(noop, MappedOperator)
    assert noop.pool == API_POOL
    assert dag.params["count"] == 300
