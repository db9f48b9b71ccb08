"""Service Bus trigger: a scheduled look at a deployment in progress."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%DEPLOY_QUEUE%", connection="ServiceBusConnection")
def deployments(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.orchestration import check_deployment

    check_deployment(services(), str(json.loads(msg.get_body())["run_id"]))
