"""Calling functions as the Python worker does: `async def` on the host's event loop, plain functions on threads;
every invocation timed and logged in one line (function, trigger id, duration, outcome), never its payload."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

import azure.functions as func

from .indexing import FunctionSpec

log = logging.getLogger("chatft.host")


class InvocationContext(func.Context):
    """The `context` argument a function may declare."""

    def __init__(self, function_name: str, function_directory: str):
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> threading.local:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> None:
        return None

    @property
    def retry_context(self) -> None:
        return None


class Invoker:
    """Runs invocations for every listener. `call` from a worker thread, `call_async` from the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app_directory: str, http_threads: int = 16,
                 trigger_threads: int = 32):
        self._loop = loop
        self._directory = app_directory
        # HTTP gets its own threads so a burst of queue work never delays a request.
        self._http_pool = ThreadPoolExecutor(http_threads, thread_name_prefix="chatft-http")
        self._trigger_pool = ThreadPoolExecutor(trigger_threads, thread_name_prefix="chatft-trigger")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def _arguments(self, spec: FunctionSpec, value: Any) -> dict[str, Any]:
        kwargs = {spec.arg: value}
        if spec.wants_context:
            kwargs["context"] = InvocationContext(spec.name, self._directory)
        return kwargs

    def call(self, spec: FunctionSpec, value: Any, trigger_id: str) -> Any:
        """Invoke from a worker thread; returns the result or raises what the function raised."""
        started = time.perf_counter()
        try:
            kwargs = self._arguments(spec, value)
            if spec.is_async:
                result = asyncio.run_coroutine_threadsafe(spec.fn(**kwargs), self._loop).result()
            else:
                result = spec.fn(**kwargs)
        except Exception as e:
            _log_outcome(spec.name, trigger_id, started, e)
            raise
        _log_outcome(spec.name, trigger_id, started, None)
        return result

    async def call_async(self, spec: FunctionSpec, value: Any, trigger_id: str) -> Any:
        """Invoke from the event loop (HTTP, Event Grid); plain functions run on the HTTP threads."""
        started = time.perf_counter()
        try:
            kwargs = self._arguments(spec, value)
            if spec.is_async:
                result = await spec.fn(**kwargs)
            else:
                result = await self._loop.run_in_executor(self._http_pool, lambda: spec.fn(**kwargs))
        except Exception as e:
            _log_outcome(spec.name, trigger_id, started, e)
            raise
        _log_outcome(spec.name, trigger_id, started, None)
        return result

    def submit(self, work: Callable[..., Any], *args: Any) -> Future:
        """Run listener work (an invocation with its settlement) on a trigger thread, tracked for shutdown."""
        future = self._trigger_pool.submit(work, *args)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for submitted work; returns how many are still running."""
        with self._lock:
            pending = set(self._pending)
        _, not_done = wait(pending, timeout=timeout)
        return len(not_done)

    def close(self) -> None:
        self._trigger_pool.shutdown(wait=False, cancel_futures=True)
        self._http_pool.shutdown(wait=False, cancel_futures=True)


def _log_outcome(function: str, trigger_id: str, started: float, error: BaseException | None) -> None:
    ms = (time.perf_counter() - started) * 1000
    if error is None:
        log.info("Executed %s (%s) in %.1f ms: Succeeded", function, trigger_id, ms)
    else:
        log.error("Executed %s (%s) in %.1f ms: Failed with %s", function, trigger_id, ms,
                  type(error).__name__, exc_info=error)
