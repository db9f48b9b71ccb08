"""Blob access the app needs: streamed reads of uploads, streamed writes of run files, small JSON documents."""

from __future__ import annotations

import base64
import collections
import itertools
import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from .config import AZURITE_CONNECTION, Settings

READ_CHUNK = 4 * 1024 * 1024
BLOCK_SIZE = 4 * 1024 * 1024
PREFETCH_CHUNKS = 2  # chunks fetched ahead of the reader
STAGE_AHEAD = 2  # blocks staged behind the writer


@dataclass(frozen=True)
class StorageAccount:
    """How the app reaches its storage account: a connection string (Azurite locally), or in Azure the account
    name and the app's managed identity (`AzureWebJobsStorage__accountName`), as the Functions host does."""

    connection_string: str = AZURITE_CONNECTION
    account_name: str = ""

    @classmethod
    def of(cls, where: "StorageAccount | Settings | str") -> "StorageAccount":
        if isinstance(where, StorageAccount):
            return where
        if isinstance(where, Settings):
            return cls(where.storage_connection, where.storage_account_name)
        return cls(connection_string=where)

    def _client(self, client_type: Any, service: str, **names: str) -> Any:
        if self.account_name:
            from .identity import default_credential

            url = f"https://{self.account_name}.{service}.core.windows.net"
            return client_type(url, credential=default_credential(), **names)
        return client_type.from_connection_string(self.connection_string, **names)

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return self._client(BlobServiceClient, "blob")

    def table(self, name: str) -> Any:
        from azure.data.tables import TableClient

        return self._client(TableClient, "table", table_name=name)

    def queue(self, name: str) -> Any:
        from azure.storage.queue import QueueClient

        return self._client(QueueClient, "queue", queue_name=name)


class Blobs:
    """One BlobServiceClient per worker, containers created on first use."""

    def __init__(self, account: "StorageAccount | Settings | str"):
        self._account = StorageAccount.of(account)
        self._service = None
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    @property
    def service(self):
        with self._lock:
            if self._service is None:
                self._service = self._account.blob_service()
            return self._service

    def container(self, name: str):
        client = self.service.get_container_client(name)
        if name not in self._ready:
            from azure.core.exceptions import ResourceExistsError

            try:
                client.create_container()
            except ResourceExistsError:
                pass
            self._ready.add(name)
        return client

    def blob(self, container: str, name: str):
        return self.container(container).get_blob_client(name)

    def write_json(self, container: str, name: str, document: Any) -> None:
        data = json.dumps(document, indent=2, sort_keys=True).encode()
        self.blob(container, name).upload_blob(data, overwrite=True, content_type="application/json")

    def read_json(self, container: str, name: str) -> Any:
        return json.loads(self.blob(container, name).download_blob().readall())

    def writer(self, container: str, name: str) -> "BlockWriter":
        return BlockWriter(self.blob(container, name))


def read_chunks(blob_client, etag: str | None = None, chunk_size: int = READ_CHUNK,
                prefetch: int = PREFETCH_CHUNKS) -> Iterator[bytes]:
    """Stream a blob in `chunk_size` chunks (the last may be shorter); with `etag`, fail (ResourceModifiedError)
    if the blob changed since that version was seen.

    Each chunk is one ranged GET, and up to `prefetch` further chunks are fetched on a background thread while
    the caller works on the current one, so the network and the caller's CPU overlap; memory stays at
    (1 + prefetch) chunks. (The SDK's own `download_blob()` first GETs up to 32 MiB at once,
    `max_single_get_size`, and `chunks()` fetches the next chunk only when asked.)"""
    from concurrent.futures import ThreadPoolExecutor

    kwargs: dict[str, Any] = {"max_concurrency": 1}
    if etag:
        from azure.core import MatchConditions

        kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)

    def fetch(offset: int) -> bytes:
        return blob_client.download_blob(offset=offset, length=chunk_size, **kwargs).readall()

    # The size first (an empty blob has no range to GET: that is a 416), checked against the version too.
    conditions = {k: v for k, v in kwargs.items() if k != "max_concurrency"}
    total = blob_client.get_blob_properties(**conditions).size
    offsets = iter(range(0, total, chunk_size))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-read") as pool:
        ahead: collections.deque = collections.deque(pool.submit(fetch, o) for o in itertools.islice(offsets, prefetch))
        try:
            while ahead:
                data = ahead.popleft().result()
                nxt = next(offsets, None)
                if nxt is not None:
                    ahead.append(pool.submit(fetch, nxt))
                yield data
        finally:
            for future in ahead:  # the caller stopped early: fetch nothing more
                future.cancel()


class BlockWriter:
    """Writes a block blob in fixed-size blocks, staged on a background thread while the caller goes on: memory
    stays at a few blocks (the one filling, up to `STAGE_AHEAD` being staged) whatever the blob size."""

    def __init__(self, blob_client, block_size: int = BLOCK_SIZE):
        self._blob = blob_client
        self._block_size = block_size
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self._prefix = uuid.uuid4().hex[:8]
        self._staging: collections.deque = collections.deque()
        self._pool = None

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._block_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-write")
        while len(self._staging) >= STAGE_AHEAD:
            self._staging.popleft().result()  # a failed stage raises here, in the caller
        block_id = base64.b64encode(f"{self._prefix}-{len(self._blocks):06d}".encode()).decode()
        self._staging.append(self._pool.submit(self._blob.stage_block, block_id, bytes(self._buffer)))
        self._blocks.append(block_id)
        self._buffer.clear()

    def close(self, content_type: str = "application/jsonl") -> None:
        """Commit the blocks (an empty blob if nothing was written)."""
        from azure.storage.blob import BlobBlock, ContentSettings

        try:
            self._flush()
            while self._staging:
                self._staging.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
        self._blob.commit_block_list([BlobBlock(block_id=b) for b in self._blocks],
                                     content_settings=ContentSettings(content_type=content_type))

    def abort(self) -> None:
        """Stop staging (blocks never committed are dropped by the service after a week)."""
        self._staging.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
