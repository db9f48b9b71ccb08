"""Service Bus triggers on the dead-letter subqueues of RUNS_QUEUE and DEPLOY_QUEUE: a message that could not be
processed in MAX_DELIVERY_COUNT deliveries leaves its run Failed with the reason, never silently stuck.

A queue's dead-letter subqueue is addressed as `<queue path>/$deadletterqueue`
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues, "Path to the dead-letter
queue"); the Functions Service Bus trigger takes that path as its queue name, as in
`[ServiceBusTrigger("order-queue/$DeadLetterQueue")]`. The local host serves it from `<queue>-deadletter`.
"""

import azure.functions as func

bp = func.Blueprint()


def _handle(queue_setting: str, msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.orchestration import dead_lettered

    svc = services()
    dead_lettered(svc, getattr(svc.settings, queue_setting), msg.get_body(), msg.dead_letter_reason or "",
                  msg.dead_letter_error_description or "", msg.delivery_count)


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%RUNS_QUEUE%/$deadletterqueue",
                              connection="ServiceBusConnection")
def runs_deadletter(msg: func.ServiceBusMessage) -> None:
    _handle("runs_queue", msg)


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%DEPLOY_QUEUE%/$deadletterqueue",
                              connection="ServiceBusConnection")
def deployments_deadletter(msg: func.ServiceBusMessage) -> None:
    _handle("deploy_queue", msg)
