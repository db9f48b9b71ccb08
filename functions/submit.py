"""Service Bus trigger: submit a queued run's fine-tuning job."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%", connection="ServiceBusConnection")
def submit(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.orchestration import Attempt, submit_run

    body = json.loads(msg.get_body())
    submit_run(services(), str(body["run_id"]), attempt=Attempt.from_body(body))
