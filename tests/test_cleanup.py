"""The idle-endpoint cleanup as a service: the in-memory run store (the real table where the CLI, a process of its
own, reads it), real Azurite for the report blobs, the fake ML backend at the Azure boundary, runs deployed through
the real orchestration, and a clock the test moves forward."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from shared.bootstrap import bootstrap, override_services
from shared.cleanup import (CHANGED_DURING_CLEANUP, DELETE_FAILED, REPORT_PREFIX, USED_DURING_CLEANUP, carry_out,
                            plan_cleanup, run_cleanup)
from shared.idle_policy import (IDLE, NOT_OWNED, ORPHANED, PROTECTED, RECENTLY_USED, TRAFFIC_SEEN, UNKNOWN_RUN,
                                METRICS_UNAVAILABLE)
from shared.ml.port import TAG_APP, TAG_CREATED, TAG_RUN, PermanentError, TransientError
from shared.orchestration import check_deployment, settle_job, submit_run
from shared.run_store import InMemoryRunStore, RunStore
from shared.runs import Run, State, iso, job_name_for, new_run, run_id_for
from tests.conftest import PROJECT_ROOT
from tests.fakes import FakeMLBackend

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)


class Clock:
    """The services' clock; tests move it forward instead of waiting."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def fake():
    return FakeMLBackend(instant_provisioning=True)


@pytest.fixture
def runs(request, settings):
    """In memory, but the real table for the CLI tests: `chatft cleanup` runs in its own process and reads it."""
    if "cli_run" in request.fixturenames:
        return RunStore(settings, settings.runs_table)
    return InMemoryRunStore()


def make_svc(settings, fake, clock, runs, **changes):
    return bootstrap(settings.replace(**changes), ml=fake, clock=clock, runs=runs)


@pytest.fixture
def svc(settings, fake, clock, runs):
    return make_svc(settings, fake, clock, runs)


def deploy(svc, name: str, keep: bool = False) -> Run:
    """A run taken from Queued to Deployed by the app's own handlers, the fake finishing the job at once."""
    run_id = run_id_for(svc.settings.training_container, f"{name}.jsonl", f"etag-{name}")
    run = new_run(run_id, svc.clock(), train_path=f"{run_id}/train.jsonl", test_path=f"{run_id}/test.jsonl",
                  overrides={"keep": True} if keep else {}, keep=keep)
    svc.runs.create(run.advance(State.VALIDATING, svc.clock()).advance(State.QUEUED, svc.clock()))
    submit_run(svc, run_id)
    svc.ml.complete_job(job_name_for(run_id))
    settle_job(svc, run_id)
    for _ in range(5):
        run = check_deployment(svc, run_id)
        if run.state == State.DEPLOYED:
            return run
    raise AssertionError(f"run {run_id} did not deploy: {run.state}")


def score(svc, run: Run) -> None:
    """What the scoring proxy records after a scoring request."""
    def touch(r: Run) -> Run:
        touched = dataclasses.replace(r, last_used_at=iso(svc.clock()))
        touched.etag = r.etag
        return touched

    svc.runs.update(run.run_id, touch)


@pytest.fixture
def scenario(svc, fake, clock):
    """Two deployed models (one scored 10 h ago, one never), an endpoint without tags and one of another app;
    the clock 30 h after deployment, past the 24 h idle window."""
    used, idle = deploy(svc, "used"), deploy(svc, "idle")
    fake.add_endpoint("team-endpoint")
    fake.add_endpoint("other-app-endpoint", tags={TAG_APP: "someone-else", TAG_RUN: idle.run_id,
                                                  TAG_CREATED: iso(T0 - timedelta(days=30))})
    clock.advance(hours=20)
    score(svc, used)
    clock.advance(hours=10)
    return used, idle


def by_endpoint(summary):
    return {d.endpoint: (d.delete, d.reason) for d in summary.decisions}


def test_cleanup_deletes_only_the_idle_owned_endpoint_after_retiring_its_run(svc, fake, scenario, caplog):
    used, idle = scenario
    state_at_delete = []
    begin_delete = fake.begin_delete_endpoint

    def spy(name):
        state_at_delete.append(svc.runs.get(idle.run_id).state)
        begin_delete(name)

    fake.begin_delete_endpoint = spy
    caplog.set_level("INFO", logger="shared.cleanup")

    summary = run_cleanup(svc)

    assert by_endpoint(summary) == {used.endpoint_name: (False, RECENTLY_USED), idle.endpoint_name: (True, IDLE),
                                    "team-endpoint": (False, NOT_OWNED), "other-app-endpoint": (False, NOT_OWNED)}
    assert state_at_delete == [State.RETIRED], "the run is Retired before the endpoint's deletion begins"
    assert set(fake.endpoints) == {used.endpoint_name, "team-endpoint", "other-app-endpoint"}
    retired = svc.runs.get(idle.run_id)
    assert retired.state == State.RETIRED and "cleanup" in retired.history[-1].detail
    assert svc.runs.get(used.run_id).state == State.DEPLOYED
    deleted = summary.deleted[0]
    assert deleted.idle_hours == pytest.approx(30.0) and deleted.run_id == idle.run_id
    assert summary.endpoint_hours_saved == 24.0

    assert summary.report_path.startswith(REPORT_PREFIX) and summary.report_path.endswith(".json")
    stored = svc.blobs.read_json(svc.settings.runs_container, summary.report_path)
    assert stored == json.loads(json.dumps(summary.to_dict()))
    assert stored["as_of"] == iso(T0 + timedelta(hours=30)) and stored["dry_run"] is False
    assert [d["endpoint"] for d in stored["deleted"]] == [idle.endpoint_name]
    assert {d["endpoint"]: d["reason"] for d in stored["kept"]}[used.endpoint_name] == RECENTLY_USED
    assert stored["endpoint_hours_saved"] == 24.0
    assert "deleted 1 endpoint(s), kept 3" in caplog.text
    assert "fake-key" not in caplog.text and "fake-key" not in json.dumps(stored)


@pytest.mark.parametrize("how", ["argument", "setting"])
def test_dry_run_deletes_nothing_and_reports_what_it_would(settings, fake, clock, runs, scenario, how):
    svc = make_svc(settings, fake, clock, runs, cleanup_dry_run=how == "setting")
    used, idle = scenario
    summary = run_cleanup(svc, dry_run=True) if how == "argument" else run_cleanup(svc)

    assert summary.dry_run and [d.endpoint for d in summary.deleted] == [idle.endpoint_name]
    assert "begin_delete_endpoint" not in fake.calls
    assert idle.endpoint_name in fake.endpoints
    assert svc.runs.get(idle.run_id).state == State.DEPLOYED
    stored = svc.blobs.read_json(svc.settings.runs_container, summary.report_path)
    assert stored["dry_run"] is True and stored["deleted"][0]["endpoint"] == idle.endpoint_name
    assert summary.report_path.endswith("-dry-run.json")


def test_as_of_evaluates_the_policy_at_another_time(svc, fake, scenario):
    used, idle = scenario
    summary = run_cleanup(svc, as_of=T0 + timedelta(hours=12), dry_run=True)
    assert by_endpoint(summary)[idle.endpoint_name] == (False, "too_young")
    summary = run_cleanup(svc, as_of=T0 + timedelta(hours=60), dry_run=True)
    assert by_endpoint(summary)[used.endpoint_name] == (True, IDLE)


def test_a_score_between_decision_and_deletion_keeps_the_endpoint(svc, fake, clock, scenario):
    used, idle = scenario
    plan = plan_cleanup(svc)
    assert by_endpoint(plan)[idle.endpoint_name] == (True, IDLE)

    clock.advance(seconds=1)
    score(svc, idle)  # the request the proxy served while cleanup was deciding
    summary = carry_out(svc, plan, dry_run=False)

    assert by_endpoint(summary)[idle.endpoint_name] == (False, USED_DURING_CLEANUP)
    assert summary.endpoint_hours_saved == 0.0
    assert "begin_delete_endpoint" not in fake.calls
    assert idle.endpoint_name in fake.endpoints
    assert svc.runs.get(idle.run_id).state == State.DEPLOYED


def test_a_run_that_moved_on_between_decision_and_deletion_keeps_the_endpoint(svc, fake, clock, scenario):
    used, idle = scenario
    plan = plan_cleanup(svc)
    svc.runs.update(idle.run_id, lambda r: r.fail("deploy", "someone else's change", clock()))
    summary = carry_out(svc, plan, dry_run=False)
    assert by_endpoint(summary)[idle.endpoint_name] == (False, CHANGED_DURING_CLEANUP)
    assert idle.endpoint_name in fake.endpoints


def test_a_run_retired_already_still_gets_its_endpoint_deleted(svc, fake, clock, scenario):
    used, idle = scenario
    plan = plan_cleanup(svc)
    svc.runs.update(idle.run_id, lambda r: r.advance(State.RETIRED, clock(), "a concurrent cleanup"))
    summary = carry_out(svc, plan, dry_run=False)
    assert by_endpoint(summary)[idle.endpoint_name] == (True, IDLE)
    assert idle.endpoint_name not in fake.endpoints


def test_protected_and_unknown_run_endpoints_are_kept(svc, fake, clock):
    kept = deploy(svc, "precious", keep=True)
    fake.add_endpoint("ft-lost-0123abcd", tags={TAG_APP: svc.settings.app_id, TAG_RUN: "lost-0123abcd4567",
                                                TAG_CREATED: iso(T0)})
    clock.advance(hours=100)
    summary = run_cleanup(svc)
    assert by_endpoint(summary) == {kept.endpoint_name: (False, PROTECTED), "ft-lost-0123abcd": (False, UNKNOWN_RUN)}
    assert "begin_delete_endpoint" not in fake.calls


def test_metrics_are_asked_only_when_enabled_and_only_about_endpoints_to_delete(settings, fake, clock, runs,
                                                                               scenario):
    used, idle = scenario
    run_cleanup(make_svc(settings, fake, clock, runs), dry_run=True)
    assert "requests_since" not in fake.calls

    svc = make_svc(settings, fake, clock, runs, cleanup_check_metrics=True)
    asked, requests_since = [], fake.requests_since
    fake.requests_since = lambda name, since: asked.append((name, since)) or requests_since(name, since)
    fake.set_requests(idle.endpoint_name, 7)  # traffic that bypassed the proxy
    summary = run_cleanup(svc)
    assert by_endpoint(summary)[idle.endpoint_name] == (False, TRAFFIC_SEEN)
    assert asked == [(idle.endpoint_name, iso(T0 + timedelta(hours=6)))], "the idle window, for the candidate only"

    fake.fail_next("requests_since")
    assert by_endpoint(run_cleanup(svc))[idle.endpoint_name] == (False, METRICS_UNAVAILABLE)
    assert idle.endpoint_name in fake.endpoints

    fake.set_requests(idle.endpoint_name, None)  # unknown: no evidence either way
    assert by_endpoint(run_cleanup(svc))[idle.endpoint_name] == (True, IDLE)
    assert idle.endpoint_name not in fake.endpoints


def test_a_failed_deletion_is_reported_and_retried_next_time(svc, fake, clock, scenario):
    used, idle = scenario
    fake.fail_next("begin_delete_endpoint", TransientError("throttled"))
    first = run_cleanup(svc)
    assert by_endpoint(first)[idle.endpoint_name] == (False, DELETE_FAILED)
    assert svc.runs.get(idle.run_id).state == State.RETIRED
    assert idle.endpoint_name in fake.endpoints

    clock.advance(hours=24)
    second = run_cleanup(svc)
    assert by_endpoint(second)[idle.endpoint_name] == (True, ORPHANED)
    assert idle.endpoint_name not in fake.endpoints


def test_an_unreadable_workspace_fails_the_cleanup_and_stores_nothing(svc, fake, scenario):
    fake.fail_next("list_endpoints", PermanentError("no access to the workspace"))
    with pytest.raises(PermanentError):
        run_cleanup(svc)
    container = svc.blobs.container(svc.settings.runs_container)
    assert not list(container.list_blobs(name_starts_with=REPORT_PREFIX))


def test_the_timer_runs_the_cleanup(svc, fake, scenario):
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from functions import cleanup as entry

    used, idle = scenario
    override_services(svc)
    try:
        entry.cleanup(TimerRequest(past_due=True))
    finally:
        override_services(None)
    assert idle.endpoint_name not in fake.endpoints
    container = svc.blobs.container(svc.settings.runs_container)
    assert len(list(container.list_blobs(name_starts_with=REPORT_PREFIX))) == 1

    app = func.FunctionApp()
    app.register_functions(entry.bp)
    [function] = app.get_functions()
    [binding] = [b.get_dict_repr() for b in function.get_bindings()]
    assert binding["type"] == "timerTrigger" and binding["schedule"] == "%CLEANUP_SCHEDULE%"
    assert binding["runOnStartup"] is False


# ------------------------------------------------------------------------------------------------ the CLI

# Runs `chatft` with the fake backend in place of the one the settings name (the process has no Azure).
DRIVER = """
import sys
from shared import bootstrap
from tests.fakes import FakeMLBackend

fake = FakeMLBackend()
for name, tags in {endpoints!r}.items():
    fake.add_endpoint(name, tags=tags)
bootstrap.make_ml_backend = lambda settings: fake
from chatft_local.cli import main
sys.exit(main(sys.argv[1:]))
"""


def chatft(tmp_path, settings, endpoints, *args, storage=None):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(endpoints=endpoints))
    env = {k: v for k, v in os.environ.items() if k not in ("ML_BACKEND", "CLEANUP_DRY_RUN")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), AzureWebJobsStorage=storage or settings.storage_connection,
               RUNS_TABLE=settings.runs_table, RUNS_CONTAINER=settings.runs_container)
    return subprocess.run([sys.executable, str(driver), "cleanup", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli_run(svc):
    """A Deployed run recorded in the table, and its endpoint's tags."""
    run = Run(run_id="cli-0123abcd4567", state=State.DEPLOYED, created_at=iso(T0), endpoint_name="ft-cli-0123abcd",
              deploy_started_at=iso(T0))
    svc.runs.create(run)
    tags = {TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id, TAG_CREATED: iso(T0)}
    return run, {run.endpoint_name: tags, "not-ours": {}}


def test_cli_json_dry_run_as_of(tmp_path, settings, svc, cli_run):
    run, endpoints = cli_run
    late = chatft(tmp_path, settings, endpoints, "--json", "--dry-run", "--as-of", "2026-03-03T02:00:00Z")
    assert late.returncode == 0, late.stderr
    summary = json.loads(late.stdout)
    assert summary["dry_run"] is True and summary["as_of"] == "2026-03-03T02:00:00.000Z"
    assert [(d["endpoint"], d["reason"], d["idle_hours"]) for d in summary["deleted"]] == \
        [(run.endpoint_name, IDLE, 48.0)]
    assert [d["reason"] for d in summary["kept"]] == [NOT_OWNED]
    assert svc.runs.get(run.run_id).state == State.DEPLOYED
    assert svc.blobs.read_json(settings.runs_container, summary["report_path"])["dry_run"] is True

    early = chatft(tmp_path, settings, endpoints, "--json", "--dry-run", "--as-of", "2026-03-01T12:00:00")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout)["deleted"] == []


def test_cli_table_and_deletion(tmp_path, settings, svc, cli_run):
    run, endpoints = cli_run
    out = chatft(tmp_path, settings, endpoints, "--as-of", "2026-03-03T02:00:00Z")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("cleanup as of 2026-03-03T02:00:00.000Z: deleted 1, kept 1")
    assert any(line.split()[:4] == ["delete", run.endpoint_name, run.run_id, IDLE] for line in lines)
    assert any(line.split()[:4] == ["keep", "not-ours", "-", NOT_OWNED] for line in lines)
    assert svc.runs.get(run.run_id).state == State.RETIRED


def test_cli_says_when_azurite_is_not_running_or_the_time_is_malformed(tmp_path, settings, cli_run):
    run, endpoints = cli_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    nothing_there = (f"TableEndpoint=http://127.0.0.1:{closed_port}/devstoreaccount1;"
                     f"BlobEndpoint=http://127.0.0.1:{closed_port}/devstoreaccount1;SharedAccessSignature=sv=x")
    down = chatft(tmp_path, settings, endpoints, "--dry-run", storage=nothing_there)
    assert down.returncode == 1 and "is Azurite running?" in down.stderr
    assert "SharedAccessSignature" not in down.stderr + down.stdout

    bad = chatft(tmp_path, settings, endpoints, "--as-of", "tomorrow")
    assert bad.returncode == 2 and "--as-of 'tomorrow' is not an ISO time" in bad.stderr


def test_cli_with_the_local_workspace(tmp_path, settings, svc, cli_run):
    """`python -m chatft_local cleanup` as a user runs it: the settings' own (local) ML workspace, no stand-in."""
    from chatft_local.workspace.local import LocalWorkspace

    run, endpoints = cli_run
    workspace = LocalWorkspace(settings)
    for name, tags in endpoints.items():
        workspace.begin_create_endpoint(name, tags)
    env = {k: v for k, v in os.environ.items() if k not in ("ML_BACKEND", "CLEANUP_DRY_RUN")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), AzureWebJobsStorage=settings.storage_connection,
               RUNS_TABLE=settings.runs_table, RUNS_CONTAINER=settings.runs_container,
               CHATFT_STATE_DIR=settings.chatft_state_dir, ML_BACKEND="local")

    def chatft_cleanup(*args):
        out = subprocess.run([sys.executable, "-m", "chatft_local", "cleanup", "--json", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    dry = chatft_cleanup("--dry-run", "--as-of", "2026-03-03T02:00:00Z")
    assert [d["endpoint"] for d in dry["deleted"]] == [run.endpoint_name]
    assert workspace.get_endpoint(run.endpoint_name) is not None

    real = chatft_cleanup("--as-of", "2026-03-03T02:00:00Z")
    assert real["dry_run"] is False and [d["endpoint"] for d in real["deleted"]] == [run.endpoint_name]
    assert workspace.get_endpoint(run.endpoint_name) is None
    assert workspace.get_endpoint("not-ours") is not None
    assert svc.runs.get(run.run_id).state == State.RETIRED
