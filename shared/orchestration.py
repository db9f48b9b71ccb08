"""The run's way from a queued upload to a deployed endpoint, as declared steps: submit, job status, evaluate and
gate (the quality gate, `shared.quality_gate`), register, hold, begin deployment, create endpoint, deployment check;
and the handlers that run them.

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
from .ml.port import (JOB_DONE, TAG_APP, TAG_CREATED, TAG_KEEP, TAG_LINE, TAG_RUN, JobRequest, MLBackendError,
                      NameTaken, NotFound, RegisteredModel, canonical_status)
from . import rollout
from .ml.training_params import registered_model_name
from .overrides import APP_KEYS
from .run_store import RunNotFound
from .runs import (Run, State, endpoint_name_for, evaluation_job_name_for, experiment_name_for, iso, job_name_for,
                   parse_iso, run_id_from_job_name)
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
    if run is not None and event.job_name == evaluation_job_name_for(run.run_id):
        # The evaluation job: only its end matters (the backend's word decides, as for the fine-tuning job).
        if event.status in JOB_DONE:
            return settle_job(svc, run.run_id, expect_done=event.status == "Completed")
        return run
    if run is None or run.job_name != event.job_name:
        log.debug("job event for unknown job %s ignored", event.job_name)
        return None
    if event.status == "Running":
        return run_step(svc, JOB_STARTED, run.run_id)
    if event.status in JOB_DONE:
        # Events are hints, delivered late or out of order: the backend's word on the job decides. A Completed
        # event met after the job's step (a duplicate, or RunCompleted after RunStatusChanged) expects nothing of
        # the steps now owning the run (the evaluation job may be running).
        expect = event.status == "Completed" and run.state in (State.SUBMITTED, State.TRAINING)
        return settle_job(svc, run.run_id, expect_done=expect)
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


def _wants_evaluation(svc: Services, run: Run) -> bool:
    """The quality gate runs unless EVAL_GATE (or the upload's eval_gate) is off; a run without a test split has
    nothing to evaluate on (its gate would have no records: it is registered and deployed as before)."""
    from .evaluations import gate_of

    return gate_of(svc, run) != "off" and bool(run.test_path)


def _evaluate(svc: Services, run: Run, trigger: Trigger) -> Move | None:
    """Submit the evaluation of the fine-tune against its base model (idempotent by its derived name)."""
    if not _wants_evaluation(svc, run):
        return None  # REGISTER takes the run from Trained
    from .evaluations import evaluation_request

    job_name = svc.ml.submit_evaluation(evaluation_request(svc, run))
    return Move(State.EVALUATING, f"evaluation job {job_name}", {"evaluation_job": job_name})


def _gate(svc: Services, run: Run, trigger: Trigger) -> Edit | Fail | None:
    """The backend's word on the evaluation job; once Completed, the gate's decision on its report goes on the run
    (REGISTER then moves it on). A missing or malformed report fails the run (`EvaluationUnusable`)."""
    from .evaluations import gate_run

    try:
        job = svc.ml.get_job(run.evaluation_job)
    except NotFound as exc:
        return Fail(f"evaluation job {run.evaluation_job} no longer exists in the workspace (deleted?): {exc}")
    if job.status in ("Failed", "Canceled"):
        return Fail(f"evaluation job {job.status.lower()}: {job.error or 'no error summary from the job'}")
    if job.status != "Completed":
        if trigger.expect_done or trigger.attempt.number:
            raise NotYet(f"the evaluation job was reported Completed but says {job.status}")
        return None
    return Edit({"evaluation": gate_run(svc, run)})


def _hold(svc: Services, run: Run, trigger: Trigger) -> Move:
    return Move(State.HELD, run.evaluation.get("reason", "the quality gate held the model"))


def _held_by_gate(run: Run) -> bool:
    return bool(run.evaluation) and not run.evaluation.get("deploy", True)


def _register(svc: Services, run: Run, trigger: Trigger) -> Move | None:
    if run.state == State.TRAINED and _wants_evaluation(svc, run):
        return None  # EVALUATE owns it
    base = run.overrides.get("base_model") or svc.settings.base_model
    # A model line's runs register under the line's name, so its versions count 1, 2, 3 (`line:version`, the
    # deployments `v01`, `v02`); a root upload's under the notebook's `{model}-{dataset}`.
    name = run.line or registered_model_name(base, dataset=run.run_id.rsplit("-", 1)[0])
    tags = {TAG_APP: svc.settings.app_id, TAG_RUN: run.run_id, **({TAG_LINE: run.line} if run.line else {})}
    # No version: the backend returns the integer version this job already has, else registers the next one.
    model = svc.ml.register_model(run.job_name, name=name, description=f"{base} fine-tuned by run {run.run_id}",
                                  tags=tags)
    return Move(State.REGISTERED, changes={"model_name": model.name, "model_version": model.version,
                                           "model_id": model.id})


def _begin_deployment(svc: Services, run: Run, trigger: Trigger) -> Move:
    """Move to Deploying under a fresh endpoint name; the first check goes out before the endpoint is created:
    should creating it fail, or the host die in between, the check creates it (or times out)."""
    now = svc.clock()
    # A model line's run deploys `v<version>` onto the line's endpoint (created by the line's first run only).
    names = rollout.line_names(run) if run.line else {
        "endpoint_name": endpoint_name_for(run.run_id, run.moves_into(State.DEPLOYING)),
        "deployment_name": svc.settings.deployment_name}
    return Move(State.DEPLOYING, changes={
        **names, "deploy_started_at": iso(now), "deploy_checks": 0, "rollout": {}, "standby_until": "",
        "endpoint_accepted_at": "", "scoring_uri": "", "failure": None}, then=schedule_check)


def _deploy_again(svc: Services, run: Run, trigger: Trigger) -> Move:
    """Redeploy a Retired or Failed run, or deploy a Held one anyway: a person chose to, and the run says so."""
    move = _begin_deployment(svc, run, trigger)
    if run.state != State.HELD:
        return move
    return replace(move, detail=f"deployed by a person's choice, over the quality gate's hold",
                   changes={**move.changes, "deployed_by_choice": iso(svc.clock())})


def _create_endpoint(svc: Services, run: Run, trigger: Trigger) -> Edit:
    """Begin creating the run's endpoint (idempotent by name) and record that the backend accepted it: from then
    on an endpoint gone missing was deleted, not "not created yet". A model line's later runs find the line's
    endpoint there and create nothing (a name another owns is refused: `shared.lines.owner_refusal`)."""
    if run.line:
        from .lines import owner_refusal

        existing = svc.ml.get_endpoint(run.endpoint_name)
        refusal = owner_refusal(run.line, existing, svc.settings.app_id)
        if refusal:
            raise NameTaken(refusal)
        if existing is None:
            svc.ml.begin_create_endpoint(run.endpoint_name, tags=rollout.line_endpoint_tags(svc, run),
                                         description=f"chatft: model line {run.line}")
        return Edit({"endpoint_accepted_at": iso(svc.clock())})
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
    canary = bool(run.rollout.get("canary_started_at"))
    if now - started > timedelta(minutes=s.deploy_timeout_minutes) and not canary:
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
        if deployment is None and canary:
            return Fail(f"deployment {run.deployment_name} disappeared during its canary", stage="rollout")
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
        if run.line:
            outcome = _line_traffic(svc, run, endpoint)
            if outcome is not None:
                return outcome
            break  # a canary is watched: the next check looks again
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


def _line_traffic(svc: Services, run: Run, endpoint) -> Move | Edit | Fail | None:
    """A line's new deployment is ready: take it into service (`shared.rollout`, its module docstring says how).
    The first version, or ROLLOUT_CANARY_PERCENT=0, takes all traffic at once; else the canary takes its share,
    and each check judges it: unhealthy -> Fail (the cleanup sends traffic back and deletes it), its window over
    -> 100% (the previous version kept at 0%), else None (watch on)."""
    s, now = svc.settings, svc.clock()
    state = dict(run.rollout)
    mine = run.deployment_name
    if not state.get("canary_started_at"):
        busy = [r for r in rollout.line_runs(svc, run.line, (State.DEPLOYING,))
                if r.run_id != run.run_id and r.rollout.get("canary_started_at")]
        if busy:  # one canary at a time on a line: this one starts when that one's verdict is in
            return None
        previous = rollout.serving(endpoint.traffic, mine)
        previous_run = rollout.run_of_deployment(svc, run.line, previous) if previous else None
        state.update(previous=previous, previous_run=previous_run.run_id if previous_run else "")
        if not previous or s.rollout_canary_percent == 0:
            traffic = rollout.set_traffic(svc, run.endpoint_name, {mine: 100})
            why = ("ROLLOUT_CANARY_PERCENT=0: switched at once" if previous else "the line's first version")
            _keep_previous(svc, previous_run, run, f"traffic {rollout.shares_text(traffic)}")
            return Move(State.DEPLOYED, f"traffic {rollout.shares_text(traffic)} ({why})",
                        {"scoring_uri": endpoint.scoring_uri, "rollout": {**state, "canary_percent": 0}})
        percent = s.rollout_canary_percent
        traffic = rollout.set_traffic(svc, run.endpoint_name, {mine: percent, previous: 100 - percent})
        state.update(canary_percent=percent, canary_started_at=iso(now), served_at_start=dict(run.served))
        return Edit({"rollout": state, "deploy_checks": 0},
                    note=f"canary: traffic {rollout.shares_text(traffic)} for {s.rollout_canary_minutes:g} minutes, "
                         f"judged on {rollout.rule_text(s)}", then=schedule_check)
    figures = rollout.Figures.of(run).since(state.get("served_at_start") or {})
    previous, previous_run = state.get("previous", ""), svc.runs.find(state.get("previous_run") or "")
    before = rollout.Figures.of(previous_run).mean_latency_ms
    said = figures.text() + (f" ({previous} {before:.0f} ms)" if before is not None else "")
    verdict = {**figures.to_dict(), "judged_at": iso(now)}
    if rollout.unhealthy(s, figures):
        return Fail(f"canary of {mine} unhealthy: {said}, above {rollout.rule_text(s)}", stage="rollout",
                    changes={"rollout": {**state, "verdict": {**verdict, "healthy": False}}})
    if now - rollout.parse_iso(state["canary_started_at"]) < timedelta(minutes=s.rollout_canary_minutes):
        return None
    traffic = rollout.set_traffic(svc, run.endpoint_name, {mine: 100})
    _keep_previous(svc, previous_run, run, f"traffic {rollout.shares_text(traffic)}")
    return Move(State.DEPLOYED, f"canary healthy after {s.rollout_canary_minutes:g} minutes: {said}; traffic "
                                f"{rollout.shares_text(traffic)}",
                {"scoring_uri": endpoint.scoring_uri, "rollout": {**state, "verdict": {**verdict, "healthy": True}}})


def _keep_previous(svc: Services, previous_run: Run | None, run: Run, detail: str) -> None:
    """The previous version, now at 0%, is marked kept before the new one is recorded Deployed: once a run is
    Deployed its predecessor is already kept (with its deletion scheduled), and a host that dies in between leaves
    the new run Deploying, whose next check sets the same traffic and marks it again (`keep_as_standby` is
    idempotent)."""
    if previous_run is not None:
        rollout.keep_as_standby(svc, previous_run.run_id, run, detail)


def _cleanup(svc: Services, run: Run) -> str:
    """A failing deployment's cleanup: a root run's endpoint is deleted; a line's run hands traffic back to the
    previous version and only its own deployment goes (the endpoint too when it has no other deployment)."""
    if not run.line:
        return _delete_endpoint(svc, run)
    name, mine = run.endpoint_name, run.deployment_name
    try:
        endpoint = svc.ml.get_endpoint(name)
        if endpoint is None:
            return ""
        others = [d.name for d in svc.ml.list_deployments(name) if d.name != mine]
        if not others:
            svc.ml.begin_delete_endpoint(name)
            return f"; endpoint {name} deleted (the line had no other deployment)"
        previous = run.rollout.get("previous") if run.rollout.get("previous") in others else \
            rollout.serving(endpoint.traffic, mine)
        traffic = rollout.set_traffic(svc, name, {previous: 100} if previous else {})
        svc.ml.begin_delete_deployment(name, mine)
    except MLBackendError as exc:  # the run still fails; the reconciler and cleanup find what is left
        log.warning("could not hand line %s back from %s: %s", run.line, mine, describe(exc))
        return f"; handing traffic back failed ({describe(exc)})"
    return f"; traffic back to {previous or 'no deployment'} ({rollout.shares_text(traffic)}), {mine} deleted"


def _standby(svc: Services, run: Run, trigger: Trigger) -> Move | Edit | None:
    """A kept previous deployment whose `standby_until` has come is deleted and its run Retired (idempotent: a
    deployment gone already is fine). One that takes traffic again (rolled back to) is not deleted."""
    now = svc.clock()
    if now < parse_iso(run.standby_until):
        return None  # not due: the message scheduled for its time (or the nightly cleanup) deletes it
    endpoint = svc.ml.get_endpoint(run.endpoint_name)
    if endpoint is not None and endpoint.traffic.get(run.deployment_name, 0) > 0:
        return Edit({"standby_until": ""}, note=f"{run.deployment_name} takes traffic again; not deleted")
    svc.ml.begin_delete_deployment(run.endpoint_name, run.deployment_name)
    return Move(State.RETIRED, f"kept deployment {run.deployment_name} deleted: kept until {run.standby_until} "
                               f"(ROLLOUT_KEEP_PREVIOUS_HOURS)", {"standby_until": ""})


def _delete_endpoint(svc: Services, run: Run) -> str:
    """A failing deployment's cleanup: its endpoint stops costing."""
    try:
        svc.ml.begin_delete_endpoint(run.endpoint_name)
    except MLBackendError as exc:  # the run still fails; cleanup only needs the endpoint gone eventually
        log.warning("could not begin deleting endpoint %s: %s", run.endpoint_name, describe(exc))
    return f"; endpoint {run.endpoint_name} deleted"


def check_delay(svc: Services, run: Run) -> float:
    started = run.rollout.get("canary_started_at")
    if started:  # a canary: looked at every tenth of its window (at most a minute apart) and at its end
        window = svc.settings.rollout_canary_minutes * 60
        left = window - (svc.clock() - parse_iso(started)).total_seconds()
        return max(1.0, min(left, max(svc.settings.deploy_check_seconds, window / 10), rollout.CANARY_CHECK_MAX_SECONDS))
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


SETTLING = (State.SUBMITTED, State.TRAINING, State.TRAINED, State.EVALUATING, State.REGISTERED)

SUBMIT = Step("submit", (State.QUEUED,), _submit,
              Resend(lambda run, t: SubmitRun(run.run_id), origin=lambda step, run, t: f"{run.run_id}-submit"))
JOB_STARTED = Step("job started", (State.SUBMITTED,), _job_started, Resend(_continue("job status")),
                   stage="training")
JOB_STATUS = Step("job status", (State.SUBMITTED, State.TRAINING), _job_status, Resend(_continue("job status")),
                  stage="training")
# The quality gate: Trained -> Evaluating (the evaluation job) -> the decision on the run -> Registered -> Deploying,
# or Held (registered, no endpoint) when the gate says the fine-tune is not better than its base model.
EVALUATE = Step("evaluate", (State.TRAINED,), _evaluate, Resend(_continue("evaluate")))
GATE = Step("gate", (State.EVALUATING,), _gate, Resend(_continue("gate")), stage="evaluate",
            when=lambda run, t: not run.evaluation)
REGISTER = Step("register", (State.TRAINED, State.EVALUATING), _register, Resend(_continue("register")),
                when=lambda run, t: run.state == State.TRAINED or bool(run.evaluation))
HOLD = Step("hold", (State.REGISTERED,), _hold, Resend(_continue("hold")), when=lambda run, t: _held_by_gate(run))
BEGIN_DEPLOYMENT = Step("begin deployment", (State.REGISTERED,), _begin_deployment,
                        Resend(_continue("begin deployment")),
                        stage="deploy", when=lambda run, t: not _held_by_gate(run))
# A person's deploy (POST /api/runs/{id}/deploy): a Retired or Failed run again, or a Held one over the gate.
REDEPLOY = replace(BEGIN_DEPLOYMENT, name="redeploy", applies_from=(State.RETIRED, State.FAILED, State.HELD),
                   act=_deploy_again, when=None)
CREATE_ENDPOINT = Step("create endpoint", (State.DEPLOYING,), _create_endpoint,
                       ByLaterMessage(check_delay, "the first check tries again"), stage="deploy",
                       when=lambda run, t: not run.endpoint_accepted_at, keyed_by=("endpoint_name",),
                       cleanup=_cleanup)
CHECK = Step("deployment check", (State.DEPLOYING,), _check,
             Resend(_continue("deployment check"),
                    origin=lambda step, run, t: t.message_id or f"{run.endpoint_name}-deploy-{uuid.uuid4().hex[:12]}"),
             stage="deploy", when=_for_this_endpoint, keyed_by=("endpoint_name",), cleanup=_cleanup)
# A model line's previous deployment, kept at 0% after a rollout, is deleted when its `standby_until` comes.
STANDBY = Step(rollout.STANDBY_STEP, (State.DEPLOYED,), _standby, Resend(_continue(rollout.STANDBY_STEP)),
               stage="rollout", when=lambda run, t: bool(run.standby_until))

# After the job: each step takes the run one state on; run in order, each only where its guard holds.
AFTER_JOB = (JOB_STATUS, EVALUATE, GATE, REGISTER, HOLD, BEGIN_DEPLOYMENT, CREATE_ENDPOINT)
# Which steps own a state in progress: what the DEPLOY_QUEUE handler and the reconciler run for a run there.
ROUTES: dict[State, tuple[Step, ...]] = {
    State.QUEUED: (SUBMIT,),
    **{state: AFTER_JOB for state in SETTLING},
    State.DEPLOYING: (CHECK,),
    State.DEPLOYED: (STANDBY,),
}
# Every step by the name a message carries (`SubmitRun.step`, `ContinueRun.step`), for the dead-letter handler;
# "settle", "check" and "deploy" are the names earlier messages used. STANDBY is left out: a kept deployment whose
# deletion message was dead-lettered fails no run (its run still serves a rollback; the nightly cleanup deletes an
# overdue kept deployment).
STEPS: dict[str, tuple[Step, ...]] = {
    **{step.name: (step,) for step in (SUBMIT, JOB_STATUS, EVALUATE, GATE, REGISTER, HOLD, BEGIN_DEPLOYMENT,
                                                CREATE_ENDPOINT, CHECK)},
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
