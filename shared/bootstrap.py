"""The composition root: builds the adapters once per worker and hands them to the handlers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .config import SettingError, Settings, check_runtime, get_settings
from .messaging import MessageSender, make_sender
from .ml.checked import checked
from .ml.port import MLBackend
from .model_hints import ModelHintsSource
from .notifications import EventPublisher, Notifier, destinations, make_publisher
from .run_store import Runs, RunStore
from .runs import utcnow
from .storage import Blobs
from .tokens import ModelHints


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
    publisher: EventPublisher | None = None  # the Event Grid topic (shared.notifications); None: not published
    # The token budget's facts about the base model (shared.model_hints), asked of `ml` once per process.
    model_hints: Callable[[], ModelHints] | None = None


_lock = threading.RLock()

# Backends other than Azure ML are provided by whoever runs the app: the local runtime (`chatft host`, the
# `chatft` commands) registers the local ML workspace here, so this package never imports it.
_ml_backends: dict[str, Callable[[Settings], MLBackend]] = {}


def register_ml_backend(name: str, factory: Callable[[Settings], MLBackend] | None) -> None:
    """Make `ML_BACKEND=<name>` build its backend with `factory(settings)`; None withdraws it."""
    with _lock:
        if factory is None:
            _ml_backends.pop(name, None)
        else:
            _ml_backends[name] = factory


def make_ml_backend(settings: Settings) -> MLBackend:
    """The ML backend the settings name: Azure ML, or one the runtime registered (the local workspace).

    Raises SettingError when ML_BACKEND names a backend nobody registered (the local workspace outside the local
    runtime)."""
    if settings.ml_backend == "azureml":
        from .ml.azureml import AzureMLBackend

        return AzureMLBackend(settings)
    factory = _ml_backends.get(settings.ml_backend)
    if factory is None:
        raise SettingError(f"setting ML_BACKEND={settings.ml_backend} is served only by the local runtime "
                           "(`chatft host`); set ML_BACKEND=azureml to use Azure Machine Learning")
    return factory(settings)


def bootstrap(settings: Settings | None = None, *, ml: MLBackend | None = None,
              messages: MessageSender | None = None, clock: Callable[[], datetime] | None = None,
              runs: Runs | None = None, publisher: EventPublisher | None = None) -> Services:
    settings = settings or get_settings()
    svc = Services(
        settings=settings,
        runs=runs if runs is not None else RunStore(settings, settings.runs_table),
        blobs=Blobs(settings),
        messages=messages or make_sender(settings),
        # Every backend behind the port's input rules (shared/ml/checked.py), so none of them repeats the rules.
        ml=checked(ml or make_ml_backend(settings), inference_instance_type=settings.inference_instance_type),
        clock=clock or utcnow,
        publisher=publisher or make_publisher(settings),
    )
    svc.model_hints = ModelHintsSource(settings, svc.ml)
    # Runs make events only where someone listens: with webhook URLs or an Event Grid topic configured.
    if destinations(settings):
        svc.runs.outbox = Notifier(settings, svc.messages, svc.runs)
    return svc


_services: Services | None = None


def services() -> Services:
    """The worker's services, built on first use (not at import: cold start stays light).

    Raises `SettingError` (`MisconfiguredForAzure` when running in Azure with local-only values): every trigger
    goes through here, so each fails with the same message instead of doing half the work. Nothing is cached
    on failure, so a fixed setting takes effect with the next worker."""
    global _services
    with _lock:
        if _services is None:
            settings = get_settings()
            check_runtime(settings)
            _services = bootstrap(settings)
        return _services


def override_services(value: Services | None) -> None:
    """Install services for this worker (tests, and the local host wiring a shared workspace)."""
    global _services
    with _lock:
        _services = value
