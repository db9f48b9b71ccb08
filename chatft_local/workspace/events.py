"""Job events as Azure Machine Learning sends them through Event Grid, posted by local job processes.

Each POST carries a JSON array of one event in the Event Grid schema. A job posts RunStatusChanged on Running,
Completed, Failed and Canceled, and RunCompleted too on Completed (as Azure ML does: none on failure). Delivery is
retried with exponential backoff while the receiver is down, for up to 24 hours as Event Grid does; 400 and 413
are not retried. The events URL carries the webhook's key: it is never logged. Standard library only.
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
from typing import Any, Callable
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


def post_event(url: str, event: dict[str, Any], *, give_up_after: float = DELIVERY_HOURS * 3600,
               first_delay: float = 1.0, max_delay: float = MAX_RETRY_DELAY, timeout: float = REQUEST_TIMEOUT,
               sleep: Callable[[float], None] = time.sleep) -> bool:
    """POST `[event]` until a 2xx answer; True when delivered, False when refused (400/413) or out of time."""
    body = json.dumps([event]).encode()
    deadline = time.monotonic() + give_up_after
    delay = first_delay
    while True:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "aeg-event-type":
                                                  "Notification"})
        try:
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


def post_events(url: str, events: list[dict[str, Any]], **retry: Any) -> bool:
    """Post each event in order (one array of one event per request); True when all were delivered."""
    delivered = True
    for event in events:
        delivered = post_event(url, event, **retry) and delivered
    return delivered


class EventOutbox:
    """Delivers events in order on a background thread, so a job never waits on its receiver while it trains;
    `close` waits until everything was delivered or given up."""

    def __init__(self, url: str, **retry: Any):
        self.url = url
        self.retry = retry
        self.pending: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._deliver, name="event-outbox", daemon=True)
        self.thread.start()

    def publish(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.pending.put(event)

    def close(self, timeout: float | None = None) -> None:
        self.pending.put(None)
        self.thread.join(timeout)

    def _deliver(self) -> None:
        while (event := self.pending.get()) is not None:
            post_event(self.url, event, **self.retry)
