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
from tests.test_end_to_end import _run_event, names_env, wait_for_run, write_sample

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

    def upload(self, name: str, seed: int = 5, epochs: str = "1") -> str:
        data = write_sample(self.tmp / f"{name}.jsonl", count=40, seed=seed)
        return upload_training_file(self.settings, data, {"epochs": epochs}, blob_name=f"{name}.jsonl")[1]

    def wait(self, run_id: str, states=TERMINAL, timeout: float = 300) -> Run:
        return wait_for_run(self.store, run_id, states, timeout=timeout)

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


def test_a_permanent_fault_fails_the_run_naming_the_step_and_the_error(azurite, tmp_path):
    sc = Scenario(tmp_path, {"LOCAL_FAULTS": "begin_create_endpoint=permanent:1"})
    host = LocalHost(port=0, env=sc.env).start()
    try:
        run = sc.wait(sc.upload("permanent"))
        sc.record("permanent fault at endpoint creation", 1, run, intended=State.FAILED)
        assert run.state == State.FAILED and run.failure.stage == "deploy"
        assert "injected permanent failure of begin_create_endpoint" in run.failure.reason
        assert not [t for t in run.history if t.kind == "retry"], "a permanent fault is not retried"
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
        time.sleep(3)
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

