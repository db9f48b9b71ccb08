"""Job events as Azure Machine Learning sends them through Event Grid, posted by local job processes.

Each POST carries a JSON array of one event in the Event Grid schema. A job posts RunStatusChanged on Running,
Completed, Failed and Canceled, and RunCompleted too on Completed (as Azure ML does: none on failure). Delivery is
retried with exponential backoff while the receiver is down, for up to 24 hours as Event Grid does; 400 and 413
are not retried. The URL may be given as a function, asked again before every attempt: a local host that
restarts on another port is found. The events URL carries the webhook's key: it is never logged. Standard
library only.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Union
from urllib.parse import urlsplit

log = logging.getLogger("chatft.events")

TOPIC = "/subscriptions/local/resourceGroups/local/providers/Microsoft.MachineLearningServices/workspaces/local"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_TYPE = "azureml.PipelineRun"
# Experiment ids are GUIDs in Azure ML; locally one is derived from the experiment's name, so it never changes.
_EXPERIMENT_NAMESPACE = uuid.UUID("5f1c7a8e-3d0b-4c52-9b7e-2a61c0de7a11")

DELIVERY_HOURS = 24.0  # Event Grid's retry window
MAX_RETRY_DELAY = 30.0
REQUEST_TIMEOUT = 30.0  # Event Grid waits this long for an answer
NOT_RETRIED = frozenset({400, 413})


def experiment_id(experiment_name: str) -> str:
    return str(uuid.uuid5(_EXPERIMENT_NAMESPACE, experiment_name))


def build_run_event(event_type: str, *, job_name: str, experiment_name: str, status: str,
                    when: datetime | None = None) -> dict[str, Any]:
    """One Event Grid event about the job's run (`runId` is the job name, as for SDK v2 pipeline jobs)."""
    exp_id = experiment_id(experiment_name)
    data: dict[str, Any] = {"experimentId": exp_id, "experimentName": experiment_name, "runId": job_name,
                            "runType": RUN_TYPE, "runTags": {}, "runProperties": {}}
    if event_type == RUN_STATUS_CHANGED:
        data["runStatus"] = status
    return {
        "id": str(uuid.uuid4()),
        "topic": TOPIC,
        "subject": f"experiments/{exp_id}/runs/{job_name}",
        "eventType": event_type,
        "eventTime": (when or datetime.now(timezone.utc)).isoformat(),
        "data": data,
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def run_events(job_name: str, experiment_name: str, status: str) -> list[dict[str, Any]]:
    """The events Azure ML raises when a run reaches `status`."""
    events = [build_run_event(RUN_STATUS_CHANGED, job_name=job_name, experiment_name=experiment_name, status=status)]
    if status == "Completed":
        events.append(build_run_event(RUN_COMPLETED, job_name=job_name, experiment_name=experiment_name,
                                      status=status))
    return events


def safe_url(url: str) -> str:
    """The URL without its query (which holds the webhook's key), for log lines."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


Target = Union[str, Callable[[], str]]


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def post_event(target: Target, event: dict[str, Any], *, give_up_after: float = DELIVERY_HOURS * 3600,
               first_delay: float = 1.0, max_delay: float = MAX_RETRY_DELAY, timeout: float = REQUEST_TIMEOUT,
               sleep: Callable[[float], None] = time.sleep) -> bool:
    """POST `[event]` until a 2xx answer; True when delivered, False when refused (400/413) or out of time.
    `target` is the URL, or a function giving the current one ("" while there is none)."""
    body = json.dumps([event]).encode()
    deadline = time.monotonic() + give_up_after
    delay = first_delay
    while True:
        url = target() if callable(target) else target
        if url and not _is_http(url):
            log.error("the events URL %s is not an http(s) URL; event %s not delivered", safe_url(url),
                      event["eventType"])
            return False
        try:
            if not url:
                raise ConnectionRefusedError("no events URL yet")
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "aeg-event-type": "Notification"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            return True
        except urllib.error.HTTPError as error:
            if error.code in NOT_RETRIED:
                log.error("%s refused event %s with HTTP %d; not retried", safe_url(url), event["eventType"],
                          error.code)
                return False
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            reason = type(getattr(error, "reason", error)).__name__
        if time.monotonic() + delay > deadline:
            log.error("gave up delivering %s to %s (%s)", event["eventType"], safe_url(url), reason)
            return False
        log.info("delivering %s to %s failed (%s); retrying in %.0f s", event["eventType"], safe_url(url), reason,
                 delay)
        sleep(delay)
        delay = min(delay * 2, max_delay)


class EventOutbox:
    """Delivers events in order on a background thread, so a job never waits on its receiver while it trains;
    `close` waits a while and returns the events still undelivered."""

    def __init__(self, target: Target, **retry: Any):
        self.target = target
        self.retry = retry
        self.pending: queue.Queue = queue.Queue()
        self.undelivered: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._deliver, name="event-outbox", daemon=True)
        self.thread.start()

    def publish(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.undelivered += events
        self.pending.put(list(events))

    def close(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait up to `timeout` for delivery; the events not yet delivered (nor given up), in order."""
        self.pending.put(None)
        self.thread.join(timeout)
        with self.lock:
            return list(self.undelivered)

    def _deliver(self) -> None:
        while (events := self.pending.get()) is not None:
            for event in events:
                post_event(self.target, event, **self.retry)
                with self.lock:
                    self.undelivered.remove(event)


def delivery_window_left(event: dict[str, Any]) -> float:
    """Seconds left of the event's 24-hour delivery window (counted from its eventTime)."""
    sent = datetime.fromisoformat(event["eventTime"])
    return max(0.0, DELIVERY_HOURS * 3600 - (datetime.now(timezone.utc) - sent).total_seconds())
