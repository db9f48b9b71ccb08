"""An upload's first minute: validate it in one streaming pass, split it, record the run, queue it.

Bad data never reaches a GPU: a rejected upload ends as a Rejected run with a report naming each bad line.
The upload itself is only read, never modified, moved or deleted; reports go to RUNS_CONTAINER.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any

import orjson

from .bootstrap import Services
from .duplicates import ContentDigest, end_if_duplicate
from .lines import refusal_of_line
from .ml.naming import line_of_upload
from .ml.port import InvalidInput
from .messages import SubmitRun
from .overrides import OverrideError, parse_overrides
from .retry import is_transient
from .runs import Run, State, new_run, run_id_for
from .ml.training_params import NOTEBOOK_DEFAULTS
from .storage import read_chunks
from .tokens import ModelHints, budget
from .uploads import starts_run
from .validation import ValidationReport, Validator

log = logging.getLogger(__name__)

SUMMARY_ISSUES = 5  # errors kept on the run itself; the full list is in validation.json


def split_of(record: dict[str, Any], test_fraction: float) -> str:
    """"train" or "test" for a record, stable across processes and machines.

    Hashes `prompt_id` when present (so every copy of a conversation lands on the same side), else the record's
    canonical bytes (sorted keys), with sha256.
    """
    pid = record.get("prompt_id")
    if pid is None or pid == "":
        key = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    else:
        key = pid.encode() if isinstance(pid, str) else orjson.dumps(pid, option=orjson.OPT_SORT_KEYS)
    point = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    return "test" if point < test_fraction else "train"


def ingest_upload(svc: Services, container: str, blob_name: str, blob_client: Any) -> Run | None:
    """Validate and split one upload (one blob version) and queue or reject its run. Safe to repeat."""
    if not starts_run(blob_name):
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
        run = svc.runs.update(run_id, lambda r: r.advance(State.VALIDATING, svc.clock(),
                                                          from_states=(State.RECEIVED,)))

    report_path = f"{run_id}/validation.json"
    try:
        overrides = parse_overrides(dict(props.metadata or {}))
    except OverrideError as exc:
        report = ValidationReport.refused(exc.problems, "blob metadata holds overrides the app does not accept: "
                                          + "; ".join(p["message"] for p in exc.problems))
        svc.blobs.write_json(svc.settings.runs_container, report_path, report.model_dump(mode="json"))
        return _reject(svc, run_id, report, report_path)

    try:
        line = line_of_upload(blob_name, overrides.get("model_line"))
        if line:
            line_refusal = refusal_of_line(svc, line)
            if line_refusal:
                raise InvalidInput(line_refusal)
    except InvalidInput as exc:
        report = ValidationReport.refused([{"line": 0, "code": "invalid_model_line", "message": str(exc)}], str(exc))
        svc.blobs.write_json(svc.settings.runs_container, report_path, report.model_dump(mode="json"))
        return _reject(svc, run_id, report, report_path)

    digest = ContentDigest()
    try:
        report = _validate_and_split(svc, blob_client, etag, run_id, overrides, props.size, digest)
    except _IngestCrash as crash:
        # Reading the version seen at the start fails once the blob is overwritten (412, the read is conditional
        # on its ETag) or deleted (404): not a bug of ours, nor a fault of that version's data.
        gone = upload_gone(blob_client, etag)
        if gone:
            log.info("ingest: run %s rejected: %s", run_id, gone)
            return svc.runs.update(run_id, lambda r: r.advance(State.REJECTED, svc.clock(), gone,
                                                               from_states=(State.VALIDATING,), step="ingest"))
        return _end_crashed(svc, run_id, crash)
    svc.blobs.write_json(svc.settings.runs_container, report_path, report.model_dump(mode="json"))
    if not report.ok:
        return _reject(svc, run_id, report, report_path)

    summary = _summary(report, report_path)
    duplicate = end_if_duplicate(svc, run_id, digest.hexdigest(), overrides, summary)
    if duplicate is not None:
        return duplicate
    counts = report.split
    train_path = f"{run_id}/train.jsonl"
    test_path = f"{run_id}/test.jsonl" if counts.test else ""
    run = svc.runs.update(run_id, lambda r: r.advance(
        State.QUEUED, svc.clock(), f"{counts.train} train / {counts.test} test records",
        report=summary, overrides=overrides, train_path=train_path, test_path=test_path,
        keep=bool(overrides.get("keep", False)), line=line, from_states=(State.VALIDATING,)))
    if run.state == State.QUEUED:
        _queue(svc, run)
    return run


DELETED = "the upload was deleted before it was validated"


def upload_gone(blob_client: Any, etag: str) -> str | None:
    """Why the upload's version `etag` can no longer be validated, or None while it is still the blob's version:
    `DELETED`, or "superseded by a newer upload (etag <the blob's ETag now>)". Storage faults other than a missing
    blob (azure-core's ResourceNotFoundError) raise."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = blob_client.get_blob_properties()
    except ResourceNotFoundError:
        return DELETED
    now = str(props.etag).strip('"')
    return None if now == etag.strip('"') else f"superseded by a newer upload (etag {now})"


def _validate_and_split(svc: Services, blob_client: Any, etag: str, run_id: str, overrides: dict[str, Any],
                        size: int | None, digest: ContentDigest) -> ValidationReport:
    s = svc.settings
    test_fraction = float(overrides.get("test_fraction", s.test_fraction))
    plan = budget(s.tokenizer_dir, overrides, _data_hints(svc),
                  default_epochs=NOTEBOOK_DEFAULTS["num_train_epochs"])
    validator = Validator(max_record_bytes=s.validation_max_record_bytes,
                          max_issues=s.validation_report_max_issues,
                          max_invalid_fraction=s.validation_max_invalid_fraction,
                          max_seq_length=plan.max_seq_length, max_seq_length_source=plan.max_seq_length_source,
                          counter=plan.counter, epochs=plan.epochs, token_note=plan.note,
                          split=functools.partial(split_of, test_fraction=test_fraction),
                          test_fraction=test_fraction, expected_bytes=size)
    writers = {"train": svc.blobs.writer(s.runs_container, f"{run_id}/train.jsonl"),
               "test": svc.blobs.writer(s.runs_container, f"{run_id}/test.jsonl")}
    line, inside = 0, False  # the last line yielded; whether the fault came while splitting it
    test_records = eval_tokens = 0  # eval: of the test records the evaluation scores (the first EVAL_MAX_RECORDS)
    limit = plan.max_seq_length or 1 << 62
    try:
        for valid in validator.records(digest.through(read_chunks(blob_client, etag=etag))):
            line, inside = valid.line, True
            writers[valid.split].write(valid.raw)
            writers[valid.split].write(b"\n")
            if valid.split == "test":
                test_records += 1
                if test_records <= s.eval_max_records:
                    # -1: not counted one by one; its byte length bounds it (a byte-level BPE never makes more
                    # tokens than bytes), so the figure stays an upper bound.
                    eval_tokens += min(valid.tokens if valid.tokens >= 0 else len(valid.raw), limit)
            inside = False
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()
        if isinstance(exc, Exception) and not is_transient(exc):
            raise _IngestCrash(line if inside else line + 1, not inside, exc) from exc
        raise  # a storage fault: the trigger tries again; the run stays Validating for the retry
    report = validator.report()
    if report.tokens is not None:
        # The evaluation's tokens are stated before they are spent (shared/quality_gate.py runs it after training).
        report.tokens = report.tokens.model_copy(update=evaluation_tokens(s, overrides, eval_tokens, test_records))
    for writer in writers.values():
        writer.close() if report.ok else writer.abort()
    return report


class _IngestCrash(Exception):
    """Validating or splitting raised (not a transient fault): at `line` (or after it, when `after`)."""

    def __init__(self, line: int, after: bool, error: Exception):
        super().__init__(f"line {line}: {type(error).__name__}: {error}")
        self.line, self.after, self.error = line, after, error


def _is_data_fault(exc: BaseException) -> bool:
    """A fault the upload's content caused: nesting deeper than a parser or the recursion limit takes (json's
    RecursionError, orjson's "Recursion limit reached")."""
    return isinstance(exc, RecursionError) or "recursion" in str(exc).lower()


def _end_crashed(svc: Services, run_id: str, crash: _IngestCrash) -> Run:
    """End a run whose ingest raised: Rejected when the data caused it (named with its line), else Failed at
    "ingest" with the error. Either way the run is terminal, so a redelivery of the upload finds it done."""
    where = f"line {crash.line}" if not crash.after else f"at or after line {crash.line}"
    error = f"{type(crash.error).__name__}: {str(crash.error).splitlines()[0] if str(crash.error) else ''}"[:300]
    now = svc.clock()
    if _is_data_fault(crash.error):
        detail = f"{where}: too_deeply_nested: a value nests too deeply to be read ({error})"
        log.warning("ingest: run %s rejected: %s", run_id, detail)
        report = ValidationReport.refused([{"line": crash.line, "code": "too_deeply_nested", "message": detail}],
                                          detail).model_dump(mode="json")
        return svc.runs.update(run_id, lambda r: r.advance(State.REJECTED, now, detail, report=report,
                                                           from_states=(State.VALIDATING,), step="ingest"))
    log.error("ingest: run %s failed (%s): %s", run_id, where, error, exc_info=crash.error)
    reason = f"ingesting the upload failed {where}: {error}; see the function's log"
    return svc.runs.update(run_id, lambda r: r.fail("ingest", reason, now, step="ingest",
                                                    from_states=(State.VALIDATING,)))


def evaluation_tokens(settings: Any, overrides: dict[str, Any], scored: int, test_records: int) -> dict[str, int]:
    """What the quality gate's evaluation will process, stated before it is spent: both models read the scored
    test records (teacher-forced), and answer up to EVAL_SAMPLES prompts with at most EVAL_MAX_NEW_TOKENS each
    (an upper bound). Zero when EVAL_GATE (or the upload's eval_gate) is off."""
    if (overrides.get("eval_gate") or settings.eval_gate) == "off":
        return {"eval_tokens_scored": 0, "eval_tokens_generated_max": 0, "eval_tokens_total": 0}
    generated = 2 * min(settings.eval_samples, test_records, settings.eval_max_records) * settings.eval_max_new_tokens
    return {"eval_tokens_scored": 2 * scored, "eval_tokens_generated_max": generated,
            "eval_tokens_total": 2 * scored + generated}


def _data_hints(svc: Services) -> ModelHints | None:
    """The base model's tokenizer, defaults and context window for token counts (`shared.model_hints`, wired by
    `shared.bootstrap`: the local base model's; in Azure the registry model's tags and its tokenizer files)."""
    if svc.model_hints is None:
        return None
    try:
        return svc.model_hints()
    except Exception:  # hints only refine the report; a backend that cannot give them must not fail ingestion
        log.warning("ingest: the ML backend's data hints failed; token counts are estimated", exc_info=True)
        return None


def _summary(report: ValidationReport, report_path: str) -> dict[str, Any]:
    """What the run keeps of the report: the same shape, its issue lists capped (the whole is `report_path`)."""
    return report.summary(report_path, SUMMARY_ISSUES).model_dump(mode="json")


def _reject(svc: Services, run_id: str, report: ValidationReport, report_path: str) -> Run:
    summary = _summary(report, report_path)
    first = summary["errors"][0] if summary["errors"] else {}
    where = f"line {first['line']}: " if first.get("line") else ""
    first_error = f"{where}{first.get('code', 'invalid')}: {first.get('message', '')}".strip()
    reason = report.reason
    detail = f"{reason}; first error {first_error}" if reason and first.get("line") else reason or first_error
    log.info("ingest: run %s rejected (%s)", run_id, detail)
    return svc.runs.update(run_id, lambda r: r.advance(State.REJECTED, svc.clock(), detail, report=summary,
                                                       from_states=(State.VALIDATING,)))


def _queue(svc: Services, run: Run) -> None:
    svc.messages.send(svc.settings.runs_queue, SubmitRun(run.run_id))
