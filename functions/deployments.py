"""Service Bus trigger: a scheduled look at a deployment in progress, or a retry of a step after training."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%DEPLOY_QUEUE%", connection="ServiceBusConnection")
def deployments(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.orchestration import continue_run

    body = json.loads(msg.get_body())
    continue_run(services(), str(body["run_id"]), body, message_id=msg.message_id or "")
