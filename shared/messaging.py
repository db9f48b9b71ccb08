"""Sending the app's messages: Service Bus in Azure, Azurite Storage Queues locally.

Both carry the same thing: a message of `shared.messages` (its JSON body and its `message_id`, by which Service Bus
duplicate detection drops a second copy) and an optional delay (scheduled delivery, how deployment progress is
re-checked without waiting).

Locally a Storage Queue message holds an envelope `{"messageId": ..., "body": "<the JSON body as text>"}`;
the local host unwraps it into a `ServiceBusMessage` whose `delivery_count` is the queue's dequeue count.
"""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from .config import Settings
from .identity import default_credential
from .messages import QueueMessage
from .storage import StorageAccount


class MessageSender(Protocol):
    def send(self, queue: str, message: QueueMessage, delay_seconds: float = 0) -> None:
        """Send `message` to `queue`; with a delay, the message is delivered no earlier than that."""


def encode_envelope(body: str, message_id: str) -> str:
    """The local queue message carrying `body` (JSON text) under `message_id`."""
    return json.dumps({"messageId": message_id, "body": body}, separators=(",", ":"))


def decode_envelope(text: str) -> tuple[str, bytes]:
    """(message_id, body bytes) of a local queue message; a message that is not an envelope passes as body."""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "messageId" in data and isinstance(data.get("body"), str):
            return str(data["messageId"]), data["body"].encode()
    except ValueError:
        pass
    return "", text.encode()


class StorageQueueSender:
    """Storage Queues (Azurite locally) standing in for Service Bus; delay = initial invisibility."""

    MAX_INVISIBLE_SECONDS = 7 * 24 * 3600 - 1

    def __init__(self, account: "StorageAccount | Settings | str"):
        self._account = StorageAccount.of(account)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, queue: str):
        with self._lock:
            client = self._clients.get(queue)
            if client is None:
                from azure.core.exceptions import ResourceExistsError

                client = self._account.queue(queue)
                try:
                    client.create_queue()
                except ResourceExistsError:
                    pass
                self._clients[queue] = client
            return client

    def send(self, queue: str, message: QueueMessage, delay_seconds: float = 0) -> None:
        delay = max(0, min(int(round(delay_seconds)), self.MAX_INVISIBLE_SECONDS))
        self._client(queue).send_message(encode_envelope(message.to_json(), message.message_id),
                                         visibility_timeout=delay or None)


class ServiceBusSender:
    """azure-servicebus with managed identity; scheduled messages for delays.

    The SDK does not promise that `ServiceBusClient` and `ServiceBusSender` are thread-safe and advises against
    reusing them across threads (azure-servicebus 7.15 README, "Thread safety"), while the Functions worker runs
    invocations on several threads. So each thread gets its own client and keeps one sender per queue
    (`threading.local`): no instance is ever used by two threads, and a thread's sends reuse its open link instead of
    opening one per message. `client_factory` (a callable returning a client) lets tests do without a broker.
    """

    def __init__(self, fully_qualified_namespace: str, credential: Any = None,
                 client_factory: Callable[[], Any] | None = None):
        self._fqns = fully_qualified_namespace
        self._credential = credential
        self._factory = client_factory or self._new_client
        self._local = threading.local()
        self._clients: list[Any] = []  # every thread's client, so `close` reaches them all
        self._generation = 0  # bumped by `close`: a thread holding a closed client makes a new one
        self._lock = threading.Lock()

    def _new_client(self) -> Any:
        from azure.servicebus import ServiceBusClient

        with self._lock:  # azure-identity credentials may be shared between threads; create the one lazily, once
            if self._credential is None:
                self._credential = default_credential()
        return ServiceBusClient(self._fqns, self._credential)

    def _sender(self, queue: str) -> Any:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.client, local.senders = self._factory(), {}
            with self._lock:
                self._clients.append(local.client)
                local.generation = self._generation
        sender = local.senders.get(queue)
        if sender is None:
            sender = local.senders[queue] = local.client.get_queue_sender(queue)
        return sender

    def send(self, queue: str, message: QueueMessage, delay_seconds: float = 0) -> None:
        from azure.servicebus import ServiceBusMessage

        outgoing = ServiceBusMessage(message.to_json(), message_id=message.message_id,
                                     content_type="application/json")
        if delay_seconds > 0:
            outgoing.scheduled_enqueue_time_utc = datetime.now(timezone.utc) + timedelta(seconds=delay_seconds)
        sender = self._sender(queue)
        try:
            sender.send_messages(outgoing)
        except Exception:
            # A failed link is not reused: the next send on this thread opens a fresh sender.
            self._local.senders.pop(queue, None)
            with contextlib.suppress(Exception):
                sender.close()
            raise

    def close(self) -> None:
        """Close every thread's client (and with it its senders)."""
        with self._lock:
            clients, self._clients = self._clients, []
            self._generation += 1
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def make_sender(settings: Settings) -> MessageSender:
    if settings.messaging == "servicebus":
        return ServiceBusSender(settings.servicebusconnection)
    return StorageQueueSender(settings)
