"""The evaluation step's two halves, for the run's steps to call: what to ask the ML backend for once the fine-tuning
job Completed (`evaluation_request`), and what the gate decides once the evaluation job Completed (`gate_run`).

No Azure SDK: the report is read through the app's blob adapter, checked against its contract
(`shared.protocol.EvaluationReport`) and decided on by `shared.quality_gate`.
"""

from __future__ import annotations

import logging
from typing import Any

from .bootstrap import Services
from .ml.port import EvaluationRequest, PermanentError
from .quality_gate import GateError, GatePolicy, compare_every_metric, decide
from .runs import Run, evaluation_job_name_for, experiment_name_for

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


def evaluation_request(svc: Services, run: Run) -> EvaluationRequest:
    """The evaluation of the run's fine-tune: its base model (resolved again: the registry's id is the job's
    input), the fine-tuning job's model, the run's test split, on the training compute."""
    s = svc.settings
    base_model = svc.ml.resolve_base_model(run.overrides.get("base_model") or s.base_model)
    return EvaluationRequest(
        job_name=evaluation_job_name_for(run.run_id), run_id=run.run_id,
        experiment_name=s.experiment_name or experiment_name_for(base_model.name), base_model=base_model,
        training_job=run.job_name, compute=s.aml_compute, test_path=run.test_path,
        report_path=report_path_for(run.run_id), max_records=s.eval_max_records, samples=s.eval_samples,
        max_new_tokens=s.eval_max_new_tokens)


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
    (`GateDecision`), base against tuned on every metric with its interval, the report's path and its size.
    EvaluationUnusable when the report is missing, malformed or lacks the metric decided on."""
    report = read_report(svc, run)
    policy = GatePolicy.for_run(svc.settings, run.overrides)
    try:
        decision = decide(report["per_record"], policy)
        metrics = compare_every_metric(report["per_record"], policy)
    except GateError as exc:
        raise EvaluationUnusable(f"the quality gate cannot decide on {report_path_for(run.run_id)}: {exc}") from None
    log.info("run %s: quality gate %s -> %s: %s", run.run_id, decision.verdict,
             "deploy" if decision.deploy else "hold", decision.reason)
    return {**decision.to_dict(), "metrics": metrics, "report_path": report_path_for(run.run_id),
            "tokens": report.get("tokens"), "seconds": report.get("seconds"), "device": report.get("device")}
