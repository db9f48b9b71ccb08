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
from typing import Any, Callable

from .bootstrap import Services
from .messages import FIRST_TRY, Attempt, ContinueRun, MalformedMessage, SubmitRun, retry_of
from .ml.port import (JOB_DONE, TAG_APP, TAG_CREATED, TAG_KEEP, TAG_RUN, JobRequest, MLBackendError, NotFound,
                      PermanentError, RegisteredModel, canonical_status)
from .ml.training_params import registered_model_name
from .overrides import APP_KEYS
from .retry import is_transient, retry_policy
from .run_store import RunNotFound
from .runs import (Run, State, endpoint_name_for, experiment_name_for, iso, job_name_for, parse_iso,
                   run_id_from_job_name)

log = logging.getLogger(__name__)

RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
MAX_CHECK_DELAY_SECONDS = 300


class NotRedeployable(ValueError):
    """The run has no registered model to deploy again, or is deployed already."""


# ---------------------------------------------------------------------------------------------- submit


def submit_run(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY) -> Run | None:
    """Carry out a queued run: preflight the base model and compute, submit the job, mark the run Submitted.

    A permanent failure marks the run Failed and returns (the message completes: no retry storm). A transient
    one (`shared.retry.is_transient`) completes the message too and sends a scheduled retry to RUNS_QUEUE with
    backoff (`attempt` + 1), noted in the run's history; past RETRY_WINDOW_MINUTES the run is Failed with the
    last error. Anything else raises: the message is redelivered, and once dead-lettered the run is Failed by
    `dead_lettered`.
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
        if not is_transient(exc):
            raise
        return _retry_later(svc, run, SubmitRun(run_id), attempt, _describe(exc),
                            origin=attempt.origin or f"{run_id}-submit",
                            give_up=lambda reason: _fail(svc, run_id, "submit", reason))
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
        experiment_name=s.experiment_name or experiment_name_for(base_model.name),
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
        return cls(event_type=event_type, job_name=str(data.get("runId", "")), status=canonical_status(status),
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
        return settle_job(svc, run.run_id, expect_done=event.status == "Completed")
    return run


SETTLING = (State.SUBMITTED, State.TRAINING, State.TRAINED, State.REGISTERED)


def settle_job(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY, expect_done: bool = False) -> Run:
    """Bring a run whose job may have finished up to date: fail it, or register and begin deploying.

    Called by job events, by retries from DEPLOY_QUEUE (`step` settle or register) and by the reconciler. A job
    gone from the workspace fails the run. A transient fault schedules a retry (see `submit_run`). With
    `expect_done` (a Completed event) a job that still says Finalizing is looked at again later, with backoff,
    rather than left for the reconciler.
    """
    run = svc.runs.get(run_id)
    if run.state not in SETTLING:
        return run
    step = "job status"
    try:
        if run.state in (State.SUBMITTED, State.TRAINING):
            try:
                job = svc.ml.get_job(run.job_name)
            except NotFound as exc:
                return _fail(svc, run_id, "training", f"job {run.job_name} no longer exists in the workspace "
                                                      f"(deleted?): {exc}")
            if job.status in ("Failed", "Canceled"):
                reason = f"fine-tuning job {job.status.lower()}: {job.error or 'no error summary from the job'}"
                return _fail(svc, run_id, "training", reason, job_status=job.status, metrics=job.metrics)
            if job.status != "Completed":
                if expect_done or attempt.number:
                    current = run
                    return _retry_later(svc, run, ContinueRun(run_id, "settle"), attempt, f"the job was reported "
                                        f"Completed but says {job.status}",
                                        origin=attempt.origin or f"{run_id}-settle-{run.state.value.lower()}",
                                        give_up=lambda reason: current)  # the reconciler takes it from here
                return run
            run = svc.runs.update(run_id, lambda r: r.advance(State.TRAINED, svc.clock(), job_status="Completed",
                                                              metrics=job.metrics)
                                  if r.state in (State.SUBMITTED, State.TRAINING) else None)
        if run.state == State.TRAINED:
            step = "register"
            run = _register(svc, run)
        if run.state == State.REGISTERED:
            step = "deploy"
            run = begin_deployment(svc, run.run_id, from_states=(State.REGISTERED,))
        return run
    except Exception as exc:
        if isinstance(exc, PermanentError) or not is_transient(exc):
            raise
        failed_step = step
        # One origin per step and state: a duplicate trigger failing the same way sends the same retry ids, which
        # duplicate detection drops (register happens once per run; the others once per state).
        origin = attempt.origin or f"{run_id}-{failed_step.replace(' ', '-')}-{run.state.value.lower()}"
        return _retry_later(svc, run, ContinueRun(run_id, failed_step), attempt, _describe(exc), origin=origin,
                            give_up=lambda reason: _fail(svc, run_id, failed_step, reason))


def _register(svc: Services, run: Run) -> Run:
    base = run.overrides.get("base_model") or svc.settings.base_model
    name = registered_model_name(base, dataset=run.run_id.rsplit("-", 1)[0])
    try:
        # No version: the backend returns the integer version this job already has, else registers the next one.
        model = svc.ml.register_model(run.job_name, name=name,
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
        attempt = r.moves_into(State.DEPLOYING)
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
        delay, detail = check_delay(svc, run), f"creating endpoint {run.endpoint_name} failed: {_describe(exc)}"
        return svc.runs.update(run_id, lambda r: r.note(svc.clock(), f"{detail}; the first check, in {delay} s, "
                                                                     f"tries again", "retry", float(delay))
                               if r.state == State.DEPLOYING and r.endpoint_name == run.endpoint_name else None)
    return run


def _create_endpoint(svc: Services, run: Run) -> None:
    tags = {TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id, TAG_CREATED: run.deploy_started_at}
    if run.keep:
        tags[TAG_KEEP] = "true"
    svc.ml.begin_create_endpoint(run.endpoint_name, tags=tags,
                                 description=f"chatft: {run.model_name} v{run.model_version} (run {run.run_id})")


def check_delay(svc: Services, run: Run) -> int:
    return min(svc.settings.deploy_check_seconds * (2 ** min(run.deploy_checks, 10)), MAX_CHECK_DELAY_SECONDS)


def schedule_check(svc: Services, run: Run) -> None:
    _send(svc, ContinueRun.check(run.run_id, run.endpoint_name), delay_seconds=check_delay(svc, run))


def continue_run(svc: Services, message: ContinueRun) -> Run | None:
    """Handle one DEPLOY_QUEUE message: a deployment check, or a retry of a step after training (`step` settle,
    job status, register, deploy). What to do is read from the run's state, not the message: a run between its
    job and Deploying is settled, a Deploying one checked; anything else (a stale message) changes nothing."""
    run = svc.runs.find(message.run_id)
    if run is not None and run.state in SETTLING:
        return settle_job(svc, message.run_id, attempt=message.attempt)
    return check_deployment(svc, message.run_id, attempt=message.attempt, message_id=message.message_id)


def check_deployment(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY, message_id: str = "",
                     reschedule: bool = True) -> Run | None:
    """One scheduled look at a deployment in progress: take the next step, or check again later.

    Endpoint ready -> create the deployment -> ready -> traffic 100% -> Deployed. Past DEPLOY_TIMEOUT_MINUTES,
    or on a failed provisioning, the run fails and the half-made endpoint is deleted so it stops costing. A
    transient fault schedules a retry of the check with backoff (see `submit_run`); past RETRY_WINDOW_MINUTES the
    deployment is abandoned with the last error. `reschedule=False` (the reconciler) takes the steps that can
    be taken now and schedules nothing: a transient fault then raises.
    """
    run = svc.runs.find(run_id)
    if run is None or run.state != State.DEPLOYING:
        return run
    s, now = svc.settings, svc.clock()
    started = parse_iso(run.deploy_started_at or run.updated_at)
    if now - started > timedelta(minutes=s.deploy_timeout_minutes):
        return _abandon_deployment(svc, run, f"deployment not ready after {s.deploy_timeout_minutes} minutes")

    try:
        return _deployment_steps(svc, run, reschedule)
    except PermanentError as exc:  # e.g. an instance type the model does not allow: retrying cannot help
        return _abandon_deployment(svc, run, str(exc))
    except Exception as exc:
        if not reschedule or not is_transient(exc):
            raise
        origin = attempt.origin or message_id or f"{run.endpoint_name}-deploy-{uuid.uuid4().hex[:12]}"
        return _retry_later(svc, run, ContinueRun(run_id, "deploy", run.endpoint_name), attempt, _describe(exc),
                            origin=origin,
                            give_up=lambda reason: _abandon_deployment(svc, run, reason))


def _deployment_steps(svc: Services, run: Run, reschedule: bool = True) -> Run:
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
    return _check_later(svc, run, progressed) if reschedule else run


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


# ------------------------------------------------------------------------------------ retries, dead letters


def _send(svc: Services, message: SubmitRun | ContinueRun, delay_seconds: float = 0) -> None:
    svc.messages.send(getattr(svc.settings, message.queue_setting), message, delay_seconds=delay_seconds)


def _retry_later(svc: Services, run: Run, message: SubmitRun | ContinueRun, attempt: Attempt, error: str, *,
                 origin: str, give_up: Callable[[str], Run]) -> Run:
    """Send `message` again as retry `attempt.number + 1` of its step, with backoff, and note it in the run's
    history; past the retry window call `give_up` with a reason naming the step and the last error instead."""
    step = message.step
    now = svc.clock()
    first = parse_iso(attempt.since) if attempt.since else now
    number = attempt.number + 1
    delay = retry_policy(svc.settings).next_delay(number, first, now)
    if delay is None:
        minutes = (now - first).total_seconds() / 60
        log.warning("run %s: %s still failing after %d tries over %.1f minutes; giving up", run.run_id, step,
                    number, minutes)
        return give_up(f"{step} kept failing transiently ({number} tries over {minutes:.1f} minutes, retry window "
                       f"{svc.settings.retry_window_minutes:g} minutes); last error: {error}")
    retry = retry_of(message, Attempt(number, iso(first), origin))
    # Sent before the note: should noting fail, the redelivered message sends this retry again under the same id,
    # which Service Bus duplicate detection drops (locally the handlers are idempotent).
    message_id = retry.message_id
    _send(svc, retry, delay_seconds=delay)
    log.warning("run %s: %s failed transiently (try %d); retrying in %.1f s: %s", run.run_id, step, number, delay,
                error)
    # The message id ends the line: a duplicate trigger that failed the same way sent the same retry (dropped by
    # duplicate detection) and notes nothing more.
    tag = f"[{message_id}]"
    detail = f"retry {number} of {step} in {delay:.1f} s: {error} {tag}"

    def note(r: Run) -> Run | None:
        if r.state != run.state or any(t.kind == "retry" and t.detail.endswith(tag) for t in r.history):
            return None
        return r.note(now, detail, "retry", delay)

    return svc.runs.update(run.run_id, note)


# Which runs a dead-lettered message may fail: only a run still at the step the message was for. A stale message
# (its run moved on, or was redeployed under a new endpoint) changes nothing.
_DEAD_LETTER_STATES = {
    "submit": (State.QUEUED,),
    "settle": SETTLING, "job status": SETTLING, "register": SETTLING,
    "check": (State.DEPLOYING,), "deploy": (State.DEPLOYING,),
}


def dead_lettered(svc: Services, queue: str, body: bytes, reason: str = "", description: str = "",
                  delivery_count: int | None = None) -> Run | None:
    """A message of RUNS_QUEUE or DEPLOY_QUEUE reached its dead-letter queue: fail its run with the reason, if the
    run is still where the message was to move it (a Deploying run's endpoint is deleted, as on any failed
    deployment). Returns the run, or None for a message that names no run of ours (logged, then dropped)."""
    kind = SubmitRun if queue == svc.settings.runs_queue else ContinueRun
    try:
        message = kind.from_json(body)
    except MalformedMessage as exc:
        log.error("dead-lettered message on %s names no run; dropped (%s): %r", queue, exc, body[:200])
        return None
    run_id, step = message.run_id, message.step
    run = svc.runs.find(run_id)
    if run is None:
        log.error("dead-lettered message on %s for unknown run %s; dropped", queue, run_id[:80])
        return None
    if run.state not in _DEAD_LETTER_STATES.get(step, ()) or (
            run.state == State.DEPLOYING and getattr(message, "endpoint", "") not in ("", run.endpoint_name)):
        log.info("dead-lettered %s message for run %s (%s now) changes nothing", step, run_id, run.state)
        return run
    count = f" after {delivery_count} deliveries" if delivery_count else ""
    why = ": ".join(x for x in (reason, description) if x) or "no reason given"
    text = f"its {step} message was dead-lettered{count} ({why}); see the function's log for the error"
    if run.state == State.DEPLOYING:
        return _abandon_deployment(svc, run, text)
    return _fail(svc, run_id, step, text)


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


__all__ = ["submit_run", "handle_job_event", "settle_job", "check_deployment", "continue_run", "redeploy",
           "begin_deployment", "dead_lettered", "Attempt", "JobEvent", "NotRedeployable", "RunNotFound"]
