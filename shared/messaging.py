"""Sending the app's messages: Service Bus in Azure, Azurite Storage Queues locally.

Both carry the same thing: a JSON body, a `message_id` (the run id, so Service Bus duplicate detection drops a
second copy) and an optional delay (scheduled delivery, how deployment progress is re-checked without waiting).

Locally a Storage Queue message holds an envelope `{"messageId": ..., "body": "<the JSON body as text>"}`;
the local host unwraps it into a `ServiceBusMessage` whose `delivery_count` is the queue's dequeue count.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from .config import Settings
from .identity import default_credential
from .storage import StorageAccount


class MessageSender(Protocol):
    def send(self, queue: str, body: dict[str, Any], message_id: str, delay_seconds: float = 0) -> None:
        """Send `body` to `queue`; with a delay, the message is delivered no earlier than that."""


def encode_envelope(body: dict[str, Any], message_id: str) -> str:
    return json.dumps({"messageId": message_id, "body": json.dumps(body, separators=(",", ":"))},
                      separators=(",", ":"))


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

    def send(self, queue: str, body: dict[str, Any], message_id: str, delay_seconds: float = 0) -> None:
        delay = max(0, min(int(round(delay_seconds)), self.MAX_INVISIBLE_SECONDS))
        self._client(queue).send_message(encode_envelope(body, message_id), visibility_timeout=delay or None)


class ServiceBusSender:
    """azure-servicebus with managed identity; scheduled messages for delays."""

    def __init__(self, fully_qualified_namespace: str, credential: Any = None):
        self._fqns = fully_qualified_namespace
        self._credential = credential
        self._client = None
        self._lock = threading.Lock()

    def _sb(self):
        with self._lock:
            if self._client is None:
                from azure.servicebus import ServiceBusClient

                self._client = ServiceBusClient(self._fqns, self._credential or default_credential())
            return self._client

    def send(self, queue: str, body: dict[str, Any], message_id: str, delay_seconds: float = 0) -> None:
        from azure.servicebus import ServiceBusMessage

        message = ServiceBusMessage(json.dumps(body), message_id=message_id, content_type="application/json")
        if delay_seconds > 0:
            message.scheduled_enqueue_time_utc = datetime.now(timezone.utc) + timedelta(seconds=delay_seconds)
        with self._sb().get_queue_sender(queue) as sender:
            sender.send_messages(message)


def make_sender(settings: Settings) -> MessageSender:
    if settings.messaging == "servicebus":
        return ServiceBusSender(settings.servicebusconnection)
    return StorageQueueSender(settings)
