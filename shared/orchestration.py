"""The run's way from a queued upload to a deployed endpoint: submit, job events, deployment checks, redeploy.

Each handler takes the message it handles and the services. Triggers arrive at least once and out of order,
so every step reads the run, does only what the run's state says is still to do, and moves the run by
compare-and-swap; backend calls are idempotent by name (job name, model version, endpoint name).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .bootstrap import Services
from .ml.port import (JOB_DONE, TAG_APP, TAG_CREATED, TAG_KEEP, TAG_RUN, JobRequest, MLBackendError,
                      PermanentError, RegisteredModel)
from .ml.training_params import registered_model_name
from .overrides import APP_KEYS
from .run_store import RunNotFound
from .runs import (Run, State, endpoint_name_for, iso, job_name_for, parse_iso, run_id_from_job_name, slug)

log = logging.getLogger(__name__)

RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
MAX_CHECK_DELAY_SECONDS = 300


class NotRedeployable(ValueError):
    """The run has no registered model to deploy again, or is deployed already."""


# ---------------------------------------------------------------------------------------------- submit


def submit_run(svc: Services, run_id: str, delivery_count: int = 1) -> Run | None:
    """Carry out a queued run: preflight the base model and compute, submit the job, mark the run Submitted.

    A permanent failure marks the run Failed and returns (the message completes: no retry storm). A transient
    one raises so the message is redelivered, except on the last delivery, where the run is marked Failed
    rather than left behind in the dead-letter queue.
    """
    run = svc.runs.find(run_id)
    if run is None:
        log.warning("submit: no run %s; message dropped", run_id)
        return None
    if run.state != State.QUEUED:
        log.info("submit: run %s is %s already; nothing to do", run_id, run.state)
        return run
    try:
        job_name = _submit_job(svc, run)
    except PermanentError as exc:
        return _fail(svc, run_id, "submit", str(exc))
    except Exception as exc:
        if delivery_count >= svc.settings.max_delivery_count:
            reason = (f"submission kept failing ({delivery_count} attempts); last error: "
                      f"{_describe(exc)}")
            return _fail(svc, run_id, "submit", reason)
        log.warning("submit: run %s attempt %d failed, will retry: %s", run_id, delivery_count, _describe(exc))
        raise
    return svc.runs.update(
        run_id,
        lambda r: r.advance(State.SUBMITTED, svc.clock(), f"job {job_name}", job_name=job_name)
        if r.state == State.QUEUED else None,
    )


def _submit_job(svc: Services, run: Run) -> str:
    s = svc.settings
    base_model = svc.ml.resolve_base_model(run.overrides.get("base_model") or s.base_model)
    compute = svc.ml.check_compute(s.aml_compute, base_model)
    params = {k: v for k, v in run.overrides.items() if k not in APP_KEYS}
    request = JobRequest(
        job_name=job_name_for(run.run_id),
        run_id=run.run_id,
        experiment_name=s.experiment_name or f"chat_completion_{slug(base_model.name, 60) or 'model'}",
        base_model=base_model,
        compute=compute,
        train_path=run.train_path,
        test_path=run.test_path,
        params=params,
    )
    return svc.ml.submit_job(request)


# ------------------------------------------------------------------------------------------ job events


@dataclass(frozen=True)
class JobEvent:
    """What the app reads from an Azure ML Event Grid event."""

    event_type: str
    job_name: str
    status: str
    run_type: str = ""
    parent_run: str = ""

    @classmethod
    def from_event_grid(cls, event_type: str, data: dict[str, Any]) -> "JobEvent":
        tags = data.get("runTags") or {}
        status = data.get("runStatus") or ("Completed" if event_type == RUN_COMPLETED else "")
        return cls(event_type=event_type, job_name=str(data.get("runId", "")), status=str(status),
                   run_type=str(data.get("runType", "")),
                   parent_run=str(tags.get("azureml.pipelinerunid", "") if isinstance(tags, dict) else ""))


def handle_job_event(svc: Services, event: JobEvent) -> Run | None:
    """React to a job's status change: Running -> Training; Completed -> register and begin deploying;
    Failed/Canceled -> Failed with the job's error. Step runs and unknown jobs are ignored."""
    if event.event_type not in (RUN_STATUS_CHANGED, RUN_COMPLETED):
        log.debug("job event %s ignored", event.event_type)
        return None
    if event.run_type == "azureml.StepRun" or event.parent_run:
        log.debug("job event for step run %s ignored", event.job_name)
        return None
    run_id = run_id_from_job_name(event.job_name)
    run = svc.runs.find(run_id) if run_id else None
    if run is None or run.job_name != event.job_name:
        log.debug("job event for unknown job %s ignored", event.job_name)
        return None
    if event.status == "Running":
        return svc.runs.update(run.run_id, lambda r: r.advance(State.TRAINING, svc.clock())
                               if r.state == State.SUBMITTED else None)
    if event.status in JOB_DONE:
        # Events are hints, delivered late or out of order: the backend's word on the job decides.
        return settle_job(svc, run.run_id)
    return run


def settle_job(svc: Services, run_id: str) -> Run:
    """Bring a run whose job may have finished up to date: fail it, or register and begin deploying."""
    run = svc.runs.get(run_id)
    if run.state not in (State.SUBMITTED, State.TRAINING, State.TRAINED, State.REGISTERED):
        return run
    if run.state in (State.SUBMITTED, State.TRAINING):
        job = svc.ml.get_job(run.job_name)
        if job.status in ("Failed", "Canceled"):
            reason = f"fine-tuning job {job.status.lower()}: {job.error or 'no error summary from the job'}"
            return _fail(svc, run_id, "training", reason, job_status=job.status, metrics=job.metrics)
        if job.status != "Completed":
            return run
        run = svc.runs.update(run_id, lambda r: r.advance(State.TRAINED, svc.clock(), job_status="Completed",
                                                          metrics=job.metrics)
                              if r.state in (State.SUBMITTED, State.TRAINING) else None)
    if run.state == State.TRAINED:
        run = _register(svc, run)
    if run.state == State.REGISTERED:
        run = begin_deployment(svc, run.run_id, from_states=(State.REGISTERED,))
    return run


def _register(svc: Services, run: Run) -> Run:
    base = run.overrides.get("base_model") or svc.settings.base_model
    name = registered_model_name(base, dataset=run.run_id.rsplit("-", 1)[0])
    version = run.run_id.rsplit("-", 1)[-1]
    try:
        model = svc.ml.register_model(run.job_name, name=name, version=version,
                                      description=f"{base} fine-tuned by run {run.run_id}",
                                      tags={TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id})
    except PermanentError as exc:
        return _fail(svc, run.run_id, "register", str(exc))
    return svc.runs.update(run.run_id, lambda r: r.advance(State.REGISTERED, svc.clock(), model_name=model.name,
                                                           model_version=model.version, model_id=model.id)
                           if r.state == State.TRAINED else None)


# ---------------------------------------------------------------------------------------- deployments


def begin_deployment(svc: Services, run_id: str, from_states: tuple[State, ...]) -> Run:
    """Move the run to Deploying, begin creating its endpoint and schedule the first check."""
    now = svc.clock()

    def start(r: Run) -> Run | None:
        if r.state not in from_states:
            return None
        attempt = sum(1 for t in r.history if t.state == State.DEPLOYING)
        return r.advance(State.DEPLOYING, now, endpoint_name=endpoint_name_for(r.run_id, attempt),
                         deployment_name=svc.settings.deployment_name, deploy_started_at=iso(now), deploy_checks=0,
                         scoring_uri="", failure=None)

    run = svc.runs.update(run_id, start)
    if run.state != State.DEPLOYING:
        return run
    # The check goes out first: should creating the endpoint fail now, the check creates it (or times out).
    schedule_check(svc, run)
    try:
        _create_endpoint(svc, run)
    except PermanentError as exc:
        return _fail(svc, run_id, "deploy", f"endpoint {run.endpoint_name} could not be created: {exc}")
    except MLBackendError as exc:
        log.warning("creating endpoint %s failed; the scheduled check tries again: %s", run.endpoint_name,
                    _describe(exc))
    return run


def _create_endpoint(svc: Services, run: Run) -> None:
    tags = {TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id, TAG_CREATED: run.deploy_started_at}
    if run.keep:
        tags[TAG_KEEP] = "true"
    svc.ml.begin_create_endpoint(run.endpoint_name, tags=tags,
                                 description=f"chatft: {run.model_name} v{run.model_version} (run {run.run_id})")


def schedule_check(svc: Services, run: Run) -> None:
    delay = min(svc.settings.deploy_check_seconds * (2 ** min(run.deploy_checks, 10)), MAX_CHECK_DELAY_SECONDS)
    svc.messages.send(svc.settings.deploy_queue, {"run_id": run.run_id, "check": run.deploy_checks},
                      message_id=f"{run.endpoint_name}-check-{uuid.uuid4().hex[:12]}", delay_seconds=delay)


def check_deployment(svc: Services, run_id: str) -> Run | None:
    """One scheduled look at a deployment in progress: take the next step, or check again later.

    Endpoint ready -> create the deployment -> ready -> traffic 100% -> Deployed. Past DEPLOY_TIMEOUT_MINUTES,
    or on a failed provisioning, the run fails and the half-made endpoint is deleted so it stops costing.
    """
    run = svc.runs.find(run_id)
    if run is None or run.state != State.DEPLOYING:
        return run
    s, now = svc.settings, svc.clock()
    started = parse_iso(run.deploy_started_at or run.updated_at)
    if now - started > timedelta(minutes=s.deploy_timeout_minutes):
        return _abandon_deployment(svc, run, f"deployment not ready after {s.deploy_timeout_minutes} minutes")

    try:
        return _deployment_steps(svc, run)
    except PermanentError as exc:  # e.g. an instance type the model does not allow: retrying cannot help
        return _abandon_deployment(svc, run, str(exc))


def _deployment_steps(svc: Services, run: Run) -> Run:
    """Take every step that can be taken now (locally, and sometimes in Azure, a step completes at once); wait
    only for what is still provisioning."""
    ml, s = svc.ml, svc.settings
    progressed = False
    for _step in range(4):
        endpoint = ml.get_endpoint(run.endpoint_name)
        if endpoint is None:
            _create_endpoint(svc, run)
            break
        if endpoint.provisioning_state == "Failed":
            return _abandon_deployment(svc, run, f"endpoint {run.endpoint_name} failed: "
                                                 f"{endpoint.error or 'no detail'}")
        if endpoint.provisioning_state != "Succeeded":
            break
        deployment = ml.get_deployment(run.endpoint_name, run.deployment_name)
        if deployment is None:
            model = RegisteredModel(name=run.model_name, version=run.model_version, id=run.model_id)
            ml.begin_create_deployment(run.endpoint_name, run.deployment_name, model, s.inference_instance_type,
                                       s.inference_instance_count)
            progressed = True
            continue
        if deployment.provisioning_state == "Failed":
            return _abandon_deployment(svc, run, f"deployment {run.deployment_name} failed: "
                                                 f"{deployment.error or 'no detail'}")
        if deployment.provisioning_state != "Succeeded":
            break
        if endpoint.traffic.get(run.deployment_name) != 100:
            ml.set_traffic(run.endpoint_name, {run.deployment_name: 100})
            progressed = True
            continue
        uri = endpoint.scoring_uri
        return svc.runs.update(run.run_id, lambda r: r.advance(State.DEPLOYED, svc.clock(), scoring_uri=uri)
                               if r.state == State.DEPLOYING and r.endpoint_name == run.endpoint_name else None)
    return _check_later(svc, run, progressed)


def _check_later(svc: Services, run: Run, progressed: bool = False) -> Run:
    """Schedule the next check: back off while nothing moves, start again from the first delay after a step."""

    def bump(r: Run) -> Run | None:
        if r.state != State.DEPLOYING or r.endpoint_name != run.endpoint_name:
            return None
        bumped = dataclasses.replace(r, deploy_checks=0 if progressed else r.deploy_checks + 1)
        bumped.etag = r.etag
        return bumped

    updated = svc.runs.update(run.run_id, bump)
    if updated.state == State.DEPLOYING:
        schedule_check(svc, updated)
    return updated


def _abandon_deployment(svc: Services, run: Run, reason: str) -> Run:
    try:
        svc.ml.begin_delete_endpoint(run.endpoint_name)
    except MLBackendError as exc:  # the run still fails; cleanup only needs the endpoint gone eventually
        log.warning("could not begin deleting endpoint %s: %s", run.endpoint_name, _describe(exc))
    return _fail(svc, run.run_id, "deploy", reason + f"; endpoint {run.endpoint_name} deleted")


def redeploy(svc: Services, run_id: str) -> Run:
    """Deploy again a run whose endpoint was retired (or whose deployment failed after registration)."""
    run = svc.runs.get(run_id)
    if run.redeploy_refusal():
        raise NotRedeployable(run.redeploy_refusal())
    return begin_deployment(svc, run_id, from_states=(State.RETIRED, State.FAILED))


# ------------------------------------------------------------------------------------------- helpers


def _fail(svc: Services, run_id: str, stage: str, reason: str, **changes: Any) -> Run:
    log.warning("run %s failed at %s: %s", run_id, stage, reason)

    def fail(r: Run) -> Run | None:
        if not r.can_move_to(State.FAILED):
            return None
        failed = r.fail(stage, reason, svc.clock())
        for k, v in changes.items():
            setattr(failed, k, v)
        return failed

    return svc.runs.update(run_id, fail)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


__all__ = ["submit_run", "handle_job_event", "settle_job", "check_deployment", "redeploy", "begin_deployment",
           "JobEvent", "NotRedeployable", "RunNotFound"]
