"""The run: one upload's way from data to a deployed model. Pure: no SDK, no I/O.

A run moves through `State`s along `TRANSITIONS` only; every move is timestamped into `history`. Handlers
change runs through `RunStore.update`, which applies a change by compare-and-swap, so duplicate or
out-of-order triggers meet an up-to-date run and either move it legally or find nothing left to do.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .ml.naming import ENDPOINT_MAX_LEN


class State(str, enum.Enum):
    RECEIVED = "Received"
    VALIDATING = "Validating"
    REJECTED = "Rejected"
    QUEUED = "Queued"
    SUBMITTED = "Submitted"
    TRAINING = "Training"
    TRAINED = "Trained"
    EVALUATING = "Evaluating"
    REGISTERED = "Registered"
    HELD = "Held"
    DEPLOYING = "Deploying"
    DEPLOYED = "Deployed"
    RETIRED = "Retired"
    FAILED = "Failed"

    def __str__(self) -> str:  # so f-strings and JSON show "Queued", not "State.QUEUED"
        return self.value


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.RECEIVED: frozenset({S.VALIDATING, S.REJECTED, S.FAILED}),
    S.VALIDATING: frozenset({S.QUEUED, S.REJECTED, S.FAILED}),
    S.REJECTED: frozenset(),
    S.QUEUED: frozenset({S.SUBMITTED, S.FAILED}),
    # A Completed event may overtake Running: Submitted goes straight to Trained.
    S.SUBMITTED: frozenset({S.TRAINING, S.TRAINED, S.FAILED}),
    S.TRAINING: frozenset({S.TRAINED, S.FAILED}),
    # Trained -> Evaluating (the quality gate) -> Registered; with EVAL_GATE=off, Trained -> Registered.
    S.TRAINED: frozenset({S.EVALUATING, S.REGISTERED, S.FAILED}),
    S.EVALUATING: frozenset({S.REGISTERED, S.FAILED}),
    # Registered -> Held when the gate says the fine-tune is not better: registered, no endpoint, nothing billed.
    S.REGISTERED: frozenset({S.DEPLOYING, S.HELD, S.FAILED}),
    # A person may deploy a Held run anyway (POST /api/runs/{id}/deploy); that choice is recorded on the run.
    S.HELD: frozenset({S.DEPLOYING}),
    S.DEPLOYING: frozenset({S.DEPLOYED, S.FAILED, S.RETIRED}),
    S.DEPLOYED: frozenset({S.RETIRED, S.FAILED}),
    # A retired model, or one whose deployment failed after registration, can be deployed again.
    S.RETIRED: frozenset({S.DEPLOYING}),
    S.FAILED: frozenset({S.DEPLOYING}),
}


class IllegalTransition(Exception):
    """A run was asked to move where `TRANSITIONS` does not allow."""

    def __init__(self, run_id: str, current: State, target: State):
        super().__init__(f"run {run_id}: {current} -> {target} is not allowed")
        self.run_id, self.current, self.target = run_id, current, target


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Transition:
    """One line of a run's history: a move into `state`, or (`kind` set) something that happened while in it."""

    state: State
    at: str
    detail: str = ""
    # "" a move; "retry" a scheduled retry of a step that failed transiently (see shared/retry.py); "traffic" a
    # change of a model line's live traffic (shared/rollout.py), the shares in `detail`
    kind: str = ""
    delay_seconds: float | None = None  # of a retry: how long until it runs
    step: str = ""  # the step (shared/steps.py) that wrote the line, e.g. "submit", "register", "check"
    message_id: str = ""  # of a retry: the id of the message that carries it (duplicate detection's key)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"state": self.state.value, "at": self.at, "detail": self.detail}
        for name in ("kind", "step", "message_id"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        if self.delay_seconds is not None:
            data["delay_seconds"] = self.delay_seconds
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Transition":
        return cls(State(data["state"]), data["at"], data.get("detail", ""), data.get("kind", ""),
                   data.get("delay_seconds"), data.get("step", ""), data.get("message_id", ""))


# The states a guarded write applies from (`Run.advance`, `fail`, `edit`, `note`); None: any state.
FromStates = tuple[State, ...] | frozenset[State] | None


@dataclass
class Failure:
    stage: str  # the state the run was in when it failed, or a named step ("submit", "deploy", ...)
    reason: str


@dataclass
class Run:
    """Everything the app knows of one run. Fields after `history` are filled in as the run advances."""

    run_id: str
    state: State
    created_at: str
    history: list[Transition] = field(default_factory=list)
    upload: dict[str, Any] = field(default_factory=dict)  # container, blob, etag, size
    overrides: dict[str, Any] = field(default_factory=dict)  # typed per-upload overrides from blob metadata
    report: dict[str, Any] = field(default_factory=dict)  # validation summary (ok, records, counts, path)
    train_path: str = ""  # path of train.jsonl inside RUNS_CONTAINER
    test_path: str = ""
    job_name: str = ""
    job_status: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation_job: str = ""  # the evaluation job's name (evaluation_job_name_for)
    evaluation: dict[str, Any] = field(default_factory=dict)  # the gate's decision (GateDecision.to_dict) + path
    deployed_by_choice: str = ""  # when a person deployed a Held run anyway (ISO time), else ""
    model_name: str = ""
    model_version: str = ""
    model_id: str = ""
    endpoint_name: str = ""
    deployment_name: str = ""
    scoring_uri: str = ""
    deploy_started_at: str = ""
    deploy_checks: int = 0
    endpoint_accepted_at: str = ""  # when the backend accepted creating `endpoint_name`; "" not (yet) accepted
    last_used_at: str = ""
    keep: bool = False
    line: str = ""  # the model line the run belongs to (`shared.ml.naming.line_of_upload`); "" for a root upload
    # What the scoring proxy saw of this run's deployment, cumulative: {"requests", "errors", "latency_ms_total"}
    # (errors: 5xx, timeouts, unreachable). A rollout compares two readings to judge a canary's error rate.
    served: dict[str, Any] = field(default_factory=dict)
    # A model line's previous deployment, kept at 0% traffic after a rollout so that a rollback is one call: when it
    # may be deleted (ISO time; ROLLOUT_KEEP_PREVIOUS_HOURS after the switch), "" when not kept. Set on the run whose
    # deployment is kept; the rollout deletes it then, and the idle cleanup lists it and deletes it when overdue.
    standby_until: str = ""
    # A model line's rollout of this run's deployment (`shared.rollout`): {"previous": the deployment that served
    # before ("" for a line's first version), "previous_run", "canary_percent", "canary_started_at" (ISO, once the
    # canary takes traffic), "verdict" (the figures it was judged on)}; {} for a root upload.
    rollout: dict[str, Any] = field(default_factory=dict)
    reconciled_at: str = ""  # when the reconciler last asked the backend about this run (shared/reconcile.py)
    duplicate_of: str = ""  # the earlier run with the same data and settings, when this one ended as its duplicate
    failure: Failure | None = None
    # Events not yet handed to their deliveries (`shared.events`, `shared.notifications`): written in the same
    # compare-and-swap as the move that made them, removed once their delivery messages are sent.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = field(default=None, compare=False)  # the store's version; never serialized

    @property
    def updated_at(self) -> str:
        return self.history[-1].at if self.history else self.created_at

    def entered_at(self, state: State) -> str | None:
        """When the run last entered `state`, if it did."""
        for t in reversed(self.history):
            if t.state == state and not t.kind:
                return t.at
        return None

    def redeploy_refusal(self) -> str | None:
        """Why the run cannot be deployed (again), or None when it can: only a Retired, Failed or Held run with a
        registered model can (the redeploy route and the proxy's 410 answer both follow this rule)."""
        if self.state in (State.DEPLOYING, State.DEPLOYED):
            return f"run {self.run_id} is {self.state} already"
        if self.state not in (State.RETIRED, State.FAILED, State.HELD) or not self.model_name:
            return f"run {self.run_id} is {self.state} and has no registered model to deploy"
        return None

    def redeployable(self) -> bool:
        return self.redeploy_refusal() is None

    def can_move_to(self, target: State) -> bool:
        return target in TRANSITIONS[self.state]

    def _in(self, from_states: FromStates) -> bool:
        """Whether a write guarded by `from_states` applies to this run (None: it applies in any state)."""
        return from_states is None or self.state in from_states

    def advance(self, target: State, at: datetime, detail: str = "", *,
                from_states: FromStates = None, step: str = "",
                **changes: Any) -> "Run | None":
        """Move to `target`, record it (with the `step` that moved it), and set `changes` on the run.

        With `from_states`, a run in any other state is left alone: None ("no change"), what `RunStore.update`
        takes for "nothing to write". A move `TRANSITIONS` does not allow raises `IllegalTransition`."""
        if not self._in(from_states):
            return None
        if not self.can_move_to(target):
            raise IllegalTransition(self.run_id, self.state, target)
        _check_settable(changes)
        return dataclasses.replace(self, state=target, **changes,
                                   history=[*self.history, Transition(target, iso(at), detail, step=step)])

    def edit(self, *, from_states: FromStates = None,
             **changes: Any) -> "Run | None":
        """The run with `changes` set and no history line (bookkeeping that is not progress, e.g. a check count);
        with `from_states`, None ("no change") for a run in any other state (as `advance`)."""
        if not self._in(from_states):
            return None
        _check_settable(changes)
        return dataclasses.replace(self, **changes)

    def note(self, at: datetime, detail: str, kind: str, delay_seconds: float | None = None, *, step: str = "",
             message_id: str = "", from_states: FromStates = None,
             **changes: Any) -> "Run | None":
        """Record in the history something that happened without a move (a retry scheduled, traffic changed): the
        state stays, `changes` are set; with `from_states`, None ("no change") for a run in any other state."""
        if not self._in(from_states):
            return None
        _check_settable(changes)
        line = Transition(self.state, iso(at), detail, kind, delay_seconds, step, message_id)
        return dataclasses.replace(self, **changes, history=[*self.history, line])

    def moves_into(self, state: State) -> int:
        """How many times the run moved into `state` (notes made while in it do not count)."""
        return sum(1 for t in self.history if t.state == state and not t.kind)

    def fail(self, stage: str, reason: str, at: datetime, step: str = "", *,
             from_states: FromStates = None, **changes: Any) -> "Run | None":
        """Move to Failed with the stage and a reason a user can act on (`step`: the step that failed it); with
        `from_states`, None for a run in any other state (as `advance`)."""
        return self.advance(State.FAILED, at, detail=reason, step=step, from_states=from_states,
                            failure=Failure(stage=stage, reason=reason), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("etag")
        data["state"] = self.state.value
        data["history"] = [t.to_dict() for t in self.history]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], etag: str | None = None) -> "Run":
        data = dict(data)
        data["state"] = State(data["state"])
        data["history"] = [Transition.from_dict(t) for t in data.get("history", [])]
        if data.get("failure"):
            data["failure"] = Failure(**data["failure"])
        known = {f.name for f in dataclasses.fields(cls)}
        run = cls(**{k: v for k, v in data.items() if k in known})
        run.etag = etag
        return run


def _check_settable(changes: dict[str, Any]) -> None:
    for name in changes:
        if name not in _SETTABLE:
            raise AttributeError(f"Run has no settable field {name!r}")


_SETTABLE = frozenset(f.name for f in dataclasses.fields(Run)) - {"run_id", "state", "history", "etag"}


def new_run(run_id: str, at: datetime, **fields_: Any) -> Run:
    """A run just received."""
    return Run(run_id=run_id, state=State.RECEIVED, created_at=iso(at),
               history=[Transition(State.RECEIVED, iso(at), "")], **fields_)


_UNSAFE = re.compile(r"[^a-z0-9-]+")


def slug(text: str, max_len: int = 40) -> str:
    """Lower-case letters, digits and single hyphens: safe in paths, job names and endpoint names."""
    s = _UNSAFE.sub("-", text.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)
    return s[:max_len].strip("-")


def run_id_for(container: str, blob_name: str, etag: str) -> str:
    """Deterministic run id for one version of one upload: the same blob version always maps to the same run.

    A readable prefix from the blob name (sanitised) and a hash of container, name and ETag.
    """
    digest = hashlib.sha256(f"{container}\n{blob_name}\n{etag.strip(chr(34))}".encode()).hexdigest()[:12]
    stem = blob_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    prefix = slug(stem, 20) or "upload"
    if not prefix[0].isalpha():
        prefix = "r" + prefix
    return f"{prefix}-{digest}"[:40]


def job_name_for(run_id: str) -> str:
    """The fine-tuning job's name; derived so a resubmission finds the existing job. A run id (`run_id_for`) is
    lower-case letters, digits and hyphens, so the name passes Azure's job rule (`shared.ml.naming.JOB`)."""
    return f"chatft-{run_id}"


def experiment_name_for(base_model: str) -> str:
    """The notebook's experiment name, `chat_completion_<model>`, made safe for Azure's experiment rule."""
    return f"chat_completion_{slug(base_model, 60) or 'model'}"


EVALUATION_SUFFIX = "-eval"


def evaluation_job_name_for(run_id: str) -> str:
    """The evaluation job's name: the fine-tuning job's and `-eval` (a run id ends with its hash, never `-eval`)."""
    return job_name_for(run_id) + EVALUATION_SUFFIX


def run_id_from_job_name(job_name: str) -> str | None:
    """The run a fine-tuning or evaluation job belongs to; None for a job the app did not name."""
    if not job_name.startswith("chatft-"):
        return None
    return job_name[len("chatft-"):].removesuffix(EVALUATION_SUFFIX) or None


def endpoint_name_for(run_id: str, attempt: int = 0) -> str:
    """A valid online endpoint name (3-32 chars, starts with a letter, letters/digits/hyphens) from the run.

    Ends with the run's hash so names stay unique; `attempt` gives a fresh name for a redeployment, since a
    deleted endpoint's name can stay reserved for a while.
    """
    digest = slug(run_id.rsplit("-", 1)[-1], 8)
    suffix = (f"-{digest}" if digest else "") + (f"-{attempt}" if attempt else "")
    head = slug(run_id.rsplit("-", 1)[0], ENDPOINT_MAX_LEN - len("ft-") - len(suffix)) or "run"
    return f"ft-{head}{suffix}"[:ENDPOINT_MAX_LEN].strip("-")
