"""The run-store contract, run against both implementations: the table store on a real Azurite table and the
in-memory store the service tests use. Create-if-absent, listing, and compare-and-swap updates; chunking of large
runs is the table store's own."""

import dataclasses
import threading
from datetime import datetime, timedelta, timezone

import pytest

from shared.run_store import InMemoryRunStore, RunConflict, RunNotFound, RunStore
from shared.runs import IllegalTransition, State, new_run

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_store(kind: str, request, max_attempts: int = 10):
    if kind == "memory":
        return InMemoryRunStore(max_attempts=max_attempts)
    azurite, unique = request.getfixturevalue("azurite"), request.getfixturevalue("unique")
    return RunStore(azurite, f"{unique}runs", max_attempts=max_attempts)


@pytest.fixture(params=["table", "memory"])
def kind(request):
    return request.param


@pytest.fixture
def store(kind, request):
    return make_store(kind, request)


def test_create_is_if_absent(store):
    run, created = store.create(new_run("r1", T0))
    assert created and run.etag
    again, created = store.create(new_run("r1", T0 + timedelta(hours=1)))
    assert not created and again.created_at == run.created_at


def test_get_unknown_raises(store):
    with pytest.raises(RunNotFound):
        store.get("nope")
    assert store.find("nope") is None


def test_list_newest_first_with_state_filter(store):
    for i in range(3):
        store.create(new_run(f"r{i}", T0 + timedelta(minutes=i)))
    store.update("r1", lambda r: r.advance(State.VALIDATING, T0))
    assert [r.run_id for r in store.list()] == ["r2", "r1", "r0"]
    assert [r.run_id for r in store.list(states=[State.VALIDATING])] == ["r1"]
    assert [r.run_id for r in store.list(states=[State.RECEIVED], limit=1)] == ["r2"]


def test_large_runs_are_stored_in_chunks(azurite, unique):
    store = RunStore(azurite, f"{unique}runs")
    run = new_run("big", T0, report={"errors": [{"line": i, "message": "x" * 100} for i in range(2000)]})
    store.create(run)
    assert store.get("big").report == run.report


def test_update_returns_unchanged_when_nothing_to_do(store):
    created, _ = store.create(new_run("r1", T0))
    same = store.update("r1", lambda r: None)
    assert same.etag == created.etag


def test_each_write_gets_a_new_etag_and_readers_get_copies(store):
    created, _ = store.create(new_run("r1", T0))
    moved = store.update("r1", lambda r: r.advance(State.VALIDATING, T0))
    assert moved.etag and moved.etag != created.etag and store.get("r1").etag == moved.etag
    store.get("r1").metrics["changed"] = 1  # a reader's copy, not the stored run
    assert store.get("r1").metrics == {} and store.list()[0].etag == moved.etag


def test_illegal_transition_propagates_and_writes_nothing(store):
    store.create(new_run("r1", T0))
    with pytest.raises(IllegalTransition):
        store.update("r1", lambda r: r.advance(State.DEPLOYED, T0))
    assert store.get("r1").state == State.RECEIVED


def test_concurrent_writers_lose_no_update(store):
    store.create(new_run("r1", T0))
    writers, per_writer = 4, 5
    barrier = threading.Barrier(writers)

    def bump(name):
        barrier.wait()
        for i in range(per_writer):
            store.update("r1", lambda r: _with_metric(r, f"{name}-{i}"))

    threads = [threading.Thread(target=bump, args=(f"w{n}",)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get("r1").metrics) == writers * per_writer


def _with_metric(run, key):
    import dataclasses

    changed = dataclasses.replace(run, metrics={**run.metrics, key: 1})
    changed.etag = run.etag
    return changed


def test_stale_etag_write_is_refused_and_reapplied(store):
    store.create(new_run("r1", T0))
    calls = []

    def change(run):
        calls.append(run.state)
        if len(calls) == 1:  # another writer moves the run between our read and our write
            store.update("r1", lambda r: r.advance(State.VALIDATING, T0))
        return run.advance(State.REJECTED, T0) if run.state == State.RECEIVED else run.advance(State.QUEUED, T0)

    result = store.update("r1", change)
    assert calls == [State.RECEIVED, State.VALIDATING]
    assert result.state == State.QUEUED


def test_gives_up_with_conflict_when_always_losing(kind, request):
    store = make_store(kind, request, max_attempts=3)
    store.create(new_run("r1", T0))

    def change(run):
        store.update("r1", lambda r: _with_metric(r, str(len(r.metrics))))
        return _with_metric(run, "mine")

    with pytest.raises(RunConflict):
        store.update("r1", change)


def test_a_claim_is_insert_if_absent_and_held_until_passed_on(store):
    assert store.claim("abc123", "r1") == "r1"
    assert store.claim("abc123", "r2") == "r1"
    assert store.claim("abc123", "r1") == "r1"  # asking again is harmless
    assert store.pass_claim("abc123", "r2", "r3") is False  # only the holder's claim can be passed on
    assert store.pass_claim("abc123", "r1", "r2") is True
    assert store.claim("abc123", "r9") == "r2"
    assert store.pass_claim("nokey", "r1", "r2") is False
    assert store.list() == []  # claims are not runs


def test_concurrent_claims_and_takeovers_have_one_winner(store):
    barrier = threading.Barrier(6)
    holders, passed = [], []

    def claim(i):
        barrier.wait()
        holders.append(store.claim("k1", f"r{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(holders)) == 1
    first = holders[0]

    def take_over(i):
        barrier.wait()
        passed.append(store.pass_claim("k1", first, f"n{i}"))

    threads = [threading.Thread(target=take_over, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(passed) == [False] * 5 + [True]
    assert store.claim("k1", "late").startswith("n")


class _Outbox:
    """An outbox that keeps what it is asked to flush and never removes anything (a flush that did not happen)."""

    app_id = "chatft"

    def __init__(self):
        self.flushed = []

    def flush(self, run):
        self.flushed.append([e["id"] for e in run.outbox])


def test_a_terminal_move_writes_its_event_in_the_same_swap_and_stays_pending_until_removed(store):
    store.outbox = _Outbox()
    store.create(new_run("r1", T0))
    store.create(new_run("r2", T0))
    store.update("r1", lambda r: r.advance(State.VALIDATING, T0))
    assert store.outbox.flushed == [] and store.with_pending_events() == []
    store.update("r1", lambda r: r.advance(State.REJECTED, T0 + timedelta(seconds=1), "line 1: invalid_json"))
    [pending] = store.with_pending_events()
    assert pending.run_id == "r1" and [e["type"] for e in pending.outbox] == ["chatft.run.rejected"]
    assert store.outbox.flushed == [["r1.2"]]  # flushed right after the write, with the stored id
    store.update("r1", lambda r: dataclasses.replace(r, outbox=[]))
    assert store.with_pending_events() == []
