"""The composition root: builds the adapters once per worker and hands them to the handlers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .config import Settings, get_settings
from .messaging import MessageSender, make_sender
from .ml.port import MLBackend
from .run_store import Runs, RunStore
from .runs import utcnow
from .storage import Blobs


@dataclass
class Services:
    """Everything a handler may need. Tests build one with `bootstrap(settings, ml=FakeMLBackend(), ...)`
    (`runs=InMemoryRunStore()` where the test needs no real table)."""

    settings: Settings
    runs: Runs
    blobs: Blobs
    messages: MessageSender
    ml: MLBackend
    clock: Callable[[], datetime] = utcnow


def make_ml_backend(settings: Settings) -> MLBackend:
    """The ML backend the settings name. The local workspace is imported only when chosen."""
    if settings.ml_backend == "azureml":
        from .ml.azureml import AzureMLBackend

        return AzureMLBackend(settings)
    from chatft_local.workspace.local import LocalWorkspace

    return LocalWorkspace(settings)


def bootstrap(settings: Settings | None = None, *, ml: MLBackend | None = None,
              messages: MessageSender | None = None, clock: Callable[[], datetime] | None = None,
              runs: Runs | None = None) -> Services:
    settings = settings or get_settings()
    return Services(
        settings=settings,
        runs=runs if runs is not None else RunStore(settings, settings.runs_table),
        blobs=Blobs(settings),
        messages=messages or make_sender(settings),
        ml=ml or make_ml_backend(settings),
        clock=clock or utcnow,
    )


_services: Services | None = None
_lock = threading.Lock()


def services() -> Services:
    """The worker's services, built on first use (not at import: cold start stays light)."""
    global _services
    with _lock:
        if _services is None:
            _services = bootstrap()
        return _services


def override_services(value: Services | None) -> None:
    """Install services for this worker (tests, and the local host wiring a shared workspace)."""
    global _services
    with _lock:
        _services = value
