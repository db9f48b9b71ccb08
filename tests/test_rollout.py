"""Model line rollouts, service level: runs and messages in memory, the fake ML backend at the cloud boundary (it
enforces Azure's traffic rules). Each test drives runs of one line through the real steps (`shared.orchestration`)
with a test clock; what the scoring proxy would record is written into `Run.served` as the proxy writes it."""

from __future__ import annotations

import pytest

from shared.bootstrap import bootstrap
from shared.messages import ContinueRun
from shared.orchestration import continue_run, handle_job_event, submit_run
from shared.rollout import LineConflict, NoSuchLine, line_view, lines_view, rollback_line
from shared.run_store import InMemoryRunStore
from shared.runs import State, job_name_for, new_run
from tests.fakes import FakeMLBackend, RecordingSender
from tests.test_orchestration import Clock, event

LINE = "support-bot"
ENDPOINT = "ln-support-bot"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ml():
    return FakeMLBackend(instant_provisioning=True)


def make_svc(offline_settings, ml, clock, **settings):
    base = offline_settings.replace(eval_gate="off", **settings)
    return bootstrap(base, ml=ml, clock=clock, messages=RecordingSender(), runs=InMemoryRunStore())


@pytest.fixture
def svc(offline_settings, ml, clock):
    return make_svc(offline_settings, ml, clock, rollout_canary_percent=10, rollout_canary_minutes=30.0,
                    rollout_min_requests=20, rollout_max_error_rate=0.05, rollout_keep_previous_hours=24.0)


def trained(svc, ml, n):
    """Run n of the line, its job Completed: Registered and Deploying (the step runner did it)."""
    run_id = f"week{n}-0123456789a{n}"
    run = new_run(run_id, svc.clock(), line=LINE)
    run = run.advance(State.VALIDATING, svc.clock())
    run = run.advance(State.QUEUED, svc.clock(), train_path=f"{run_id}/train.jsonl", test_path="")
    svc.runs.create(run)
    submit_run(svc, run_id)
    ml.complete_job(job_name_for(run_id))
    return handle_job_event(svc, event(job_name_for(run_id), "Completed"))


def check(svc, run_id):
    """Deliver the run's deployment check, as the DEPLOY_QUEUE handler does."""
    return continue_run(svc, ContinueRun.check(run_id, ENDPOINT))


def serve(svc, run_id, requests, errors, latency_ms=50.0):
    """What the scoring proxy adds to the run's outcomes (`ScoringProxy._write_outcomes`)."""
    def add(r):
        s = dict(r.served)
        s["requests"] = s.get("requests", 0) + requests
        s["errors"] = s.get("errors", 0) + errors
        s["latency_ms_total"] = s.get("latency_ms_total", 0.0) + latency_ms * requests
        return r.edit(served=s)
    svc.runs.update(run_id, add)


def deployed_first(svc, ml):
    first = trained(svc, ml, 1)
    assert first.endpoint_name == ENDPOINT and first.deployment_name == "v01" and first.model_name == LINE
    first = check(svc, first.run_id)
    assert first.state == State.DEPLOYED
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 100}
    return first


def traffic_lines(run):
    return [t.detail for t in run.history if t.kind == "traffic" or (t.step in ("deployment check", "rollback")
                                                                    and "traffic" in t.detail)]


def test_later_runs_add_a_deployment_and_a_healthy_canary_takes_all_traffic(svc, ml, clock):
    first = deployed_first(svc, ml)
    second = trained(svc, ml, 2)
    assert second.model_version == "2" and second.deployment_name == "v02" and second.endpoint_name == ENDPOINT
    second = check(svc, second.run_id)
    assert ml.created["endpoint"] == 1, "a line's later run creates no endpoint"
    assert second.state == State.DEPLOYING and second.rollout["canary_started_at"]
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 90, "v02": 10}
    assert "canary: traffic v01 90%, v02 10% for 30 minutes" in second.history[-1].detail
    assert second.history[-1].kind == "traffic"
    # The watch is scheduled checks on the deployments queue, never a wait.
    delays = [m[3] for m in svc.messages.sent if m[0] == svc.settings.deploy_queue]
    assert delays[-1] == 60.0
    serve(svc, second.run_id, 30, 1)  # 1 of 30: 3.3%, healthy
    clock.advance(minutes=10)
    assert check(svc, second.run_id).state == State.DEPLOYING  # still in its window
    clock.advance(minutes=21)
    done = check(svc, second.run_id)
    assert done.state == State.DEPLOYED
    assert "canary healthy after 30 minutes: 1 errors in 30 requests" in done.history[-1].detail
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 0, "v02": 100}
    kept = svc.runs.get(first.run_id)
    assert kept.state == State.DEPLOYED and kept.standby_until == "2026-03-02T12:31:00.000Z"
    assert kept.history[-1].kind == "traffic" and "v01 kept at 0% until" in kept.history[-1].detail
    standby = [m for m in svc.messages.sent if isinstance(m[1], ContinueRun) and m[1].step == "standby"]
    assert [(m[1].run_id, m[3]) for m in standby] == [(first.run_id, 24 * 3600.0)]
    assert ml.get_deployment(ENDPOINT, "v01") is not None, "kept for a rollback"


def test_an_unhealthy_canary_is_rolled_back_with_its_figures(svc, ml, clock):
    first = deployed_first(svc, ml)
    serve(svc, first.run_id, 100, 0, latency_ms=40)
    second = check(svc, trained(svc, ml, 2).run_id)
    serve(svc, second.run_id, 12, 3, latency_ms=80)  # 3 errors > 5% of max(12, 20) = 1
    clock.advance(minutes=2)
    failed = check(svc, second.run_id)
    assert failed.state == State.FAILED and failed.failure.stage == "rollout"
    reason = failed.failure.reason
    assert "canary of v02 unhealthy: 3 errors in 12 requests, mean latency 80 ms (v01 40 ms)" in reason
    assert "ROLLOUT_MAX_ERROR_RATE 0.05 of at least 20 requests" in reason
    assert "traffic back to v01 (v01 100%, v02 0%), v02 deleted" in reason
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 100}
    assert ml.get_deployment(ENDPOINT, "v02") is None and ml.get_endpoint(ENDPOINT) is not None
    assert failed.rollout["verdict"] == {"requests": 12, "errors": 3, "latency_ms_total": 960.0,
                                         "judged_at": "2026-03-01T12:02:00.000Z", "healthy": False}
    assert svc.runs.get(first.run_id).state == State.DEPLOYED and not svc.runs.get(first.run_id).standby_until


def test_one_error_in_one_request_does_not_decide(svc, ml, clock):
    deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    serve(svc, second.run_id, 1, 1)
    clock.advance(minutes=31)
    assert check(svc, second.run_id).state == State.DEPLOYED


def test_percent_zero_switches_at_once(offline_settings, ml, clock):
    svc = make_svc(offline_settings, ml, clock, rollout_canary_percent=0)
    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    assert second.state == State.DEPLOYED
    assert "traffic v01 0%, v02 100% (ROLLOUT_CANARY_PERCENT=0: switched at once)" in second.history[-1].detail
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 0, "v02": 100}
    assert svc.runs.get(first.run_id).standby_until


def test_a_failed_new_deployment_hands_traffic_back(offline_settings, clock):
    ml = FakeMLBackend()
    svc = make_svc(offline_settings, ml, clock)
    first = trained(svc, ml, 1)
    ml.set_endpoint_state(ENDPOINT, "Succeeded")
    check(svc, first.run_id)
    ml.set_deployment_state(ENDPOINT, "v01", "Succeeded")
    assert check(svc, first.run_id).state == State.DEPLOYED
    second = trained(svc, ml, 2)
    check(svc, second.run_id)  # creates v02
    ml.set_deployment_state(ENDPOINT, "v02", "Failed", error="liveness probe failed")
    failed = check(svc, second.run_id)
    assert failed.state == State.FAILED and "liveness probe failed" in failed.failure.reason
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 100} and ml.get_deployment(ENDPOINT, "v02") is None
    assert svc.runs.get(first.run_id).state == State.DEPLOYED


def test_the_kept_deployment_is_deleted_at_its_time(svc, ml, clock):
    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    clock.advance(minutes=31)
    check(svc, second.run_id)
    message = next(m[1] for m in svc.messages.sent if isinstance(m[1], ContinueRun) and m[1].step == "standby")
    clock.advance(hours=23)
    assert continue_run(svc, message).state == State.DEPLOYED, "delivered early: nothing deleted"
    assert ml.get_deployment(ENDPOINT, "v01") is not None
    clock.advance(hours=1)
    retired = continue_run(svc, message)
    assert retired.state == State.RETIRED and not retired.standby_until
    assert "kept deployment v01 deleted" in retired.history[-1].detail
    assert ml.get_deployment(ENDPOINT, "v01") is None and ml.get_deployment(ENDPOINT, "v02") is not None
    assert continue_run(svc, message).state == State.RETIRED, "a redelivery changes nothing"
    assert first.run_id == retired.run_id


def test_rollback_returns_traffic_to_the_kept_version_then_409(svc, ml, clock):
    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    clock.advance(minutes=31)
    check(svc, second.run_id)
    result = rollback_line(svc, LINE)
    assert result["serving"] == "v01" and result["rolled_back"] == "v02"
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 100} and ml.get_deployment(ENDPOINT, "v02") is None
    back, gone = svc.runs.get(first.run_id), svc.runs.get(second.run_id)
    assert back.state == State.DEPLOYED and not back.standby_until and "rolled back by" in back.history[-1].detail
    assert gone.state == State.RETIRED and "rolled back by" in gone.history[-1].detail
    with pytest.raises(LineConflict, match="no previous deployment kept"):
        rollback_line(svc, LINE)
    with pytest.raises(NoSuchLine):
        rollback_line(svc, "other-line")


def test_rollback_during_a_canary_fails_the_canary(svc, ml, clock):
    deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    rollback_line(svc, LINE)
    assert svc.runs.get(second.run_id).state == State.FAILED
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 100}
    assert check(svc, second.run_id).state == State.FAILED, "its next check changes nothing"


def test_line_views_name_deployments_traffic_versions_and_runs(svc, ml, clock):
    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    view = line_view(svc, LINE)
    assert view["endpoint"] == ENDPOINT and view["traffic"] == {"v01": 90, "v02": 10}
    assert [(d["name"], d["traffic"], d["model_version"], d["run_id"]) for d in view["deployments"]] == [
        ("v01", 90, "1", first.run_id), ("v02", 10, "2", second.run_id)]
    assert view["versions"] == ["1", "2"]
    assert [v["line"] for v in lines_view(svc)["lines"]] == [LINE]
    with pytest.raises(NoSuchLine):
        line_view(svc, "nope")


def test_a_root_upload_keeps_its_own_endpoint(svc, ml):
    from tests.test_orchestration import queued_run

    run_id = queued_run(svc)
    submit_run(svc, run_id)
    ml.complete_job(job_name_for(run_id))
    run = handle_job_event(svc, event(job_name_for(run_id), "Completed"))
    run = continue_run(svc, ContinueRun.check(run.run_id, run.endpoint_name))
    assert run.state == State.DEPLOYED and run.endpoint_name.startswith("ft-") and run.deployment_name == "demo"
    assert not run.rollout.get("canary_started_at")


@pytest.mark.parametrize("name,value", [("ROLLOUT_CANARY_PERCENT", "101"), ("ROLLOUT_CANARY_PERCENT", "-1"),
                                        ("ROLLOUT_MAX_ERROR_RATE", "1.5"), ("ROLLOUT_CANARY_MINUTES", "0"),
                                        ("ROLLOUT_MIN_REQUESTS", "0"), ("ROLLOUT_KEEP_PREVIOUS_HOURS", "-2")])
def test_rollout_settings_are_checked(name, value):
    from shared.config import SettingError, Settings

    with pytest.raises(SettingError, match=name):
        Settings.from_env({name: value})


def test_one_canary_at_a_time_on_a_line(svc, ml, clock):
    deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    third = check(svc, trained(svc, ml, 3).run_id)
    assert third.state == State.DEPLOYING and not third.rollout.get("canary_started_at")
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 90, "v02": 10}
    clock.advance(minutes=31)
    assert check(svc, second.run_id).state == State.DEPLOYED
    third = check(svc, third.run_id)
    assert third.rollout["previous"] == "v02" and ml.get_endpoint(ENDPOINT).traffic == {"v01": 0, "v02": 90,
                                                                                         "v03": 10}


def test_local_faults_can_break_a_deployments_scoring():
    from shared.config import SettingError, Settings
    from shared.ml.faults import scoring_faults

    assert scoring_faults("submit_job=transient:1,score@v03=error:50", "v03") == 50
    assert scoring_faults("score@v03=error:50", "v02") == 0
    with pytest.raises(SettingError, match="kind error"):
        Settings.from_env({"LOCAL_FAULTS": "score@v03=transient:1"})


def test_a_line_runs_view_shows_its_line_rollout_and_standby(svc, ml, clock):
    from shared.protocol import RunView
    from shared.run_views import run_view

    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    clock.advance(minutes=31)
    second = check(svc, second.run_id)
    view = run_view(second)
    assert view["line"]["name"] == LINE and view["line"]["rollout"]["verdict"]["healthy"] is True
    assert "served_at_start" not in view["line"]["rollout"] and view["links"]["line"] == f"/api/lines/{LINE}"
    kept = run_view(svc.runs.get(first.run_id))
    assert kept["line"]["standby_until"] == svc.runs.get(first.run_id).standby_until
    assert any(h.get("kind") == "traffic" for h in view["history"])
    for shown in (view, kept):
        RunView.model_validate(shown)  # the declared contract


def test_the_reconciler_owns_a_stale_canary_and_judges_it(svc, ml, clock):
    from shared.reconcile import reconcile_runs

    deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)  # its scheduled checks are lost
    clock.advance(minutes=31 + svc.settings.reconcile_after_minutes)
    report = reconcile_runs(svc)
    assert (second.run_id, "Deploying", "Deployed") in report.moved
    assert ml.get_endpoint(ENDPOINT).traffic == {"v01": 0, "v02": 100}


def test_a_dead_lettered_standby_message_fails_nothing(svc, ml, clock):
    from shared.orchestration import dead_lettered

    first = deployed_first(svc, ml)
    second = check(svc, trained(svc, ml, 2).run_id)
    clock.advance(minutes=31)
    check(svc, second.run_id)
    message = next(m[1] for m in svc.messages.sent if isinstance(m[1], ContinueRun) and m[1].step == "standby")
    after = dead_lettered(svc, svc.settings.deploy_queue, message.to_json().encode(), "MaxDeliveryCountExceeded")
    # A Deployed run is not failed by a lost deletion: the nightly cleanup deletes an overdue kept deployment.
    assert after.run_id == first.run_id and after.state == State.DEPLOYED and after.standby_until
