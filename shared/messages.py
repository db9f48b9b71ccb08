"""The app's queue messages, declared once: what a sender builds and a trigger reads.

RUNS_QUEUE carries `SubmitRun` (functions/submit.py), DEPLOY_QUEUE carries `ContinueRun` (functions/deployments.py),
NOTIFY_QUEUE carries `DeliverEvent` (functions/notify.py); the first two come back through the dead-letter triggers (functions/deadletters.py) when a handler kept failing. The body is
compact JSON, the same on Service Bus and on the local Storage Queues (`shared.messaging` wraps it in an envelope
there). Each class also says its `message_id`: Service Bus duplicate detection drops a second message with the
same id (https://learn.microsoft.com/azure/service-bus-messaging/duplicate-detection), so the id says which sends
are copies of one another.

Plain dataclasses and `json`, not pydantic: the triggers import this module, and importing the app stays light.
`from_json` refuses a body without a `run_id` (`MalformedMessage`): the trigger raises, the message is redelivered
and then dead-lettered, and the dead-letter handler logs and drops it. The other fields are read leniently (a
message from before a field existed is a first try).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

ORIGIN_MAX_LEN = 100  # keeps `<origin>-<attempt>` well inside Service Bus's 128-character message id


class MalformedMessage(ValueError):
    """A queue body that is not a JSON object naming a run (`run_id`, a non-empty string)."""


class QueueMessage(Protocol):
    """What a sender needs of a message: its id for duplicate detection and its body."""

    @property
    def message_id(self) -> str: ...

    def to_json(self) -> str: ...


@dataclass(frozen=True)
class Attempt:
    """Earlier tries of a message's step (body fields `attempt`, `since`, `origin`): the retry number (0: the
    first try), when the step first failed (ISO 8601), and the id retries derive their message ids from
    (`<origin>-<attempt>`: each retry has its own id, so duplicate detection drops only copies of the same retry)."""

    number: int = 0
    since: str = ""
    origin: str = ""

    @property
    def message_id(self) -> str:
        return f"{self.origin}-{self.number}"

    def fields(self) -> dict[str, Any]:
        return {"attempt": self.number, "since": self.since, "origin": self.origin} if self.number else {}

    @classmethod
    def read(cls, data: dict[str, Any]) -> "Attempt":
        """Read leniently: a body without these fields (or with unreadable ones) is a first try."""
        try:
            number = max(0, int(data.get("attempt") or 0))
        except (TypeError, ValueError):
            number = 0
        since = _text(data, "since")
        try:
            datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
        except ValueError:
            since = ""
        return cls(number, since, _text(data, "origin")[:ORIGIN_MAX_LEN])


FIRST_TRY = Attempt()


@dataclass(frozen=True)
class SubmitRun:
    """RUNS_QUEUE: submit the fine-tuning job of a Queued run. Body `{"run_id"}`, plus `attempt`, `since` and
    `origin` on a retry. Id: the run id (a repeated ingestion of the same upload queues it once), `<origin>-<n>`
    for retry n."""

    run_id: str
    attempt: Attempt = FIRST_TRY

    queue_setting: ClassVar[str] = "runs_queue"
    step: ClassVar[str] = "submit"

    @property
    def message_id(self) -> str:
        return self.attempt.message_id if self.attempt.number else self.run_id

    def to_json(self) -> str:
        return _dump({"run_id": self.run_id, **self.attempt.fields()})

    @classmethod
    def from_json(cls, body: bytes | str) -> "SubmitRun":
        """The message in `body`; raises MalformedMessage."""
        data = _load(body, cls)
        return cls(data["run_id"], Attempt.read(data))


@dataclass(frozen=True)
class ContinueRun:
    """DEPLOY_QUEUE: take a run on after its job. `step` is "check" for a scheduled look at a deployment in
    progress, else the step a retry is for ("settle", "job status", "register", "deploy"); the handler goes by the
    run's state, and `step` tells the dead-letter handler which runs the message may still fail. `endpoint` (checks
    and deploy retries) is the endpoint the message was sent for: a dead letter for an earlier one changes nothing.
    `check_id` makes each scheduled check a message of its own (id `<endpoint>-check-<check_id>`); a check's retries
    derive their ids from that one."""

    run_id: str
    step: str = "check"
    endpoint: str = ""
    check_id: str = ""
    attempt: Attempt = FIRST_TRY

    queue_setting: ClassVar[str] = "deploy_queue"

    @classmethod
    def check(cls, run_id: str, endpoint: str) -> "ContinueRun":
        """A new deployment check: an id of its own, so it is never taken for a copy of an earlier check (a run's
        checks would repeat any id derived from its check count, which starts again after each step)."""
        return cls(run_id, "check", endpoint, uuid.uuid4().hex[:12])

    @property
    def message_id(self) -> str:
        if self.attempt.number:
            return self.attempt.message_id
        if self.step == "check":
            return f"{self.endpoint}-check-{self.check_id}"
        return f"{self.run_id}-{self.step.replace(' ', '-')}"

    def to_json(self) -> str:
        data: dict[str, Any] = {"run_id": self.run_id, "step": self.step}
        if self.endpoint:
            data["endpoint"] = self.endpoint
        if self.check_id:
            data["check_id"] = self.check_id
        return _dump({**data, **self.attempt.fields()})

    @classmethod
    def from_json(cls, body: bytes | str) -> "ContinueRun":
        """The message in `body`; raises MalformedMessage."""
        data = _load(body, cls)
        return cls(data["run_id"], _text(data, "step") or "check", _text(data, "endpoint"), _text(data, "check_id"),
                   Attempt.read(data))


@dataclass(frozen=True)
class DeliverEvent:
    """NOTIFY_QUEUE: deliver one run event (`shared.events`, its JSON object) to one destination: a webhook URL,
    named by its key (`shared.notifications.destination_key`: a hash, so no URL, which may carry a token, travels in
    a message), or "eventgrid". Id: a hash of the event id and the destination (a second flush of the same event
    is dropped by duplicate detection), `<that>-<n>` for retry n; the webhook's `webhook-id` is the event id."""

    run_id: str
    event: dict[str, Any]
    destination: str
    attempt: Attempt = FIRST_TRY

    queue_setting: ClassVar[str] = "notify_queue"
    step: ClassVar[str] = "notify"

    @property
    def base_id(self) -> str:
        import hashlib

        return hashlib.sha256(f"{self.event.get('id')}\n{self.destination}".encode()).hexdigest()[:40]

    @property
    def message_id(self) -> str:
        return self.attempt.message_id if self.attempt.number else self.base_id

    def to_json(self) -> str:
        return _dump({"run_id": self.run_id, "event": self.event, "destination": self.destination,
                      **self.attempt.fields()})

    @classmethod
    def from_json(cls, body: bytes | str) -> "DeliverEvent":
        """The message in `body`; raises MalformedMessage (also without an `event` object or a `destination`)."""
        data = _load(body, cls)
        if not isinstance(data.get("event"), dict) or not isinstance(data["event"].get("id"), str):
            raise MalformedMessage("DeliverEvent message: `event` must be an object with an `id`")
        if not _text(data, "destination"):
            raise MalformedMessage("DeliverEvent message: `destination` must be a non-empty string")
        return cls(data["run_id"], data["event"], data["destination"], Attempt.read(data))


def retry_of(message: "SubmitRun | ContinueRun | DeliverEvent", attempt: Attempt) -> Any:
    """The same message as retry `attempt` (its id then derives from `attempt.origin`)."""
    return dataclasses.replace(message, attempt=attempt)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _load(body: bytes | str, cls: type) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        raise MalformedMessage(f"{cls.__name__} message: the body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"{cls.__name__} message: the body is JSON {type(data).__name__}, not an object")
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        raise MalformedMessage(f"{cls.__name__} message: `run_id` must be a non-empty string")
    return data


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""
