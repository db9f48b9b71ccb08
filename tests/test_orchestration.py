"""Orchestration, service level: runs and messages in memory, the fake ML backend at the cloud boundary (no Azurite).

Covers submit (preflight, permanent vs transient failures), job events (step runs, unknown jobs,
duplicates, out of order), deployment checks (each step, backoff, timeout with the endpoint deleted), redeploy.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared.bootstrap import bootstrap
from shared.messages import ContinueRun
from shared.orchestration import (RUN_COMPLETED, RUN_STATUS_CHANGED, JobEvent, NotRedeployable, check_deployment,
                                  continue_run, handle_job_event, redeploy, submit_run)
from shared.runs import State, job_name_for, new_run
from shared.run_store import InMemoryRunStore
from tests.fakes import ARCHIVED_EXAMPLE, FakeMLBackend, RecordingSender


class Clock:
    def __init__(self):
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, **delta):
        self.now += timedelta(**delta)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ml():
    return FakeMLBackend()


@pytest.fixture
def settings(offline_settings):
    return offline_settings


@pytest.fixture
def svc(settings, ml, clock):
    return bootstrap(settings, ml=ml, clock=clock, messages=RecordingSender(), runs=InMemoryRunStore())


def queued_run(svc, run_id="data-0123456789ab", **overrides):
    run = new_run(run_id, svc.clock())
    run = run.advance(State.VALIDATING, svc.clock())
    run = run.advance(State.QUEUED, svc.clock(), train_path=f"{run_id}/train.jsonl", test_path=f"{run_id}/test.jsonl",
                      overrides=overrides, keep=bool(overrides.get("keep")))
    svc.runs.create(run)
    return run_id


def event(job_name, status, event_type=RUN_STATUS_CHANGED, **data):
    return JobEvent.from_event_grid(event_type, {"runId": job_name, "runStatus": status,
                                                 "runType": "azureml.PipelineRun", **data})


def submitted(svc, ml, **overrides):
    run_id = queued_run(svc, **overrides)
    submit_run(svc, run_id)
    return run_id, job_name_for(run_id)


# --------------------------------------------------------------------------------------------- submit


def test_submit_creates_one_job_with_upload_overrides(svc, ml):
    run_id = queued_run(svc, num_train_epochs=1, keep=True, test_fraction=0.2)
    run = submit_run(svc, run_id)
    assert run.state == State.SUBMITTED and run.job_name == job_name_for(run_id)
    job = ml.jobs[run.job_name]
    assert job.request.params == {"num_train_epochs": 1}, "app-level overrides never reach the pipeline"
    assert job.request.train_path == f"{run_id}/train.jsonl"
    submit_run(svc, run_id)  # a redelivery
    assert ml.job_creations[run.job_name] == 1


def test_archived_base_model_fails_the_run_without_retry(svc, ml):
    run_id = queued_run(svc, base_model=ARCHIVED_EXAMPLE)
    run = submit_run(svc, run_id)
    assert run.state == State.FAILED and run.failure.stage == "submit"
    assert ARCHIVED_EXAMPLE in run.failure.reason
    assert ml.created["job"] == 0


def test_refused_compute_is_permanent(svc, ml):
    ml.set_compute("gpu-cluster", "Standard_NC6")
    run = submit_run(svc, queued_run(svc))
    assert run.state == State.FAILED and "Standard_NC6" in run.failure.reason


def test_transient_failure_schedules_a_retry_that_succeeds(svc, ml):
    run_id = queued_run(svc)
    ml.fail_next("submit_job")
    run = submit_run(svc, run_id)  # returns: the message completes, a scheduled copy goes out instead
    assert run.state == State.QUEUED and run.history[-1].kind == "retry"
    queue, body, message_id, delay = svc.messages.sent[-1]
    assert queue == svc.settings.runs_queue and body.attempt.number == 1 and message_id == f"{run_id}-submit-1"
    assert 0 < delay == run.history[-1].delay_seconds
    assert submit_run(svc, run_id, body.attempt).state == State.SUBMITTED


def test_an_unexpected_error_raises_for_redelivery(svc, ml):
    run_id = queued_run(svc)
    ml.fail_next("submit_job", RuntimeError("a bug"))  # neither transient nor permanent: the host redelivers
    with pytest.raises(RuntimeError):
        submit_run(svc, run_id)
    assert svc.runs.get(run_id).state == State.QUEUED


def test_submit_of_unknown_or_moved_on_run_is_a_no_op(svc, ml):
    assert submit_run(svc, "nope-000000000000") is None
    run_id, job = submitted(svc, ml)
    assert submit_run(svc, run_id).state == State.SUBMITTED
    assert ml.created["job"] == 1


# ----------------------------------------------------------------------------------------- job events


def test_running_then_completed_registers_and_begins_deploying(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.start_job(job)
    assert handle_job_event(svc, event(job, "Running")).state == State.TRAINING
    ml.complete_job(job, metrics={"train_loss": 0.5})
    run = handle_job_event(svc, event(job, "Completed"))
    assert run.state == State.DEPLOYING
    assert [t.state for t in run.history][-4:] == [State.TRAINING, State.TRAINED, State.REGISTERED, State.DEPLOYING]
    assert run.metrics == {"train_loss": 0.5} and run.model_name and run.model_version
    endpoint = ml.get_endpoint(run.endpoint_name)
    assert endpoint.tags["chatft-app"] == svc.settings.app_id and endpoint.tags["chatft-run"] == run_id
    checks = [m for m in svc.messages.sent if m[0] == svc.settings.deploy_queue]
    check_id = checks[0][1].check_id
    assert checks == [(svc.settings.deploy_queue, ContinueRun(run_id, "check", run.endpoint_name, check_id),
                       f"{run.endpoint_name}-check-{check_id}", svc.settings.deploy_check_seconds)]


def test_duplicate_and_out_of_order_events_make_one_model_and_one_endpoint(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    handle_job_event(svc, event(job, "Completed", RUN_COMPLETED))  # Completed overtakes Running
    handle_job_event(svc, event(job, "Completed"))
    handle_job_event(svc, event(job, "Running"))
    run = svc.runs.get(run_id)
    assert run.state == State.DEPLOYING
    assert ml.created["model"] == 1 and ml.created["endpoint"] == 1
    assert State.TRAINING not in [t.state for t in run.history]


def test_a_completed_event_is_checked_against_the_backend(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.start_job(job)
    run = handle_job_event(svc, event(job, "Completed"))  # early or forged: the job is still running
    assert run.state == State.SUBMITTED and ml.created["model"] == 0


def test_failed_job_fails_the_run_with_its_error(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.fail_job(job, error="CUDA out of memory in finetune step")
    run = handle_job_event(svc, event(job, "Failed"))
    assert run.state == State.FAILED and run.failure.stage == "training"
    assert "CUDA out of memory" in run.failure.reason


def test_step_runs_and_unknown_jobs_are_ignored(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    assert handle_job_event(svc, event(job, "Completed", runType="azureml.StepRun")) is None
    assert handle_job_event(svc, event("child", "Completed", runTags={"azureml.pipelinerunid": job})) is None
    assert handle_job_event(svc, event("chatft-someone-else", "Completed")) is None
    assert handle_job_event(svc, event("not-ours", "Completed")) is None
    assert handle_job_event(svc, JobEvent("Microsoft.MachineLearningServices.ModelRegistered", job, "")) is None
    assert svc.runs.get(run_id).state == State.SUBMITTED


def test_transient_registration_failure_schedules_a_retry_on_the_deploy_queue(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    ml.fail_next("register_model")
    run = handle_job_event(svc, event(job, "Completed"))
    assert run.state == State.TRAINED and run.history[-1].kind == "retry" and "register" in run.history[-1].detail
    queue, body, message_id, _ = svc.messages.sent[-1]
    assert queue == svc.settings.deploy_queue and body.step == "register" and body.attempt.number == 1
    assert continue_run(svc, body).state == State.DEPLOYING
    assert handle_job_event(svc, event(job, "Completed")).state == State.DEPLOYING  # a late duplicate event
    assert ml.created["model"] == 1


# ---------------------------------------------------------------------------------------- deployments


def deploying(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    return handle_job_event(svc, event(job, "Completed"))


def test_deployment_checks_walk_to_deployed(svc, ml):
    run = deploying(svc, ml)
    assert check_deployment(svc, run.run_id).state == State.DEPLOYING  # endpoint still Creating
    ml.set_endpoint_state(run.endpoint_name, "Succeeded")
    check_deployment(svc, run.run_id)  # creates the deployment
    dep = ml.get_deployment(run.endpoint_name, svc.settings.deployment_name)
    assert dep.provisioning_state == "Creating"
    instance_type, count, model = ml.endpoints[run.endpoint_name].instance[svc.settings.deployment_name]
    assert (instance_type, count) == ("Standard_NC24ads_A100_v4", 1)  # first not-retired of the allow-list and model.name == run.model_name
    ml.set_deployment_state(run.endpoint_name, svc.settings.deployment_name, "Succeeded")
    check_deployment(svc, run.run_id)  # sets traffic
    assert ml.get_endpoint(run.endpoint_name).traffic == {"demo": 100}
    done = check_deployment(svc, run.run_id)
    assert done.state == State.DEPLOYED and done.scoring_uri.endswith("/score")
    assert ml.created["deployment"] == 1
    assert check_deployment(svc, run.run_id).state == State.DEPLOYED  # a late duplicate check: no-op


def test_checks_back_off(svc, ml):
    run = deploying(svc, ml)
    for _ in range(3):
        check_deployment(svc, run.run_id)
    delays = [m[3] for m in svc.messages.sent if m[0] == svc.settings.deploy_queue]
    base = svc.settings.deploy_check_seconds
    assert delays == [base, 2 * base, 4 * base, 8 * base]
    assert len({m[2] for m in svc.messages.sent}) == len(svc.messages.sent), "each check has its own message id"
    assert svc.runs.get(run.run_id).deploy_checks == 3


def test_deployment_that_never_becomes_ready_fails_and_deletes_the_endpoint(svc, ml, clock):
    run = deploying(svc, ml)
    clock.advance(minutes=svc.settings.deploy_timeout_minutes - 1)
    assert check_deployment(svc, run.run_id).state == State.DEPLOYING
    clock.advance(minutes=2)
    failed = check_deployment(svc, run.run_id)
    assert failed.state == State.FAILED and failed.failure.stage == "deploy"
    assert f"{svc.settings.deploy_timeout_minutes} minutes" in failed.failure.reason
    assert ml.get_endpoint(run.endpoint_name) is None


def test_failed_deployment_fails_the_run_and_deletes_the_endpoint(svc, ml):
    run = deploying(svc, ml)
    ml.set_endpoint_state(run.endpoint_name, "Succeeded")
    check_deployment(svc, run.run_id)
    ml.set_deployment_state(run.endpoint_name, "demo", "Failed", error="liveness probe failed")
    failed = check_deployment(svc, run.run_id)
    assert failed.state == State.FAILED and "liveness probe failed" in failed.failure.reason
    assert ml.get_endpoint(run.endpoint_name) is None


def test_redeploy_of_a_retired_run_uses_a_fresh_endpoint(svc, ml):
    ml.instant_provisioning = True
    run = deploying(svc, ml)
    for _ in range(3):
        run = check_deployment(svc, run.run_id)
    assert run.state == State.DEPLOYED
    with pytest.raises(NotRedeployable):
        redeploy(svc, run.run_id)
    svc.runs.update(run.run_id, lambda r: r.advance(State.RETIRED, svc.clock()))
    ml.begin_delete_endpoint(run.endpoint_name)
    again = redeploy(svc, run.run_id)
    assert again.state == State.DEPLOYING and again.endpoint_name != run.endpoint_name
    for _ in range(3):
        again = check_deployment(svc, run.run_id)
    assert again.state == State.DEPLOYED


def test_redeploy_refuses_runs_without_a_model(svc, ml):
    run_id = queued_run(svc)
    with pytest.raises(NotRedeployable):
        redeploy(svc, run_id)


def test_instance_type_outside_the_models_allow_list_fails_the_submission(settings, ml, clock):
    svc = bootstrap(settings.replace(inference_instance_type="Standard_DS3_v2"), ml=ml, clock=clock,
                    messages=RecordingSender(), runs=InMemoryRunStore())
    run_id = queued_run(svc)
    failed = submit_run(svc, run_id)
    assert failed.state == State.FAILED and failed.failure.stage == "submit"
    assert "Standard_DS3_v2" in failed.failure.reason and "INFERENCE_INSTANCE_TYPE" in failed.failure.reason
    assert ml.created["job"] == 0, "refused before hours of training are spent"


def test_instance_type_changed_to_one_outside_the_allow_list_fails_the_deployment(settings, ml, clock, svc):
    ml.instant_provisioning = True
    run = deploying(svc, ml)
    svc = bootstrap(settings.replace(inference_instance_type="Standard_DS3_v2"), ml=ml, clock=clock,
                    messages=RecordingSender(), runs=svc.runs)  # the setting changed while the job trained
    failed = check_deployment(svc, run.run_id)
    assert failed.state == State.FAILED and failed.failure.stage == "deploy"
    assert "Standard_DS3_v2" in failed.failure.reason
    assert ml.get_endpoint(run.endpoint_name) is None, "the half-made endpoint stops costing"


def test_endpoint_creation_failing_at_first_is_retried_by_the_check(svc, ml):
    run_id, job = submitted(svc, ml)
    ml.complete_job(job)
    ml.fail_next("begin_create_endpoint")
    run = handle_job_event(svc, event(job, "Completed"))
    assert run.state == State.DEPLOYING and ml.get_endpoint(run.endpoint_name) is None
    assert [m for m in svc.messages.sent if m[0] == svc.settings.deploy_queue], "a check is scheduled regardless"
    check_deployment(svc, run_id)
    assert ml.get_endpoint(run.endpoint_name) is not None


def test_a_step_taken_resets_the_backoff(svc, ml):
    run = deploying(svc, ml)
    check_deployment(svc, run.run_id)
    check_deployment(svc, run.run_id)
    assert svc.runs.get(run.run_id).deploy_checks == 2
    ml.set_endpoint_state(run.endpoint_name, "Succeeded")
    check_deployment(svc, run.run_id)  # creates the deployment: progress
    assert svc.runs.get(run.run_id).deploy_checks == 0
    assert svc.messages.sent[-1][3] == svc.settings.deploy_check_seconds
