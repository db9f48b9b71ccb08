"""Shutdown hooks: what the app's per-worker clients need done, on the event loop that used them, before a host
ends that loop (the scoring proxy's pooled aiohttp session, which must be closed on its own loop).

A client registers its hook when it is made (`on_shutdown`); whoever runs the app's loop awaits `shutdown()` on
that loop as it stops (the local host does). The Functions host in Azure ends the worker process instead, which
closes everything. Nothing here imports the rest of the app, so a host can call it for any app it runs.
"""

from __future__ import annotations

import logging
import threading
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]

_hooks: list[Hook] = []
_lock = threading.Lock()


def on_shutdown(hook: Hook) -> None:
    """Have `shutdown()` await `hook()`; registering the same hook again (equal callables) adds nothing."""
    with _lock:
        if hook not in _hooks:
            _hooks.append(hook)


async def shutdown() -> None:
    """Await the registered hooks, newest first, and forget them; a hook that fails is logged, the others run."""
    with _lock:
        hooks, _hooks[:] = list(reversed(_hooks)), []
    for hook in hooks:
        try:
            await hook()
        except Exception:
            log.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))
