"""No run left behind, end to end: the local host serving function_app.py against Azurite, the local ML workspace
really fine-tuning and serving, and faults injected on the way. Each test is a row of the README's "Failure
behaviour" table.

Every scenario uses small delays (RETRY_BASE_SECONDS, DEPLOY_CHECK_SECONDS, RECONCILE_*), so a run recovers in
seconds rather than minutes. Tests that stop storage start a private Azurite on free ports with its own data
folder: the shared one on the default ports is never stopped. Each test appends what it injected and how long the
run took to recover to the module's ledger, printed at the end (`-s`) and summed up in the README.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from chatft_local.host import HostProcess, LocalHost
from chatft_local.uploads import upload_training_file
from shared.config import Settings
from shared.messages import ContinueRun, SubmitRun
from shared.messaging import StorageQueueSender
from shared.ml.port import TAG_APP
from shared.run_store import RunStore
from shared.runs import Run, State
from tests.fakes import RawMessage
from tests.test_end_to_end import _run_event, _wait_drained, names_env, wait_for_run, write_sample

pytestmark = pytest.mark.slow

TERMINAL = (State.DEPLOYED, State.FAILED, State.REJECTED)
FAST = {
    "DEPLOY_CHECK_SECONDS": "1",
    "RETRY_BASE_SECONDS": "1",
    "RETRY_WINDOW_MINUTES": "10",
    "CLEANUP_SCHEDULE": "0 0 2 * * *",  # the idle cleanup plays no part here
}
FAST_RECONCILE = {"RECONCILE_SCHEDULE": "*/2 * * * * *", "RECONCILE_AFTER_MINUTES": "0.1"}  # stale after 6 s

LEDGER: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def ledger():
    yield LEDGER
    if LEDGER:
        print("\nfailure behaviour ledger:")
        for row in LEDGER:
            print("  " + json.dumps(row))
        print("  totals: " + json.dumps({
            "faults_injected": sum(r["faults"] for r in LEDGER),
            "runs_completed": sum(1 for r in LEDGER if r["outcome"] != "lost"),
            "runs_lost": sum(1 for r in LEDGER if r["outcome"] == "lost"),
            "slowest_recovery_s": max(r["recovery_s"] for r in LEDGER)}))


class Scenario:
    """One scenario's names, settings and clean-up: a run table, queues and containers of its own."""

    def __init__(self, tmp_path: Path, extra: dict[str, str], storage: str = "UseDevelopmentStorage=true"):
        self.state_dir = tmp_path / "state"
        self.env = {**names_env(self.state_dir), **FAST, **extra, "AzureWebJobsStorage": storage}
        self.settings = Settings.from_env({**os.environ, **self.env})
        self.store = RunStore(self.settings.storage_connection, self.settings.runs_table)
        self.tmp = tmp_path
        self.started = time.monotonic()

    def upload(self, name: str, seed: int = 5, epochs: str = "1", **metadata: str) -> str:
        data = write_sample(self.tmp / f"{name}-{seed}.jsonl", count=40, seed=seed)
        return upload_training_file(self.settings, data, {"epochs": epochs, **metadata},
                                    blob_name=f"{name}.jsonl")[1]

    def wait_until(self, run_id: str, what: str, ok, timeout: float = 300) -> Run:
        """Poll the run until `ok(run)`; `what` says what was awaited when it never comes."""
        deadline, run = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            run = self.store.find(run_id)
            if run is not None and ok(run):
                return run
            time.sleep(0.3)
        raise AssertionError(f"run {run_id}: {what} not within {timeout:.0f}s: "
                             f"{(run.state, run.history[-3:]) if run else 'no run'}")

    def wait(self, run_id: str, states=TERMINAL, timeout: float = 300) -> Run:
        return wait_for_run(self.store, run_id, states, timeout=timeout)

    def wait_drained(self, timeout: float = 300) -> None:
        """Wait until the runs and deploy queues hold no message: every delivery sent so far was handled."""
        _wait_drained(self.settings, (self.settings.runs_queue, self.settings.deploy_queue), timeout)

    def workspace(self):
        from chatft_local.workspace.local import LocalWorkspace

        return LocalWorkspace(self.settings)

    def injected(self) -> dict[str, int]:
        from chatft_local.workspace.faults import FaultCounter

        if not self.settings.local_faults:
            return {}
        return FaultCounter(self.workspace().root, self.settings.local_faults).injected()

    def one_of_everything(self, run: Run) -> None:
        """One job, one model version, one endpoint owned by the app: nothing was made twice."""
        ws = self.workspace()
        jobs = sorted(p.name for p in (ws.root / "jobs").iterdir())
        # One fine-tuning job and, with the quality gate on, one evaluation job after it (shared/quality_gate.py).
        assert jobs == sorted(j for j in (run.job_name, run.evaluation_job) if j), jobs
        versions = ws.registry._mlflow().search_model_versions(f"name = '{run.model_name}'")
        assert len(versions) == 1, [v.version for v in versions]
        owned = [e.name for e in ws.list_endpoints() if e.tags.get(TAG_APP) == self.settings.app_id]
        assert owned == [run.endpoint_name], owned

    def record(self, scenario: str, faults: int, run: Run | None, recovery_s: float | None = None,
               intended: State = State.DEPLOYED) -> None:
        outcome = ("lost" if run is None or run.state not in TERMINAL
                   else "Deployed" if run.state == intended == State.DEPLOYED
                   else f"{run.state.value} as intended" if run.state == intended else "lost")
        LEDGER.append({"scenario": scenario, "faults": faults, "outcome": outcome,
                       "recovery_s": round(recovery_s if recovery_s is not None
                                           else time.monotonic() - self.started, 1)})

    def close(self) -> None:
        """Stop what the scenario's jobs left: model servers, and event delivery processes still retrying a dead
        address (each found by the pid its job recorded, and only if it is that job's process)."""
        ws = self.workspace()
        for endpoint in ws.list_endpoints():
            ws.begin_delete_endpoint(endpoint.name)
        for status in (ws.root / "jobs").glob("*/status.json"):
            pid = (json.loads(status.read_text()) or {}).get("pid")
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") if pid else ""
            except OSError:
                continue
            if str(status.parent) in cmdline:
                os.kill(int(pid), signal.SIGTERM)


@pytest.fixture
def private_azurite(tmp_path):
    """An Azurite of this test only, on free ports, that the test may stop and start again."""
    from chatft_local.azurite import start_private_azurite

    ports = {name: _free_port() for name in ("blob", "queue", "table")}
    data = tmp_path / "private-azurite"

    class Private:
        def __init__(self):
            self.instance = start_private_azurite(data, ports)
            self.connection_string = self.instance.connection_string

        def restart(self, down_seconds: float) -> None:
            self.instance.stop()
            time.sleep(down_seconds)
            self.instance = start_private_azurite(data, ports)

    private = Private()
    yield private
    private.instance.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dead_url() -> str:
    return f"http://127.0.0.1:{_free_port()}/runtime/webhooks/eventgrid?functionName=job_events"  # nobody listens


def _retries(run: Run, step: str) -> list[float]:
    return [t.delay_seconds for t in run.history if t.kind == "retry" and t.step == step]


# ------------------------------------------------------------------------------------------- scenarios


def test_every_job_event_lost_is_deployed_by_the_reconciler(azurite, tmp_path):
    sc = Scenario(tmp_path, {**FAST_RECONCILE, "LOCAL_EVENTS_URL": _dead_url()})
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run_id = sc.upload("lost-events")
        run = sc.wait(run_id)
        sc.record("every job event lost", 4, run)  # Running, Completed (x2 event types): none arrives
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        assert run.reconciled_at, "the reconciler moved it"
        assert State.TRAINED in [t.state for t in run.history]
    finally:
        host.stop()
        sc.close()


def test_transient_faults_at_submit_registration_and_endpoint_creation_are_retried(azurite, tmp_path):
    faults = "submit_job=transient:3,register_model=transient:3,begin_create_endpoint=transient:3"
    sc = Scenario(tmp_path, {"LOCAL_FAULTS": faults})
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run_id = sc.upload("transient")
        run = sc.wait(run_id)
        injected = sc.injected()
        sc.record("transient faults at submit, register, endpoint", sum(injected.values()), run)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        assert injected == {"submit_job": 3, "register_model": 3, "begin_create_endpoint": 3}
        # A job's Completed comes as two events (RunStatusChanged and RunCompleted), often handled at once: both
        # may fail registering, and their identical retries are one (same message id). So 2 or 3 retries there.
        for step, fewest, most in (("submit", 3, 3), ("register", 2, 3), ("deployment check", 2, 2)):
            delays = _retries(run, step)
            assert fewest <= len(delays) <= most, (step, delays, run.history)
            assert all(b >= a for a, b in zip(delays, delays[1:])), f"{step} delays grow: {delays}"
        assert [t for t in run.history if t.kind == "retry" and t.step == "create endpoint"]
        sc.one_of_everything(run)
        view = requests.get(f"{host.base_url}/api/runs/{run_id}", headers={"x-functions-key": host.function_key},
                            timeout=30).json()
        assert [h for h in view["history"] if h.get("kind") == "retry" and h["delay_seconds"] > 0]
    finally:
        host.stop()
        sc.close()


def test_azurite_stopped_and_restarted_mid_run_still_completes(private_azurite, tmp_path):
    sc = Scenario(tmp_path, {}, storage=private_azurite.connection_string)
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run_id = sc.upload("storage-outage", epochs="2")
        sc.wait(run_id, (State.SUBMITTED, State.TRAINING), timeout=120)
        private_azurite.restart(down_seconds=8)  # the job trains on; its events and the host's polls fail
        restarted = time.monotonic()
        run = sc.wait(run_id)
        sc.record("Azurite stopped 8 s mid-run", 1, run, time.monotonic() - restarted)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        sc.one_of_everything(run)
    finally:
        host.stop()
        sc.close()


def test_host_killed_while_deploying_is_deployed_after_restart(azurite, tmp_path):
    # The first check waits 3 s, so the run stays Deploying long enough to be caught there.
    sc = Scenario(tmp_path, {**FAST_RECONCILE, "DEPLOY_CHECK_SECONDS": "3"})
    port = _free_port()
    host = HostProcess(state_dir=sc.state_dir, env=sc.env, port=port).start()
    try:
        run_id = sc.upload("killed")
        sc.wait(run_id, (State.DEPLOYING, State.DEPLOYED, State.FAILED), timeout=300)
        host.kill()
        assert sc.store.get(run_id).state == State.DEPLOYING, "killed while deploying"
        host = HostProcess(state_dir=sc.state_dir, env=sc.env, port=port).start()
        restarted = time.monotonic()
        run = sc.wait(run_id)
        sc.record("host SIGKILLed while Deploying", 1, run, time.monotonic() - restarted)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        sc.one_of_everything(run)
    finally:
        host.stop()
        sc.close()


def test_duplicate_deliveries_at_every_step_make_one_job_one_model_version_one_endpoint(azurite, tmp_path):
    sc = Scenario(tmp_path, {})
    host = LocalHost(port=0, env=sc.env).start()
    s, sender = sc.settings, StorageQueueSender(sc.settings.storage_connection)
    events_url = f"{host.eventgrid_url}&functionName=job_events"
    duplicates = 0
    try:
        run_id = sc.upload("duplicates")
        sc.wait(run_id, (State.QUEUED, State.SUBMITTED, State.TRAINING), timeout=120)
        for n in range(2):  # the submit message again; ids of their own, so duplicate detection lets them pass
            sender.send(s.runs_queue, RawMessage.copy_of(SubmitRun(run_id), f"{run_id}-dup{n}"))
            duplicates += 1
        run = sc.wait(run_id, (State.TRAINED, State.REGISTERED, State.DEPLOYING, State.DEPLOYED), timeout=300)
        for status in ("Completed", "Running", "Completed"):  # events again, out of order
            assert requests.post(events_url, json=[_run_event(run.job_name, status)], timeout=60).ok
            duplicates += 1
        run = sc.wait(run_id, (State.DEPLOYING, State.DEPLOYED, State.FAILED), timeout=120)
        for _ in range(2):  # deployment checks again
            sender.send(s.deploy_queue, ContinueRun.check(run_id, run.endpoint_name))
            duplicates += 1
        run = sc.wait(run_id)
        for status in ("Completed",):  # and after the end
            assert requests.post(events_url, json=[_run_event(run.job_name, status)], timeout=60).ok
            duplicates += 1
        sc.wait_drained()  # each duplicate was delivered and handled (the Event Grid posts answer when handled)
        run = sc.store.get(run_id)
        sc.record("duplicate deliveries at every step", duplicates, run)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        sc.one_of_everything(run)
        assert [t.state for t in run.history if not t.kind].count(State.DEPLOYED) == 1
    finally:
        host.stop()
        sc.close()


def test_a_poison_message_is_dead_lettered_and_its_run_failed_with_the_reason(azurite, tmp_path):
    # An error that is neither transient nor permanent (what a bug looks like) on every delivery.
    sc = Scenario(tmp_path, {"LOCAL_FAULTS": "submit_job=error:100"})
    host = LocalHost(port=0, env=sc.env, queue_retry_seconds=1).start()
    try:
        run = sc.wait(sc.upload("poison"), timeout=120)
        sc.record("poison message", sc.injected().get("submit_job", 0), run, intended=State.FAILED)
        assert run.state == State.FAILED and run.failure.stage == "submit"
        assert "dead-lettered after 10 deliveries" in run.failure.reason
        assert "MaxDeliveryCountExceeded" in run.failure.reason
        assert sc.injected() == {"submit_job": 10}
    finally:
        host.stop()
        sc.close()


def test_all_of_these_at_once_on_one_upload_still_give_one_deployed_run(private_azurite, tmp_path):
    faults = "submit_job=transient:2,register_model=transient:2,begin_create_endpoint=transient:2"
    sc = Scenario(tmp_path, {**FAST_RECONCILE, "LOCAL_FAULTS": faults, "LOCAL_EVENTS_URL": _dead_url()},
                  storage=private_azurite.connection_string)
    s = sc.settings
    port = _free_port()
    host = HostProcess(state_dir=sc.state_dir, env=sc.env, port=port).start()
    slowest = 0.0
    try:
        run_id = sc.upload("everything", epochs="2")
        from azure.storage.queue import QueueClient

        StorageQueueSender(s.storage_connection).send(  # a duplicate submit
            s.runs_queue, RawMessage.copy_of(SubmitRun(run_id), f"{run_id}-again"))
        # A message no handler can read, in the same queue: dead-lettered, then dropped (it names no run).
        QueueClient.from_connection_string(s.storage_connection, s.runs_queue).send_message("{not json")
        sc.wait(run_id, (State.SUBMITTED, State.TRAINING), timeout=180)
        private_azurite.restart(down_seconds=6)
        mark = time.monotonic()
        sc.wait(run_id, (State.DEPLOYING, State.DEPLOYED, State.FAILED), timeout=300)
        slowest = max(slowest, time.monotonic() - mark)
        run = sc.store.get(run_id)
        StorageQueueSender(s.storage_connection).send(s.deploy_queue, ContinueRun.check(run_id, run.endpoint_name))
        host.kill()
        host = HostProcess(state_dir=sc.state_dir, env=sc.env, port=port).start()
        mark = time.monotonic()
        run = sc.wait(run_id)
        slowest = max(slowest, time.monotonic() - mark)
        injected = sc.injected()
        faults_total = sum(injected.values()) + 4 + 1 + 1 + 2 + 1  # + events lost, Azurite, kill, dups, poison
        sc.record("all at once", faults_total, run, slowest)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        assert injected == {"submit_job": 2, "register_model": 2, "begin_create_endpoint": 2}
        sc.one_of_everything(run)
        assert len([r for r in sc.store.list() if r.upload.get("blob") == "everything.jsonl"]) == 1
    finally:
        host.stop()
        sc.close()


@pytest.mark.parametrize("where", ["prompt_id", "extra key"])
def test_deeply_nested_records_are_rejected_through_the_host_naming_the_line(azurite, tmp_path, where):
    """300 and 1000 levels of nesting in one record (`prompt_id`, or a key of its own): the blob trigger in the host
    ends each run Rejected naming line 8, never stuck in Validating (issue 17: a recursion error while splitting
    used to leave it there, redelivery after redelivery)."""
    from tests.test_ingest_holes import deep_line
    from tests.test_ingestion import valid_lines

    sc = Scenario(tmp_path, {})
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run_ids = {}
        for depth in (300, 1000):
            lines = valid_lines(30)
            lines[7] = deep_line(depth, where)
            path = tmp_path / f"deep-{depth}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            run_ids[depth] = upload_training_file(sc.settings, path, blob_name=path.name)[1]
        for depth, run_id in run_ids.items():
            run = sc.wait(run_id, timeout=120)
            sc.record(f"{depth} levels of nesting in {where}", 1, run, intended=State.REJECTED)
            assert run.state == State.REJECTED, (depth, run.state, run.history)
            assert "line 8" in run.history[-1].detail, run.history[-1].detail
            assert not run.job_name, "nothing was submitted"
    finally:
        host.stop()
        sc.close()



# ------------------------------------------------------------------- issue 17: the holes, through the host


class PausedRead:
    """Holds the blob trigger's ingest of one blob where it starts reading the upload's bytes (its run is Validating
    by then) until `release` is set: the one deterministic way to change an upload while it is being validated,
    whatever the machine's speed. Only a pause: the read that follows is the real one, against Azurite, conditional
    on the version the ingest saw (`shared.storage.read_chunks`). Works with the in-process LocalHost only."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, blob_name: str):
        import shared.ingestion as ingestion

        real = ingestion.read_chunks
        self.reached, self.release = threading.Event(), threading.Event()

        def read_chunks(blob_client, *args, **kwargs):
            if blob_client.blob_name == blob_name and not self.reached.is_set():
                self.reached.set()
                if not self.release.wait(300):
                    raise RuntimeError("PausedRead: never released")
            yield from real(blob_client, *args, **kwargs)

        monkeypatch.setattr(ingestion, "read_chunks", read_chunks)

    def wait_reached(self, timeout: float = 120) -> None:
        assert self.reached.wait(timeout), "the ingest never started reading the upload"


def test_an_upload_overwritten_while_validating_is_rejected_as_superseded_and_the_new_version_deployed(
        azurite, tmp_path, monkeypatch):
    """Final states: the first version's run Rejected "superseded by a newer upload (etag <second's>)", never stuck
    in Validating nor Failed at ingest; the second version's run Deployed, with the only job."""
    sc = Scenario(tmp_path, {})
    pause = PausedRead(monkeypatch, "overwritten.jsonl")
    host = LocalHost(port=0, env=sc.env).start()
    try:
        first = sc.upload("overwritten", seed=5, eval_gate="off")
        pause.wait_reached()
        assert sc.store.get(first).state == State.VALIDATING
        second = sc.upload("overwritten", seed=6, eval_gate="off")  # other bytes, the same blob name
        assert second != first
        pause.release.set()
        old = sc.wait(first, timeout=120)
        sc.record("upload overwritten while validating", 1, old, intended=State.REJECTED)
        new = sc.wait(second)
        assert old.state == State.REJECTED, (old.state, old.history)
        assert old.history[-1].detail == f"superseded by a newer upload (etag {new.upload['etag']})"
        assert not old.job_name and old.failure is None
        assert new.state == State.DEPLOYED, (new.failure, new.history)
        sc.one_of_everything(new)  # one job in the workspace: the second version's
    finally:
        pause.release.set()
        host.stop()
        sc.close()


def test_an_upload_deleted_while_validating_is_rejected_saying_so(azurite, tmp_path, monkeypatch):
    """Final state Rejected, "the upload was deleted before it was validated" (the app never deletes an upload:
    the test deletes it, as a user would), not Failed at ingest with the storage error."""
    sc = Scenario(tmp_path, {})
    pause = PausedRead(monkeypatch, "deleted.jsonl")
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run_id = sc.upload("deleted")
        pause.wait_reached()
        assert sc.store.get(run_id).state == State.VALIDATING
        from shared.storage import Blobs

        Blobs(sc.settings).blob(sc.settings.training_container, "deleted.jsonl").delete_blob()
        pause.release.set()
        run = sc.wait(run_id, timeout=120)
        sc.record("upload deleted while validating", 1, run, intended=State.REJECTED)
        assert run.state == State.REJECTED, (run.state, run.history)
        assert run.history[-1].detail == "the upload was deleted before it was validated"
        assert not run.job_name and run.failure is None
    finally:
        pause.release.set()
        host.stop()
        sc.close()


def test_host_killed_before_the_endpoint_is_created_gets_it_from_the_reconciler_and_is_deployed(azurite, tmp_path):
    """The run recorded Deploying, its endpoint not yet created (creation fails transiently, so the run sits there,
    the moment the issue's kill hit by chance), the host SIGKILLed and its pending check lost: after the restart the
    reconciler reads "no endpoint, never accepted" as "not created yet", creates it, and the run ends Deployed, not
    Failed "endpoint ... no longer exists"."""
    from azure.storage.queue import QueueClient

    # Past 1000 failures the retry window would end it; the kill comes after the first. A changed LOCAL_FAULTS
    # counts from zero, so the restarted host (without it) creates the endpoint.
    sc = Scenario(tmp_path, {**FAST_RECONCILE, "LOCAL_FAULTS": "begin_create_endpoint=transient:1000"})
    port = _free_port()
    host = HostProcess(state_dir=sc.state_dir, env=sc.env, port=port).start()
    try:
        run_id = sc.upload("killed-early", eval_gate="off")
        sc.wait(run_id, (State.DEPLOYING, State.DEPLOYED, State.FAILED), timeout=300)
        deadline = time.monotonic() + 120
        while not sc.injected().get("begin_create_endpoint") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sc.injected().get("begin_create_endpoint"), "the endpoint's creation was never tried"
        host.kill()
        run = sc.store.get(run_id)
        assert run.state == State.DEPLOYING and not run.endpoint_accepted_at, (run.state, run.endpoint_accepted_at)
        assert sc.workspace().get_endpoint(run.endpoint_name) is None, "no endpoint when the host died"
        # The check scheduled before the kill is lost too: only the reconciler can move the run now.
        deploy_queue = QueueClient.from_connection_string(sc.settings.storage_connection, sc.settings.deploy_queue)
        deploy_queue.clear_messages()  # scheduled (invisible) messages included
        assert deploy_queue.get_queue_properties().approximate_message_count == 0
        restart_env = {**sc.env, "LOCAL_FAULTS": ""}
        host = HostProcess(state_dir=sc.state_dir, env=restart_env, port=port).start()
        restarted = time.monotonic()
        run = sc.wait(run_id)
        sc.record("host SIGKILLed before the endpoint was created", 2, run, time.monotonic() - restarted)
        assert run.state == State.DEPLOYED, (run.failure, run.history)
        assert run.reconciled_at and run.endpoint_accepted_at
        assert not [t for t in run.history if "no longer exists" in t.detail]
        sc.one_of_everything(run)
    finally:
        host.stop()
        sc.close()


# Every step with a fault point, in the order a run meets them: (port method, how the case reaches it, the failure's
# stage, the step named on the Failed line). Each case's upload (or redeploy) passes the faults the cases before it
# spent and meets its own, so one host serves them all. An upload with `eval_gate` off skips the evaluation; the
# two deployment-check cases deploy the endpoint-creation case's registered run again (POST /api/runs/{id}/deploy):
# the same steps as a first deployment, without training again. In a check the deployment is looked up before it is
# created, so get_deployment comes first.
PERMANENT_STEPS = [
    ("submit_job", "upload", "submit", "submit"),
    ("get_job", "upload", "training", "job status"),
    ("submit_evaluation", "upload with the gate", "evaluate", "evaluate"),
    ("register_model", "upload", "register", "register"),
    ("begin_create_endpoint", "upload", "deploy", "create endpoint"),
    ("get_deployment", "redeploy", "deploy", "deployment check"),
    ("begin_create_deployment", "redeploy", "deploy", "deployment check"),
]


class PermanentFaults:
    """One host whose LOCAL_FAULTS make each method of PERMANENT_STEPS raise the port's PermanentError once; cases
    are carried out in that order, each when first asked for (those before it first)."""

    def __init__(self, tmp: Path):
        spec = ",".join(f"{method}=permanent:1" for method, *_ in PERMANENT_STEPS)
        self.sc = Scenario(tmp, {"LOCAL_FAULTS": spec})
        self.host = LocalHost(port=0, env=self.sc.env).start()
        self.done: dict[str, tuple[Run, int, float]] = {}  # method -> (the run as failed, its history before, s)
        self._registered = ""  # the run the redeploy cases deploy again

    def case(self, method: str) -> tuple[Run, int, float]:
        for n, (name, how, _, _) in enumerate(PERMANENT_STEPS):
            if name not in self.done:
                self.done[name] = self._carry_out(n, name, how)
            if name == method:
                break
        if len(self.done) == len(PERMANENT_STEPS):
            self.close()  # no in-process host may outlive the cases: the next test may start its own
        return self.done[method]

    def _carry_out(self, n: int, method: str, how: str) -> tuple[Run, int, float]:
        started = time.monotonic()
        if how == "redeploy":
            run_id = self._registered
            before = len(self.sc.store.get(run_id).history)
            answer = requests.post(f"{self.host.base_url}/api/runs/{run_id}/deploy",
                                   headers={"x-functions-key": self.host.function_key}, timeout=60)
            assert answer.status_code in (200, 202), answer.text
        else:
            gate = {} if how == "upload with the gate" else {"eval_gate": "off"}
            run_id, before = self.sc.upload(f"permanent-{n}", seed=20 + n, **gate), 0
            self._registered = run_id
        run = self.sc.wait_until(run_id, f"an end after the fault in {method}",
                                 lambda r: r.state in TERMINAL and len(r.history) > before + 1)
        seconds = time.monotonic() - started
        self.sc.record(f"PermanentError in {method}", 1, run, seconds, intended=State.FAILED)
        return run, before, seconds

    def close(self) -> None:
        if self.host is not None:
            self.host.stop()
            self.sc.close()
            self.host = None


@pytest.fixture(scope="module")
def permanent_faults(azurite, tmp_path_factory):
    faults = PermanentFaults(tmp_path_factory.mktemp("permanent"))
    yield faults
    faults.close()


@pytest.mark.parametrize("method,stage,step", [(m, stage, step) for m, _, stage, step in PERMANENT_STEPS],
                         ids=[m for m, *_ in PERMANENT_STEPS])
def test_a_permanent_error_at_each_step_fails_the_run_at_once_naming_the_step(permanent_faults, method, stage, step):
    """Final state Failed, at once: `failure.stage` the step's stage, the reason the injected error, the Failed line
    naming the step; no retry, no redelivery (the method failed once and was not called through the fault again)."""
    run, before, _ = permanent_faults.case(method)
    assert run.state == State.FAILED, (method, run.state, run.history[before:])
    assert run.failure.stage == stage, (method, run.failure)
    assert f"injected permanent failure of {method} (LOCAL_FAULTS)" in run.failure.reason, run.failure.reason
    assert "dead-lettered" not in run.failure.reason
    assert run.history[-1].state == State.FAILED and run.history[-1].step == step, run.history[-1]
    assert not [t for t in run.history[before:] if t.kind == "retry"], "a permanent error is not retried"
    assert permanent_faults.sc.injected()[method] == 1
