"""Service Bus triggers on NOTIFY_QUEUE: deliver one run event to one webhook or the Event Grid topic, and log the
deliveries that were given up on (its dead-letter subqueue). A delivery never touches the run."""

import azure.functions as func

bp = func.Blueprint()


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%NOTIFY_QUEUE%", connection="ServiceBusConnection")
def notify(msg: func.ServiceBusMessage) -> None:
    from shared.bootstrap import services
    from shared.messages import DeliverEvent
    from shared.notifications import deliver_event

    # A malformed body, or a delivery given up on, raises: the message is redelivered, then dead-lettered.
    deliver_event(services(), DeliverEvent.from_json(msg.get_body()))


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%NOTIFY_QUEUE%/$deadletterqueue",
                              connection="ServiceBusConnection")
def notify_deadletter(msg: func.ServiceBusMessage) -> None:
    from shared.notifications import dead_lettered_delivery

    dead_lettered_delivery(msg.get_body(), msg.dead_letter_reason or "", msg.delivery_count)
