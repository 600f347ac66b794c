# The waiting-cost benchmark's probe: Airflow's own cost of mapped tasks that wait deferred, measured
# beside the campaign's waiting batches. Mapped tasks in the same pool that defer at once to Airflow's
# DateTimeTrigger a week ahead, and wait there until the run is ended. (Airflow's parser reads only
# files that mention both "airflow" and "dag".)
from datetime import UTC, datetime, timedelta

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Param, dag, task

from include.campaign.dag_factory import API_POOL


class DeferOperator(BaseOperator):
    """Defer at once, for a week: what a waiting ``send_batch`` is, without the campaign."""

    def __init__(self, *, item: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.item = item

    def execute(self, context) -> None:
        trigger = DateTimeTrigger(moment=datetime.now(UTC) + timedelta(days=7))
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context, event=None) -> None:
        return None


@dag(
    dag_id="deferred_probe",
    schedule=None,
    params={"count": Param(1000, type="integer", minimum=1)},
    tags=["benchmark"],
)
def deferred_probe():
    @task
    def items(params=None) -> list[int]:
        return list(range(params["count"]))

    DeferOperator.partial(task_id="wait", pool=API_POOL).expand(item=items())


deferred_probe()
