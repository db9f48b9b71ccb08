"""No run left behind, service level: the backoff schedule (pure, with an injected clock and random draw), retries
of transient faults in submit and deployments within the retry window, the reconciler, dead-lettered messages,
and LOCAL_FAULTS. Real Azurite (run table, queues) and the fake ML backend at the cloud boundary."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from shared.bootstrap import bootstrap
from shared.config import Settings, SettingError
from shared.ml.faults import parse_faults
from shared.ml.port import NotFound, PermanentError, TransientError
from shared.orchestration import check_deployment, continue_run, dead_lettered, handle_job_event, submit_run
from shared.reconcile import reconcile_runs
from shared.retry import MAX_DELAY_SECONDS, RetryPolicy, is_transient
from shared.runs import State, job_name_for
from shared.run_store import InMemoryRunStore
from tests.fakes import RecordingSender
from tests.test_orchestration import clock, event, ml, queued_run, settings, submitted  # noqa: F401 (fixtures)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------ the schedule


def test_backoff_caps_double_from_the_base_up_to_the_maximum():
    policy = RetryPolicy(base_seconds=10, window=timedelta(hours=1))
    assert [policy.cap(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert policy.cap(10_000) == MAX_DELAY_SECONDS  # no overflow on absurd attempt numbers
    with pytest.raises(ValueError):
        policy.cap(0)


def test_jitter_stays_in_the_upper_half_of_the_cap_so_delays_never_shrink():
    policy = RetryPolicy(base_seconds=2, window=timedelta(hours=1))
    assert policy.delay(3, rand=lambda: 0.0) == 4.0 and policy.delay(3, rand=lambda: 0.999999) == pytest.approx(8.0)
    rng = random.Random(1)
    for attempt in range(1, 12):
        draws = [policy.delay(attempt, rng.random) for _ in range(200)]
        assert all(policy.cap(attempt) / 2 <= d <= policy.cap(attempt) for d in draws)
        assert len({round(d, 6) for d in draws}) > 100, "jitter spreads retries out"
    # Any draw for retry n+1 is at least any draw for retry n (until the cap): delays grow.
    for attempt in range(1, 8):
        assert policy.delay(attempt + 1, lambda: 0.0) >= policy.delay(attempt, lambda: 0.999999)


def test_the_window_ends_retries_with_an_injected_clock():
    policy = RetryPolicy(base_seconds=10, window=timedelta(minutes=2))
    assert policy.next_delay(1, T0, T0, rand=lambda: 0.0) == 5.0
    # 100 s after the first failure, retry 4 (40..80 s, 40 with this draw) would still start inside the window...
    assert policy.next_delay(4, T0, T0 + timedelta(seconds=79), rand=lambda: 0.0) == 40.0
    # ...but not 81 s after: give up.
    assert policy.next_delay(4, T0, T0 + timedelta(seconds=81), rand=lambda: 0.0) is None
    assert policy.next_delay(1, T0, T0 + timedelta(minutes=3)) is None


def test_what_counts_as_transient():
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    assert is_transient(TransientError("429"))
    assert not is_transient(PermanentError("archived")) and not is_transient(NotFound("gone"))
    assert is_transient(ServiceRequestError("connection refused"))
    assert is_transient(ServiceResponseError("connection reset"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    throttled, bad = HttpResponseError("throttled"), HttpResponseError("bad request")
    throttled.status_code, bad.status_code = 429, 400
    assert is_transient(throttled) and not is_transient(bad)
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("run_id"))


@pytest.mark.parametrize("status", [400, 404, 408, 409, 429, 500, 501, 502, 503, 504])
def test_the_azure_adapter_and_the_retry_classifier_agree_on_every_status(status):
    # One list decides (shared/retry.py): 501 Not Implemented is permanent for both, 5xx others transient.
    from azure.core.exceptions import HttpResponseError

    from shared.ml.azureml import translate

    error = HttpResponseError(f"answered {status}")
    error.status_code = status
    assert is_transient(translate(error, "a call")) == is_transient(error), status
    assert is_transient(error) == (status in (408, 429, 500, 502, 503, 504))


# ------------------------------------------------------------------------------- retries, service level


@pytest.fixture
def svc(settings, ml, clock):
    settings = settings.replace(retry_base_seconds=10.0, retry_window_minutes=2.0, reconcile_after_minutes=15.0)
    return bootstrap(settings, ml=ml, clock=clock, messages=RecordingSender(), runs=InMemoryRunStore())


def follow(svc, clock, handler, run_id):
    """Deliver each scheduled retry when it is due (advancing the clock by its delay) until none is sent."""
    delays = []
    while True:
        queue, body, message_id, delay = svc.messages.sent[-1]
        if body.attempt.number <= len(delays):
            return delays
        delays.append(delay)
        clock.now += timedelta(seconds=delay)
        handler(svc, run_id, body.attempt)


def test_submit_retries_with_growing_delays_until_it_works(svc, ml, clock):
    run_id = queued_run(svc)
    ml.fail_next("submit_job", times=3)
    submit_run(svc, run_id)
    delays = follow(svc, clock, submit_run, run_id)
    run = svc.runs.get(run_id)
    assert run.state == State.SUBMITTED and ml.job_creations[run.job_name] == 1
    retries = [t for t in run.history if t.kind == "retry"]
    assert [t.delay_seconds for t in retries] == delays and len(delays) == 3
    assert all(b >= a for a, b in zip(delays, delays[1:])), delays
    assert [m[2] for m in svc.messages.sent] == [f"{run_id}-submit-{n}" for n in (1, 2, 3)], "distinct ids"
    assert all(t.step == "submit" and "TransientError" in t.detail for t in retries)
    assert [t.message_id for t in retries] == [m[2] for m in svc.messages.sent], "each line names its message"


def test_submit_past_the_retry_window_fails_the_run_with_the_last_error(svc, ml, clock):
    run_id = queued_run(svc)
    ml.fail_next("submit_job", TransientError("503 Service Unavailable"), times=100)
    submit_run(svc, run_id)
    delays = follow(svc, clock, submit_run, run_id)
    run = svc.runs.get(run_id)
    assert run.state == State.FAILED and run.failure.stage == "submit"
    assert "503 Service Unavailable" in run.failure.reason and "retry window 2 minutes" in run.failure.reason
    assert sum(delays) <= 120 and len(delays) >= 3  # 5-10, 10-20, 20-40, ... inside two minutes


def test_a_redelivered_copy_of_the_same_retry_is_harmless(svc, ml, clock):
    run_id = queued_run(svc)
    ml.fail_next("submit_job", times=1)
    submit_run(svc, run_id)
    _, body, message_id, _ = svc.messages.sent[-1]
    for _ in range(2):  # the same retry delivered twice (locally there is no duplicate detection)
        submit_run(svc, run_id, body.attempt)
    run = svc.runs.get(run_id)
    assert run.state == State.SUBMITTED and ml.job_creations[run.job_name] == 1
    assert len([t for t in run.history if t.kind == "retry"]) == 1


def test_endpoint_creation_retries_then_deploys(svc, ml, clock):
    ml.instant_provisioning = True
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    ml.fail_next("begin_create_endpoint", times=3)  # begin_deployment's try, then two checks
    run = handle_job_event(svc, event(job, "Completed"))
    assert run.state == State.DEPLOYING and run.history[-1].kind == "retry"
    for _ in range(10):
        queue, body, message_id, delay = svc.messages.sent[-1]
        clock.now += timedelta(seconds=delay)
        run = continue_run(svc, body)
        if run.state == State.DEPLOYED:
            break
    assert run.state == State.DEPLOYED and ml.created["endpoint"] == 1
    retries = [t.delay_seconds for t in run.history if t.kind == "retry"]
    assert len(retries) == 3 and retries[2] >= retries[1]


def test_deployment_failing_past_the_window_is_abandoned(svc, ml, clock):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    run = handle_job_event(svc, event(job, "Completed"))
    ml.fail_next("get_endpoint", TransientError("429 Too Many Requests"), times=100)
    clock.now += timedelta(seconds=5)
    check_deployment(svc, run_id, message_id="first-check")
    follow(svc, clock, lambda s, r, a: check_deployment(s, r, a), run_id)
    failed = svc.runs.get(run_id)
    assert failed.state == State.FAILED and failed.failure.stage == "deploy"
    assert failed.history[-1].step == "deployment check", "the Failed line names the step"
    assert "deployment check kept failing" in failed.failure.reason and "429" in failed.failure.reason
    assert run.endpoint_name not in ml.endpoints, "the half-made endpoint is deleted"


def test_a_completed_event_while_the_job_finalizes_is_looked_at_again(svc, ml, clock):
    ml.instant_provisioning = True
    run_id, job = submitted(svc, ml)
    ml._set_job(job, "Finalizing")
    run = handle_job_event(svc, event(job, "Completed"))
    assert run.state == State.SUBMITTED and run.history[-1].kind == "retry"
    queue, body, message_id, delay = svc.messages.sent[-1]
    assert queue == svc.settings.deploy_queue and body.step == "job status"
    assert run.history[-1].step == "job status" and run.history[-1].message_id == message_id
    ml.complete_job(job)
    clock.now += timedelta(seconds=delay)
    assert continue_run(svc, body).state == State.DEPLOYING


# ----------------------------------------------------------------------------------------- reconciler


def test_reconciler_drives_a_run_whose_events_were_all_lost(svc, ml, clock):
    ml.instant_provisioning = True
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)  # no event arrives
    clock.now += timedelta(minutes=10)
    assert reconcile_runs(svc).stale == 0, "not stale yet: left alone"
    assert svc.runs.get(run_id).reconciled_at == ""
    clock.now += timedelta(minutes=6)
    report = reconcile_runs(svc)
    run = svc.runs.get(run_id)
    assert report.moved == [(run_id, "Submitted", "Deploying")] and run.reconciled_at
    _, body, message_id, _ = [m for m in svc.messages.sent if m[0] == svc.settings.deploy_queue][-1]
    assert continue_run(svc, body).state == State.DEPLOYED  # the check chain it started


def test_reconciler_moves_a_running_job_to_training_and_fails_a_deleted_job(svc, ml, clock):
    running, job = submitted(svc, ml)
    ml.start_job(job)
    gone = queued_run(svc, run_id="gone-0123456789ab")
    submit_run(svc, gone)
    del ml.jobs[job_name_for(gone)]
    clock.now += timedelta(minutes=16)
    reconcile_runs(svc)
    assert svc.runs.get(running).state == State.TRAINING
    failed = svc.runs.get(gone)
    assert failed.state == State.FAILED and "no longer exists" in failed.failure.reason


def test_reconciler_fails_a_deploying_run_whose_endpoint_vanished(svc, ml, clock):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    run = handle_job_event(svc, event(job, "Completed"))
    del ml.endpoints[run.endpoint_name]
    clock.now += timedelta(minutes=16)
    reconcile_runs(svc)
    failed = svc.runs.get(run_id)
    assert failed.state == State.FAILED and run.endpoint_name in failed.failure.reason
    assert "no longer exists" in failed.failure.reason


def test_reconciler_takes_deployment_steps_without_multiplying_check_chains(svc, ml, clock):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    run = handle_job_event(svc, event(job, "Completed"))
    ml.set_endpoint_state(run.endpoint_name, "Succeeded")
    sent = len(svc.messages.sent)
    clock.now += timedelta(minutes=16)
    reconcile_runs(svc)
    assert ml.get_deployment(run.endpoint_name, svc.settings.deployment_name) is not None
    assert len(svc.messages.sent) == sent, "the reconciler schedules no check of its own"


def test_a_reconciler_fault_on_one_run_does_not_stop_the_others(svc, ml, clock):
    first, job1 = submitted(svc, ml)
    second = queued_run(svc, run_id="second-0123456789ab")
    submit_run(svc, second)
    ml.complete_job(job1)
    ml.complete_job(job_name_for(second))
    ml.fail_next("get_job", TransientError("throttled"))
    clock.now += timedelta(minutes=16)
    report = reconcile_runs(svc)
    assert len(report.errors) == 1 and len(report.moved) == 1


# --------------------------------------------------------------------------------------- dead letters


def test_a_dead_lettered_submit_fails_its_queued_run_with_the_reason(svc, ml):
    run_id = queued_run(svc)
    run = dead_lettered(svc, svc.settings.runs_queue, f'{{"run_id": "{run_id}"}}'.encode(),
                        "MaxDeliveryCountExceeded", "could not be consumed", 10)
    assert run.state == State.FAILED and run.failure.stage == "submit"
    assert "dead-lettered after 10 deliveries" in run.failure.reason
    assert "MaxDeliveryCountExceeded" in run.failure.reason


def test_a_stale_dead_letter_changes_nothing(svc, ml):
    run_id, job = submitted(svc, ml)
    assert dead_lettered(svc, svc.settings.runs_queue, f'{{"run_id": "{run_id}"}}'.encode()).state == State.SUBMITTED
    ml.complete_job(job)
    run = handle_job_event(svc, event(job, "Completed"))
    other = f'{{"run_id": "{run_id}", "step": "check", "endpoint": "ft-an-earlier-one"}}'.encode()
    assert dead_lettered(svc, svc.settings.deploy_queue, other).state == State.DEPLOYING
    ours = f'{{"run_id": "{run_id}", "step": "check", "endpoint": "{run.endpoint_name}"}}'.encode()
    failed = dead_lettered(svc, svc.settings.deploy_queue, ours, "MaxDeliveryCountExceeded")
    assert failed.state == State.FAILED and failed.failure.stage == "deploy"
    assert run.endpoint_name not in ml.endpoints, "the half-made endpoint is deleted"
    assert dead_lettered(svc, svc.settings.runs_queue, b"not json") is None
    assert dead_lettered(svc, svc.settings.runs_queue, b'{"run_id": "nobody-0123456789ab"}') is None


# --------------------------------------------------------------------------------------- LOCAL_FAULTS


@pytest.mark.parametrize("text, named", [
    ("submit_job=sometimes:3", "kind"),
    ("not_a_method=transient:1", "not a method"),
    ("submit_job=transient", "method=kind:count"),
    ("submit_job=transient:1,submit_job=permanent:1", "twice"),
])
def test_local_faults_are_parsed_strictly(text, named):
    with pytest.raises(SettingError, match="LOCAL_FAULTS") as err:
        Settings.from_env({"LOCAL_FAULTS": text})
    assert named in str(err.value)


def test_local_faults_fail_then_behave_and_count_across_restarts(settings, tmp_path):
    from chatft_local.workspace.faults import with_faults
    from chatft_local.workspace.local import LocalWorkspace

    spec = "get_endpoint=transient:2,list_endpoints=permanent:1,requests_since=error:1"
    assert parse_faults(spec)["get_endpoint"] == ("transient", 2)
    settings = settings.replace(chatft_state_dir=str(tmp_path / "state"), local_faults=spec)
    first = with_faults(LocalWorkspace(settings), spec)
    with pytest.raises(TransientError, match="LOCAL_FAULTS"):
        first.get_endpoint("ft-x")
    restarted = bootstrap(settings).ml  # another process or a restarted host: the count goes on
    with pytest.raises(TransientError):
        restarted.get_endpoint("ft-x")
    assert restarted.get_endpoint("ft-x") is None, "then it behaves"
    with pytest.raises(PermanentError):
        restarted.list_endpoints()
    assert restarted.list_endpoints() == []
    with pytest.raises(RuntimeError):
        restarted.requests_since("ft-x", "2026-01-01T00:00:00Z")
    assert restarted.counter.injected() == {"get_endpoint": 2, "list_endpoints": 1, "requests_since": 1}
    assert type(with_faults(LocalWorkspace(settings), "")) is LocalWorkspace, "empty: no wrapper"
    changed = with_faults(LocalWorkspace(settings), "get_endpoint=transient:1")
    with pytest.raises(TransientError):
        changed.get_endpoint("ft-x")  # a changed setting counts from zero
