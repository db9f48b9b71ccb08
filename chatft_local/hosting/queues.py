"""Service Bus queue triggers served from Azurite Storage Queues of the same names.

Peek-lock is the visibility timeout: a received message stays hidden while its function runs (renewed for long
runs); success deletes it; an exception makes it visible again after host.json's `queues.visibilityTimeout`;
after `queues.maxDequeueCount` failed deliveries (default 10, like Service Bus's maxDeliveryCount) it moves to
`<queue>-deadletter`. At most `serviceBus.maxConcurrentCalls` messages of one function run at once. A scheduled
message was sent invisible, so it is not delivered before its time. Messages carry the envelope of
`shared.messaging`; its `messageId` becomes the message's `message_id`.

Like a Service Bus queue with duplicate detection, a message whose `messageId` was already delivered within the
last `DUPLICATE_WINDOW_SECONDS` (Service Bus's default history window, 10 minutes:
https://learn.microsoft.com/azure/service-bus-messaging/duplicate-detection) is dropped unprocessed; the host
remembers ids while it runs, so a restarted host may deliver a duplicate once more (handlers are idempotent).

A trigger on `<queue>/$deadletterqueue` (Service Bus's path of a queue's dead-letter subqueue) is served from
`<queue>-deadletter`; its messages carry `dead_letter_reason` and `dead_letter_error_description` as Service Bus
sets them, and, as there, a dead-lettered message is never dead-lettered again: a failure only retries it later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.servicebus import ServiceBusMessage
from azure.storage.queue import QueueClient, QueueMessage

from shared.messaging import decode_envelope

from .indexing import FunctionSpec, IndexingError
from .invoker import Invoker

log = logging.getLogger("chatft.host")

DEADLETTER_SUFFIX = "-deadletter"
DUPLICATE_WINDOW_SECONDS = 600.0
DEADLETTER_SUBQUEUE = "/$deadletterqueue"  # case-insensitive in Service Bus entity paths
# What Service Bus puts on a message it dead-letters after maxDeliveryCount deliveries
# (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues, "Moving messages to the
# DLQ").
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
MAX_DELIVERY_DESCRIPTION = "Message couldn't be consumed after maximum delivery attempts."


def storage_queue_name(queue_name: str) -> tuple[str, bool]:
    """The Storage Queue serving a Service Bus queue path, and whether the path is a dead-letter subqueue."""
    if queue_name.lower().endswith(DEADLETTER_SUBQUEUE):
        return queue_name[:-len(DEADLETTER_SUBQUEUE)] + DEADLETTER_SUFFIX, True
    return queue_name, False


def deadletter_content(content: str, message_id: str, delivery_count: int) -> str:
    """The envelope of a message moved to `<queue>-deadletter`, with the properties Service Bus adds."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("body"), str)):
        data = {"messageId": message_id, "body": content}
    data.update(deadLetterReason=MAX_DELIVERY_REASON, deadLetterErrorDescription=MAX_DELIVERY_DESCRIPTION,
                deliveryCount=delivery_count)
    return json.dumps(data, separators=(",", ":"))


def _deadletter_properties(content: str) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class _Lease:
    """A message being processed; `lock` serialises renewal and settlement, which both change the pop receipt."""

    message: QueueMessage
    pop_receipt: str
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: bool = False


class QueueListener:
    """Serves one Service Bus queue-triggered function."""

    def __init__(self, spec: FunctionSpec, connection: str, invoker: Invoker, *, max_dequeue_count: int,
                 lock_seconds: int, retry_seconds: int, poll_seconds: float, max_in_flight: int = 16):
        self.spec = spec
        if spec.trigger.get("cardinality", "one") != "one":
            raise IndexingError(f"function {spec.name}: the local host delivers Service Bus messages one at a time")
        self.queue_name, self.is_deadletter = storage_queue_name(spec.trigger["queueName"])
        self._queue = QueueClient.from_connection_string(connection, self.queue_name)
        self._deadletter = (None if self.is_deadletter else
                            QueueClient.from_connection_string(connection, self.queue_name + DEADLETTER_SUFFIX))
        self._invoker = invoker
        self._max_dequeue = max_dequeue_count
        self._lock_seconds = lock_seconds
        self._retry_seconds = retry_seconds
        self._poll_seconds = poll_seconds
        self._max_in_flight = max_in_flight
        self._leases: dict[str, _Lease] = {}  # queue message id -> lease, so a message never runs twice at once
        self._leases_lock = threading.Lock()
        self._delivered: dict[str, tuple[str, float]] = {}  # messageId -> (queue message id, first delivered at)
        self._wake = threading.Event()  # set by a finished message (a free slot) and by stop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"queue-{spec.name}", daemon=True)

    def start(self) -> None:
        for client in (self._queue, self._deadletter):
            if client is None:
                continue
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        # Poll fast while there is work and back off to `poll_seconds` when idle: latency stays low without
        # hammering storage.
        idle = 0.02
        failing = False
        while not self._stopping:
            try:
                self._renew_due()
                received = self._receive()
                failing = False
            except Exception as e:  # storage unreachable for a moment: keep the host up, say it once
                if not failing:
                    log.warning("queue trigger %s: polling %s failed: %s", self.spec.name, self.queue_name, e)
                failing, received = True, 0
            idle = 0.02 if received else min(idle * 2, self._poll_seconds)
            if not received:
                self._wake.wait(idle)
                self._wake.clear()

    def _receive(self) -> int:
        with self._leases_lock:
            free = self._max_in_flight - len(self._leases)
        if free <= 0:
            return 0
        count = 0
        for message in self._queue.receive_messages(max_messages=free, visibility_timeout=self._lock_seconds):
            count += 1
            with self._leases_lock:
                held = self._leases.get(message.id)
                if held is not None:
                    # Its lock ran out while it still runs: the new receipt is a fresh lock on the same run.
                    with held.lock:
                        held.pop_receipt = message.pop_receipt
                        held.renew_at = time.monotonic() + self._lock_seconds / 2
                    continue
                lease = _Lease(message, message.pop_receipt, time.monotonic() + self._lock_seconds / 2)
                self._leases[message.id] = lease
            if message.dequeue_count > self._max_dequeue and not self.is_deadletter:
                # the host died during its earlier deliveries
                self._invoker.submit(self._settle_failed, lease)
            else:
                self._invoker.submit(self._deliver, lease)
        return count

    def _renew_due(self) -> None:
        now = time.monotonic()
        with self._leases_lock:
            due = [lease for lease in self._leases.values() if lease.renew_at <= now]
        for lease in due:
            with lease.lock:
                if lease.settled:
                    continue
                try:
                    updated = self._queue.update_message(lease.message.id, lease.pop_receipt,
                                                         visibility_timeout=self._lock_seconds)
                    lease.pop_receipt = updated.pop_receipt
                except ResourceNotFoundError:
                    log.warning("queue trigger %s: lost the lock on message %s", self.spec.name, lease.message.id)
                lease.renew_at = now + self._lock_seconds / 2

    def _deliver(self, lease: _Lease) -> None:
        message = lease.message
        message_id, body = decode_envelope(message.content)
        message_id = message_id or message.id
        if self._is_duplicate(message_id, message.id):
            log.info("queue trigger %s: message %s was delivered already; duplicate dropped", self.spec.name,
                     message_id)
            self._settle(lease, lambda: self._queue.delete_message(message.id, lease.pop_receipt))
            return
        try:
            self._invoker.call(self.spec, self._value(message, message_id, body), message_id)
        except Exception:
            self._settle_failed(lease)
        else:
            self._settle(lease, lambda: self._queue.delete_message(message.id, lease.pop_receipt))

    def _is_duplicate(self, message_id: str, queue_message_id: str) -> bool:
        """Another queue message with this messageId was delivered within the window (a redelivery of the same
        queue message is not a duplicate). Dead-letter subqueues keep every message, as in Service Bus."""
        if self.is_deadletter:
            return False
        now = time.monotonic()
        with self._leases_lock:
            for key in [k for k, (_, at) in self._delivered.items() if now - at > DUPLICATE_WINDOW_SECONDS]:
                del self._delivered[key]
            first = self._delivered.setdefault(message_id, (queue_message_id, now))
            return first[0] != queue_message_id

    def _settle_failed(self, lease: _Lease) -> None:
        message = lease.message
        if message.dequeue_count >= self._max_dequeue and self._deadletter is not None:
            log.error("queue trigger %s: message %s failed %d deliveries; moved to %s%s", self.spec.name,
                      message.id, message.dequeue_count, self.queue_name, DEADLETTER_SUFFIX)

            def deadletter() -> None:
                message_id = decode_envelope(message.content)[0] or message.id
                self._deadletter.send_message(deadletter_content(message.content, message_id, message.dequeue_count))
                self._queue.delete_message(message.id, lease.pop_receipt)

            self._settle(lease, deadletter)
        else:
            self._settle(lease, lambda: self._queue.update_message(
                message.id, lease.pop_receipt, visibility_timeout=self._retry_seconds))

    def _settle(self, lease: _Lease, action) -> None:
        # Forget the lease before the action: once a retry makes the message visible, receiving it again is a new
        # delivery, not the lock renewal of a run in progress.
        with self._leases_lock:
            self._leases.pop(lease.message.id, None)
        try:
            with lease.lock:
                lease.settled = True
                action()
        except Exception as e:  # it becomes visible again when its lock runs out
            log.warning("queue trigger %s: settling message %s failed: %s", self.spec.name, lease.message.id, e)
        finally:
            self._wake.set()

    def _value(self, message: QueueMessage, message_id: str, body: bytes) -> Any:
        if self.spec.arg_type is bytes:
            return body
        if self.spec.arg_type is str:
            return body.decode()
        extra: dict[str, Any] = {}
        delivery: Any = None
        if self.is_deadletter:
            props = _deadletter_properties(message.content)
            extra = {"dead_letter_reason": props.get("deadLetterReason"),
                     "dead_letter_error_description": props.get("deadLetterErrorDescription"),
                     "dead_letter_source": self.queue_name[:-len(DEADLETTER_SUFFIX)]}
            delivery = props.get("deliveryCount")
        return ServiceBusMessage(
            **extra,
            body=body,
            message_id=message_id,
            delivery_count=delivery if isinstance(delivery, int) else message.dequeue_count,
            content_type="application/json",
            enqueued_time_utc=message.inserted_on,
            locked_until=datetime.now(timezone.utc) + timedelta(seconds=self._lock_seconds),
            lock_token=message.id,
            application_properties={},
            user_properties={},
        )
