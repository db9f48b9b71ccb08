"""The local Azure Functions host: serves a Python v2 function app's triggers against Azurite, as the Functions
host does in Azure (Core Tools cannot be installed here).

    host = LocalHost("function_app", state_dir=".chatft", port=0).start()   # serves on a background thread
    requests.get(host.base_url + "/api/health", headers={"x-functions-key": host.function_key})
    host.stop()

`chatft host` runs it in the foreground (Ctrl-C or SIGTERM stops it); `HostProcess` runs that command as a child
process, for tests that kill and restart the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from aiohttp import web

from chatft_local.azurite import ensure_azurite
from chatft_local.hosting.blobs import BlobListener
from chatft_local.hosting.http import EVENTGRID_PATH, aiohttp_paths, build_http_app
from chatft_local.hosting.indexing import (FunctionSpec, HostOptions, IndexingError, app_directory, binding_lookup,
                                           index_app, read_host_json, read_local_settings)
from chatft_local.hosting.invoker import Invoker
from chatft_local.hosting.keys import function_key
from chatft_local.hosting.process import HostProcess
from chatft_local.hosting.queues import QueueListener
from chatft_local.hosting.timers import TimerListener
from shared.lifecycle import shutdown

__all__ = ["LocalHost", "HostProcess", "IndexingError"]

log = logging.getLogger("chatft.host")

HOST_ID = "chatft-local"  # the <hostId> of blob receipt paths
SERVICES_MODULE = "chatft_local.services"
STORAGE_CONNECTION = "AzureWebJobsStorage"


class LocalHost:
    """One function app served on 127.0.0.1. `start()` serves on a background thread; `run()` in the foreground.

    Settings: `env` is put into os.environ while the host runs (restored by `stop()`), then `local.settings.json`
    beside the app module (or `settings_file`) fills what is still unset. `state_dir` and `port` default to the
    CHATFT_STATE_DIR and CHATFT_HOST_PORT settings; port 0 picks a free port (see `base_url`). The app's host.json
    gives the retry delay (`queue_retry_seconds` overrides it), dead-letter count, concurrency and route prefix.
    """

    def __init__(self, app_module: str = "function_app", *, state_dir: str | os.PathLike | None = None,
                 port: int | None = None, env: Mapping[str, str] | None = None,
                 settings_file: str | os.PathLike | None = None, services: bool = True,
                 blob_scan_seconds: float = 1.0, queue_poll_seconds: float = 0.25,
                 queue_retry_seconds: int | None = None, lock_seconds: int = 300,
                 shutdown_grace_seconds: float = 30.0):
        self.app_module = app_module
        self._state_dir_arg = state_dir
        self._port_arg = port
        self._env = dict(env or {})
        self._settings_file = settings_file
        self._use_services = services
        self._blob_scan_seconds = blob_scan_seconds
        self._queue_poll_seconds = queue_poll_seconds
        self._queue_retry_seconds = queue_retry_seconds
        self._lock_seconds = lock_seconds
        self._grace = shutdown_grace_seconds

        self.settings: Any = None  # shared.config.Settings, read at start
        self.state_dir: Path | None = None
        self.port: int | None = None
        self.function_key: str | None = None
        self.functions: list[FunctionSpec] = []
        self._saved_env: dict[str, str | None] = {}
        self._azurite = None
        self._services = None
        self._invoker: Invoker | None = None
        self._listeners: list = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`; HTTP functions are under `/api/<route>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def eventgrid_url(self) -> str:
        """Where Event Grid deliveries for an Event Grid triggered function go (add `&functionName=<name>`)."""
        return f"{self.base_url}{EVENTGRID_PATH}?code={self.function_key}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> "LocalHost":
        """Serve on a background thread; returns once serving, or raises why it could not start."""
        if self._thread is not None:
            raise RuntimeError("this LocalHost was already started")
        self._thread = threading.Thread(target=self._thread_main, name="chatft-host", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the local host did not start within {timeout:.0f}s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving: listeners first, then in-flight invocations (up to the grace period), HTTP, services and
        the Azurite this host started; restores the environment."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()

    def run(self, on_ready: Callable[["LocalHost"], None] | None = None) -> None:
        """Serve in the foreground until SIGINT or SIGTERM."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(on_ready, handle_signals=True))
        finally:
            loop.close()

    def __enter__(self) -> "LocalHost":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(None, handle_signals=False))
        except BaseException as e:
            self._error = e
        finally:
            loop.close()
            self._ready.set()

    async def _serve(self, on_ready: Callable[["LocalHost"], None] | None, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self._open()
            self._ready.set()
            if on_ready is not None:
                on_ready(self)
            await self._stopping.wait()
            log.info("stopping the local host")
        finally:
            await self._close()

    # -- start-up and shut-down ------------------------------------------------------------------------------

    async def _open(self) -> None:
        from shared.config import Settings

        directory = app_directory(self.app_module)
        self._apply_env(read_local_settings(self._settings_file or directory / "local.settings.json"))
        self.settings = Settings.from_env()
        self.state_dir = Path(self._state_dir_arg or self.settings.chatft_state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._azurite = await asyncio.to_thread(ensure_azurite, self.state_dir)
        log.info("Azurite: %s", f"started, data in {self.state_dir / 'azurite'}" if self._azurite.started_here
                 else "reusing the one listening on 127.0.0.1:10000-10002")
        self.function_key = function_key(self.state_dir)

        lookup = binding_lookup(os.environ)
        indexed = index_app(self.app_module, lookup)
        self.functions = indexed.functions
        options = HostOptions.from_host_json(read_host_json(indexed.directory))
        if self._queue_retry_seconds is not None:
            options = dataclasses.replace(options, retry_seconds=self._queue_retry_seconds)
        self._invoker = Invoker(self._loop, str(indexed.directory))
        listeners = [x for x in (self._listener(spec, lookup, options) for spec in self.functions) if x]

        # Bind first so services (and the ready line) know the URL; connections are refused until the site starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.settings.chatft_host_port if self._port_arg is None else self._port_arg))
        self.port = sock.getsockname()[1]
        # The app reads its settings from the environment: make it see the state folder and port in use.
        self._put_env("CHATFT_STATE_DIR", str(self.state_dir))
        self._put_env("CHATFT_HOST_PORT", str(self.port))
        app = build_http_app(self.functions, self._invoker, self.function_key, options.route_prefix,
                             self.settings.max_request_bytes)
        # auto_decompress=False: functions get the body as sent, Content-Encoding and all, as the Functions host
        # hands them (a gzip body reaches the language worker compressed: Azure/azure-functions-host#3722); the
        # app decodes it itself (shared.api_errors.parse_body), under its own size limit.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
                                     auto_decompress=False)
        try:
            await self._runner.setup()
            self._services = await asyncio.to_thread(self._start_services)
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            raise
        for listener in listeners:
            await asyncio.to_thread(listener.start)
            self._listeners.append(listener)
        self._log_functions(options.route_prefix)

    def _listener(self, spec: FunctionSpec, lookup: Callable[[str], str | None], options: HostOptions) -> Any:
        kind = spec.trigger_type
        if kind in ("httpTrigger", "eventGridTrigger"):
            return None  # served by the HTTP app
        if kind == "timerTrigger":
            return TimerListener(spec, self._invoker)
        if kind == "blobTrigger":
            return BlobListener(spec, _connection(spec, spec.trigger.get("connection"), lookup), self._invoker,
                                HOST_ID, self._blob_scan_seconds, options.retry_seconds)
        if kind == "serviceBusTrigger":
            # Locally Storage Queues stand in for Service Bus, so the storage connection carries them.
            return QueueListener(spec, _connection(spec, STORAGE_CONNECTION, lookup), self._invoker,
                                 max_dequeue_count=options.max_dequeue_count, lock_seconds=self._lock_seconds,
                                 retry_seconds=options.retry_seconds, poll_seconds=self._queue_poll_seconds,
                                 max_in_flight=options.max_concurrent_calls)
        raise IndexingError(f"function {spec.name}: the local host serves HTTP, blob, Service Bus queue, Event Grid "
                            f"and timer triggers, not {kind}")

    def _start_services(self) -> Any:
        """Start `chatft_local.services` (the local ML workspace) when it exists and the host runs it."""
        if not self._use_services:
            return None
        try:
            module = importlib.import_module(SERVICES_MODULE)
        except ModuleNotFoundError as e:
            if e.name == SERVICES_MODULE:
                return None
            raise
        if not hasattr(module, "start"):
            return None
        module.start(self.settings, self)
        return module

    async def _close(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in reversed(listeners):
            await asyncio.to_thread(listener.stop)
        if self._invoker is not None:
            running = await asyncio.to_thread(self._invoker.drain, self._grace)
            if running:
                log.warning("%d invocation(s) still running after %.0fs; their messages stay locked", running,
                            self._grace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await shutdown()  # the clients the app made on this loop (the scoring proxy's session)
        if self._services is not None and hasattr(self._services, "stop"):
            try:
                await asyncio.to_thread(self._services.stop)
            except Exception:
                log.exception("stopping %s failed", SERVICES_MODULE)
        self._services = None
        if self._invoker is not None:
            self._invoker.close()
            self._invoker = None
        if self._azurite is not None:
            await asyncio.to_thread(self._azurite.stop)
            self._azurite = None
        self._restore_env()

    def _put_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _apply_env(self, local_settings: Mapping[str, str]) -> None:
        for name, value in self._env.items():
            self._put_env(name, str(value))
        for name, value in local_settings.items():
            if name not in os.environ:
                self._put_env(name, value)

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def _log_functions(self, route_prefix: str) -> None:
        for spec in self.functions:
            t = spec.trigger
            if spec.trigger_type == "httpTrigger":
                methods = ",".join(t.get("methods") or ["*"])
                where = " ".join(self.base_url + p for p in aiohttp_paths(route_prefix, t.get("route") or spec.name))
                log.info("  %s: [%s] %s (%s)", spec.name, methods, where, t.get("authLevel", "FUNCTION").lower())
            elif spec.trigger_type == "eventGridTrigger":
                log.info("  %s: eventGridTrigger %s?functionName=%s", spec.name, self.base_url + EVENTGRID_PATH,
                         spec.name)
            else:
                detail = t.get("path") or t.get("queueName") or t.get("schedule") or ""
                log.info("  %s: %s %s", spec.name, spec.trigger_type, detail)


def _connection(spec: FunctionSpec, setting: str | None, lookup: Callable[[str], str | None]) -> str:
    name = setting or STORAGE_CONNECTION
    value = lookup(name)
    if not value:
        raise IndexingError(f"function {spec.name}: connection setting {name} has no value")
    return value
