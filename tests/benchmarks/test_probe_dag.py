"""The benchmarks' probe DAGs parse, and map tasks in the API pool that do nothing or only wait
deferred: Airflow's own floor for what ``send_batch`` does when it sends and when it waits."""

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


def test_the_deferred_probe_maps_a_task_that_defers_in_the_api_pool():
    """The waiting-cost benchmark's floor: mapped tasks in the same pool that defer at once."""
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import TaskDeferred

    bag = DagBag(dag_folder=str(REPO_ROOT / "benchmarks" / "probe_dags"))

    assert bag.import_errors == {}
    wait = bag.dags["deferred_probe"].get_task("wait")
    assert isinstance(wait, MappedOperator) and wait.pool == API_POOL
    operator = wait.operator_class(task_id="one", item=0)
    try:
        operator.execute({})
    except TaskDeferred as deferred:
        assert isinstance(deferred.trigger, DateTimeTrigger)
    else:
        raise AssertionError("the probe's task did not defer")
