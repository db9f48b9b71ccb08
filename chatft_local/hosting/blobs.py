"""Blob triggers: scan the container on an interval and keep blob receipts in storage, as the Functions host does.

A receipt is the blob `blobreceipts/<hostId>/<function>/<container>/<blob name>` in container
`azure-webjobs-hosts` holding the ETag (unquoted) that was processed, so a blob at a given ETag runs the function
once, also across host restarts, and an overwrite (new ETag) runs it again. `source=EventGrid` triggers are served
the same way. A failing invocation is tried up to 5 times, host.json's `queues.visibilityTimeout` apart; then the
blob goes to the `webjobs-blobtrigger-poison` queue and the receipt is written so it is not retried forever.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.blob import InputStream
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient, StorageStreamDownloader

from .indexing import FunctionSpec, IndexingError
from .invoker import Invoker

log = logging.getLogger("chatft.host")

RECEIPTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
MAX_ATTEMPTS = 5


class BlobPath:
    """A trigger path `container/<pattern>` where `{x}` parts match any text (`{name}` the blob name)."""

    def __init__(self, path: str):
        container, _, pattern = path.partition("/")
        if not container or "{" in container:
            raise ValueError(f"blob trigger path {path!r} must start with a container name")
        self.container = container
        parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern or "{name}")
        self._regex = re.compile("".join(
            f"(?P<{p[1:-1]}>.+)" if p.startswith("{") else re.escape(p) for p in parts) + r"\Z", re.DOTALL)

    def match(self, blob_name: str) -> dict[str, str] | None:
        found = self._regex.match(blob_name)
        return found.groupdict() if found else None


class BlobListener:
    """Serves one blob-triggered function."""

    def __init__(self, spec: FunctionSpec, connection: str, invoker: Invoker, host_id: str,
                 scan_seconds: float, retry_seconds: float, max_in_flight: int = 16):
        self.spec = spec
        try:
            self.path = BlobPath(spec.trigger["path"])
        except ValueError as e:
            raise IndexingError(f"function {spec.name}: {e}") from None
        self._connection = connection
        self._service = BlobServiceClient.from_connection_string(connection)
        self._container = self._service.get_container_client(self.path.container)
        self._receipts = self._service.get_container_client(RECEIPTS_CONTAINER)
        self._invoker = invoker
        self._prefix = f"blobreceipts/{host_id}/{spec.name}/{self.path.container}/"
        self._scan_seconds = scan_seconds
        self._retry_seconds = retry_seconds
        self._max_in_flight = max_in_flight
        self._done: dict[str, str] = {}  # blob name -> ETag with a receipt; saves reading receipts every scan
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"blob-{spec.name}", daemon=True)
        self._value = _value_maker(spec)

    def start(self) -> None:
        try:
            self._receipts.create_container()
        except ResourceExistsError:
            pass
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.scan()
                failing = False
            except Exception as e:  # storage unreachable for a moment: keep the host up, say it once
                if not failing:
                    log.warning("blob trigger %s: scanning %s failed: %s", self.spec.name, self.path.container, e)
                failing = True
            self._stop.wait(self._scan_seconds)

    def scan(self) -> None:
        """One pass over the container: start an invocation for each blob whose ETag has no receipt."""
        try:
            blobs = list(self._container.list_blobs())
        except ResourceNotFoundError:  # the container does not exist yet: nothing to do
            return
        for blob in blobs:
            if self._stop.is_set():
                return
            name, etag = blob.name, blob.etag.strip('"')  # listings and uploads disagree on the quotes
            with self._lock:
                if self._done.get(name) == etag or name in self._in_flight:
                    continue
                if len(self._in_flight) >= self._max_in_flight:
                    return  # the rest waits for the next scan
            if self.path.match(name) is None:
                continue
            if self._read_receipt(name) == etag:
                with self._lock:
                    self._done[name] = etag
                continue
            with self._lock:
                self._in_flight.add(name)
            self._invoker.submit(self._process, name, etag)

    def _receipt(self, name: str) -> BlobClient:
        return self._receipts.get_blob_client(self._prefix + name)

    def _read_receipt(self, name: str) -> str | None:
        try:
            return self._receipt(name).download_blob().readall().decode()
        except ResourceNotFoundError:
            return None

    def _process(self, name: str, etag: str) -> None:
        trigger_id = f"{self.path.container}/{name}"
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    value = self._value(self._service, self.path.container, name)
                except ResourceNotFoundError:
                    return  # deleted since the scan: nothing to process
                try:
                    self._invoker.call(self.spec, value, trigger_id)
                    break
                except Exception:
                    if attempt == MAX_ATTEMPTS:
                        self._poison(name, etag)
                    elif self._stop.wait(self._retry_seconds):
                        return  # stopping: no receipt, so the next host run tries again
            self._receipt(name).upload_blob(etag.encode(), overwrite=True)
            with self._lock:
                self._done[name] = etag
        except Exception as e:  # storage failed around the invocation; the next scan tries again
            log.warning("blob trigger %s: %s: %s", self.spec.name, trigger_id, e)
        finally:
            with self._lock:
                self._in_flight.discard(name)

    def _poison(self, name: str, etag: str) -> None:
        from azure.storage.queue import QueueClient

        log.error("blob trigger %s: %s/%s failed %d times; moved to the %s queue", self.spec.name,
                  self.path.container, name, MAX_ATTEMPTS, POISON_QUEUE)
        queue = QueueClient.from_connection_string(self._connection, POISON_QUEUE)
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        queue.send_message(json.dumps({"FunctionId": f"Host.Functions.{self.spec.name}", "BlobType": "BlockBlob",
                                       "ContainerName": self.path.container, "BlobName": name, "ETag": etag}))


def _value_maker(spec: FunctionSpec):
    """How to build the trigger argument from the parameter's annotation: an SDK client (the
    azurefunctions-extensions-bindings-blob types), bytes, str, or func.InputStream (the default)."""
    kind = spec.arg_type if isinstance(spec.arg_type, type) else None

    def make(service: BlobServiceClient, container: str, name: str) -> Any:
        client = service.get_blob_client(container, name)
        if kind is not None and issubclass(kind, BlobClient):
            return client
        if kind is not None and issubclass(kind, ContainerClient):
            return service.get_container_client(container)
        if kind is not None and issubclass(kind, StorageStreamDownloader):
            return client.download_blob()
        download = client.download_blob()
        data = download.readall()
        if kind is bytes:
            return data
        if kind is str:
            return data.decode()
        return InputStream(data=data, name=f"{container}/{name}", uri=client.url, length=len(data),
                           metadata=download.properties.metadata)

    return make
