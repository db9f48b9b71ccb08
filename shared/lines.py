"""Model lines: what callers call. A line has one endpoint (`ln-<line>`, `shared.ml.naming.line_endpoint_name`) and
one deployment per model version of it (`v<version>`); each deployment is one run's. Uploads under a folder belong
to the folder's line (or to the `model_line` override); an upload at the container's root has none and keeps its
own endpoint.

This module holds what the app decides about a line from its runs and its endpoint: who owns the endpoint, which
runs serve which deployment. No SDK import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .bootstrap import Services
from .ml.naming import line_endpoint_name
from .ml.port import TAG_APP, TAG_LINE, TAG_RUN, Endpoint, MLBackendError
from .runs import Run, State

log = logging.getLogger(__name__)


def owner_refusal(line: str, endpoint: Endpoint | None, app_id: str) -> str | None:
    """Why `line` cannot use its endpoint, or None: the endpoint is absent, or it is this app's endpoint of this
    line. Otherwise the name is another's (another app's, a run's, another line's, or an endpoint the app never
    made) and the reason says whose."""
    if endpoint is None:
        return None
    tags = endpoint.tags or {}
    name = endpoint.name
    if tags.get(TAG_APP) != app_id:
        whose = f"app {tags[TAG_APP]!r}" if tags.get(TAG_APP) else "someone outside this app (no chatft-app tag)"
        return (f"model line {line!r} needs endpoint {name}, which exists and belongs to {whose}; rename the folder "
                f"(or set the model_line metadata) to another line name")
    if tags.get(TAG_LINE) != line:
        other = (f"line {tags[TAG_LINE]!r}" if tags.get(TAG_LINE)
                 else f"run {tags.get(TAG_RUN) or '(unknown)'}, not a model line")
        return (f"model line {line!r} needs endpoint {name}, which this app made for {other}; rename the folder "
                f"(or set the model_line metadata) to another line name")
    return None


def refusal_of_line(svc: Services, line: str) -> str | None:
    """Why an upload to `line` must be refused now (its endpoint name belongs to another), or None. A backend that
    cannot be asked now does not refuse: creating the endpoint checks the same (`NameTaken`)."""
    try:
        endpoint = svc.ml.get_endpoint(line_endpoint_name(line))
    except MLBackendError as exc:
        log.warning("could not look at the endpoint of line %s; creating it will check its owner: %s", line,
                    type(exc).__name__)
        return None
    return owner_refusal(line, endpoint, svc.settings.app_id)


@dataclass(frozen=True)
class LineView:
    """A line as the proxy and the API see it from its runs: the runs serving it, newest version first."""

    line: str
    endpoint_name: str
    runs: tuple[Run, ...] = ()  # Deployed runs of the line, newest model version first
    by_version: Mapping[str, Run] = field(default_factory=dict)
    # The run behind each deployment on the line's endpoint, a canary's (Deploying) included: whose outcomes an
    # answer naming that deployment (`azureml-model-deployment`) counts on.
    by_deployment: Mapping[str, Run] = field(default_factory=dict)

    @property
    def current(self) -> Run | None:
        """The run serving the line's callers: the newest Deployed version not kept as a standby (a previous
        version kept at 0% after a rollout has `standby_until`)."""
        serving = [r for r in self.runs if not r.standby_until]
        return (serving or list(self.runs) or [None])[0]


def _version_key(run: Run) -> tuple[int, str]:
    version = run.model_version
    return (int(version) if version.isdigit() else 0, run.created_at)


def line_views(runs: Iterable[Run]) -> dict[str, LineView]:
    """The lines among `runs` with a Deployed run, each with its Deployed runs by model version (the newest run of
    a version wins) and the run behind each deployment of its endpoint (Deploying ones too: a canary)."""
    grouped: dict[str, list[Run]] = {}
    deploying: dict[str, list[Run]] = {}
    for run in runs:
        if run.line and run.state == State.DEPLOYED:
            grouped.setdefault(run.line, []).append(run)
        elif run.line and run.state == State.DEPLOYING:
            deploying.setdefault(run.line, []).append(run)
    views = {}
    for line, members in grouped.items():
        members.sort(key=_version_key, reverse=True)
        endpoint = line_endpoint_name(line)
        behind = {r.deployment_name: r for r in [*reversed(members), *deploying.get(line, ())]
                  if r.endpoint_name == endpoint and r.deployment_name}
        views[line] = LineView(line=line, endpoint_name=endpoint, runs=tuple(members),
                               by_version={r.model_version: r for r in reversed(members) if r.model_version},
                               by_deployment=behind)
    return views

