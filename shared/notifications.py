"""Telling people when a run ends: each run event (`shared.events`) goes to every webhook URL as a signed POST and
to the Event Grid custom topic, each in a queued delivery of its own, so a notification never blocks or fails a run.

The way of an event:
1. The run store writes it into the run's outbox in the same compare-and-swap as the move (`shared.run_store`),
   then calls `Notifier.flush`: one `DeliverEvent` message per event and destination on NOTIFY_QUEUE, then the
   events leave the outbox (another compare-and-swap). A process that dies in between leaves them there; the
   reconciler flushes them again (`flush_pending`), and the message ids (a hash of event id and destination) make
   Service Bus duplicate detection drop the second copy; past its window, receivers deduplicate on `webhook-id`,
   which is the event id.
2. `deliver_event` (the `notify` trigger) POSTs the event with a 15 s timeout. A 2xx is delivered; a 410 means the
   receiver is gone: nothing more goes to that URL until NOTIFY_WEBHOOK_URLS changes (a mark in RUNS_CONTAINER
   keyed by a hash of the setting and the URL); anything else is retried with the backoff of `shared.retry`
   (RETRY_BASE_SECONDS doubling, up to 5 minutes) for NOTIFY_RETRY_HOURS, then the message is dead-lettered and
   the dead-letter trigger logs it.

Signing is the Standard Webhooks scheme (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/
standard-webhooks.md): headers `webhook-id`, `webhook-timestamp` (Unix seconds of this attempt: receivers refuse
timestamps more than 5 minutes away) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, the
key being the base64 after `whsec_`; the `standardwebhooks` package signs, so whatever verifies OpenAI's or Svix's
webhooks verifies these. URLs may carry tokens (chat tools' incoming webhooks do): they never enter a message, a log
line or the run's history; logs name the URL's scheme and host only.
"""

from __future__ import annotations

import base64
import dataclasses
import binascii
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Protocol
from urllib.parse import urlsplit

from .config import SettingError
from .messages import Attempt, DeliverEvent, MalformedMessage
from .retry import RetryPolicy
from .runs import Run, iso, parse_iso

if TYPE_CHECKING:
    from .bootstrap import Services
    from .config import Settings
    from .messaging import MessageSender
    from .run_store import Runs

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 15.0
EVENTGRID = "eventgrid"  # the destination name of the Event Grid topic
GONE_PREFIX = "notifications/gone/"
SECRET_PREFIX = "whsec_"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
USER_AGENT = "chatft-webhooks/1"
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("


# ------------------------------------------------------------------------------------------- settings


def webhook_urls(settings: "Settings") -> list[str]:
    return [u.strip() for u in settings.notify_webhook_urls.split(",") if u.strip()]


def redact(url: str) -> str:
    """The URL's scheme and host, for logs and messages: paths and queries may hold tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{':' + str(parts.port) if parts.port else ''}/…"


def local_webhook_urls(settings: "Settings") -> list[str]:
    """The http (local-only) URLs among NOTIFY_WEBHOOK_URLS."""
    return [u for u in webhook_urls(settings) if urlsplit(u).scheme.lower() == "http"]


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret. Raises SettingError (never showing the secret).

    Checked strictly here because the library is lenient: `standardwebhooks.Webhook` base64-decodes whatever it is
    given, without validation and with or without the prefix, so a password-like secret would sign with the bytes
    of a garbled decoding that no other implementation reproduces."""
    if not secret.startswith(SECRET_PREFIX):
        raise SettingError("setting NOTIFY_WEBHOOK_SECRET must start with whsec_ followed by base64 (Standard "
                           "Webhooks), e.g. from `chatft notify secret`")
    body = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SettingError("setting NOTIFY_WEBHOOK_SECRET must be whsec_ followed by base64") from None
    # The spec: secrets are 24 to 64 bytes of random data.
    if not 24 <= len(key) <= 64:
        raise SettingError(f"setting NOTIFY_WEBHOOK_SECRET must hold 24 to 64 bytes of key, holds {len(key)}")
    return key


def check_webhook_settings(settings: "Settings") -> None:
    """Each URL is absolute, https or http to 127.0.0.1/localhost; with URLs, a well-formed secret is set."""
    urls = webhook_urls(settings)
    for n, url in enumerate(urls, 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "https" and parts.hostname:
            continue
        if scheme == "http" and parts.hostname in LOCAL_HOSTS:
            continue
        raise SettingError(f"setting NOTIFY_WEBHOOK_URLS: URL {n} ({redact(url)}) must be https, or http to "
                           f"127.0.0.1 or localhost")
    if urls and not settings.notify_webhook_secret:
        raise SettingError("setting NOTIFY_WEBHOOK_SECRET is required when NOTIFY_WEBHOOK_URLS is set")
    # An unresolved Key Vault reference reaches the app as its own text (the vault unreachable, the role not yet
    # propagated): deliveries then fail and are retried, but the runs go on, so it is not refused here.
    if settings.notify_webhook_secret and not settings.notify_webhook_secret.startswith(KEY_VAULT_REFERENCE):
        secret_key(settings.notify_webhook_secret)
    endpoint = settings.eventgrid_topic_endpoint
    if endpoint and urlsplit(endpoint).scheme.lower() != "https":
        raise SettingError("setting EVENTGRID_TOPIC_ENDPOINT must be an https URL (the topic's endpoint)")


def destination_key(url: str) -> str:
    """The name a webhook URL goes by in messages: a hash, so the URL (which may hold a token) stays in settings."""
    return "wh-" + hashlib.sha256(url.encode()).hexdigest()[:24]


def destinations(settings: "Settings") -> dict[str, str]:
    """Every destination of an event: key -> URL for webhooks, and "eventgrid" -> the topic endpoint."""
    out = {destination_key(u): u for u in webhook_urls(settings)}
    if settings.eventgrid_topic_endpoint:
        out[EVENTGRID] = settings.eventgrid_topic_endpoint
    return out


def new_secret() -> str:
    """A fresh `whsec_` secret: 32 random bytes, as the Standard Webhooks libraries make them."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


# -------------------------------------------------------------------------------------------- signing


def event_body(event: dict[str, Any]) -> bytes:
    """The bytes POSTed (and signed): compact JSON, the same on every attempt."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secret: str, webhook_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed now (`at`) with `secret` (`whsec_...`)."""
    from standardwebhooks.webhooks import Webhook

    secret_key(secret)  # the library would accept a malformed one silently
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
            "content-type": "application/json", "user-agent": USER_AGENT}


def post_webhook(url: str, body: bytes, headers: dict[str, str],
                 timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> int:
    """POST one delivery; the receiver's status code. Raises requests' errors (timeouts, refused connections)."""
    import requests

    # No redirects: a 3xx is not an acceptance, and following it would send the signed body somewhere else.
    with requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True) as r:
        return r.status_code


# ---------------------------------------------------------------------------------------- Event Grid


class EventPublisher(Protocol):
    """The Event Grid side: publish one event (a CloudEvents 1.0 JSON object). Raises on failure."""

    def publish(self, event: dict[str, Any]) -> None: ...


class NoEventPublisher:
    """No topic configured (locally, or EVENTGRID_TOPIC_ENDPOINT empty): publishing does nothing."""

    def publish(self, event: dict[str, Any]) -> None:
        return None


def cloud_event(event: dict[str, Any]) -> Any:
    """The azure-core `CloudEvent` of an event's JSON object (what `EventGridPublisherClient.send` takes)."""
    from azure.core.messaging import CloudEvent

    return CloudEvent.from_dict(event)


class EventGridPublisher:
    """An Event Grid custom topic with the CloudEvents 1.0 input schema, with the app's identity (the topic has local
    auth off; the identity holds "EventGrid Data Sender" on it). azure-eventgrid's `EventGridPublisherClient` sends
    `CloudEvent`s to such a topic (https://learn.microsoft.com/python/api/overview/azure/eventgrid-readme).

    Timeouts go with each `send`: azure-eventgrid 4.22's `EventGridPublisherClient` drops its constructor's keyword
    options (transport, timeouts) for a basic topic (azure/eventgrid/_patch.py builds the legacy client from the
    endpoint and credential only), while `send` hands its keywords to the pipeline. `send_options` are more of them
    (tests: `connection_verify` for a local HTTPS stand-in)."""

    def __init__(self, endpoint: str, credential: Any = None, **send_options: Any):
        self._endpoint = endpoint
        self._credential = credential
        self._send_options = {"connection_timeout": WEBHOOK_TIMEOUT_SECONDS, "read_timeout": WEBHOOK_TIMEOUT_SECONDS,
                              "retry_total": 0,  # NOTIFY_QUEUE's retries take over: the message must not linger
                              **send_options}
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.eventgrid import EventGridPublisherClient

                from .identity import default_credential

                self._client = EventGridPublisherClient(self._endpoint, self._credential or default_credential())
            return self._client

    def publish(self, event: dict[str, Any]) -> None:
        self._get().send([cloud_event(event)], **self._send_options)


def make_publisher(settings: "Settings") -> EventPublisher:
    if settings.eventgrid_topic_endpoint:
        return EventGridPublisher(settings.eventgrid_topic_endpoint)
    return NoEventPublisher()


# ------------------------------------------------------------------------------------ the outbox flush


class Notifier:
    """The run store's outbox (`shared.run_store.Outbox`): hands a run's pending events to their deliveries."""

    def __init__(self, settings: "Settings", messages: "MessageSender", runs: "Runs"):
        self.app_id = settings.app_id
        self._settings = settings
        self._messages = messages
        self._runs = runs

    def flush(self, run: Run) -> None:
        """Send one delivery message per pending event and destination, then remove the events from the run.
        Never raises: what could not be sent stays in the outbox for the reconciler (`flush_pending`)."""
        if not run.outbox:
            return
        sent: set[str] = set()
        try:
            for event in run.outbox:
                for key in destinations(self._settings):
                    self._messages.send(self._settings.notify_queue, DeliverEvent(run.run_id, event, key))
                sent.add(event["id"])
                log.info("run %s: event %s (%s) queued for delivery", run.run_id, event["id"], event["type"])
        except Exception as exc:  # storage or Service Bus unreachable: the reconciler sends them later
            log.warning("run %s: queueing its events failed; the reconciler tries again: %s: %s", run.run_id,
                        type(exc).__name__, str(exc)[:200])
        if not sent:
            return

        def drop_sent(r: Run) -> Run | None:
            left = [e for e in r.outbox if e.get("id") not in sent]
            if len(left) == len(r.outbox):
                return None
            kept = dataclasses.replace(r, outbox=left)
            kept.etag = r.etag
            return kept

        try:
            self._runs.update(run.run_id, drop_sent)
        except Exception as exc:  # sent but not removed: a second flush is dropped as a duplicate
            log.warning("run %s: removing sent events from its outbox failed: %s", run.run_id, type(exc).__name__)


def flush_pending(svc: "Services", older_than: timedelta = timedelta(minutes=1)) -> int:
    """Flush the outboxes a write left behind (the process died, or queueing failed); returns how many runs.
    Runs changed in the last `older_than` are left to the flush their own write makes."""
    notifier = svc.runs.outbox
    if notifier is None:
        return 0
    now, count = svc.clock(), 0
    for run in svc.runs.with_pending_events():
        if now - parse_iso(run.updated_at) < older_than:
            continue
        notifier.flush(run)
        count += 1
    if count:
        log.info("notifications: flushed the pending events of %d run(s)", count)
    return count


# ----------------------------------------------------------------------------------------- deliveries


class DeliveryAbandoned(RuntimeError):
    """A delivery retried for NOTIFY_RETRY_HOURS: raised so that the message is dead-lettered (and logged)."""


@dataclass(frozen=True)
class Outcome:
    """What one delivery did: "delivered", "gone" (410, or marked gone earlier), "retry" (scheduled, `delay`
    seconds), "dropped" (the destination is no longer configured) or "abandoned"."""

    result: str
    status: int | None = None
    delay: float | None = None


def gone_mark(settings: "Settings", url: str) -> str:
    """The blob marking `url` gone (410): keyed by the whole NOTIFY_WEBHOOK_URLS value, so changing the setting
    clears every mark."""
    digest = hashlib.sha256(f"{settings.notify_webhook_urls}\n{url}".encode()).hexdigest()[:32]
    return f"{GONE_PREFIX}{digest}.json"


def is_gone(svc: "Services", url: str) -> bool:
    return svc.blobs.blob(svc.settings.runs_container, gone_mark(svc.settings, url)).exists()


def notify_retry_policy(settings: "Settings") -> RetryPolicy:
    return RetryPolicy(base_seconds=float(settings.retry_base_seconds),
                       window=timedelta(hours=float(settings.notify_retry_hours)))


def deliver_event(svc: "Services", message: DeliverEvent,
                  post: Callable[[str, bytes, dict[str, str]], int] = post_webhook) -> Outcome:
    """Deliver one event to one destination (the `notify` trigger). Raises `DeliveryAbandoned` for a message that
    was given up on; never raises for a receiver's answer or silence."""
    event, where = message.event, message.destination
    if message.attempt.origin.endswith("-abandoned"):
        raise DeliveryAbandoned(f"delivery of event {event['id']} to {where} was retried for "
                                f"{svc.settings.notify_retry_hours} h; dead-lettering it")
    if where == EVENTGRID:
        if not svc.settings.eventgrid_topic_endpoint:
            log.info("event %s: no Event Grid topic is configured any more; dropped", event["id"])
            return Outcome("dropped")
        target = "the Event Grid topic"

        def attempt() -> int:
            svc.publisher.publish(event)
            return 200
    else:
        url = destinations(svc.settings).get(where)
        if url is None:
            log.info("event %s: webhook %s is no longer in NOTIFY_WEBHOOK_URLS; dropped", event["id"], where)
            return Outcome("dropped")
        target = redact(url)
        if is_gone(svc, url):
            log.info("event %s: %s answered 410 Gone earlier; not sent", event["id"], target)
            return Outcome("gone")
        body = event_body(event)

        def attempt() -> int:
            return post(url, body, signed_headers(svc.settings.notify_webhook_secret, event["id"], body,
                                                  svc.clock()))

    started = time.monotonic()
    try:
        status: int | None = attempt()
        error = f"answered {status}"
    except Exception as exc:  # a timeout, a refused connection, Event Grid's error: retried like a 5xx
        status, error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if where != EVENTGRID:
            error = f"{type(exc).__name__}"  # requests' messages repeat the URL, which may hold a token
    took = round((time.monotonic() - started) * 1000)
    if status is not None and 200 <= status < 300:
        log.info("event %s (%s) delivered to %s: %d in %d ms (try %d)", event["id"], event.get("type"), target,
                 status, took, message.attempt.number + 1)
        return Outcome("delivered", status)
    if status == 410 and where != EVENTGRID:
        svc.blobs.write_json(svc.settings.runs_container, gone_mark(svc.settings, url),
                             {"status": 410, "at": iso(svc.clock()), "destination": where})
        log.warning("event %s: %s answered 410 Gone; nothing more is sent there until NOTIFY_WEBHOOK_URLS "
                    "changes", event["id"], target)
        return Outcome("gone", status)
    return _retry_later(svc, message, target, error, status)


def _retry_later(svc: "Services", message: DeliverEvent, target: str, error: str, status: int | None) -> Outcome:
    now = svc.clock()
    first = parse_iso(message.attempt.since) if message.attempt.since else now
    number = message.attempt.number + 1
    origin = message.attempt.origin or message.base_id
    delay = notify_retry_policy(svc.settings).next_delay(number, first, now)
    if delay is None:
        log.error("event %s: %s %s; retried for %s h (%d tries): giving up, the message is dead-lettered",
                  message.event["id"], target, error, svc.settings.notify_retry_hours, number)
        # A copy marked abandoned raises on every delivery, so the platform dead-letters it after
        # MAX_DELIVERY_COUNT deliveries without sending the event again (a trigger cannot dead-letter itself).
        svc.messages.send(svc.settings.notify_queue, DeliverEvent(
            message.run_id, message.event, message.destination, Attempt(number, iso(first), f"{origin}-abandoned")))
        return Outcome("abandoned", status)
    svc.messages.send(svc.settings.notify_queue, DeliverEvent(message.run_id, message.event, message.destination,
                                                              Attempt(number, iso(first), origin)),
                      delay_seconds=delay)
    log.info("event %s: %s %s; retry %d in %.1f s", message.event["id"], target, error, number, delay)
    return Outcome("retry", status, delay)


@dataclass(frozen=True)
class TestAnswer:
    """One receiver's answer to `send_test_event`: its redacted URL, the status (None: no answer) and why not."""

    target: str
    status: int | None
    error: str
    milliseconds: int

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def send_test_event(settings: "Settings", now: datetime, post: Callable[[str, bytes, dict[str, str]], int]
                    = post_webhook) -> list[TestAnswer]:
    """Send one signed `chatft.run.test` event to every NOTIFY_WEBHOOK_URLS URL now, directly (no queue, no retry,
    no 410 mark): what `chatft notify test` prints. Raises SettingError when no URL or secret is set."""
    import uuid

    from .events import test_event

    urls = webhook_urls(settings)
    if not urls:
        raise SettingError("setting NOTIFY_WEBHOOK_URLS is empty: no webhook to test")
    secret_key(settings.notify_webhook_secret)
    answers = []
    for url in urls:
        event = test_event(settings.app_id, f"test-{uuid.uuid4().hex[:16]}", iso(now))
        body = event_body(event)
        started = time.monotonic()
        try:
            status, error = post(url, body, signed_headers(settings.notify_webhook_secret, event["id"], body, now)), ""
        except Exception as exc:  # report it and go on with the next URL
            status, error = None, type(exc).__name__
        answers.append(TestAnswer(redact(url), status, error, round((time.monotonic() - started) * 1000)))
    return answers


def dead_lettered_delivery(body: bytes, reason: str, delivery_count: int | None) -> None:
    """A delivery message that reached NOTIFY_QUEUE's dead-letter subqueue: logged (it names the event and the
    destination key, never the URL); the run is not touched, a notification never fails a run."""
    try:
        message = DeliverEvent.from_json(body)
    except MalformedMessage as exc:
        log.error("dead-lettered notification names no event; dropped (%s)", exc)
        return
    log.error("notification dead-lettered: event %s (%s) of run %s to %s after %s deliveries (%s)",
              message.event.get("id"), message.event.get("type"), message.run_id[:80], message.destination,
              delivery_count, reason or "no reason given")
