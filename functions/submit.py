"""Service Bus trigger: submit a queued run's fine-tuning job."""

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%", connection="ServiceBusConnection")
def submit(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.messages import SubmitRun
    from shared.orchestration import submit_run

    # A malformed body raises: the message is redelivered, then dead-lettered and dropped by its handler.
    message = SubmitRun.from_json(msg.get_body())
    submit_run(services(), message.run_id, attempt=message.attempt)
