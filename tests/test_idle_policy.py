"""The idle policy, rule by rule: which endpoints cleanup deletes and the reason it gives for each one it keeps."""

from datetime import datetime, timedelta, timezone

import pytest

from shared import idle_policy as p
from shared.ml.port import TAG_APP, TAG_CREATED, TAG_KEEP, TAG_RUN, Endpoint
from shared.runs import Run, State, iso

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=48)
RULES = p.IdleRules(app_id="chatft", idle_hours=24.0, deploy_timeout_hours=1.5, horizon_hours=24.0)
EP = "ft-chat-abcd1234"
RUN = "chat-abcd1234ef56"


def at(hours: float) -> str:
    return iso(T0 + timedelta(hours=hours))


def tags(app="chatft", run=RUN, created: str | None = at(0), **extra) -> dict:
    out = {TAG_APP: app, TAG_RUN: run}
    if created is not None:
        out[TAG_CREATED] = created
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def run(state=State.DEPLOYED, endpoint=EP, last_used="", keep=False, deploy_started=at(0)) -> Run:
    return Run(run_id=RUN, state=state, created_at=at(-2), endpoint_name=endpoint, last_used_at=last_used,
               keep=keep, deploy_started_at=deploy_started)


# (case, endpoint tags, endpoint state, run or None, now, requests, metrics failed, delete, reason, idle hours)
CASES = [
    ("no tags at all", {}, "Succeeded", run(), NOW, {}, (), False, p.NOT_OWNED, None),
    ("another app's tag", tags(app="otherapp"), "Succeeded", run(), NOW, {}, (), False, p.NOT_OWNED, None),
    ("our app tag but no run tag", tags(run=None), "Succeeded", run(), NOW, {}, (), False, p.NOT_OWNED, None),
    ("being deleted", tags(), "Deleting", run(), NOW, {}, (), False, p.DELETING_ALREADY, None),
    ("keep tag", tags(**{TAG_KEEP: "true"}), "Succeeded", run(), NOW, {}, (), False, p.PROTECTED, None),
    ("keep tag, any case", tags(**{TAG_KEEP: "True"}), "Succeeded", run(), NOW, {}, (), False, p.PROTECTED, None),
    ("keep tag false", tags(**{TAG_KEEP: "false"}), "Succeeded", run(), NOW, {}, (), True, p.IDLE, 48.0),
    ("run's keep override", tags(), "Succeeded", run(keep=True), NOW, {}, (), False, p.PROTECTED, None),
    ("protected before too young", tags(created=at(47), **{TAG_KEEP: "yes"}), "Succeeded", run(), NOW, {}, (),
     False, p.PROTECTED, None),
    ("deleting before protected", tags(**{TAG_KEEP: "true"}), "Deleting", run(), NOW, {}, (), False,
     p.DELETING_ALREADY, None),
    ("no run record", tags(), "Succeeded", None, NOW, {}, (), False, p.UNKNOWN_RUN, None),
    ("no run record, protected", tags(**{TAG_KEEP: "true"}), "Succeeded", None, NOW, {}, (), False, p.PROTECTED,
     None),
    ("too young", tags(created=at(30)), "Succeeded", run(), NOW, {}, (), False, p.TOO_YOUNG, 18.0),
    ("just at the window", tags(created=at(24)), "Succeeded", run(), NOW, {}, (), True, p.IDLE, 24.0),
    ("no created tag: the run's deploy time (young)", tags(created=None), "Succeeded",
     run(deploy_started=at(40)), NOW, {}, (), False, p.TOO_YOUNG, 8.0),
    ("no created tag: the run's deploy time (old)", tags(created=None), "Succeeded", run(), NOW, {}, (), True,
     p.IDLE, 48.0),
    ("malformed created tag: the run's deploy time", tags(created="yesterday"), "Succeeded", run(), NOW, {}, (),
     True, p.IDLE, 48.0),
    ("no creation time anywhere", tags(created="yesterday"), "Succeeded", run(deploy_started=""), NOW, {}, (),
     False, p.UNKNOWN_AGE, None),
    ("naive created tag is UTC", tags(created="2026-01-02T20:00:00"), "Succeeded", run(), NOW, {}, (), False,
     p.TOO_YOUNG, 4.0),
    ("scored within the window", tags(), "Succeeded", run(last_used=at(30)), NOW, {}, (), False, p.RECENTLY_USED,
     18.0),
    ("scored before the window", tags(), "Succeeded", run(last_used=at(12)), NOW, {}, (), True, p.IDLE, 36.0),
    ("scored after the as-of time", tags(), "Succeeded", run(last_used=at(60)), NOW, {}, (), False,
     p.RECENTLY_USED, 0.0),
    ("metrics show traffic", tags(), "Succeeded", run(), NOW, {EP: 3}, (), False, p.TRAFFIC_SEEN, 48.0),
    ("metrics show none", tags(), "Succeeded", run(), NOW, {EP: 0}, (), True, p.IDLE, 48.0),
    ("metrics unknown", tags(), "Succeeded", run(), NOW, {EP: None}, (), True, p.IDLE, 48.0),
    ("metrics could not be read", tags(), "Succeeded", run(), NOW, {}, (EP,), False, p.METRICS_UNAVAILABLE, 48.0),
    ("recent use outranks metrics", tags(), "Succeeded", run(last_used=at(47)), NOW, {EP: 0}, (), False,
     p.RECENTLY_USED, 1.0),
    ("run Retired, endpoint left over", tags(), "Succeeded", run(State.RETIRED, last_used=at(47)), NOW, {}, (),
     True, p.ORPHANED, 48.0),
    ("run Failed, endpoint left over", tags(), "Failed", run(State.FAILED), NOW, {}, (), True, p.ORPHANED, 48.0),
    ("run serves from another endpoint", tags(), "Succeeded", run(endpoint="ft-chat-abcd1234-1", last_used=at(47)),
     NOW, {}, (), True, p.ORPHANED, 48.0),
    ("left over but young", tags(created=at(40)), "Succeeded", run(State.RETIRED), NOW, {}, (), False,
     p.TOO_YOUNG, 8.0),
    ("left over with traffic", tags(), "Succeeded", run(State.RETIRED), NOW, {EP: 1}, (), False, p.TRAFFIC_SEEN,
     48.0),
    ("stuck deploying past the window", tags(), "Creating", run(State.DEPLOYING), NOW, {}, (), True, p.IDLE, 48.0),
]


@pytest.mark.parametrize("case,ep_tags,ep_state,the_run,now,requests,failed,delete,reason,idle", CASES,
                         ids=[c[0] for c in CASES])
def test_rule(case, ep_tags, ep_state, the_run, now, requests, failed, delete, reason, idle):
    endpoint = Endpoint(name=EP, provisioning_state=ep_state, tags=ep_tags)
    runs = {RUN: the_run} if the_run else {}
    [decision] = p.decide([endpoint], runs, now, RULES, requests=requests, metrics_failed=failed)
    assert (decision.delete, decision.reason) == (delete, reason), decision
    assert decision.idle_hours == (None if idle is None else pytest.approx(idle))
    assert decision.endpoint == EP
    assert decision.saved_endpoint_hours == (RULES.horizon_hours if delete else 0.0)
    if reason != p.NOT_OWNED:
        assert decision.run_id == RUN


def test_deploying_is_left_to_the_deployment_checks_until_their_timeout():
    rules = p.IdleRules(app_id="chatft", idle_hours=1.0, deploy_timeout_hours=1.5)
    endpoint = Endpoint(name=EP, provisioning_state="Creating", tags=tags())
    deploying = run(State.DEPLOYING)
    [early] = p.decide([endpoint], {RUN: deploying}, T0 + timedelta(hours=1.2), rules)
    [late] = p.decide([endpoint], {RUN: deploying}, T0 + timedelta(hours=2), rules)
    assert (early.delete, early.reason) == (False, p.DEPLOYING)
    assert (late.delete, late.reason, late.retire) == (True, p.IDLE, True)


def test_idle_decision_carries_what_the_retiring_compare_and_swap_needs():
    endpoint = Endpoint(name=EP, provisioning_state="Succeeded", tags=tags())
    [d] = p.decide([endpoint], {RUN: run(last_used=at(3))}, NOW, RULES)
    assert d.delete and d.retire and d.last_used_at == at(3) and d.run_id == RUN
    assert d.idle_hours == pytest.approx(45.0)


def test_orphaned_endpoint_is_deleted_without_retiring_the_run():
    endpoint = Endpoint(name=EP, provisioning_state="Succeeded", tags=tags())
    [d] = p.decide([endpoint], {RUN: run(endpoint="ft-chat-abcd1234-1")}, NOW, RULES)
    assert (d.reason, d.retire) == (p.ORPHANED, False)
    assert "ft-chat-abcd1234-1" in d.detail


def test_one_decision_per_endpoint_in_order_and_the_estimate_adds_up():
    endpoints = [Endpoint(name=f"ft-{i}", provisioning_state="Succeeded", tags=tags(run=f"r-{i}")) for i in range(3)]
    endpoints.append(Endpoint(name="theirs", provisioning_state="Succeeded"))
    runs = {f"r-{i}": Run(run_id=f"r-{i}", state=State.DEPLOYED, created_at=at(0), endpoint_name=f"ft-{i}",
                          deploy_started_at=at(0), last_used_at=at(40) if i == 1 else "") for i in range(3)}
    decisions = p.decide(endpoints, runs, NOW, RULES)
    assert [d.endpoint for d in decisions] == ["ft-0", "ft-1", "ft-2", "theirs"]
    assert [d.reason for d in decisions] == [p.IDLE, p.RECENTLY_USED, p.IDLE, p.NOT_OWNED]
    assert sum(d.saved_endpoint_hours for d in decisions) == 48.0


def test_owned_run_id_reads_only_this_apps_tags():
    assert p.owned_run_id(Endpoint("e", "Succeeded", tags=tags()), "chatft") == RUN
    assert p.owned_run_id(Endpoint("e", "Succeeded", tags=tags()), "another-app") is None
    assert p.owned_run_id(Endpoint("e", "Succeeded", tags=tags(run="")), "chatft") is None


def test_decision_as_json_names_the_action():
    d = p.Decision(EP, True, p.IDLE, run_id=RUN, idle_hours=30.123, saved_endpoint_hours=24.0)
    assert d.to_dict() == {"endpoint": EP, "action": "delete", "reason": "idle", "run_id": RUN, "idle_hours": 30.12,
                           "saved_endpoint_hours": 24.0, "detail": ""}
