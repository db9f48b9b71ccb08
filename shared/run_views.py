"""What the HTTP API shows of runs: the run view (`shared.protocol.RunView`), the `?state=&limit=` query of
`GET /api/runs`, and OpenAI's model list of the deployed runs. Pure and light (no pydantic: the shapes are
declared in `shared.protocol`, and a test checks these dicts against them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .api_errors import ApiError
from .runs import Run, State, parse_iso

# A model reference: a registered model name, optionally `:version`, or a run id.
MODEL_REF_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?::[A-Za-z0-9._-]{1,64})?"
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9-]{0,79}"
_MODEL_REF = re.compile(MODEL_REF_PATTERN)
_RUN_ID = re.compile(RUN_ID_PATTERN)
MAX_RUNS_LIMIT = 1000
_STATES = {s.value: s for s in State}


def is_model_ref(text: str) -> bool:
    """A model reference is a registered model name, `name:version`, or a run id."""
    return bool(_MODEL_REF.fullmatch(text))


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.fullmatch(text))


def _unix(text: str) -> int:
    return int(parse_iso(text).timestamp())


def model_entry(model_id: str, run: Run) -> dict[str, Any]:
    """One OpenAI `model` object (`ModelCard`) for a deployed run."""
    return {"id": model_id, "object": "model", "created": _unix(run.entered_at(State.DEPLOYED) or run.created_at),
            "owned_by": "chatft"}


def model_list(deployed: Iterable[Run]) -> dict[str, Any]:
    """OpenAI's model list: each model line (its newest deployed version serves it), each registered model name
    (its newest deployed run serves it), then each run id."""
    runs = sorted(deployed, key=lambda r: (r.created_at, r.run_id), reverse=True)
    by_name: dict[str, Run] = {}
    line_runs = (r for r in runs if r.line)
    for run in sorted(line_runs, key=lambda r: int(r.model_version) if r.model_version.isdigit() else 0, reverse=True):
        by_name.setdefault(run.line, run)
    for run in runs:
        if run.model_name:
            by_name.setdefault(run.model_name, run)
    data = [model_entry(name, run) for name, run in by_name.items()]
    data += [model_entry(run.run_id, run) for run in runs if run.run_id not in by_name]
    return {"object": "list", "data": data}


def run_view(run: Run) -> dict[str, Any]:
    """What the API shows of a run (`RunView`): states with times, report summary, job, metrics, model, endpoint.
    No secrets are kept on a run; this still lists fields one by one so nothing new appears unreviewed."""
    view: dict[str, Any] = {
        "run_id": run.run_id,
        "state": run.state.value,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "history": [t.to_dict() for t in run.history],
        "upload": {k: run.upload[k] for k in ("container", "blob", "size") if k in run.upload},
        "report": run.report or None,
        "job": {"name": run.job_name, "status": run.job_status} if run.job_name else None,
        "metrics": run.metrics,
        "evaluation": evaluation_view(run),
        "model": ({"name": run.model_name, "version": run.model_version, "id": run.model_id}
                  if run.model_name else None),
        "endpoint": ({"name": run.endpoint_name, "deployment": run.deployment_name, "scoring_uri": run.scoring_uri,
                      "last_used_at": run.last_used_at or None, "keep": run.keep} if run.endpoint_name else None),
        "failure": {"stage": run.failure.stage, "reason": run.failure.reason} if run.failure else None,
        "reconciled_at": run.reconciled_at or None,
        "line": ({"name": run.line, "standby_until": run.standby_until or None,
                  "rollout": {k: v for k, v in run.rollout.items() if k != "served_at_start"}} if run.line else None),
        "links": {"self": f"/api/runs/{run.run_id}"},
    }
    if run.line:
        view["links"]["line"] = f"/api/lines/{run.line}"
    if run.duplicate_of:  # ended as a duplicate upload: the run that has (or had) the same data and settings
        view["links"]["duplicate_of"] = f"/api/runs/{run.duplicate_of}"
    if run.state == State.DEPLOYED:
        view["links"]["score"] = f"/api/score/{run.run_id}"
    if run.redeployable():
        view["links"]["deploy"] = f"/api/runs/{run.run_id}/deploy"
    return view


def evaluation_view(run: Run) -> dict[str, Any] | None:
    """The quality gate's comparison of the run's fine-tune with its base model and, for a new version of a model
    line, with the line's version in service (`EvaluationView`), or None before an evaluation (or with
    EVAL_GATE=off). The samples and per-record scores are in `report_path`."""
    if not run.evaluation:
        return None
    e = run.evaluation
    return {key: e.get(key) for key in ("gate", "metric", "higher_is_better", "records", "base", "tuned",
                                        "improvement", "low", "high", "min_improvement", "verdict", "deploy",
                                        "reason", "metrics", "report_path")} | {
        "deployed_by_choice": run.deployed_by_choice or None, "champion": _champion_view(e.get("champion"))}


def _champion_view(champion: Any) -> dict[str, Any] | None:
    """A new version of a model line against the line's version in service (`ChampionComparison`), or None."""
    if not isinstance(champion, dict):
        return None
    return {key: champion.get(key) for key in ("run_id", "model_id", "model_version", "metric", "records",
                                               "champion", "tuned", "improvement", "low", "high", "verdict",
                                               "deploy", "reason", "metrics")}


@dataclass(frozen=True)
class RunQuery:
    states: tuple[State, ...] = ()
    limit: int = 100


def run_query(params: Mapping[str, str]) -> RunQuery:
    """`?state=Deployed,Retired&limit=N` checked; 400 says what is wrong."""
    states: list[State] = []
    for word in params["state"].split(",") if "state" in params else ():
        state = _STATES.get(word.strip())
        if state is None:
            raise ApiError(400, "invalid_query", f"state {word[:40]!r} is unknown; use one or more (comma-separated) "
                                                 f"of " + ", ".join(s.value for s in State), param="state")
        states.append(state)
    limit = 100
    if "limit" in params:
        raw = params["limit"].strip()
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_RUNS_LIMIT:
            raise ApiError(400, "invalid_query", f"limit must be a whole number from 1 to {MAX_RUNS_LIMIT}",
                           param="limit")
        limit = int(raw)
    return RunQuery(states=tuple(states), limit=limit)
