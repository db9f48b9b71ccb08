"""The supervisor: keeps a local workspace's model servers running, as Azure keeps a deployment's containers up.

Every `interval` seconds a background thread settles deployments that are starting, restarts a server that died
(or that a host restart left stopped) and finishes endpoint deletions. `stop()` stops the servers too: they come
back when the next supervisor starts.
"""

from __future__ import annotations

import logging
import threading

from .endpoints import EndpointStore

log = logging.getLogger("chatft.workspace")


class Supervisor:
    """A background thread running `EndpointStore.reconcile` every `interval` seconds."""

    def __init__(self, store: EndpointStore, interval: float = 2.0):
        self.store = store
        self.interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Supervisor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chatft-supervisor", daemon=True)
            self._thread.start()
        return self

    def stop(self, stop_servers: bool = True) -> None:
        """Stop checking; with `stop_servers`, also stop the model servers (SIGTERM, then SIGKILL after a grace)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if stop_servers:
            self.store.stop_servers()

    def _run(self) -> None:
        while True:
            try:
                self.store.reconcile()
            except Exception:  # keep supervising: one bad pass must not end the thread
                log.exception("supervisor pass failed")
            if self._stopping.wait(self.interval):
                return
