"""The idle policy: which endpoints the nightly cleanup deletes, each decision with its reason. Pure: no SDK, no I/O.

An endpoint is deleted only when all of these hold, checked in this order (the first that fails is the reason
it is kept):
  1. it carries this app's ownership tags (TAG_APP == APP_ID and a TAG_RUN): otherwise `not_owned`, whoever
     made it, and nothing else about it is read;
  2. it is not being deleted already (`deleting_already`);
  3. it is not protected by the tag TAG_KEEP or by the run's `keep` (the upload's `keep` override): `protected`;
  4. its run record exists: `unknown_run` otherwise. Kept on purpose: without a record nothing can score it
     through the proxy, but nor can the app tell how it came to be; a person decides (it is listed every night);
  5. its age, from TAG_CREATED (else the run's deploy time), is known (`unknown_age`) and at least the idle
     window ENDPOINT_IDLE_HOURS (`too_young`); an endpoint of a run still deploying is left to the deployment
     checks until their own timeout has passed too (`deploying`);
  6. the run's `last_used_at` (recorded by the scoring proxy) is not within the window (`recently_used`);
     this applies only where the endpoint is the one the run serves from;
  7. where the backend's metrics were read, they show no request in the window (`traffic_seen_in_metrics`);
     a failed read keeps it (`metrics_unavailable`); None (unknown, e.g. locally) is no evidence either way.
Deleted endpoints are `idle` (the run serves from it: the run is retired first) or `orphaned` (the run has moved
on: it is Retired or Failed, or serves from another endpoint, so no scoring request can reach this one).

A model line's endpoint (tag TAG_LINE; `ln-<line>`, one deployment per version) is judged as a whole, by the same
rules over all the line's runs on it: protected when any of them is kept, deploying while any of them is Deploying
(a rollout adding a version, or its canary), recently used when any deployment of it served a request in the
window (the newest `last_used_at` of the line's runs there; the metrics are the endpoint's, all deployments). An
idle line endpoint is deleted with all its deployments, every serving run of the line retired first.

A deployment kept at 0% for rollback after a rollout (its run's `standby_until`) is listed while it is kept
(`standby`, with when it goes) and deleted once that time has passed (`standby_over`; its run retired), unless it
takes traffic again (`serving_again`: a rollback made it live, so it is no longer a standby).

Endpoint-hours saved are estimated simply: each deleted endpoint would have run at least until the next cleanup,
so it saves `horizon_hours` (24 h for the nightly timer); per endpoint, whatever its instance count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Collection, Iterable, Mapping

from .ml.port import TAG_APP, TAG_CREATED, TAG_KEEP, TAG_LINE, TAG_RUN, Endpoint
from .runs import Run, State, parse_iso

# Reasons. Deleting:
IDLE = "idle"
ORPHANED = "orphaned"
# Keeping, decided by the policy:
NOT_OWNED = "not_owned"
DELETING_ALREADY = "deleting_already"
PROTECTED = "protected"
UNKNOWN_RUN = "unknown_run"
UNKNOWN_AGE = "unknown_age"
TOO_YOUNG = "too_young"
DEPLOYING = "deploying"
RECENTLY_USED = "recently_used"
TRAFFIC_SEEN = "traffic_seen_in_metrics"
METRICS_UNAVAILABLE = "metrics_unavailable"
# A model line's deployment kept at 0% for rollback: kept until its run's `standby_until`, then deleted.
STANDBY = "standby"
STANDBY_OVER = "standby_over"
SERVING_AGAIN = "serving_again"

_TRUE = ("true", "1", "yes", "on")
# Run states in which the run serves (or is about to serve) from its endpoint: deleting it means retiring the run.
SERVING = (State.DEPLOYED, State.DEPLOYING)


@dataclass(frozen=True)
class IdleRules:
    """The policy's parameters, from settings: APP_ID, ENDPOINT_IDLE_HOURS, DEPLOY_TIMEOUT_MINUTES (as hours)."""

    app_id: str
    idle_hours: float
    deploy_timeout_hours: float
    horizon_hours: float = 24.0


@dataclass(frozen=True)
class Decision:
    """What cleanup does with one endpoint and why. `last_used_at` is the run's value when decided (the
    compare-and-swap on retiring checks it is unchanged); `retire` says the run moves to Retired first."""

    endpoint: str
    delete: bool
    reason: str
    run_id: str = ""
    idle_hours: float | None = None
    saved_endpoint_hours: float = 0.0
    retire: bool = False
    last_used_at: str = ""
    detail: str = ""
    line: str = ""  # a model line's endpoint: the line
    # A line's endpoint to delete: each serving run of the line, with the `last_used_at` the decision saw (each
    # is retired by compare-and-swap on it, as `run_id`'s is for a run's own endpoint).
    line_runs: tuple[tuple[str, str], ...] = ()
    deployment: str = ""  # a decision about one deployment of the endpoint (a kept previous one), not the endpoint
    until: str = ""  # a kept deployment's `standby_until`

    def to_dict(self) -> dict:
        data = {"endpoint": self.endpoint, "action": "delete" if self.delete else "keep", "reason": self.reason,
                "run_id": self.run_id,
                "idle_hours": None if self.idle_hours is None else round(self.idle_hours, 2),
                "saved_endpoint_hours": round(self.saved_endpoint_hours, 2), "detail": self.detail}
        if self.line:
            data["line"] = self.line
            data["runs"] = [run_id for run_id, _ in self.line_runs]
        if self.deployment:
            data["deployment"] = self.deployment
            data["until"] = self.until
        return data


def owned_run_id(endpoint: Endpoint, app_id: str) -> str | None:
    """The run id of an endpoint carrying this app's ownership tags, else None."""
    tags = endpoint.tags or {}
    if tags.get(TAG_APP) != app_id:
        return None
    return tags.get(TAG_RUN) or None


def owned_line(endpoint: Endpoint, app_id: str) -> str | None:
    """The model line of an endpoint this app made for a line (TAG_APP and TAG_LINE), else None."""
    tags = endpoint.tags or {}
    if tags.get(TAG_APP) != app_id:
        return None
    return tags.get(TAG_LINE) or None


def decide(endpoints: Iterable[Endpoint], runs: Mapping[str, Run], now: datetime, rules: IdleRules,
           requests: Mapping[str, int | None] | None = None,
           metrics_failed: Collection[str] = (), line_runs: Mapping[str, Iterable[Run]] | None = None) -> list[Decision]:
    """One decision per endpoint, as of `now`, and one per deployment of a line's endpoint kept for rollback.
    `runs` by run id; `line_runs` every run of each model line, by line. `requests` holds the metrics read per
    endpoint name (None: unknown); endpoints absent from it and from `metrics_failed` were not checked."""
    decisions: list[Decision] = []
    for e in endpoints:
        line = owned_line(e, rules.app_id)
        if line is None:
            decisions.append(_decide_one(e, runs, now, rules, requests or {}, metrics_failed))
        else:
            members = [r for r in (line_runs or {}).get(line, ()) if r.line == line and r.endpoint_name == e.name]
            decisions += _decide_line(e, line, members, now, rules, requests or {}, metrics_failed)
    return decisions


def _decide_line(endpoint: Endpoint, line: str, members: list[Run], now: datetime, rules: IdleRules,
                 requests: Mapping[str, int | None], metrics_failed: Collection[str]) -> list[Decision]:
    """A model line's endpoint as a whole (`members`: the line's runs on it), then its kept deployments."""
    name = endpoint.name
    serving = [r for r in members if r.state in SERVING]
    newest = max(serving or members, key=lambda r: r.created_at, default=None)
    run_id = newest.run_id if newest else ""

    def keep(reason: str, idle: float | None = None, detail: str = "") -> list[Decision]:
        return [Decision(name, False, reason, run_id=run_id, idle_hours=idle, detail=detail, line=line),
                *_standby_decisions(endpoint, line, members, now, rules)]

    if endpoint.provisioning_state == "Deleting":
        return [Decision(name, False, DELETING_ALREADY, run_id=run_id, line=line)]
    if str(endpoint.tags.get(TAG_KEEP, "")).strip().lower() in _TRUE or any(r.keep for r in serving):
        return keep(PROTECTED)
    if not members:
        return keep(UNKNOWN_RUN, detail=f"no run of line {line} on it; delete it by hand if it is not needed")
    starts = [t for t in (_time(r.deploy_started_at) for r in members) if t is not None]
    created = _time(endpoint.tags.get(TAG_CREATED)) or (min(starts) if starts else None)
    if created is None:
        return keep(UNKNOWN_AGE, detail="no creation time in its tags or its runs")
    window = timedelta(hours=rules.idle_hours)
    age = now - created
    if age < window:
        return keep(TOO_YOUNG, _hours(age))
    # A version being added (or its canary watched) needs the endpoint whatever its age; a deployment stuck past
    # its timeout is the deployment checks' and the reconciler's to fail, not a reason to take the line down.
    rolling = [r for r in serving if r.state == State.DEPLOYING]
    if rolling:
        return keep(DEPLOYING, _hours(age), detail=f"run {rolling[0].run_id} is deploying to it")
    uses = [t for t in (_time(r.last_used_at) for r in members) if t is not None]
    last_used = max(uses, default=None)
    if last_used is not None and now - last_used < window:
        return keep(RECENTLY_USED, _hours(now - max(created, last_used)))
    idle = _hours(now - (max(created, last_used) if last_used else created))
    if name in metrics_failed:
        return keep(METRICS_UNAVAILABLE, idle, detail="request metrics could not be read")
    seen = requests.get(name)
    if seen is not None and seen > 0:
        return keep(TRAFFIC_SEEN, idle, detail=f"{seen} request(s) in the last {rules.idle_hours:g} h")
    if not serving:
        return [Decision(name, True, ORPHANED, run_id=run_id, idle_hours=idle,
                         saved_endpoint_hours=rules.horizon_hours, line=line,
                         detail=f"no run of line {line} serves from it")]
    versions = ", ".join(r.deployment_name or r.run_id for r in serving)
    return [Decision(name, True, IDLE, run_id=run_id, idle_hours=idle, saved_endpoint_hours=rules.horizon_hours,
                     retire=True, line=line, line_runs=tuple((r.run_id, r.last_used_at) for r in serving),
                     detail=f"no deployment of line {line} served a request in {rules.idle_hours:g} h; deleted "
                            f"with its deployments ({versions})")]


def _standby_decisions(endpoint: Endpoint, line: str, members: list[Run], now: datetime,
                       rules: IdleRules) -> list[Decision]:
    """The line's deployments kept at 0% for rollback: listed until their run's `standby_until`, deleted after
    (whatever state the rollout left the run in; a Deployed one is retired)."""
    out = []
    for run in members:
        until = _time(run.standby_until)
        if until is None or not run.deployment_name:
            continue
        common = dict(run_id=run.run_id, line=line, deployment=run.deployment_name, until=run.standby_until,
                      last_used_at=run.last_used_at)
        live = endpoint.traffic.get(run.deployment_name, 0) or endpoint.mirror_traffic.get(run.deployment_name, 0)
        if live:
            out.append(Decision(endpoint.name, False, SERVING_AGAIN, **common,
                                detail=f"{run.deployment_name} takes {live}% of the traffic again (rolled back to?)"))
        elif now < until:
            out.append(Decision(endpoint.name, False, STANDBY, **common,
                                detail=f"{run.deployment_name} kept at 0% for rollback until {run.standby_until}"))
        else:
            out.append(Decision(endpoint.name, True, STANDBY_OVER, **common,
                                saved_endpoint_hours=rules.horizon_hours, retire=run.state == State.DEPLOYED,
                                detail=f"{run.deployment_name} kept for rollback until {run.standby_until}; deleted"))
    return out


def _decide_one(endpoint: Endpoint, runs: Mapping[str, Run], now: datetime, rules: IdleRules,
                requests: Mapping[str, int | None], metrics_failed: Collection[str]) -> Decision:
    name = endpoint.name
    run_id = owned_run_id(endpoint, rules.app_id)
    if run_id is None:
        return Decision(name, False, NOT_OWNED, run_id=(endpoint.tags or {}).get(TAG_RUN, ""))

    def keep(reason: str, idle: float | None = None, detail: str = "") -> Decision:
        return Decision(name, False, reason, run_id=run_id, idle_hours=idle, detail=detail)

    if endpoint.provisioning_state == "Deleting":
        return keep(DELETING_ALREADY)
    run = runs.get(run_id)
    if str(endpoint.tags.get(TAG_KEEP, "")).strip().lower() in _TRUE or (run is not None and run.keep):
        return keep(PROTECTED)
    if run is None:
        return keep(UNKNOWN_RUN, detail=f"no run record {run_id}; delete it by hand if it is not needed")

    created = _time(endpoint.tags.get(TAG_CREATED)) or _time(run.deploy_started_at)
    if created is None:
        return keep(UNKNOWN_AGE, detail="no creation time in its tags or its run")
    window = timedelta(hours=rules.idle_hours)
    age = now - created
    serves_here = run.endpoint_name == name and run.state in SERVING
    if age < window:
        return keep(TOO_YOUNG, _hours(age))
    if serves_here and run.state == State.DEPLOYING and age < timedelta(hours=rules.deploy_timeout_hours):
        return keep(DEPLOYING, _hours(age))

    idle_since = created
    if serves_here:
        last_used = _time(run.last_used_at)
        if last_used is not None and now - last_used < window:
            return keep(RECENTLY_USED, _hours(now - max(created, last_used)))
        if last_used is not None:
            idle_since = max(created, last_used)
    idle = _hours(now - idle_since)
    if name in metrics_failed:
        return keep(METRICS_UNAVAILABLE, idle, detail="request metrics could not be read")
    seen = requests.get(name)
    if seen is not None and seen > 0:
        return keep(TRAFFIC_SEEN, idle, detail=f"{seen} request(s) in the last {rules.idle_hours:g} h")

    if serves_here:
        return Decision(name, True, IDLE, run_id=run_id, idle_hours=idle, saved_endpoint_hours=rules.horizon_hours,
                        retire=True, last_used_at=run.last_used_at)
    moved_on = f"; it now serves from {run.endpoint_name}" if run.endpoint_name and run.endpoint_name != name else ""
    return Decision(name, True, ORPHANED, run_id=run_id, idle_hours=idle, saved_endpoint_hours=rules.horizon_hours,
                    detail=f"run is {run.state}{moved_on}")


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = parse_iso(str(text))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _hours(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.0) / 3600.0  # a use after an as-of time in the past counts as "just now"
