"""The run's way from a queued upload to a deployed endpoint, as declared steps: submit, job status, register,
begin deployment, create endpoint, deployment check; and the handlers that run them.

Triggers arrive at least once and out of order, so each step is declared once (`shared.steps.Step`: the states it
applies from, its act, where its retries go) and run by `shared.steps.run_step`, which guards it, writes its outcome
by compare-and-swap and decides what a failure means. Backend calls are idempotent by name (job name, model
version, endpoint name). `ROUTES` says which steps own which state: the DEPLOY_QUEUE handler and the reconciler
follow it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from .bootstrap import Services
from .messages import FIRST_TRY, Attempt, ContinueRun, MalformedMessage, SubmitRun
from .ml.port import (JOB_DONE, TAG_APP, TAG_CREATED, TAG_KEEP, TAG_RUN, JobRequest, MLBackendError, NotFound,
                      RegisteredModel)
from .ml.training_params import registered_model_name
from .overrides import APP_KEYS
from .run_store import RunNotFound
from .runs import (Run, State, endpoint_name_for, experiment_name_for, iso, job_name_for, parse_iso,
                   run_id_from_job_name)
from .steps import (ByLaterMessage, Edit, Fail, Move, NotYet, Resend, Step, Trigger, dead_letter, describe,
                    run_step, run_steps)

log = logging.getLogger(__name__)

RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
MAX_CHECK_DELAY_SECONDS = 300


class NotRedeployable(ValueError):
    """The run has no registered model to deploy again, or is deployed already."""


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
        return run_step(svc, JOB_STARTED, run.run_id)
    if event.status in JOB_DONE:
        # Events are hints, delivered late or out of order: the backend's word on the job decides.
        return settle_job(svc, run.run_id, expect_done=event.status == "Completed")
    return run



# ------------------------------------------------------------------------------------------------ acts


def _submit(svc: Services, run: Run, trigger: Trigger) -> Move:
    """Preflight the base model and compute, submit the job (idempotent by its derived name)."""
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
    job_name = svc.ml.submit_job(request)
    return Move(State.SUBMITTED, f"job {job_name}", {"job_name": job_name})


def _job_started(svc: Services, run: Run, trigger: Trigger) -> Move:
    return Move(State.TRAINING)


def _job_status(svc: Services, run: Run, trigger: Trigger) -> Move | Fail | None:
    """The backend's word on the job: Completed -> Trained; Failed/Canceled -> Failed with its error; Running ->
    Training. A job reported Completed (`expect_done`, or a retry of this look) that is not done yet: `NotYet`."""
    try:
        job = svc.ml.get_job(run.job_name)
    except NotFound as exc:
        return Fail(f"job {run.job_name} no longer exists in the workspace (deleted?): {exc}")
    if job.status in ("Failed", "Canceled"):
        return Fail(f"fine-tuning job {job.status.lower()}: {job.error or 'no error summary from the job'}",
                    changes={"job_status": job.status, "metrics": job.metrics})
    if job.status == "Completed":
        return Move(State.TRAINED, changes={"job_status": "Completed", "metrics": job.metrics})
    if trigger.expect_done or trigger.attempt.number:
        raise NotYet(f"the job was reported Completed but says {job.status}")
    if job.status == "Running":
        return Move(State.TRAINING, "the job is Running", from_states=(State.SUBMITTED,))
    return None


def _register(svc: Services, run: Run, trigger: Trigger) -> Move:
    base = run.overrides.get("base_model") or svc.settings.base_model
    name = registered_model_name(base, dataset=run.run_id.rsplit("-", 1)[0])
    # No version: the backend returns the integer version this job already has, else registers the next one.
    model = svc.ml.register_model(run.job_name, name=name, description=f"{base} fine-tuned by run {run.run_id}",
                                  tags={TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id})
    return Move(State.REGISTERED, changes={"model_name": model.name, "model_version": model.version,
                                           "model_id": model.id})


def _begin_deployment(svc: Services, run: Run, trigger: Trigger) -> Move:
    """Move to Deploying under a fresh endpoint name; the first check goes out before the endpoint is created:
    should creating it fail, or the host die in between, the check creates it (or times out)."""
    now = svc.clock()
    return Move(State.DEPLOYING, changes={
        "endpoint_name": endpoint_name_for(run.run_id, run.moves_into(State.DEPLOYING)),
        "deployment_name": svc.settings.deployment_name, "deploy_started_at": iso(now), "deploy_checks": 0,
        "endpoint_accepted_at": "", "scoring_uri": "", "failure": None}, then=schedule_check)


def _create_endpoint(svc: Services, run: Run, trigger: Trigger) -> Edit:
    """Begin creating the run's endpoint (idempotent by name) and record that the backend accepted it: from then
    on an endpoint gone missing was deleted, not "not created yet"."""
    tags = {TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id, TAG_CREATED: run.deploy_started_at}
    if run.keep:
        tags[TAG_KEEP] = "true"
    svc.ml.begin_create_endpoint(run.endpoint_name, tags=tags,
                                 description=f"chatft: {run.model_name} v{run.model_version} (run {run.run_id})")
    return Edit({"endpoint_accepted_at": iso(svc.clock())})


def _check(svc: Services, run: Run, trigger: Trigger) -> Move | Edit | Fail | None:
    """One look at a deployment in progress: take every step that can be taken now (locally, and sometimes in
    Azure, a step completes at once) and wait only for what is still provisioning.

    Endpoint ready -> create the deployment -> ready -> traffic 100% -> Deployed. An endpoint never accepted is
    created; one accepted and gone fails the run. Past DEPLOY_TIMEOUT_MINUTES, or on a failed provisioning, the
    run fails (the step's cleanup deletes the half-made endpoint). Unless reconciling, the next check is scheduled,
    backing off while nothing moves."""
    ml, s, now = svc.ml, svc.settings, svc.clock()
    started = parse_iso(run.deploy_started_at or run.updated_at)
    if now - started > timedelta(minutes=s.deploy_timeout_minutes):
        return Fail(f"deployment not ready after {s.deploy_timeout_minutes} minutes")
    changes: dict[str, Any] = {}
    progressed = False
    for _ in range(4):
        endpoint = ml.get_endpoint(run.endpoint_name)
        if endpoint is None:
            if run.endpoint_accepted_at:
                return Fail(f"endpoint {run.endpoint_name} no longer exists (deleted outside the app?) while the run "
                            f"was deploying", cleanup=False)
            changes.update(_create_endpoint(svc, run, trigger).changes)
            break
        if endpoint.provisioning_state == "Failed":
            return Fail(f"endpoint {run.endpoint_name} failed: {endpoint.error or 'no detail'}")
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
            return Fail(f"deployment {run.deployment_name} failed: {deployment.error or 'no detail'}")
        if deployment.provisioning_state != "Succeeded":
            break
        if endpoint.traffic.get(run.deployment_name) != 100:
            ml.set_traffic(run.endpoint_name, {run.deployment_name: 100})
            progressed = True
            continue
        return Move(State.DEPLOYED, changes={"scoring_uri": endpoint.scoring_uri})
    if trigger.reconciling:  # a live check chain goes on; a lost one is replaced by the next tick
        return Edit(changes) if changes else None
    # Back off while nothing moves; start again from the first delay after a step.
    changes["deploy_checks"] = 0 if progressed else run.deploy_checks + 1
    return Edit(changes, then=schedule_check)


def _delete_endpoint(svc: Services, run: Run) -> str:
    """A failing deployment's cleanup: its endpoint stops costing."""
    try:
        svc.ml.begin_delete_endpoint(run.endpoint_name)
    except MLBackendError as exc:  # the run still fails; cleanup only needs the endpoint gone eventually
        log.warning("could not begin deleting endpoint %s: %s", run.endpoint_name, describe(exc))
    return f"; endpoint {run.endpoint_name} deleted"


def check_delay(svc: Services, run: Run) -> int:
    return min(svc.settings.deploy_check_seconds * (2 ** min(run.deploy_checks, 10)), MAX_CHECK_DELAY_SECONDS)


def schedule_check(svc: Services, run: Run) -> None:
    message = ContinueRun.check(run.run_id, run.endpoint_name)
    svc.messages.send(svc.settings.deploy_queue, message, delay_seconds=check_delay(svc, run))


# ------------------------------------------------------------------------------------------ the steps


def _continue(step: str):
    return lambda run, trigger: ContinueRun(run.run_id, step, run.endpoint_name if run.state == State.DEPLOYING
                                            else "")


def _for_this_endpoint(run: Run, trigger: Trigger) -> bool:
    """A message sent for an earlier endpoint of the run (before a redeployment) changes nothing."""
    return not trigger.endpoint or trigger.endpoint == run.endpoint_name


SETTLING = (State.SUBMITTED, State.TRAINING, State.TRAINED, State.REGISTERED)

SUBMIT = Step("submit", (State.QUEUED,), _submit,
              Resend(lambda run, t: SubmitRun(run.run_id), origin=lambda step, run, t: f"{run.run_id}-submit"))
JOB_STARTED = Step("job started", (State.SUBMITTED,), _job_started, Resend(_continue("job status")),
                   stage="training")
JOB_STATUS = Step("job status", (State.SUBMITTED, State.TRAINING), _job_status, Resend(_continue("job status")),
                  stage="training")
REGISTER = Step("register", (State.TRAINED,), _register, Resend(_continue("register")))
BEGIN_DEPLOYMENT = Step("begin deployment", (State.REGISTERED,), _begin_deployment,
                        Resend(_continue("begin deployment")),
                        stage="deploy")
REDEPLOY = replace(BEGIN_DEPLOYMENT, name="redeploy", applies_from=(State.RETIRED, State.FAILED))
CREATE_ENDPOINT = Step("create endpoint", (State.DEPLOYING,), _create_endpoint,
                       ByLaterMessage(check_delay, "the first check tries again"), stage="deploy",
                       when=lambda run, t: not run.endpoint_accepted_at, keyed_by=("endpoint_name",),
                       cleanup=_delete_endpoint)
CHECK = Step("deployment check", (State.DEPLOYING,), _check,
             Resend(_continue("deployment check"),
                    origin=lambda step, run, t: t.message_id or f"{run.endpoint_name}-deploy-{uuid.uuid4().hex[:12]}"),
             stage="deploy", when=_for_this_endpoint, keyed_by=("endpoint_name",), cleanup=_delete_endpoint)

# After the job: each step takes the run one state on; run in order, each only where its guard holds.
AFTER_JOB = (JOB_STATUS, REGISTER, BEGIN_DEPLOYMENT, CREATE_ENDPOINT)
# Which steps own a state in progress: what the DEPLOY_QUEUE handler and the reconciler run for a run there.
ROUTES: dict[State, tuple[Step, ...]] = {
    State.QUEUED: (SUBMIT,),
    **{state: AFTER_JOB for state in SETTLING},
    State.DEPLOYING: (CHECK,),
}
# Every step by the name a message carries (`SubmitRun.step`, `ContinueRun.step`), for the dead-letter handler;
# "settle", "check" and "deploy" are the names earlier messages used.
STEPS: dict[str, tuple[Step, ...]] = {
    **{step.name: (step,) for step in (SUBMIT, JOB_STATUS, REGISTER, BEGIN_DEPLOYMENT, CREATE_ENDPOINT, CHECK)},
    "settle": AFTER_JOB, "check": (CHECK,), "deploy": (CHECK,),
}


# ------------------------------------------------------------------------------------------- handlers


def submit_run(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY) -> Run | None:
    """Carry out a queued run (RUNS_QUEUE): preflight the base model and compute, submit the job, mark the run
    Submitted. Failures as every step's (`shared.steps`): permanent -> Failed at "submit"; transient -> a scheduled
    retry on RUNS_QUEUE; anything else raises (redelivery, then `dead_lettered`). None: no such run."""
    return run_step(svc, SUBMIT, run_id, Trigger(attempt))


def settle_job(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY, expect_done: bool = False) -> Run:
    """Bring a run whose job may have finished up to date: fail it, or register and begin deploying (`AFTER_JOB`).

    `expect_done` (a Completed event): a job that still says Finalizing is looked at again later, with backoff,
    rather than left for the reconciler. Raises RunNotFound."""
    run = run_steps(svc, AFTER_JOB, run_id, Trigger(attempt, expect_done=expect_done))
    if run is None:
        raise RunNotFound(run_id)
    return run


def begin_deployment(svc: Services, run_id: str, from_states: tuple[State, ...] = (State.REGISTERED,)) -> Run | None:
    """Move the run to Deploying, schedule the first check and begin creating its endpoint."""
    first = BEGIN_DEPLOYMENT if from_states == (State.REGISTERED,) else replace(REDEPLOY, applies_from=from_states)
    return run_steps(svc, (first, CREATE_ENDPOINT), run_id)


def continue_run(svc: Services, message: ContinueRun) -> Run | None:
    """Handle one DEPLOY_QUEUE message: a deployment check, or a retry of a step after training. What to do is read
    from the run's state (`ROUTES`), not the message; a stale message (its run moved on) changes nothing."""
    run = svc.runs.find(message.run_id)
    if run is None:
        return None
    steps = ROUTES.get(run.state, ())
    if run.state == State.QUEUED:
        return run  # RUNS_QUEUE's: a DEPLOY_QUEUE message never submits
    return run_steps(svc, steps, message.run_id, Trigger(message.attempt, message.message_id, message.endpoint))


def check_deployment(svc: Services, run_id: str, attempt: Attempt = FIRST_TRY, message_id: str = "",
                     reschedule: bool = True) -> Run | None:
    """One look at a deployment in progress (the `CHECK` step). `reschedule=False` (the reconciler) takes the steps
    that can be taken now and schedules nothing: a transient fault then raises."""
    return run_step(svc, CHECK, run_id, Trigger(attempt, message_id, reconciling=not reschedule))


def redeploy(svc: Services, run_id: str) -> Run:
    """Deploy again a run whose endpoint was retired (or whose deployment failed after registration)."""
    run = svc.runs.get(run_id)
    if run.redeploy_refusal():
        raise NotRedeployable(run.redeploy_refusal())
    return run_steps(svc, (REDEPLOY, CREATE_ENDPOINT), run_id) or run


def dead_lettered(svc: Services, queue: str, body: bytes, reason: str = "", description: str = "",
                  delivery_count: int | None = None) -> Run | None:
    """A message of RUNS_QUEUE or DEPLOY_QUEUE reached its dead-letter queue: fail its run at the message's step,
    with the reason, if the run is still where that step applies (a Deploying run's endpoint is deleted, as on any
    failed deployment). Returns the run, or None for a message that names no run of ours (logged, then dropped)."""
    kind = SubmitRun if queue == svc.settings.runs_queue else ContinueRun
    try:
        message = kind.from_json(body)
    except MalformedMessage as exc:
        log.error("dead-lettered message on %s names no run; dropped (%s): %r", queue, exc, body[:200])
        return None
    run = svc.runs.find(message.run_id)
    if run is None:
        log.error("dead-lettered message on %s for unknown run %s; dropped", queue, message.run_id[:80])
        return None
    count = f" after {delivery_count} deliveries" if delivery_count else ""
    why = ": ".join(x for x in (reason, description) if x) or "no reason given"
    text = f"its {message.step} message was dead-lettered{count} ({why}); see the function's log for the error"
    return dead_letter(svc, STEPS.get(message.step, ()), run, text,
                       Trigger(endpoint=getattr(message, "endpoint", "")))


__all__ = ["submit_run", "handle_job_event", "settle_job", "check_deployment", "continue_run", "redeploy",
           "begin_deployment", "dead_lettered", "Attempt", "JobEvent", "NotRedeployable", "RunNotFound", "ROUTES",
           "STEPS", "AFTER_JOB"]
