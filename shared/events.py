"""The run's events, declared once: what webhooks deliver and what Event Grid carries, as CloudEvents 1.0.

A run emits an event when it reaches a state a person wants to hear about (`EVENT_TYPES`, the one table from a
state to an event type: a new state that deserves an event adds one line). Events are made where runs change, in
the run store's compare-and-swap (`shared.run_store`): `pending_events(before, after)` turns each new line of the
run's history into an event and the same write stores them in the run's `outbox`, so an event is never lost
between the state change and the send, and it has one stable id (`<run id>.<history index>`) whoever flushes it
and however often (`shared.notifications`).

The envelope follows CloudEvents 1.0 (https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md, "Context
Attributes"; JSON format: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md), the
input schema of an Event Grid custom topic with `inputSchema: CloudEventSchemaV1_0`
(https://learn.microsoft.com/azure/event-grid/cloud-event-schema). Pure: no SDK, no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .runs import Run, State

SPEC_VERSION = "1.0"
TYPE_PREFIX = "chatft.run."

# The state a run moved into -> the event it emits.
EVENT_TYPES: dict[State, str] = {
    State.DEPLOYED: TYPE_PREFIX + "deployed",
    State.FAILED: TYPE_PREFIX + "failed",
    State.HELD: TYPE_PREFIX + "held",  # the quality gate kept the model from an endpoint (shared/quality_gate.py)
    State.REJECTED: TYPE_PREFIX + "rejected",
    State.RETIRED: TYPE_PREFIX + "retired",
}
TEST_EVENT_TYPE = TYPE_PREFIX + "test"  # `chatft notify test`: never emitted by a run


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Event):
    name: str = Field(description="registered model name")
    version: str = Field(description="registered model version")


class Validation(_Event):
    """The upload's validation counts (see the validation report at `report_path` in RUNS_CONTAINER)."""

    records: int = 0
    valid_records: int = 0
    invalid_records: int = 0
    error_counts: dict[str, int] = Field(default_factory=dict)
    report_path: str = ""


class Evaluation(_Event):
    """The quality gate's decision on the run (`shared.quality_gate.GateDecision`; the whole report is
    evaluation.json at `report_path` in RUNS_CONTAINER). Means are over the paired test records."""

    verdict: str = Field(description="better, worse, inconclusive or undecided")
    deploy: bool = Field(description="whether the gate let the model be deployed")
    metric: str = Field(description="the metric decided on, e.g. eval_loss")
    base: float | None = None
    tuned: float | None = None
    improvement: float | None = Field(None, description="mean per-record improvement; positive = tuned is better")
    low: float | None = Field(None, description="lower end of its 95% bootstrap interval")
    high: float | None = None
    records: int = 0
    reason: str = ""
    report_path: str = ""


class Links(_Event):
    run: str = Field(description="the run's status route, relative to the app's base URL: /api/runs/{id}")


class RunEventData(_Event):
    """`data` of every chatft.run.* event."""

    run_id: str
    state: str = Field(description="the state the run moved into: Deployed, Failed, Held, Rejected, Retired")
    previous_state: str = ""
    reason: str = Field("", description="why: the failure or rejection reason, or the history line's detail")
    stage: str = Field("", description="of a Failed run: the step that failed (submit, training, deploy, ...)")
    upload: str = Field("", description="the uploaded blob's name")
    model: ModelRef | None = None
    endpoint: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="the fine-tuning job's metrics")
    validation: Validation = Field(default_factory=Validation)
    evaluation: Evaluation | None = Field(None, description="the quality gate's decision, once the run was evaluated")
    links: Links


class RunEvent(_Event):
    """One CloudEvents 1.0 event in its JSON format. `source` is `/apps/<APP_ID>`, `subject` `runs/<run id>`."""

    specversion: Literal["1.0"] = SPEC_VERSION
    type: str = Field(description="chatft.run.deployed|failed|held|rejected|retired")
    source: str
    id: str = Field(description="stable per run and history line: a redelivery has the same id")
    time: str = Field(description="RFC 3339: when the run moved")
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    data: RunEventData


def source_for(app_id: str) -> str:
    """The events' `source`: one per deployment of the app (APP_ID)."""
    return f"/apps/{app_id}"


def event_id(run_id: str, history_index: int) -> str:
    return f"{run_id}.{history_index}"


def run_event(run: Run, history_index: int, app_id: str) -> dict[str, Any]:
    """The event of the move at `run.history[history_index]`, as its JSON object (raises KeyError for a state
    that emits none)."""
    move = run.history[history_index]
    before = next((t.state.value for t in reversed(run.history[:history_index]) if not t.kind), "")
    report = run.report or {}
    reason = run.failure.reason if move.state == State.FAILED and run.failure else move.detail
    data = RunEventData(
        run_id=run.run_id, state=move.state.value, previous_state=before, reason=reason,
        stage=run.failure.stage if move.state == State.FAILED and run.failure else "",
        upload=str((run.upload or {}).get("blob", "")),
        model=ModelRef(name=run.model_name, version=str(run.model_version)) if run.model_name else None,
        endpoint=run.endpoint_name, metrics=dict(run.metrics or {}),
        validation=Validation(**{k: report[k] for k in Validation.model_fields if k in report}),
        evaluation=_evaluation(run.evaluation), links=Links(run=f"/api/runs/{run.run_id}"))
    event = RunEvent(type=EVENT_TYPES[move.state], source=source_for(app_id), id=event_id(run.run_id, history_index),
                     time=move.at, subject=f"runs/{run.run_id}", data=data)
    return event.model_dump(mode="json")


def _evaluation(decision: dict[str, Any] | None) -> Evaluation | None:
    if not decision or "verdict" not in decision:
        return None
    return Evaluation(**{k: decision[k] for k in Evaluation.model_fields if k in decision})


def pending_events(before: Run, after: Run, app_id: str) -> list[dict[str, Any]]:
    """Events for the moves `after` adds to `before`'s history (notes such as retries emit none)."""
    return [run_event(after, i, app_id) for i in range(len(before.history), len(after.history))
            if not after.history[i].kind and after.history[i].state in EVENT_TYPES]


def test_event(app_id: str, event_id_: str, at: str) -> dict[str, Any]:
    """A signed test event (`chatft notify test`), shaped like a run's so a receiver's parser is exercised."""
    data = RunEventData(run_id="test", state="Test", reason="a test event from `chatft notify test`",
                        links=Links(run="/api/runs"))
    return RunEvent(type=TEST_EVENT_TYPE, source=source_for(app_id), id=event_id_, time=at, subject="runs/test",
                    data=data).model_dump(mode="json")
