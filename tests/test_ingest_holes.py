"""No state without an exit at ingest, service level against Azurite (the blob trigger's handler, as the host
calls it): whatever escapes validating and splitting an upload, its run ends Rejected (the data's fault, with the
line) or Failed (ours, with the error); a redelivery of the same blob version finds the run ended and does not
crash again. And the reconciler owns Received/Validating: it ingests the same version again, or ends the run when
the upload was overwritten or deleted."""

from datetime import timedelta

import pytest

from shared.bootstrap import bootstrap
from shared.runs import State
from tests.fakes import FakeMLBackend
from tests.test_ingestion import ingest, record, upload, valid_lines


@pytest.fixture
def svc(settings):
    return bootstrap(settings, ml=FakeMLBackend())


def deep_line(depth: int, where: str) -> str:
    """Record 7 with `depth` nested objects in `prompt_id` or an extra key, written as text (json.dumps itself
    stops at ~1000 levels)."""
    key = "prompt_id" if where == "prompt_id" else "extra_key"
    base = record(7, **{key: "X"})
    return base.replace('"X"', '{"k":' * depth + '"deep"' + "}" * depth)


@pytest.mark.parametrize("where", ["prompt_id", "extra key"])
@pytest.mark.parametrize("depth", [300, 1000])
def test_deep_nesting_ends_the_run_with_a_reason_and_redelivery_does_not_loop(svc, depth, where):
    lines = valid_lines(30)
    lines[7] = deep_line(depth, where)
    blob = upload(svc, f"deep-{depth}-{where.replace(' ', '-')}.jsonl", lines)
    run = ingest(svc, blob)
    # Final state: Rejected (the record is the fault) naming line 8, or Queued if the validator takes it whole
    # and drops/flags only that record; never Validating, and never an exception out of the handler.
    assert run.state in (State.REJECTED, State.QUEUED), (run.state, run.history[-1])
    if run.state == State.REJECTED:
        assert "line 8" in run.history[-1].detail, run.history[-1].detail
    again = ingest(svc, blob)  # the blob trigger's redelivery
    assert again.state == run.state and len(again.history) == len(run.history)


def test_a_bug_while_splitting_fails_the_run_naming_ingest_and_the_line(svc, monkeypatch):
    import shared.ingestion as ingestion

    def broken(record, test_fraction):
        if record.get("prompt_id") == "id-3":
            raise KeyError("a bug")
        return "train"

    monkeypatch.setattr(ingestion, "split_of", broken)
    blob = upload(svc, "bug.jsonl", valid_lines(10))
    run = ingest(svc, blob)
    assert run.state == State.FAILED and run.failure.stage == "ingest"
    assert "line 4" in run.failure.reason and "KeyError" in run.failure.reason
    assert run.history[-1].step == "ingest"
    assert ingest(svc, blob).state == State.FAILED  # redelivered: ended, no second crash


# ------------------------------------------------------------------------- Received/Validating, reconciled


def stuck_validating(svc, blob):
    """The run of `blob`'s current version, left Validating (as a host killed mid-validation leaves it)."""
    from shared.runs import new_run, run_id_for

    props = blob.get_blob_properties()
    run_id = run_id_for(blob.container_name, blob.blob_name, props.etag)
    upload_ = {"container": blob.container_name, "blob": blob.blob_name, "etag": str(props.etag).strip('"'),
               "size": props.size}
    svc.runs.create(new_run(run_id, svc.clock(), upload=upload_).advance(State.VALIDATING, svc.clock()))
    return run_id


@pytest.fixture
def later(svc):
    """svc with a clock past RECONCILE_AFTER_MINUTES."""
    from shared.runs import utcnow

    start = utcnow()
    return bootstrap(svc.settings, ml=svc.ml, clock=lambda: start + timedelta(minutes=60))


def test_reconciler_ingests_again_a_validating_run_whose_blob_is_unchanged(svc, later):
    from shared.reconcile import reconcile_runs

    run_id = stuck_validating(svc, upload(svc, "stuck-same.jsonl", valid_lines(30)))
    reconcile_runs(later)
    assert svc.runs.get(run_id).state == State.QUEUED  # final state Queued: validated again, same run


def test_reconciler_rejects_a_validating_run_whose_blob_was_overwritten(svc, later):
    from shared.reconcile import reconcile_runs

    blob = upload(svc, "stuck-overwritten.jsonl", valid_lines(30))
    run_id = stuck_validating(svc, blob)
    upload(svc, "stuck-overwritten.jsonl", valid_lines(31))
    new_etag = str(blob.get_blob_properties().etag).strip('"')
    reconcile_runs(later)
    run = svc.runs.get(run_id)
    assert run.state == State.REJECTED
    assert run.history[-1].detail == f"superseded by a newer upload (etag {new_etag})"
    assert run.history[-1].step == "revalidate"


def test_reconciler_rejects_a_validating_run_whose_blob_was_deleted(svc, later):
    from shared.reconcile import reconcile_runs

    blob = upload(svc, "stuck-deleted.jsonl", valid_lines(30))
    run_id = stuck_validating(svc, blob)
    blob.delete_blob()
    reconcile_runs(later)
    run = svc.runs.get(run_id)
    assert run.state == State.REJECTED
    assert run.history[-1].detail == "the upload was deleted before it was validated"


# ------------------------------------------------------------------- overwritten or deleted while being read


def _changed_before_the_read(monkeypatch, change):
    """The upload is changed (`change(blob_client)`) after its run moved to Validating and before its bytes are read:
    the read itself is the real one, conditional on the version seen, against Azurite."""
    import shared.ingestion as ingestion

    real = ingestion.read_chunks

    def read_chunks(blob_client, *args, **kwargs):
        change(blob_client)
        yield from real(blob_client, *args, **kwargs)

    monkeypatch.setattr(ingestion, "read_chunks", read_chunks)


def test_an_upload_overwritten_while_it_is_validated_ends_its_run_rejected_as_superseded(svc, monkeypatch):
    blob = upload(svc, "overwritten-midway.jsonl", valid_lines(30))
    _changed_before_the_read(monkeypatch, lambda b: b.upload_blob(
        ("\n".join(valid_lines(31)) + "\n").encode(), overwrite=True))
    run = ingest(svc, blob)
    new_etag = str(blob.get_blob_properties().etag).strip('"')
    # Final state Rejected, reason the newer version: not Failed at ingest with the storage error (412).
    assert run.state == State.REJECTED, (run.state, run.history[-1])
    assert run.history[-1].detail == f"superseded by a newer upload (etag {new_etag})"
    assert run.history[-1].step == "ingest" and run.failure is None
    assert not run.train_path


def test_an_upload_deleted_while_it_is_validated_ends_its_run_rejected_as_deleted(svc, monkeypatch):
    blob = upload(svc, "deleted-midway.jsonl", valid_lines(30))
    _changed_before_the_read(monkeypatch, lambda b: b.delete_blob())
    run = ingest(svc, blob)
    # Final state Rejected, reason the deletion: not Failed at ingest with the storage error (404).
    assert run.state == State.REJECTED, (run.state, run.history[-1])
    assert run.history[-1].detail == "the upload was deleted before it was validated"
    assert run.history[-1].step == "ingest"


@pytest.mark.parametrize("change", ["overwritten", "deleted"])
def test_an_upload_overwritten_or_deleted_while_it_is_read_ends_its_run_rejected_saying_so(svc, monkeypatch, change):
    """Ingest reads an upload in ranges, each conditional on the version it started with; the blob changes
    after the first range (the load test's overwrite during validation, bench/load.py). The run ends Rejected
    "superseded by a newer upload (etag <new>)" or "the upload was deleted before it was validated" (it used to
    end Failed at ingest with ResourceModifiedError: "our fault"), and a redelivery changes nothing."""
    import shared.ingestion
    from shared.storage import read_chunks

    name = f"changed-while-read-{change}.jsonl"
    blob = upload(svc, name, [record(i, note="x" * 2000) for i in range(300)])  # ~600 KB: ten 64 KiB ranges

    def reading_then_changed(client, **kwargs):
        # 64 KiB ranges (two fetched ahead), so the ranges after the change are read from the server.
        for n, chunk in enumerate(read_chunks(client, **kwargs, chunk_size=64 * 1024)):
            yield chunk
            if n == 0:
                if change == "overwritten":
                    upload(svc, name, valid_lines(30))
                else:
                    blob.delete_blob()

    monkeypatch.setattr(shared.ingestion, "read_chunks", reading_then_changed)
    run = ingest(svc, blob)
    assert run.state == State.REJECTED, (run.state, run.history[-1])
    if change == "overwritten":
        new_etag = str(blob.get_blob_properties().etag).strip('"')
        assert run.history[-1].detail == f"superseded by a newer upload (etag {new_etag})"
    else:
        assert run.history[-1].detail == "the upload was deleted before it was validated"
    assert run.history[-1].step == "ingest" and not run.job_name
    assert svc.runs.get(run.run_id).state == State.REJECTED
