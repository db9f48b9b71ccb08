"""The reconciler: runs in progress that stopped moving are brought up to date with the backend's word.

Only Event Grid events and queue messages move a run past Submitted; a missing subscription, an event Event Grid
gave up on, or a lost message would leave a run stuck for ever. Every RECONCILE_SCHEDULE tick, a run in any
state in progress (Received to Deploying, Evaluating included) whose history has not moved for
RECONCILE_AFTER_MINUTES is looked at: the steps that own its state (`shared.orchestration.ROUTES`, the same ones
events and checks run) read the upload's blob, the job's or the endpoint's real status and take the steps still to
take. A job gone from the workspace, or the endpoint of a deploying run gone after its creation was accepted, fails
the run with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from .bootstrap import Services
from .messages import SubmitRun
from .notifications import flush_pending
from .orchestration import ROUTES
from .runs import Run, State, iso, parse_iso
from .steps import Move, Resend, Step, Trigger, run_steps

log = logging.getLogger(__name__)

IN_PROGRESS = (State.RECEIVED, State.VALIDATING, State.QUEUED, State.SUBMITTED, State.TRAINING, State.TRAINED,
               State.EVALUATING, State.REGISTERED, State.DEPLOYING)


def _revalidate(svc: Services, run: Run, trigger: Trigger) -> Move | None:
    """An upload whose validation stopped (the host died, the trigger gave up): look at its blob. The same version
    still there -> ingest it again (idempotent by run id); overwritten or deleted -> Rejected, saying so."""
    from .ingestion import ingest_upload, upload_gone

    container, name = run.upload.get("container", ""), run.upload.get("blob", "")
    blob = svc.blobs.blob(container, name)
    gone = upload_gone(blob, run.upload.get("etag", ""))
    if gone:
        return Move(State.REJECTED, gone)
    ingest_upload(svc, container, name, blob)  # writes the run itself, as the blob trigger does
    return None


# Only the reconciler runs it, and a reconciling step's transient fault raises (the next tick is the retry):
# nothing is ever resent.
REVALIDATE = Step("revalidate", (State.RECEIVED, State.VALIDATING), _revalidate,
                  Resend(lambda run, t: SubmitRun(run.run_id)), stage="ingest")
# The reconciler's owners: the pipeline's routes, and the upload's own blob for Received/Validating.
RECONCILE_ROUTES = {**ROUTES, State.RECEIVED: (REVALIDATE,), State.VALIDATING: (REVALIDATE,)}


@dataclass
class ReconcileReport:
    """What one pass did: runs looked at (stale ones), and which moved from which state to which."""

    examined: int = 0
    stale: int = 0
    moved: list[tuple[str, str, str]] = field(default_factory=list)  # (run_id, before, after)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (run_id, error)
    events_flushed: int = 0  # runs whose left-behind outbox was flushed (shared/notifications.py)


def is_stale(run: Run, now, after_minutes: float) -> bool:
    """No line added to the run's history for longer than `after_minutes`."""
    return now - parse_iso(run.updated_at) > timedelta(minutes=after_minutes)


def reconcile_runs(svc: Services) -> ReconcileReport:
    """One pass over the runs in progress; a run that cannot be reconciled now is logged and left for the next."""
    report = ReconcileReport()
    now = svc.clock()
    for run in svc.runs.list(states=IN_PROGRESS):
        report.examined += 1
        if not is_stale(run, now, svc.settings.reconcile_after_minutes):
            continue
        report.stale += 1
        try:
            after = reconcile_run(svc, run.run_id)
        except Exception as exc:  # a backend or storage fault: the next tick tries again
            log.warning("reconcile: run %s could not be reconciled now: %s: %s", run.run_id, type(exc).__name__,
                        str(exc)[:200])
            report.errors.append((run.run_id, type(exc).__name__))
            continue
        if after is not None and after.state != run.state:
            report.moved.append((run.run_id, run.state.value, after.state.value))
    if report.stale:
        log.info("reconcile: %d run(s) in progress, %d stale, moved %s, errors %d", report.examined, report.stale,
                 report.moved, len(report.errors))
    try:
        # Run events a write left in its run's outbox (the process died, or queueing failed) go out now.
        report.events_flushed = flush_pending(svc)
    except Exception as exc:  # storage down: the next tick tries again; runs are never held up by their events
        log.warning("reconcile: pending run events not flushed now: %s: %s", type(exc).__name__, str(exc)[:200])
    return report


def reconcile_run(svc: Services, run_id: str) -> Run | None:
    """Drive one run in progress by the steps that own its state (`shared.orchestration.ROUTES`), scheduling
    nothing (a transient fault raises: the next tick tries again); records `reconciled_at` on the run."""
    now = svc.clock()
    # Not a history line: looking is not progress.
    run = svc.runs.update(run_id, lambda r: r.edit(reconciled_at=iso(now), from_states=IN_PROGRESS))
    return run_steps(svc, RECONCILE_ROUTES.get(run.state, ()), run_id, Trigger(reconciling=True)) or run
