"""The run's state machine: every legal transition passes, every illegal one raises, history is kept."""

from datetime import datetime, timedelta, timezone

import pytest

from shared.runs import (TRANSITIONS, IllegalTransition, Run, State, endpoint_name_for, job_name_for, new_run,
                         run_id_for, run_id_from_job_name, slug)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def run_in(state: State) -> Run:
    run = new_run("r-abc123", T0)
    run.state = state
    return run


@pytest.mark.parametrize("source,target", [(s, t) for s, ts in TRANSITIONS.items() for t in sorted(ts)])
def test_every_legal_transition_passes_and_is_recorded(source, target):
    run = run_in(source)
    moved = run.advance(target, T0 + timedelta(minutes=1), detail="why")
    assert moved.state == target
    assert moved.history[-1].state == target and moved.history[-1].detail == "why"
    assert moved.history[-1].at == "2026-01-01T00:01:00.000Z"
    assert run.state == source, "advance returns a new run and leaves the old one alone"


@pytest.mark.parametrize("source,target", [(s, t) for s in State for t in State if t not in TRANSITIONS[s]])
def test_every_illegal_transition_raises(source, target):
    with pytest.raises(IllegalTransition) as info:
        run_in(source).advance(target, T0)
    assert str(source) in str(info.value) and str(target) in str(info.value)


def test_fail_records_stage_and_reason():
    run = run_in(State.QUEUED).fail("submit", "compute 'gpu' is not allowed", T0)
    assert run.state == State.FAILED
    assert run.failure.stage == "submit" and "not allowed" in run.failure.reason


@pytest.mark.parametrize("state", list(State))
def test_edit_and_note_with_from_states_leave_a_run_in_another_state_alone(state):
    """The guard of a bookkeeping write (reconciled_at, a kept deployment's standby_until, last use) is its
    `from_states`: outside them the answer is None, which RunStore.update takes for "nothing to write"."""
    run = run_in(state)
    allowed = (State.DEPLOYED, State.DEPLOYING)
    edited = run.edit(last_used_at="2026-01-01T00:00:00.000Z", from_states=allowed)
    noted = run.note(T0, "traffic moved", "traffic", step="rollout", from_states=allowed, standby_until="x")
    if state in allowed:
        assert edited.last_used_at == "2026-01-01T00:00:00.000Z" and edited.history == run.history
        assert noted.standby_until == "x" and noted.state == state
        assert noted.history[-1].kind == "traffic" and noted.history[-1].step == "rollout"
    else:
        assert edited is None and noted is None
    assert run.last_used_at == "" and run.standby_until == "", "the run itself is left alone"


def test_edit_and_note_refuse_fields_that_are_not_settable():
    with pytest.raises(AttributeError, match="'state'"):
        run_in(State.DEPLOYED).edit(state=State.FAILED)
    with pytest.raises(AttributeError, match="'history'"):
        run_in(State.DEPLOYED).note(T0, "x", "traffic", history=[])


def test_rejected_is_terminal():
    assert TRANSITIONS[State.REJECTED] == frozenset()


def test_round_trip_through_dict_keeps_everything():
    run = run_in(State.QUEUED).advance(State.SUBMITTED, T0, job_name="chatft-x", metrics={"loss": 1.5})
    run = run.fail("training", "boom", T0)
    again = Run.from_dict(run.to_dict(), etag="e1")
    assert again == run and again.etag == "e1"


def test_unknown_field_is_refused():
    with pytest.raises(AttributeError):
        run_in(State.QUEUED).advance(State.SUBMITTED, T0, no_such_field=1)


def test_run_id_is_deterministic_per_blob_version_and_safe():
    a = run_id_for("training-data", "team/../My Data!.jsonl", '"0x8DC"')
    assert a == run_id_for("training-data", "team/../My Data!.jsonl", "0x8DC")
    assert a != run_id_for("training-data", "team/../My Data!.jsonl", "0x8DD")
    assert all(c.isalnum() or c == "-" for c in a) and a[0].isalpha() and len(a) <= 40
    assert run_id_from_job_name(job_name_for(a)) == a


@pytest.mark.parametrize("blob", ["x.jsonl", "1234.jsonl", "---.jsonl", "a" * 200 + ".jsonl", "Ünïcødé data.jsonl"])
def test_endpoint_names_are_valid(blob):
    run_id = run_id_for("c", blob, "e")
    for attempt in (0, 1, 12):
        name = endpoint_name_for(run_id, attempt)
        assert 3 <= len(name) <= 32 and name[0].isalpha() and not name.endswith("-")
        assert all(c.isalnum() or c == "-" for c in name)
    assert endpoint_name_for(run_id, 0) != endpoint_name_for(run_id, 1)


def test_slug_strips_path_tricks():
    assert slug("../../etc/passwd") == "etc-passwd"


@pytest.mark.parametrize("state, model, refused", [
    (State.RETIRED, "m", None), (State.FAILED, "m", None),
    (State.FAILED, "", "has no registered model"), (State.RETIRED, "", "has no registered model"),
    (State.DEPLOYED, "m", "Deployed already"), (State.DEPLOYING, "m", "Deploying already"),
    (State.REGISTERED, "m", "has no registered model"), (State.QUEUED, "", "has no registered model"),
])
def test_the_redeploy_rule(state, model, refused):
    run = Run(run_id="r-1", state=state, created_at="2026-01-01T00:00:00.000Z", model_name=model)
    assert run.redeployable() is (refused is None)
    assert refused is None and run.redeploy_refusal() is None or refused in run.redeploy_refusal()
