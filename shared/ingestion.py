"""An upload's first minute: validate it in one streaming pass, split it, record the run, queue it.

Bad data never reaches a GPU: a rejected upload ends as a Rejected run with a report naming each bad line.
The upload itself is only read, never modified, moved or deleted; reports go to RUNS_CONTAINER.
"""

from __future__ import annotations

import logging
from typing import Any

from .bootstrap import Services
from .lines import refusal_of_line
from .ml.naming import line_of_upload
from .ml.port import InvalidInput
from .messages import SubmitRun
from .overrides import OverrideError, parse_overrides
from .runs import Run, State, new_run, run_id_for
from .ml.training_params import NOTEBOOK_DEFAULTS
from .storage import read_chunks
from .tokens import budget
from .validation import Validator, split_of

log = logging.getLogger(__name__)

TRAINING_SUFFIX = ".jsonl"
SUMMARY_ISSUES = 5  # errors kept on the run itself; the full list is in validation.json


def is_training_upload(blob_name: str) -> bool:
    return blob_name.lower().endswith(TRAINING_SUFFIX)


def ingest_upload(svc: Services, container: str, blob_name: str, blob_client: Any) -> Run | None:
    """Validate and split one upload (one blob version) and queue or reject its run. Safe to repeat."""
    if not is_training_upload(blob_name):
        log.info("ingest: %s is not a .jsonl upload; left alone", blob_name)
        return None
    props = blob_client.get_blob_properties()
    etag = str(props.etag)
    run_id = run_id_for(container, blob_name, etag)
    upload = {"container": container, "blob": blob_name, "etag": etag.strip('"'), "size": props.size}
    run, created = svc.runs.create(new_run(run_id, svc.clock(), upload=upload))
    if not created:
        log.info("ingest: run %s exists (%s) for %s", run_id, run.state, blob_name)
    if run.state == State.QUEUED:
        _queue(svc, run)  # a crash after Queued but before sending: sending again is harmless
        return run
    if run.state not in (State.RECEIVED, State.VALIDATING):
        return run
    if run.state == State.RECEIVED:
        run = svc.runs.update(run_id, lambda r: r.advance(State.VALIDATING, svc.clock())
                              if r.state == State.RECEIVED else None)

    report_path = f"{run_id}/validation.json"
    try:
        overrides = parse_overrides(dict(props.metadata or {}))
    except OverrideError as exc:
        report = {"ok": False, "records": 0, "valid_records": 0, "errors": exc.problems,
                  "error_counts": {p["code"]: 1 for p in exc.problems}, "warnings": [],
                  "reason": "blob metadata holds overrides the app does not accept: "
                            + "; ".join(p["message"] for p in exc.problems)}
        svc.blobs.write_json(svc.settings.runs_container, report_path, report)
        return _reject(svc, run_id, report, report_path)

    try:
        line = line_of_upload(blob_name, overrides.get("model_line"))
        if line:
            line_refusal = refusal_of_line(svc, line)
            if line_refusal:
                raise InvalidInput(line_refusal)
    except InvalidInput as exc:
        problem = {"line": 0, "code": "invalid_model_line", "message": str(exc)}
        report = {"ok": False, "records": 0, "valid_records": 0, "errors": [problem],
                  "error_counts": {problem["code"]: 1}, "warnings": [], "reason": str(exc)}
        svc.blobs.write_json(svc.settings.runs_container, report_path, report)
        return _reject(svc, run_id, report, report_path)

    report, counts = _validate_and_split(svc, blob_client, etag, run_id, overrides)
    report["split"] = counts
    svc.blobs.write_json(svc.settings.runs_container, report_path, report)
    if not report["ok"]:
        return _reject(svc, run_id, report, report_path)

    summary = _summary(report, report_path)
    train_path = f"{run_id}/train.jsonl"
    test_path = f"{run_id}/test.jsonl" if counts["test"] else ""
    run = svc.runs.update(run_id, lambda r: r.advance(
        State.QUEUED, svc.clock(), f"{counts['train']} train / {counts['test']} test records",
        report=summary, overrides=overrides, train_path=train_path, test_path=test_path,
        keep=bool(overrides.get("keep", False)), line=line) if r.state == State.VALIDATING else None)
    if run.state == State.QUEUED:
        _queue(svc, run)
    return run


def _validate_and_split(svc: Services, blob_client: Any, etag: str, run_id: str,
                        overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    s = svc.settings
    test_fraction = float(overrides.get("test_fraction", s.test_fraction))
    plan = budget(s.tokenizer_dir, overrides, _data_hints(svc),
                  default_epochs=NOTEBOOK_DEFAULTS["num_train_epochs"])
    validator = Validator(max_record_bytes=s.validation_max_record_bytes,
                          max_issues=s.validation_report_max_issues,
                          max_invalid_fraction=s.validation_max_invalid_fraction,
                          max_seq_length=plan.max_seq_length, max_seq_length_source=plan.max_seq_length_source,
                          counter=plan.counter, epochs=plan.epochs)
    writers = {"train": svc.blobs.writer(s.runs_container, f"{run_id}/train.jsonl"),
               "test": svc.blobs.writer(s.runs_container, f"{run_id}/test.jsonl")}
    counts = {"train": 0, "test": 0}
    train_tokens = 0
    limit = plan.max_seq_length or 1 << 62
    try:
        for valid in validator.records(read_chunks(blob_client, etag=etag)):
            part = split_of(valid.record, test_fraction)
            writers[part].write(valid.raw)
            writers[part].write(b"\n")
            counts[part] += 1
            if part == "train":
                train_tokens += min(valid.tokens, limit)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    report = validator.report()
    tokens = report["tokens"]
    # What GPU time scales with: the train split's tokens (after truncation) times the epochs.
    tokens["train_tokens_per_epoch"] = train_tokens
    tokens["train_tokens_total"] = round(train_tokens * plan.epochs) if plan.epochs else None
    if plan.note:
        tokens["note"] = plan.note
    if report["ok"] and counts["train"] == 0:
        report["ok"] = False
        report["reason"] = "every valid record fell into the test split; lower TEST_FRACTION"
        report["errors"].insert(0, {"line": 0, "code": "too_few_records", "message": report["reason"]})
    for writer in writers.values():
        writer.close() if report["ok"] else writer.abort()
    return report, counts


def _data_hints(svc: Services) -> tuple[str, dict[str, Any]] | None:
    """The ML backend's hints for token counts (the local workspace has them; Azure's backend would need a
    registry call per upload, so there the TOKENIZER_DIR setting and the upload's max_seq_length are used)."""
    hints = getattr(svc.ml, "data_hints", None)
    if hints is None:
        return None
    try:
        return hints()
    except Exception:  # hints only refine the report; a backend that cannot give them must not fail ingestion
        log.warning("ingest: the ML backend's data hints failed; token counts are estimated", exc_info=True)
        return None


def _summary(report: dict[str, Any], report_path: str) -> dict[str, Any]:
    return {
        "ok": report["ok"],
        "records": report.get("records", 0),
        "valid_records": report.get("valid_records", 0),
        "invalid_records": report.get("invalid_records", 0),
        "error_counts": report.get("error_counts", {}),
        "warning_counts": report.get("warning_counts", {}),
        "reason": report.get("reason", ""),
        "errors": report.get("errors", [])[:SUMMARY_ISSUES],
        "split": report.get("split", {}),
        "tokens": {k: v for k, v in report.get("tokens", {}).items() if k != "histogram"},
        "report_path": report_path,
    }


def _reject(svc: Services, run_id: str, report: dict[str, Any], report_path: str) -> Run:
    summary = _summary(report, report_path)
    first = summary["errors"][0] if summary["errors"] else {}
    where = f"line {first['line']}: " if first.get("line") else ""
    first_error = f"{where}{first.get('code', 'invalid')}: {first.get('message', '')}".strip()
    reason = report.get("reason", "")
    detail = f"{reason}; first error {first_error}" if reason and first.get("line") else reason or first_error
    log.info("ingest: run %s rejected (%s)", run_id, detail)
    return svc.runs.update(run_id, lambda r: r.advance(State.REJECTED, svc.clock(), detail, report=summary)
                           if r.state == State.VALIDATING else None)


def _queue(svc: Services, run: Run) -> None:
    svc.messages.send(svc.settings.runs_queue, SubmitRun(run.run_id))
