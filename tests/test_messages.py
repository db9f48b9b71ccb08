"""The queue messages (shared/messages.py), pure: what goes on the wire, how it is read back, which ids repeat."""

from __future__ import annotations

import json

import pytest

from shared.messages import Attempt, ContinueRun, MalformedMessage, SubmitRun, retry_of


def test_a_first_submit_is_the_run_id_alone_under_the_run_id():
    message = SubmitRun("data-0123456789ab")
    assert message.to_json() == '{"run_id":"data-0123456789ab"}' and message.message_id == "data-0123456789ab"
    assert SubmitRun.from_json(message.to_json().encode()) == message


def test_a_retry_carries_its_attempt_and_takes_its_id_from_the_origin():
    retry = retry_of(SubmitRun("r-1"), Attempt(2, "2026-03-01T12:00:00.000Z", "r-1-submit"))
    assert json.loads(retry.to_json()) == {"run_id": "r-1", "attempt": 2, "since": "2026-03-01T12:00:00.000Z",
                                           "origin": "r-1-submit"}
    assert retry.message_id == "r-1-submit-2"
    assert SubmitRun.from_json(retry.to_json()) == retry


def test_each_deployment_check_has_an_id_of_its_own():
    first, second = ContinueRun.check("r-1", "ft-r-1"), ContinueRun.check("r-1", "ft-r-1")
    assert first.message_id.startswith("ft-r-1-check-") and first.message_id != second.message_id
    assert json.loads(first.to_json()) == {"run_id": "r-1", "step": "check", "endpoint": "ft-r-1",
                                           "check_id": first.check_id}
    assert ContinueRun.from_json(first.to_json()) == first
    assert ContinueRun.from_json(first.to_json()).message_id == first.message_id, "a check's retries derive from it"


def test_a_step_retry_round_trips_without_the_fields_it_does_not_use():
    retry = retry_of(ContinueRun("r-1", "job status"), Attempt(1, "2026-03-01T12:00:00Z", "r-1-job-status-trained"))
    assert json.loads(retry.to_json()) == {"run_id": "r-1", "step": "job status", "attempt": 1,
                                           "since": "2026-03-01T12:00:00Z", "origin": "r-1-job-status-trained"}
    assert ContinueRun.from_json(retry.to_json()) == retry and retry.message_id == "r-1-job-status-trained-1"


def test_bodies_from_before_these_classes_still_read():
    # What the app sent before: a `check` count nobody read, a `step` on submit retries.
    old_check = b'{"run_id": "r-1", "step": "check", "check": 3, "endpoint": "ft-r-1"}'
    assert ContinueRun.from_json(old_check) == ContinueRun("r-1", "check", "ft-r-1")
    old_retry = b'{"run_id": "r-1", "step": "submit", "attempt": 1, "since": "2026-03-01T12:00:00Z", "origin": "o"}'
    assert SubmitRun.from_json(old_retry) == SubmitRun("r-1", Attempt(1, "2026-03-01T12:00:00Z", "o"))
    assert ContinueRun.from_json(b'{"run_id": "r-1"}').step == "check"


def test_unreadable_retry_fields_read_as_a_first_try():
    body = '{"run_id": "r-1", "attempt": "many", "since": "yesterday", "origin": 7}'
    assert SubmitRun.from_json(body) == SubmitRun("r-1")
    assert SubmitRun.from_json('{"run_id": "r-1", "attempt": -3}').attempt.number == 0
    assert len(SubmitRun.from_json(json.dumps({"run_id": "r", "attempt": 1, "origin": "o" * 500})).attempt.origin) == 100


@pytest.mark.parametrize("body, named", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'["r-1"]', "not an object"),
    (b'{"step": "check"}', "`run_id`"),
    (b'{"run_id": ""}', "`run_id`"),
    (b'{"run_id": 42}', "`run_id`"),
])
def test_a_malformed_body_is_refused_with_a_clear_error(body, named):
    for kind in (SubmitRun, ContinueRun):
        with pytest.raises(MalformedMessage, match=named) as caught:
            kind.from_json(body)
        assert kind.__name__ in str(caught.value) and isinstance(caught.value, ValueError)


# ------------------------------------------------------------------------- shutdown hooks (shared/lifecycle.py)


def test_shutdown_awaits_each_hook_once_newest_first_and_survives_a_failing_one():
    import asyncio

    from shared.lifecycle import on_shutdown, shutdown

    calls = []

    async def first():
        calls.append("first")

    async def broken():
        calls.append("broken")
        raise RuntimeError("close failed")

    async def last():
        calls.append("last")

    for hook in (first, broken, first, last):
        on_shutdown(hook)
    asyncio.run(shutdown())
    assert calls == ["last", "broken", "first"]
    asyncio.run(shutdown())  # forgotten once run: a later host registers its own
    assert calls == ["last", "broken", "first"]


@pytest.mark.parametrize("body", [b"{not json", b'{"step": "check"}'])
def test_the_queue_triggers_raise_on_a_malformed_body_before_touching_any_service(body, monkeypatch):
    """Raising is what sends the message round its deliveries to the dead-letter queue, where `dead_lettered`
    drops it (tests/test_reliability.py, tests/test_failure_behaviour.py); no service is built for it."""
    import azure.functions as func

    import shared.bootstrap
    from functions.deployments import deployments
    from functions.submit import submit

    def no_services():
        raise AssertionError("services built for a malformed message")

    monkeypatch.setattr(shared.bootstrap, "services", no_services)
    for trigger in (submit, deployments):
        with pytest.raises(MalformedMessage):
            trigger.build().get_user_function()(func.ServiceBusMessage(body=body))
