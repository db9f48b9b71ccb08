"""The step runner: every step of a run is declared once, and one runner decides what a failure means.

A `Step` says what the step is called (its `name`, written on the history lines it adds and on the run's
`failure`), which states it applies from (`applies_from`, plus an optional `when`), what it does (`act`), and
where its retries go (`retries`). `run_step` carries it out, the same way for every step:

    find the run -> guard (`Step.applies`) -> act -> compare-and-swap the outcome, guarded again on the fresh run
    act raised PermanentError                -> the run fails at once, naming the step (its `cleanup` first)
    act raised a transient fault             -> a retry is scheduled with backoff (`shared.retry`, the only
      (`shared.retry.is_transient`)             classifier of transient faults); past the retry window the run
                                                fails with the last error. The reconciler (`reconciling`) raises
                                                instead: its next tick is the retry.
    act raised `NotYet`                      -> looked at again with backoff; past the window left as it is
    act raised anything else                 -> it propagates: the message is redelivered, then dead-lettered,
                                                and `dead_letter` fails the run naming the step

An `act(svc, run, trigger)` reads the run it is given and calls the backend (idempotently: names are derived from
the run), but never writes the run: it returns what to write, `Move` (to another state), `Edit` (fields only),
`Fail`, or None (nothing to do), and the runner writes it by compare-and-swap only if the fresh run still passes
the step's guard. So "only if the run is still in state X" is said once, in `applies_from`.

Adding a step (e.g. an evaluation gate between Trained and Registered):
1. add its states to `shared.runs.State` and `TRANSITIONS` (Trained -> Evaluating -> Evaluated | Failed);
2. write its act: `def _evaluate(svc, run, trigger) -> Move | Fail | None` (raise `PermanentError` for what retrying
   cannot fix, let transient faults raise);
3. declare it: `EVALUATE = Step("evaluate", (State.TRAINED,), _evaluate, Resend(_continue("evaluate")),
   stage="evaluate")` and set the next step's `applies_from` to the state it moves to;
4. put it in its place in the route that owns its states (`shared.orchestration.AFTER_JOB`, or a route of its own
   in `ROUTES` there) and in `STEPS` (dead letters find it by name). The reconciler and the DEPLOY_QUEUE handler
   follow the routes, so a stuck Evaluating run has an owner with no more code.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

from .messages import FIRST_TRY, Attempt, ContinueRun, SubmitRun, retry_of
from .ml.port import PermanentError
from .retry import is_transient, retry_policy
from .runs import Run, State, iso, parse_iso

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- what triggered


@dataclass(frozen=True)
class Trigger:
    """What a step is run for: the message's earlier tries and id, the endpoint it was sent for, whether a job was
    reported Completed (`expect_done`), and whether the reconciler runs it (`reconciling`: schedule nothing)."""

    attempt: Attempt = FIRST_TRY
    message_id: str = ""
    endpoint: str = ""
    expect_done: bool = False
    reconciling: bool = False


# --------------------------------------------------------------------------------------- what an act returns


@dataclass(frozen=True)
class Move:
    """Move the run to `to` (a history line with `detail`), set `changes`; `from_states` narrows the step's guard
    for this move. `then(svc, run)` runs after the write succeeded (e.g. send the next message)."""

    to: State
    detail: str = ""
    changes: Mapping[str, Any] = field(default_factory=dict)
    from_states: tuple[State, ...] | None = None
    then: Callable[[Any, Run], None] | None = None


@dataclass(frozen=True)
class Edit:
    """Set `changes` on the run without a move (bookkeeping, not progress; `note` adds a history line in the same
    write); `then` as for `Move`."""

    changes: Mapping[str, Any]
    then: Callable[[Any, Run], None] | None = None
    note: str = ""  # with it, a history line of kind `note_kind` (e.g. a traffic change), the state unchanged
    note_kind: str = "traffic"


@dataclass(frozen=True)
class Fail:
    """Fail the run with `reason` (`stage` defaults to the step's); `cleanup=False` skips the step's cleanup."""

    reason: str
    stage: str = ""
    changes: Mapping[str, Any] = field(default_factory=dict)
    cleanup: bool = True


Outcome = Union[Move, Edit, Fail, None]


class NotYet(Exception):
    """The step cannot be taken yet (e.g. a job reported Completed still says Finalizing): look again later with
    backoff; past the retry window the run is left as it is, for the reconciler."""


# ------------------------------------------------------------------------------------- where retries go


@dataclass(frozen=True)
class Retry:
    """A retry scheduled: in `delay` seconds, by the message `message_id` ("" when no message was sent)."""

    delay: float
    detail: str
    message_id: str = ""


class RetryTarget(Protocol):
    def schedule(self, svc, step: "Step", run: Run, trigger: Trigger, error: str) -> Retry | str:
        """Schedule the step again: the retry, or (a str) why it gives up."""


@dataclass(frozen=True)
class Resend:
    """Retries go as a scheduled copy of `message(run, trigger)` on its queue, with the backoff of
    `shared.retry.retry_policy`. Retry n's id is `<origin>-<n>`; `origin(step, run, trigger)` gives the origin of a
    first failure (default `<run id>-<step>-<state>`: a duplicate trigger failing the same way sends the same
    ids, which duplicate detection drops)."""

    message: Callable[[Run, Trigger], SubmitRun | ContinueRun]
    origin: Callable[["Step", Run, Trigger], str] | None = None

    def schedule(self, svc, step: "Step", run: Run, trigger: Trigger, error: str) -> Retry | str:
        now, attempt = svc.clock(), trigger.attempt
        first = parse_iso(attempt.since) if attempt.since else now
        number = attempt.number + 1
        delay = retry_policy(svc.settings).next_delay(number, first, now)
        if delay is None:
            minutes = (now - first).total_seconds() / 60
            return (f"{step.name} kept failing transiently ({number} tries over {minutes:.1f} minutes, retry window "
                    f"{svc.settings.retry_window_minutes:g} minutes); last error: {error}")
        origin = attempt.origin or (self.origin or _default_origin)(step, run, trigger)
        retry = retry_of(self.message(run, trigger), Attempt(number, iso(first), origin))
        # Sent before the note: should noting fail, the redelivered message sends this retry again under the same
        # id, which Service Bus duplicate detection drops (locally the handlers are idempotent).
        svc.messages.send(getattr(svc.settings, retry.queue_setting), retry, delay_seconds=delay)
        return Retry(delay, f"retry {number} of {step.name} in {delay:.1f} s: {error}", retry.message_id)


@dataclass(frozen=True)
class ByLaterMessage:
    """Retries ride on a message already scheduled (e.g. the deployment's first check creates a missing
    endpoint): nothing is sent; the history notes when that message comes (`delay(svc, run)` seconds)."""

    delay: Callable[[Any, Run], float]
    says: str = "the next check tries again"

    def schedule(self, svc, step: "Step", run: Run, trigger: Trigger, error: str) -> Retry | str:
        delay = float(self.delay(svc, run))
        return Retry(delay, f"{step.name} failed: {error}; {self.says}, in {delay:g} s")


def _default_origin(step: "Step", run: Run, trigger: Trigger) -> str:
    return f"{run.run_id}-{_slug(step.name)}-{run.state.value.lower()}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ----------------------------------------------------------------------------------------------- a step


@dataclass(frozen=True)
class Step:
    """One step of a run, declared once (see the module docstring).

    `stage`: what `Run.failure.stage` says when the step fails (default: `name`). `when(run, trigger)`: a guard
    beyond the state. `keyed_by`: run fields that must not change between the act's read and the write (e.g. the
    endpoint name: a redeployment meanwhile makes the outcome stale). `cleanup(svc, run) -> str`: runs before the
    step fails the run (e.g. delete a half-made endpoint); its text is added to the reason."""

    name: str
    applies_from: tuple[State, ...]
    act: Callable[[Any, Run, Trigger], Outcome]
    retries: RetryTarget
    stage: str = ""
    when: Callable[[Run, Trigger], bool] | None = None
    keyed_by: tuple[str, ...] = ()
    cleanup: Callable[[Any, Run], str] | None = None

    def applies(self, run: Run, trigger: Trigger = Trigger()) -> bool:
        return run.state in self.applies_from and (self.when is None or self.when(run, trigger))

    def _still(self, fresh: Run, read: Run, trigger: Trigger) -> bool:
        return self.applies(fresh, trigger) and all(getattr(fresh, k) == getattr(read, k) for k in self.keyed_by)

    @property
    def failure_stage(self) -> str:
        return self.stage or self.name


# ----------------------------------------------------------------------------------------------- the runner


def run_step(svc, step: Step, run_id: str, trigger: Trigger = Trigger()) -> Run | None:
    """Carry out `step` on run `run_id`: find -> guard -> act -> compare-and-swap (see the module docstring).

    Returns the run as written (or as found when the step does not apply), None when there is no such run.
    Raises what the act raised when it is neither permanent nor transient, and, with `trigger.reconciling`,
    transient faults too."""
    run = svc.runs.find(run_id)
    if run is None:
        log.warning("%s: no run %s; nothing to do", step.name, run_id[:80])
        return None
    if not step.applies(run, trigger):
        log.debug("%s: run %s is %s; nothing to do", step.name, run_id, run.state)
        return run
    try:
        outcome = step.act(svc, run, trigger)
    except PermanentError as exc:
        return fail(svc, step, run, str(exc), trigger)
    except NotYet as exc:
        if trigger.reconciling:
            return run
        return _retry(svc, step, run, trigger, str(exc), give_up=lambda reason: run)
    except Exception as exc:
        if trigger.reconciling or not is_transient(exc):
            raise
        return _retry(svc, step, run, trigger, describe(exc),
                      give_up=lambda reason: fail(svc, step, run, reason, trigger))
    return _write(svc, step, run, trigger, outcome)


def run_steps(svc, steps: Sequence[Step], run_id: str, trigger: Trigger = Trigger()) -> Run | None:
    """Run `steps` in order (each one only where its guard holds). The trigger's attempt and message id belong to
    the step the run was at: once a step has moved the run, the steps after it start as first tries."""
    run = svc.runs.find(run_id)
    for step in steps:
        if run is None:
            return None
        before = run.state
        run = run_step(svc, step, run_id, trigger)
        if run is not None and run.state != before:
            trigger = dataclasses.replace(trigger, attempt=FIRST_TRY, message_id="", expect_done=False)
    return run


def fail(svc, step: Step, run: Run, reason: str, trigger: Trigger = Trigger(), stage: str = "",
         changes: Mapping[str, Any] | None = None, cleanup: bool = True) -> Run:
    """Fail `run` at `step` with `reason`, if it still is where the step applies (its cleanup runs first)."""
    if cleanup and step.cleanup is not None:
        reason += step.cleanup(svc, run)
    stage = stage or step.failure_stage
    log.warning("run %s failed at %s (%s): %s", run.run_id, stage, step.name, reason)
    now = svc.clock()

    def change(r: Run) -> Run | None:
        if not step._still(r, run, trigger) or not r.can_move_to(State.FAILED):
            return None
        return r.fail(stage, reason, now, step=step.name, **dict(changes or {}))

    return svc.runs.update(run.run_id, change)


def dead_letter(svc, steps: Sequence[Step], run: Run, text: str, trigger: Trigger = Trigger()) -> Run:
    """A message for one of `steps` was dead-lettered: fail `run` at the first of them that still applies to it
    (a stale message, whose run moved on, changes nothing)."""
    for step in steps:
        if step.applies(run, trigger):
            return fail(svc, step, run, text, trigger)
    log.info("dead-lettered message for run %s (%s now) changes nothing", run.run_id, run.state)
    return run


def _write(svc, step: Step, read: Run, trigger: Trigger, outcome: Outcome) -> Run:
    if outcome is None:
        return read
    if isinstance(outcome, Fail):
        return fail(svc, step, read, outcome.reason, trigger, outcome.stage, outcome.changes, outcome.cleanup)
    now = svc.clock()
    written: list[bool] = []

    def change(r: Run) -> Run | None:
        written.clear()
        if not step._still(r, read, trigger):
            return None
        if isinstance(outcome, Move):
            changed = r.advance(outcome.to, now, outcome.detail, from_states=outcome.from_states or step.applies_from,
                                step=step.name, **outcome.changes)
        else:
            changed = r.edit(**outcome.changes)
            if outcome.note:
                changed = changed.note(now, outcome.note, outcome.note_kind, step=step.name)
        written.append(changed is not None)
        return changed

    run = svc.runs.update(read.run_id, change)
    if written and written[0] and outcome.then is not None:
        outcome.then(svc, run)
    return run


def _retry(svc, step: Step, run: Run, trigger: Trigger, error: str, give_up: Callable[[str], Run]) -> Run:
    retry = step.retries.schedule(svc, step, run, trigger, error)
    if isinstance(retry, str):
        log.warning("run %s: %s; giving up", run.run_id, retry)
        return give_up(retry)
    log.warning("run %s: %s", run.run_id, retry.detail)
    now = svc.clock()

    def note(r: Run) -> Run | None:
        # A duplicate trigger that failed the same way sent the same retry (dropped by duplicate detection): noted once.
        if r.state != run.state or not step._still(r, run, trigger) or (retry.message_id and any(
                t.kind == "retry" and t.message_id == retry.message_id for t in r.history)):
            return None
        return r.note(now, retry.detail, "retry", retry.delay, step=step.name, message_id=retry.message_id)

    return svc.runs.update(run.run_id, note)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters: what a history line says of an error."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


__all__ = ["Step", "Trigger", "Move", "Edit", "Fail", "NotYet", "Resend", "ByLaterMessage", "Retry", "run_step",
           "run_steps", "fail", "dead_letter", "describe"]
