"""The evaluation step's two halves, for the run's steps to call: what to ask the ML backend for once the fine-tuning
job Completed (`evaluation_request`: for a new version of a model line, the line's version in service is scored
too), and what the gate decides once the evaluation job Completed (`gate_run`).

No Azure SDK: the report is read through the app's blob adapter, checked against its contract
(`shared.protocol.EvaluationReport`) and decided on by `shared.quality_gate`.
"""

from __future__ import annotations

import logging
from typing import Any

from .bootstrap import Services
from .ml.port import EvaluationRequest, PermanentError, RegisteredModel
from .quality_gate import GateError, GatePolicy, compare_every_metric, decide, decide_against_champion
from .runs import Run, State, evaluation_job_name_for, experiment_name_for

log = logging.getLogger(__name__)

REPORT_NAME = "evaluation.json"


class EvaluationUnusable(PermanentError):
    """The evaluation job completed, but its report is missing or is not what the contract says."""


def report_path_for(run_id: str) -> str:
    """Where the evaluation writes its report, inside RUNS_CONTAINER."""
    return f"{run_id}/{REPORT_NAME}"


def gate_of(svc: Services, run: Run) -> str:
    """EVAL_GATE, or the upload's `eval_gate`: enforce, report or off."""
    return str(run.overrides.get("eval_gate") or svc.settings.eval_gate)


def champion_of(svc: Services, run: Run) -> Run | None:
    """The run a new version of a model line faces: the line's version in service (`LineView.current`, the newest
    Deployed version), None for an upload at the container's root or a line's first version."""
    if not run.line:
        return None
    from .lines import line_views

    deployed = [r for r in svc.runs.list(states=[State.DEPLOYED]) if r.line == run.line and r.run_id != run.run_id]
    view = line_views(deployed).get(run.line)
    current = view.current if view else None
    return current if current is not None and current.model_name and current.model_version else None


def evaluation_request(svc: Services, run: Run) -> EvaluationRequest:
    """The evaluation of the run's fine-tune: its base model (resolved again: the registry's id is the job's
    input), the fine-tuning job's model, for a new version of a model line the line's version in service (its
    registered model), the run's test split, on the training compute."""
    s = svc.settings
    base_model = svc.ml.resolve_base_model(run.overrides.get("base_model") or s.base_model)
    champion = champion_of(svc, run)
    return EvaluationRequest(
        job_name=evaluation_job_name_for(run.run_id), run_id=run.run_id,
        experiment_name=s.experiment_name or experiment_name_for(base_model.name), base_model=base_model,
        training_job=run.job_name, compute=s.aml_compute, test_path=run.test_path,
        report_path=report_path_for(run.run_id), max_records=s.eval_max_records, samples=s.eval_samples,
        max_new_tokens=s.eval_max_new_tokens,
        champion=(RegisteredModel(name=champion.model_name, version=champion.model_version, id=champion.model_id)
                  if champion else None),
        champion_run_id=champion.run_id if champion else "")


def read_report(svc: Services, run: Run) -> dict[str, Any]:
    """The run's evaluation report, checked against its contract; EvaluationUnusable says what is wrong."""
    from azure.core.exceptions import ResourceNotFoundError
    from pydantic import ValidationError

    from .protocol import EvaluationReport

    path = report_path_for(run.run_id)
    try:
        document = svc.blobs.read_json(svc.settings.runs_container, path)
    except ResourceNotFoundError:
        raise EvaluationUnusable(f"the evaluation job completed but wrote no report at {path} in "
                                 f"{svc.settings.runs_container}") from None
    try:
        EvaluationReport.model_validate(document, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EvaluationUnusable(f"the evaluation report {path} is not a report: {where}: {first['msg']}") from None
    return document


def gate_run(svc: Services, run: Run) -> dict[str, Any]:
    """The gate's decision on the run's evaluation report (what goes on the run as `evaluation`): the decision
    (`GateDecision`), base against tuned on every metric with its interval, the report's path and its size. Where
    the report scored a model line's version in service beside them, `champion` holds that comparison
    (`ChampionComparison`), and `deploy` and `reason` are both comparisons' together: deployed only when better
    than the base model and not worse than the champion. EvaluationUnusable when the report is missing, malformed
    or lacks the metric decided on."""
    report = read_report(svc, run)
    policy = GatePolicy.for_run(svc.settings, run.overrides)
    per_record = report["per_record"]
    try:
        decision = decide(per_record, policy)
        metrics = compare_every_metric(per_record, policy)
        champion = _against_champion(svc, report, policy) if report.get("champion") else None
    except GateError as exc:
        raise EvaluationUnusable(f"the quality gate cannot decide on {report_path_for(run.run_id)}: {exc}") from None
    result = {**decision.to_dict(), "metrics": metrics, "report_path": report_path_for(run.run_id),
              "tokens": report.get("tokens"), "seconds": report.get("seconds"), "device": report.get("device")}
    if champion is not None:
        result["champion"] = champion
        result["deploy"] = decision.deploy and champion["deploy"]
        # The comparison that holds the run speaks first; a deployed run shows both.
        first, second = ((champion["reason"], decision.reason) if decision.deploy and not champion["deploy"]
                         else (decision.reason, champion["reason"]))
        result["reason"] = f"{first}; {second}"
    log.info("run %s: quality gate %s%s -> %s: %s", run.run_id, decision.verdict,
             f", {champion['verdict']} against the version in service" if champion else "",
             "deploy" if result["deploy"] else "hold", result["reason"])
    return result


def _against_champion(svc: Services, report: dict[str, Any], policy: GatePolicy) -> dict[str, Any]:
    """The challenger against the champion the report scored (`ChampionComparison`)."""
    about = report["champion"]
    champion_run = svc.runs.find(about.get("run_id") or "") if about.get("run_id") else None
    version = champion_run.model_version if champion_run else None
    who = f"v{version}, run {about.get('run_id')}" if version else f"run {about.get('run_id') or about.get('model')}"
    d = decide_against_champion(report["per_record"], policy, reference=f"the version in service ({who})")
    return {"run_id": about.get("run_id") or "", "model_id": about.get("model_id") or "", "model_version": version,
            "metric": d.metric, "records": d.records, "champion": d.base, "tuned": d.tuned,
            "improvement": d.improvement, "low": d.low, "high": d.high, "verdict": d.verdict, "deploy": d.deploy,
            "reason": d.reason, "metrics": compare_every_metric(report["per_record"], policy, against="champion")}
