"""Service Bus trigger: a scheduled look at a deployment in progress, or a retry of a step after training."""

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%DEPLOY_QUEUE%", connection="ServiceBusConnection")
def deployments(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.messages import ContinueRun
    from shared.orchestration import continue_run

    # A malformed body raises: the message is redelivered, then dead-lettered and dropped by its handler.
    message = ContinueRun.from_json(msg.get_body())
    continue_run(services(), message)
