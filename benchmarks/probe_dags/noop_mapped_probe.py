# The send-rate benchmark's probe: Airflow's own floor for mapped tasks on a stack, measured
# beside the campaign's batches. Mapped tasks that do nothing, in the same pool. (Airflow's
# parser reads only files that mention both "airflow" and "dag".)
from airflow.sdk import Param, dag, task

from include.campaign.dag_factory import API_POOL


@dag(
    dag_id="noop_mapped_probe",
    schedule=None,
    params={"count": Param(300, type="integer", minimum=1)},
    tags=["benchmark"],
)
def noop_mapped_probe():
    @task
    def items(params=None) -> list[int]:
        return list(range(params["count"]))

    @task(pool=API_POOL)
    def noop(item: int) -> None:
        return None

    noop.expand(item=items())


noop_mapped_probe()
