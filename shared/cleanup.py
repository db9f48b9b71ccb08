"""The idle-endpoint cleanup: gather endpoints, runs and last-use times, apply the idle policy, retire and delete.

Two steps, so a score arriving in between is handled (and testable): `plan_cleanup` decides, `carry_out` acts.
For an idle endpoint the run moves Deployed -> Retired by compare-and-swap only if its `last_used_at` is still
the value the decision saw; only then is the endpoint's deletion begun (never waited on). A score that comes
later finds the run Retired and is told how to redeploy. `run_cleanup` does both and stores the summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from .bootstrap import Services
from .idle_policy import NOT_OWNED, Decision, IdleRules, decide, owned_line, owned_run_id
from .ml.port import MLBackendError
from .run_store import RunConflict, RunNotFound
from .runs import Run, State, iso

log = logging.getLogger(__name__)

# Hours until the next run of the nightly timer (CLEANUP_SCHEDULE's default): the endpoint-hours estimate's unit.
HORIZON_HOURS = 24.0
REPORT_PREFIX = "cleanup/"

# Outcome reasons of `carry_out`, beyond the policy's.
USED_DURING_CLEANUP = "used_during_cleanup"
CHANGED_DURING_CLEANUP = "changed_during_cleanup"
DELETE_FAILED = "delete_failed"


@dataclass
class CleanupPlan:
    """The policy's decisions as of `as_of`, with the settings they were made under."""

    as_of: datetime
    rules: IdleRules
    check_metrics: bool
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class CleanupSummary:
    """What one cleanup did. With `dry_run`, `deleted` lists what would have been deleted."""

    as_of: datetime
    ran_at: datetime
    dry_run: bool
    rules: IdleRules
    check_metrics: bool
    decisions: list[Decision]
    report_path: str = ""

    @property
    def deleted(self) -> list[Decision]:
        return [d for d in self.decisions if d.delete]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if not d.delete]

    @property
    def endpoint_hours_saved(self) -> float:
        return sum(d.saved_endpoint_hours for d in self.deleted)

    @property
    def standby(self) -> list[Decision]:
        """Deployments of model lines kept at 0% for rollback, each with when it goes (`until`)."""
        return [d for d in self.decisions if d.deployment]

    def to_dict(self) -> dict:
        return {
            "as_of": iso(self.as_of),
            "ran_at": iso(self.ran_at),
            "dry_run": self.dry_run,
            "idle_hours": self.rules.idle_hours,
            "check_metrics": self.check_metrics,
            "deleted": [d.to_dict() for d in self.deleted],
            "kept": [d.to_dict() for d in self.kept],
            "endpoint_hours_saved": round(self.endpoint_hours_saved, 2),
            "estimate": f"{self.rules.horizon_hours:g} endpoint-hours per deleted endpoint (or kept deployment): the "
                        f"time until the next nightly cleanup it would otherwise have run",
            "standby": [{"endpoint": d.endpoint, "deployment": d.deployment, "run_id": d.run_id, "until": d.until,
                         "action": "delete" if d.delete else "keep", "reason": d.reason} for d in self.standby],
            "report_path": self.report_path,
        }


def rules_for(svc: Services, horizon_hours: float = HORIZON_HOURS) -> IdleRules:
    s = svc.settings
    return IdleRules(app_id=s.app_id, idle_hours=s.endpoint_idle_hours,
                     deploy_timeout_hours=s.deploy_timeout_minutes / 60.0, horizon_hours=horizon_hours)


def plan_cleanup(svc: Services, as_of: datetime | None = None, horizon_hours: float = HORIZON_HOURS) -> CleanupPlan:
    """Decide, as of `as_of` (default now), what to do with every endpoint of the workspace. Changes nothing."""
    as_of = _aware(as_of or svc.clock())
    rules = rules_for(svc, horizon_hours)
    endpoints = svc.ml.list_endpoints()
    runs: dict[str, Run] = {}
    lines = {line for line in (owned_line(e, rules.app_id) for e in endpoints) if line}
    line_runs: dict[str, list[Run]] = {}
    if lines:  # a line's endpoint is judged on all its runs: one read of the run table for all the lines
        for run in svc.runs.list():
            if run.line in lines:
                line_runs.setdefault(run.line, []).append(run)
    for endpoint in endpoints:
        run_id = owned_run_id(endpoint, rules.app_id)
        if run_id and run_id not in runs and not owned_line(endpoint, rules.app_id):
            run = svc.runs.find(run_id)
            if run is not None:
                runs[run_id] = run
    decisions = decide(endpoints, runs, as_of, rules, line_runs=line_runs)
    check_metrics = svc.settings.cleanup_check_metrics
    if check_metrics:
        # Only the endpoints about to go are worth a metrics query: traffic can only keep an endpoint. A kept
        # deployment goes when its time is up, whatever its traffic (it has none: it is at 0%).
        since = iso(as_of - timedelta(hours=rules.idle_hours))
        requests: dict[str, int | None] = {}
        failed: set[str] = set()
        for d in decisions:
            if d.delete and not d.deployment:
                try:
                    requests[d.endpoint] = svc.ml.requests_since(d.endpoint, since)
                except MLBackendError as exc:
                    log.warning("cleanup: request metrics of endpoint %s unavailable: %s", d.endpoint,
                                type(exc).__name__)
                    failed.add(d.endpoint)
        decisions = decide(endpoints, runs, as_of, rules, requests=requests, metrics_failed=failed,
                           line_runs=line_runs)
    return CleanupPlan(as_of=as_of, rules=rules, check_metrics=check_metrics, decisions=decisions)


def carry_out(svc: Services, plan: CleanupPlan, dry_run: bool) -> CleanupSummary:
    """Retire and delete what the plan says (nothing with `dry_run`); returns the decisions as they ended."""
    ran_at = _aware(svc.clock())
    outcomes = [d if dry_run or not d.delete else _delete(svc, d, ran_at) for d in plan.decisions]
    return CleanupSummary(as_of=plan.as_of, ran_at=ran_at, dry_run=dry_run, rules=plan.rules,
                          check_metrics=plan.check_metrics, decisions=outcomes)


def run_cleanup(svc: Services, *, as_of: datetime | None = None, dry_run: bool | None = None,
                horizon_hours: float = HORIZON_HOURS) -> CleanupSummary:
    """Plan and carry out one cleanup (dry run per CLEANUP_DRY_RUN unless given), log the summary and store it
    as JSON at RUNS_CONTAINER/cleanup/<timestamp>.json."""
    dry_run = svc.settings.cleanup_dry_run if dry_run is None else dry_run
    summary = carry_out(svc, plan_cleanup(svc, as_of, horizon_hours), dry_run)
    stamp = summary.ran_at.strftime("%Y%m%dT%H%M%S") + f".{summary.ran_at.microsecond // 1000:03d}Z"
    summary.report_path = f"{REPORT_PREFIX}{stamp}{'-dry-run' if dry_run else ''}.json"
    _log(summary)
    svc.blobs.write_json(svc.settings.runs_container, summary.report_path, summary.to_dict())
    return summary


def _delete(svc: Services, decision: Decision, at: datetime) -> Decision:
    if decision.deployment:
        return _delete_standby(svc, decision, at)
    if decision.line:
        return _delete_line(svc, decision, at)
    if decision.retire:
        try:
            run = svc.runs.update(decision.run_id, _retire(decision, at))
        except RunConflict:
            return _kept(decision, CHANGED_DURING_CLEANUP, "the run kept changing while being retired")
        except RunNotFound:
            return _kept(decision, CHANGED_DURING_CLEANUP, "the run record is gone")
        if run.state != State.RETIRED or run.endpoint_name != decision.endpoint:
            if run.last_used_at != decision.last_used_at:
                return _kept(decision, USED_DURING_CLEANUP, f"scored at {run.last_used_at} while cleanup ran")
            return _kept(decision, CHANGED_DURING_CLEANUP, f"run is now {run.state}")
    return _begin_deleting(svc, decision)


def _delete_line(svc: Services, decision: Decision, at: datetime) -> Decision:
    """A model line's idle endpoint: every serving run of the line retired (each by compare-and-swap on the
    `last_used_at` the decision saw), then the endpoint deleted with all its deployments. A run scored or moved
    meanwhile keeps the endpoint; runs are looked at before any is retired, so that keeps them all serving."""
    for run_id, last_used_at in decision.line_runs:
        run = svc.runs.find(run_id)
        if run is None or run.last_used_at != last_used_at or run.endpoint_name != decision.endpoint:
            if run is not None and run.last_used_at != last_used_at:
                return _kept(decision, USED_DURING_CLEANUP, f"run {run_id} scored at {run.last_used_at} while "
                                                            f"cleanup ran")
            return _kept(decision, CHANGED_DURING_CLEANUP, f"run {run_id} changed while cleanup ran")
    why = (f"line {decision.line}'s endpoint {decision.endpoint} idle for {decision.idle_hours or 0:.1f} h (no "
           f"deployment of it served a request); deleted by cleanup with all its deployments")
    for run_id, last_used_at in decision.line_runs:
        try:
            run = svc.runs.update(run_id, _retire(replace(decision, run_id=run_id, last_used_at=last_used_at), at,
                                                  why))
        except (RunConflict, RunNotFound):
            return _kept(decision, CHANGED_DURING_CLEANUP, f"run {run_id} kept changing while being retired")
        if run.state != State.RETIRED:
            return _kept(decision, USED_DURING_CLEANUP if run.last_used_at != last_used_at
                         else CHANGED_DURING_CLEANUP, f"run {run_id} is now {run.state} (used or moved meanwhile)")
    return _begin_deleting(svc, decision)


def _begin_deleting(svc: Services, decision: Decision) -> Decision:
    """Begin deleting the decision's endpoint, its run(s) already Retired. A refusal keeps them Retired: the next
    cleanup finds the endpoint orphaned and deletes it then."""
    try:
        svc.ml.begin_delete_endpoint(decision.endpoint)
    except MLBackendError as exc:
        log.warning("cleanup: could not begin deleting endpoint %s: %s", decision.endpoint, type(exc).__name__)
        return _kept(decision, DELETE_FAILED, f"deletion could not be begun ({type(exc).__name__}); retried next run")
    return decision


def _delete_standby(svc: Services, decision: Decision, at: datetime) -> Decision:
    """A deployment kept for rollback past its run's `standby_until`: deleted (the backend refuses while it takes
    traffic, so a rollback in between keeps it), then the run retired with its standby cleared."""
    try:
        svc.ml.begin_delete_deployment(decision.endpoint, decision.deployment)
    except MLBackendError as exc:
        log.warning("cleanup: could not begin deleting deployment %s/%s: %s", decision.endpoint,
                    decision.deployment, type(exc).__name__)
        return _kept(decision, DELETE_FAILED, f"deletion could not be begun ({type(exc).__name__}); retried next run")

    def retire(run: Run) -> Run | None:
        if run.standby_until != decision.until or run.deployment_name != decision.deployment:
            return None  # the rollout (or a redeployment) moved it on meanwhile
        detail = (f"deployment {decision.deployment} kept for rollback until {decision.until}; deleted by cleanup")
        if run.state == State.DEPLOYED:
            return run.advance(State.RETIRED, at, detail, standby_until="")
        return run.edit(standby_until="")

    try:
        svc.runs.update(decision.run_id, retire)
    except (RunConflict, RunNotFound):
        log.warning("cleanup: run %s changed while its kept deployment was deleted", decision.run_id)
    return decision


def _retire(decision: Decision, at: datetime, detail: str = ""):
    def change(run: Run) -> Run | None:
        if run.state == State.RETIRED and run.endpoint_name == decision.endpoint:
            return None  # retired already, by an earlier or concurrent cleanup: go on to delete
        if run.last_used_at != decision.last_used_at or run.endpoint_name != decision.endpoint \
                or run.state not in (State.DEPLOYED, State.DEPLOYING):
            return None  # scored or moved since the decision: keep the endpoint
        return run.advance(State.RETIRED, at, detail or f"endpoint {decision.endpoint} idle for "
                                                        f"{decision.idle_hours or 0:.1f} h; deleted by cleanup",
                           standby_until="")

    return change


def _kept(decision: Decision, reason: str, detail: str) -> Decision:
    return replace(decision, delete=False, reason=reason, saved_endpoint_hours=0.0, detail=detail)


def _log(summary: CleanupSummary) -> None:
    verb = "would delete" if summary.dry_run else "deleted"
    for d in summary.decisions:
        if d.reason != NOT_OWNED:  # endpoints of others are counted, not listed
            log.info("cleanup: %s %s (run %s): %s%s", "delete" if d.delete else "keep",
                     f"{d.endpoint}/{d.deployment}" if d.deployment else d.endpoint,
                     d.run_id or "-", d.reason, f" ({d.detail})" if d.detail else "")
    log.info("cleanup as of %s: %s %d endpoint(s), kept %d; about %.0f endpoint-hours saved; report %s",
             iso(summary.as_of), verb, len(summary.deleted), len(summary.kept), summary.endpoint_hours_saved,
             summary.report_path)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)
