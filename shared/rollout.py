"""A model line's rollout: a new version deployed beside the one in service on the line's endpoint, a canary
judged on what the scoring proxy recorded, then all traffic to it (the previous deployment kept at 0% for a while)
or back to the previous one. Pure decisions and the backend calls of one check; the steps that run them are
declared in `shared.orchestration` (the step runner decides what a failure means). No SDK import.

States a line's run shows: Deploying from the first check until its verdict (history lines of kind "traffic" say
when the canary took its share and at what figures it was judged), then Deployed (healthy), or Failed at stage
"rollout" with the figures (unhealthy: traffic back to the previous version, the new deployment deleted). The
previous version's run stays Deployed with `standby_until` set, and becomes Retired when its deployment is deleted
(at that time, by a scheduled DEPLOYMENT_QUEUE message, or by a rollback that replaces it). A canary in progress is
a Deploying run: the reconciler owns it like any Deploying run (`shared.reconcile`), and the check it runs judges it.

The verdict: the canary's errors (5xx, timeouts, unreachable: `Run.served`) are judged against
max(requests, ROLLOUT_MIN_REQUESTS): more than ROLLOUT_MAX_ERROR_RATE of that -> unhealthy at once (before the window
ends); the window over -> healthy. So one error in one request does not decide (1/20 = 5% is not above 5%), while a
canary failing everything goes back after a few requests. Latency is reported beside the previous version's, not
judged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .messages import ContinueRun
from .ml.naming import line_deployment_name, line_endpoint_name
from .ml.port import MLBackendError, NotFound, TAG_APP, TAG_CREATED, TAG_LINE, TAG_KEEP
from .runs import Run, State, iso, parse_iso

log = logging.getLogger(__name__)

STANDBY_STEP = "standby"  # the step a kept deployment's deletion message names
CANARY_CHECK_MAX_SECONDS = 60.0  # a canary is looked at least this often (and at its window's end)


class LineConflict(Exception):
    """A line cannot do what was asked now (no previous deployment kept, no such line); the message says why."""


class NoSuchLine(LookupError):
    """No run of this app ever served the line."""


# ------------------------------------------------------------------------------------------- names


def line_names(run: Run) -> dict[str, Any]:
    """The endpoint and deployment a line's run deploys to (its model version must be registered)."""
    return {"endpoint_name": line_endpoint_name(run.line), "deployment_name": line_deployment_name(run.model_version)}


def line_endpoint_tags(svc, run: Run) -> dict[str, str]:
    """A line's endpoint is the app's and the line's, not a run's: it outlives the run that created it."""
    tags = {TAG_APP: svc.settings.app_id, TAG_LINE: run.line, TAG_CREATED: run.deploy_started_at}
    if run.keep:
        tags[TAG_KEEP] = "true"
    return tags


# ------------------------------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Figures:
    """What a deployment served, as the proxy recorded it (`Run.served`)."""

    requests: int
    errors: int
    latency_ms_total: float

    @classmethod
    def of(cls, run: Run | None) -> "Figures":
        served = (run.served if run is not None else {}) or {}
        return cls(int(served.get("requests", 0)), int(served.get("errors", 0)),
                   float(served.get("latency_ms_total", 0.0)))

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_total / self.requests if self.requests else None

    def since(self, start: dict[str, Any]) -> "Figures":
        return Figures(self.requests - int(start.get("requests", 0)), self.errors - int(start.get("errors", 0)),
                       self.latency_ms_total - float(start.get("latency_ms_total", 0.0)))

    def text(self) -> str:
        latency = f", mean latency {self.mean_latency_ms:.0f} ms" if self.mean_latency_ms is not None else ""
        return f"{self.errors} errors in {self.requests} requests{latency}"

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency_ms_total": round(self.latency_ms_total, 1)}


def unhealthy(settings, figures: Figures) -> bool:
    """The verdict rule (module docstring): errors above ROLLOUT_MAX_ERROR_RATE of max(requests, min requests)."""
    return figures.errors > settings.rollout_max_error_rate * max(figures.requests, settings.rollout_min_requests)


def rule_text(settings) -> str:
    return (f"ROLLOUT_MAX_ERROR_RATE {settings.rollout_max_error_rate:g} of at least "
            f"{settings.rollout_min_requests} requests")


# ------------------------------------------------------------------------------------------ the line


def line_runs(svc, line: str, states=(State.DEPLOYED, State.DEPLOYING)) -> list[Run]:
    return [r for r in svc.runs.list(states=states) if r.line == line]


def run_of_deployment(svc, line: str, deployment: str, states=(State.DEPLOYED,)) -> Run | None:
    """The run whose deployment on the line's endpoint is `deployment` (the newest such run)."""
    return next((r for r in line_runs(svc, line, states) if r.deployment_name == deployment
                 and r.endpoint_name == line_endpoint_name(line)), None)


def serving(traffic: dict[str, int], besides: str) -> str:
    """The deployment with the largest live share other than `besides`, or "" when none takes traffic."""
    others = {k: v for k, v in traffic.items() if k != besides and v > 0}
    return max(sorted(others), key=others.get) if others else ""


def shares_text(traffic: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}%" for k, v in sorted(traffic.items())) or "none"


def set_traffic(svc, endpoint: str, traffic: dict[str, int]) -> dict[str, int]:
    """Set the endpoint's live traffic, naming every deployment it has (those not in `traffic` at 0%)."""
    known = [d.name for d in svc.ml.list_deployments(endpoint)]
    full = {name: int(traffic.get(name, 0)) for name in known}
    svc.ml.set_traffic(endpoint, full)
    return full


# --------------------------------------------------------------------------------- standby deletion


def schedule_standby_deletion(svc, run: Run) -> None:
    """The kept deployment of `run` goes when its `standby_until` comes: one scheduled DEPLOY_QUEUE message."""
    delay = max(0.0, (parse_iso(run.standby_until) - svc.clock()).total_seconds())
    message = ContinueRun(run.run_id, STANDBY_STEP, run.endpoint_name, check_id=run.standby_until.replace(":", ""))
    svc.messages.send(svc.settings.deploy_queue, message, delay_seconds=delay)


def keep_as_standby(svc, previous_run_id: str, replaced_by: Run, detail: str) -> Run | None:
    """Mark the previous version's run as kept (0% traffic) until now + ROLLOUT_KEEP_PREVIOUS_HOURS, with a history
    line, and schedule the deletion of its deployment then. Idempotent: a run kept already is left as it is."""
    now = svc.clock()
    until = iso(now + timedelta(hours=svc.settings.rollout_keep_previous_hours))

    def mark(r: Run) -> Run | None:
        if r.standby_until:  # kept already: its deletion is scheduled
            return None
        return r.note(now, f"{detail}; {r.deployment_name} kept at 0% until {until} for a rollback (run "
                           f"{replaced_by.run_id} serves the line)", "traffic", step="rollout",
                      from_states=(State.DEPLOYED,), standby_until=until)

    previous = svc.runs.update(previous_run_id, mark)
    if previous is not None and previous.standby_until == until:
        schedule_standby_deletion(svc, previous)
    return previous


def delete_standby(svc, run: Run) -> dict[str, Any]:
    """Delete a kept deployment whose time has come (idempotent: gone already is fine). Refuses (InvalidInput from
    the backend) while it takes traffic again; a rollback clears `standby_until` first, so that does not happen."""
    svc.ml.begin_delete_deployment(run.endpoint_name, run.deployment_name)
    return {"standby_until": ""}


# ------------------------------------------------------------------------------------------ rollback


def rollback_line(svc, line: str, by: str = "POST /api/lines/{line}/rollback") -> dict[str, Any]:
    """Traffic of `line` back to its previous deployment while it is kept: the version in service (or its canary
    in progress) gets 0% and is deleted; its run becomes Retired (a canary's run Failed), the previous one serves
    again. A history line on both runs. Raises NoSuchLine, LineConflict (no previous deployment kept)."""
    endpoint_name = line_endpoint_name(line)
    runs = line_runs(svc, line)
    if not runs and not line_runs(svc, line, states=None):
        raise NoSuchLine(f"no run of this app belongs to model line {line!r}")
    endpoint = svc.ml.get_endpoint(endpoint_name)
    if endpoint is None:
        raise LineConflict(f"model line {line!r} has no endpoint ({endpoint_name}); nothing to roll back")
    canary = next((r for r in runs if r.state == State.DEPLOYING and r.rollout.get("canary_started_at")), None)
    if canary is not None:
        current = canary
        previous = run_of_deployment(svc, line, canary.rollout.get("previous", ""))
    else:
        deployed = [r for r in runs if r.state == State.DEPLOYED and r.endpoint_name == endpoint_name]
        current = next((r for r in deployed if not r.standby_until
                        and r.deployment_name == serving(endpoint.traffic, "")), None)
        kept = [r for r in deployed if r.standby_until and r is not current]
        previous = kept[0] if kept else None  # newest first: the version replaced last
    if current is None or previous is None:
        raise LineConflict(f"model line {line!r} has no previous deployment kept to roll back to (a previous "
                           f"version is kept for ROLLOUT_KEEP_PREVIOUS_HOURS="
                           f"{svc.settings.rollout_keep_previous_hours:g} after a rollout, then deleted)")
    traffic = set_traffic(svc, endpoint_name, {previous.deployment_name: 100})
    svc.ml.begin_delete_deployment(endpoint_name, current.deployment_name)
    now = svc.clock()
    text = (f"rolled back by {by}: traffic {shares_text(traffic)}; {current.deployment_name} (run "
            f"{current.run_id}) deleted, {previous.deployment_name} (run {previous.run_id}) serves the line again")

    def retire(r: Run) -> Run | None:  # a canary still Deploying fails; the version in service is Retired
        return (r.fail("rollout", text, now, step="rollback", from_states=(State.DEPLOYING,))
                or r.advance(State.RETIRED, now, text, step="rollback", standby_until="",
                             from_states=(State.DEPLOYED,)))

    def restore(r: Run) -> Run | None:
        return r.note(now, text, "traffic", step="rollback", from_states=(State.DEPLOYED,), standby_until="")

    svc.runs.update(current.run_id, retire)
    svc.runs.update(previous.run_id, restore)
    return {"line": line, "endpoint": endpoint_name, "traffic": traffic, "serving": previous.deployment_name,
            "serving_run": previous.run_id, "rolled_back": current.deployment_name, "rolled_back_run": current.run_id}


# ------------------------------------------------------------------------------------------ views


def line_view(svc, line: str) -> dict[str, Any]:
    """`GET /api/lines/{line}`: the line's endpoint, its deployments (traffic, model version, the run behind each,
    kept until when) as the backend and the run store say. Raises NoSuchLine."""
    runs = [r for r in svc.runs.list() if r.line == line]
    if not runs:
        raise NoSuchLine(f"no run of this app belongs to model line {line!r}; GET /api/lines lists the lines")
    endpoint_name = line_endpoint_name(line)
    try:
        endpoint = svc.ml.get_endpoint(endpoint_name)
        deployments = svc.ml.list_deployments(endpoint_name) if endpoint is not None else []
    except NotFound:
        endpoint, deployments = None, []
    by_deployment: dict[str, Run] = {}
    for r in reversed(runs):  # newest last: the newest run of a deployment wins
        if r.endpoint_name == endpoint_name and r.deployment_name and r.state in (State.DEPLOYED, State.DEPLOYING):
            by_deployment[r.deployment_name] = r
    traffic = dict(endpoint.traffic) if endpoint else {}
    items = []
    for d in deployments:
        run = by_deployment.get(d.name)
        items.append({"name": d.name, "traffic": traffic.get(d.name, 0), "provisioning_state": d.provisioning_state,
                      "model_version": run.model_version if run else "", "run_id": run.run_id if run else "",
                      "run_state": run.state.value if run else "", "standby_until": run.standby_until if run else "",
                      "served": dict(run.served) if run else {}})
    return {"line": line, "endpoint": endpoint_name,
            "provisioning_state": endpoint.provisioning_state if endpoint else "",
            "traffic": traffic, "deployments": items,
            "versions": sorted({r.model_version for r in runs if r.model_version}, key=lambda v: int(v)),
            "runs": [{"run_id": r.run_id, "state": r.state.value, "model_version": r.model_version}
                     for r in runs]}


def lines_view(svc) -> dict[str, Any]:
    """`GET /api/lines`: every line any run belongs to, with its endpoint's deployments."""
    names = sorted({r.line for r in svc.runs.list() if r.line})
    out = []
    for line in names:
        try:
            out.append(line_view(svc, line))
        except MLBackendError as exc:  # one line's backend read failing does not hide the others
            out.append({"line": line, "endpoint": line_endpoint_name(line), "error": type(exc).__name__})
    return {"lines": out}


# ------------------------------------------------------------------------------------- HTTP answers


def _answer(call, *args):
    """A route's answer: the view as JSON, 404 / 409 / 503 for the refusals above and an unreadable backend."""
    from .api_errors import ApiError, error_reply, json_reply
    from .ml.naming import is_line_name

    if args and not is_line_name(args[0]):
        return error_reply(ApiError(404, "line_not_found", f"{str(args[0])[:60]!r} is not a model line name; GET "
                                                           f"/api/lines lists the lines"))
    try:
        return json_reply(call(*args))
    except NoSuchLine as exc:
        return error_reply(ApiError(404, "line_not_found", str(exc)))
    except LineConflict as exc:
        return error_reply(ApiError(409, "no_previous_deployment", str(exc)))
    except MLBackendError as exc:
        return error_reply(ApiError(503, "backend_unavailable", f"the ML workspace could not be asked now "
                                                                f"({type(exc).__name__}); try again",
                                    {"Retry-After": "30"}))


def lines_reply(svc):
    """`GET /api/lines`."""
    return _answer(lambda: lines_view(svc))


def line_reply(svc, line: str):
    """`GET /api/lines/{line}`."""
    return _answer(lambda name: line_view(svc, name), line)


def rollback_reply(svc, line: str):
    """`POST /api/lines/{line}/rollback`."""
    return _answer(lambda name: rollback_line(svc, name), line)
