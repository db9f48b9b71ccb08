"""When to try a failed step again: exponential backoff with jitter inside a retry window. Pure: no SDK, no I/O.

A transient fault in a queue-triggered step (throttling, a 5xx, a dropped connection) must not abandon the
message: Service Bus would redeliver it at once and spend every delivery in seconds. The step completes its
message and sends a scheduled copy instead; the copy's body carries the retry number (`attempt`) and when the
step first failed (`since`), so the schedule survives restarts and is the same on Service Bus and locally.

Hand-written rather than tenacity/backoff: those retry a call in-process by sleeping; here a retry is a message
scheduled for later, so all that is needed is the delay of retry n, which is a few lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

MAX_DELAY_SECONDS = 300.0  # never wait more than 5 minutes between two tries: the window bounds the total

# Names of exception classes that mean "the request did not get a usable answer; trying again may work".
# azure-core's ServiceRequestError (no connection) and ServiceResponseError (connection dropped mid-answer):
# https://learn.microsoft.com/python/api/azure-core/azure.core.exceptions ; matched by name so this module stays
# free of SDK imports.
_TRANSIENT_NAMES = frozenset({"ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
                              "ServiceResponseTimeoutError", "IncompleteReadError", "ConnectionError",
                              "TimeoutError"})
# HTTP statuses worth retrying: 408 timeout, 429 throttling, 5xx server faults except 501 (not implemented: the
# server does not support the request, so asking again gets the same answer; RFC 9110 15.6.2). Every classifier of
# HTTP answers (`is_transient`, `shared.ml.azureml.translate`) reads this one list via `is_transient_status`.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_transient_status(status: int | None) -> bool:
    """Whether an HTTP answer with `status` is worth asking again (see TRANSIENT_STATUS)."""
    return isinstance(status, int) and status in TRANSIENT_STATUS


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step later can help: the ML port's non-permanent errors, network and storage faults
    (azure-core request/response errors, HTTP 408/429/5xx), OS-level connection errors and timeouts."""
    from .ml.port import MLBackendError, PermanentError

    if isinstance(exc, MLBackendError):
        return not isinstance(exc, PermanentError)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    return is_transient_status(getattr(exc, "status_code", None))


@dataclass(frozen=True)
class RetryPolicy:
    """Delays of retries 1, 2, 3, ...: `base_seconds` doubling up to `max_seconds`, with "equal jitter" (a
    uniform draw from the upper half of that cap), so delays never shrink from one retry to the next while
    retries of many runs that failed together spread out instead of hitting the service in lockstep.
    Retries stop once the next one would start after `window` past the first failure."""

    base_seconds: float
    window: timedelta
    max_seconds: float = MAX_DELAY_SECONDS

    def cap(self, attempt: int) -> float:
        """The upper bound of retry `attempt`'s delay (attempt >= 1), in seconds."""
        if attempt < 1:
            raise ValueError("retries are numbered from 1")
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 62))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry `attempt`: in [cap/2, cap]. `rand` returns a float in [0, 1)."""
        cap = self.cap(attempt)
        return cap / 2 + (cap / 2) * rand()

    def next_delay(self, attempt: int, first_failed_at: datetime, now: datetime,
                   rand: Callable[[], float] = random.random) -> float | None:
        """The delay before retry `attempt`, or None when that retry would start past the window: give up."""
        delay = self.delay(attempt, rand)
        if now + timedelta(seconds=delay) > first_failed_at + self.window:
            return None
        return round(delay, 3)


def retry_policy(settings) -> RetryPolicy:
    """The policy the settings give (RETRY_BASE_SECONDS, RETRY_WINDOW_MINUTES)."""
    return RetryPolicy(base_seconds=float(settings.retry_base_seconds),
                       window=timedelta(minutes=float(settings.retry_window_minutes)))
