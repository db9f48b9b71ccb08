"""The run store: the `Runs` protocol the handlers use, its Table Storage implementation (one entity per run,
changed only by ETag compare-and-swap) and an in-memory one with the same compare-and-swap behaviour (service tests,
no Azurite). `tests/test_run_store.py` runs one contract test module against both."""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from typing import Callable, Iterable, Protocol

from .config import Settings
from .events import pending_events
from .runs import Run, State
from .storage import StorageAccount

log = logging.getLogger(__name__)

PARTITION = "run"
_CHUNK = 30000  # a table string property holds 64 KiB of UTF-16: 32K characters; keep a margin
_MAX_CHUNKS = 30  # 900K characters: under the 1 MiB entity limit


class RunConflict(Exception):
    """A compare-and-swap kept losing: another writer changed the run each time."""


class RunNotFound(KeyError):
    """No run with that id."""


Change = Callable[[Run], "Run | None"]


class Outbox(Protocol):
    """Where a store hands the events its writes make (`shared.notifications.Notifier`)."""

    app_id: str

    def flush(self, run: Run) -> None:
        """Send the delivery messages of `run.outbox`'s events and remove them from the run; never raises."""


class Runs(Protocol):
    """Where runs are kept. Every write is a compare-and-swap on the run's etag; nothing is overwritten blindly."""

    outbox: Outbox | None

    def create(self, run: Run) -> tuple[Run, bool]:
        """Insert `run` unless a run with its id exists; returns (the stored run, whether it was created)."""

    def get(self, run_id: str) -> Run:
        """The run (its `etag` set); RunNotFound when there is none."""

    def find(self, run_id: str) -> Run | None:
        """The run, or None."""

    def list(self, states: Iterable[State] | None = None, limit: int | None = None) -> list[Run]:
        """Runs newest first (created_at, then run_id), optionally only those in `states`, at most `limit`."""

    def update(self, run_id: str, change: Change) -> Run:
        """Apply `change` to a fresh copy of the run and write it if the run did not change meanwhile, re-reading
        and re-applying on a lost race (RunConflict after too many); `change` returning None writes nothing.
        With an `outbox` attached, the events of the moves `change` makes are written with them (`run.outbox`)
        and flushed right after the write."""

    def with_pending_events(self) -> list[Run]:
        """Runs whose outbox still holds events (a flush that did not happen or failed), oldest change first."""

    def claim(self, key: str, run_id: str) -> str:
        """Record `run_id` as the holder of `key` (a string of letters and digits, e.g. a hex hash) unless the key
        has a holder; returns the holder, `run_id` when this call or an earlier one by it took the key."""

    def pass_claim(self, key: str, holder: str, run_id: str) -> bool:
        """Hand `key` from `holder` to `run_id` if `holder` still holds it (compare-and-swap); whether it did."""


def _backoff(attempt: int) -> None:
    # Jittered backoff: writers that collided once do not collide again in lockstep.
    time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** attempt)))


class _CompareAndSwapStore:
    """What both stores share: `find` over `get`, and the one compare-and-swap loop of `update`. A store supplies
    `get` and `_swap(current, changed)`: write `changed` only if the stored run still has `current.etag`, setting
    `changed.etag` and returning True, else False."""

    _max_attempts: int
    outbox: Outbox | None = None  # set by the composition root (shared.bootstrap); None: no events are made

    def get(self, run_id: str) -> Run:
        raise NotImplementedError

    def _swap(self, current: Run, changed: Run) -> bool:
        raise NotImplementedError

    def find(self, run_id: str) -> Run | None:
        try:
            return self.get(run_id)
        except RunNotFound:
            return None

    def update(self, run_id: str, change: Change) -> Run:
        """Apply `change` to the current run and write it if the run did not change meanwhile.

        `change` gets a fresh copy each attempt and returns the new run, or None when there is nothing to
        do (the run is returned unchanged). Exceptions from `change` (e.g. IllegalTransition) propagate.
        """
        for attempt in range(self._max_attempts):
            current = self.get(run_id)
            changed = change(current)
            if changed is None:
                return current
            outbox = self.outbox
            # The one place runs change, so the one place their events are made: in the same write as the move.
            events = pending_events(current, changed, outbox.app_id) if outbox is not None else []
            if events:
                changed.outbox = [*changed.outbox, *events]
            if self._swap(current, changed):
                if events:
                    outbox.flush(changed)
                return changed
            log.info("run %s changed while updating; re-reading", run_id)
            _backoff(attempt)
        raise RunConflict(f"run {run_id} kept changing; gave up after {self._max_attempts} attempts")


CLAIMS = "claim"  # partition of the claims (`Runs.claim`) in the runs table; runs are in PARTITION


def _to_entity(run: Run) -> dict:
    doc = json.dumps(run.to_dict(), separators=(",", ":"))
    chunks = [doc[i:i + _CHUNK] for i in range(0, len(doc), _CHUNK)]
    if len(chunks) > _MAX_CHUNKS:
        raise ValueError(f"run {run.run_id} is too large to store ({len(doc)} characters)")
    entity = {
        "PartitionKey": PARTITION,
        "RowKey": run.run_id,
        "state": run.state.value,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "job_name": run.job_name,
        "model_name": run.model_name,
        "endpoint_name": run.endpoint_name,
        "chunks": len(chunks),
        "outbox": len(run.outbox),  # `with_pending_events` filters on it
    }
    for i, chunk in enumerate(chunks):
        entity[f"doc{i}"] = chunk
    return entity


def _from_entity(entity) -> Run:
    doc = "".join(entity[f"doc{i}"] for i in range(int(entity["chunks"])))
    return Run.from_dict(json.loads(doc), etag=entity.metadata["etag"])


class RunStore(_CompareAndSwapStore):
    """Runs in a table. Every update re-reads and re-applies on a lost race; nothing is overwritten blindly."""

    def __init__(self, account: "StorageAccount | Settings | str", table_name: str, max_attempts: int = 10):
        self._account = StorageAccount.of(account)
        self._table_name = table_name
        self._max_attempts = max_attempts
        self._table = None
        self._lock = threading.Lock()

    def _client(self):
        with self._lock:
            if self._table is None:
                table = self._account.table(self._table_name)
                try:
                    table.create_table()
                except Exception as exc:  # already there
                    from azure.core.exceptions import ResourceExistsError

                    if not isinstance(exc, ResourceExistsError):
                        raise
                self._table = table
            return self._table

    def create(self, run: Run) -> tuple[Run, bool]:
        """Insert `run` unless a run with its id exists; returns (the stored run, whether it was created)."""
        from azure.core.exceptions import ResourceExistsError

        try:
            meta = self._client().create_entity(_to_entity(run))
        except ResourceExistsError:
            return self.get(run.run_id), False
        run.etag = meta["etag"]
        return run, True

    def get(self, run_id: str) -> Run:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _from_entity(self._client().get_entity(PARTITION, run_id))
        except ResourceNotFoundError:
            raise RunNotFound(run_id) from None

    def list(self, states: Iterable[State] | None = None, limit: int | None = None) -> list[Run]:
        """Runs newest first, optionally only those in `states`."""
        table = self._client()
        wanted = list(states or [])
        if wanted:
            # State values are fixed enum words, never user input: safe inside the OData filter.
            query = " or ".join(f"state eq '{s.value}'" for s in wanted)
            entities = table.query_entities(f"PartitionKey eq '{PARTITION}' and ({query})")
        else:
            entities = table.query_entities(f"PartitionKey eq '{PARTITION}'")
        runs = [_from_entity(e) for e in entities]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return runs[:limit] if limit else runs

    def claim(self, key: str, run_id: str) -> str:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        for _ in range(self._max_attempts):
            try:
                self._client().create_entity({"PartitionKey": CLAIMS, "RowKey": key, "run_id": run_id})
                return run_id
            except ResourceExistsError:
                pass
            try:
                return self._client().get_entity(CLAIMS, key)["run_id"]
            except ResourceNotFoundError:  # the claim went between the two calls (it is never deleted today)
                continue
        raise RunConflict(f"claim {key} kept changing; gave up after {self._max_attempts} attempts")

    def pass_claim(self, key: str, holder: str, run_id: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        try:
            entity = self._client().get_entity(CLAIMS, key)
        except ResourceNotFoundError:
            return False
        if entity["run_id"] != holder:
            return False
        try:
            self._client().update_entity({"PartitionKey": CLAIMS, "RowKey": key, "run_id": run_id}, mode="replace",
                                         etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def with_pending_events(self) -> list[Run]:
        entities = self._client().query_entities(f"PartitionKey eq '{PARTITION}' and outbox gt 0")
        return sorted((_from_entity(e) for e in entities), key=lambda r: r.updated_at)

    def _swap(self, current: Run, changed: Run) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        try:
            meta = self._client().update_entity(_to_entity(changed), mode="replace", etag=current.etag,
                                                match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            return False
        changed.etag = meta["etag"]
        return True


class InMemoryRunStore(_CompareAndSwapStore):
    """Runs in a dict, with the table store's behaviour: each run is kept serialized (a caller never holds the
    stored object), each write gets a new etag, and `update` is the same compare-and-swap loop."""

    def __init__(self, max_attempts: int = 10):
        self._max_attempts = max_attempts
        self._rows: dict[str, tuple[str, dict]] = {}  # run_id -> (etag, run.to_dict())
        self._claims: dict[str, str] = {}  # claim key -> holding run id
        self._etags = itertools.count(1)
        self._lock = threading.Lock()

    def _etag(self) -> str:
        return f'W/"{next(self._etags)}"'

    def claim(self, key: str, run_id: str) -> str:
        with self._lock:
            return self._claims.setdefault(key, run_id)

    def pass_claim(self, key: str, holder: str, run_id: str) -> bool:
        with self._lock:
            if self._claims.get(key) != holder:
                return False
            self._claims[key] = run_id
            return True

    def create(self, run: Run) -> tuple[Run, bool]:
        with self._lock:
            if run.run_id in self._rows:
                etag, doc = self._rows[run.run_id]
                return Run.from_dict(doc, etag=etag), False
            run.etag = self._etag()
            self._rows[run.run_id] = (run.etag, json.loads(json.dumps(run.to_dict())))
            return run, True

    def get(self, run_id: str) -> Run:
        with self._lock:
            if run_id not in self._rows:
                raise RunNotFound(run_id)
            etag, doc = self._rows[run_id]
        return Run.from_dict(json.loads(json.dumps(doc)), etag=etag)

    def list(self, states: Iterable[State] | None = None, limit: int | None = None) -> list[Run]:
        wanted = set(states or [])
        with self._lock:
            rows = list(self._rows.values())
        runs = [Run.from_dict(json.loads(json.dumps(doc)), etag=etag) for etag, doc in rows]
        runs = [r for r in runs if not wanted or r.state in wanted]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return runs[:limit] if limit else runs

    def with_pending_events(self) -> list[Run]:
        with self._lock:
            rows = [(etag, doc) for etag, doc in self._rows.values() if doc.get("outbox")]
        runs = [Run.from_dict(json.loads(json.dumps(doc)), etag=etag) for etag, doc in rows]
        return sorted(runs, key=lambda r: r.updated_at)

    def _swap(self, current: Run, changed: Run) -> bool:
        doc = json.loads(json.dumps(changed.to_dict()))  # as the table would: only what serializes survives
        with self._lock:
            if self._rows[current.run_id][0] != current.etag:
                return False
            changed.etag = self._etag()
            self._rows[current.run_id] = (changed.etag, doc)
            return True
