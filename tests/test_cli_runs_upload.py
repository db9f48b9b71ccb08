"""`chatft upload` and `chatft runs`, as a user runs them, against Azurite."""

import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from shared.run_store import RunStore
from shared.runs import State, new_run, run_id_for

from .conftest import PROJECT_ROOT


def chatft(settings, *args):
    env = {"PATH": "/usr/bin:/bin", "AzureWebJobsStorage": settings.storage_connection,
           "TRAINING_CONTAINER": settings.training_container, "RUNS_TABLE": settings.runs_table}
    return subprocess.run([sys.executable, "-m", "chatft_local", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "My Team Data.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    return path


def test_upload_streams_the_file_with_overrides_as_metadata_and_names_the_run(settings, data):
    from azure.storage.blob import BlobServiceClient

    out = chatft(settings, "upload", str(data), "--meta", "epochs=2", "--meta", "keep=true")
    assert out.returncode == 0, out.stdout + out.stderr
    blob = BlobServiceClient.from_connection_string(settings.storage_connection).get_blob_client(
        settings.training_container, "my-team-data.jsonl")
    props = blob.get_blob_properties()
    assert props.metadata == {"epochs": "2", "keep": "true"}
    assert blob.download_blob().readall() == data.read_bytes()
    assert run_id_for(settings.training_container, "my-team-data.jsonl", props.etag) in out.stdout


@pytest.mark.parametrize("meta,message", [("epochz=2", "unknown override"), ("epochs=many", "must be"),
                                          ("novalue", "is not KEY=VALUE")])
def test_upload_refuses_overrides_the_app_would_reject(settings, data, meta, message):
    out = chatft(settings, "upload", str(data), "--meta", meta)
    assert out.returncode == 2 and message in out.stdout


def test_upload_of_a_name_that_starts_no_run_is_refused_unless_forced(settings, tmp_path):
    from azure.storage.blob import BlobServiceClient

    data = tmp_path / "x.json"
    data.write_text('[{"messages": []}]')
    container = BlobServiceClient.from_connection_string(settings.storage_connection).get_container_client(
        settings.training_container)
    out = chatft(settings, "upload", str(data))
    assert out.returncode == 2 and "'x.json' will not start a run" in out.stdout and "--force" in out.stdout
    assert not container.exists() or not list(container.list_blobs())  # nothing was uploaded
    named = chatft(settings, "upload", str(tmp_path / "x.json"), "--name", "notes.txt")
    assert named.returncode == 2 and "'notes.txt' will not start a run" in named.stdout
    forced = chatft(settings, "upload", str(data), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "no run:" in forced.stdout and "run id" not in forced.stdout
    assert [b.name for b in container.list_blobs()] == ["x.json"]


def test_upload_of_a_missing_file_is_exit_2(settings, tmp_path):
    out = chatft(settings, "upload", str(tmp_path / "nope.jsonl"))
    assert out.returncode == 2 and "not a readable file" in out.stdout


def test_runs_lists_newest_first_and_shows_one_in_detail(settings):
    store = RunStore(settings.storage_connection, settings.runs_table)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    old = new_run("old-000000000001", t0)
    store.create(old)
    rejected = new_run("new-000000000002", t0.replace(hour=1)).advance(State.VALIDATING, t0).advance(
        State.REJECTED, t0, "line 3: invalid_json", report={"ok": False, "records": 3, "valid_records": 2,
                                                             "errors": [{"line": 3, "code": "invalid_json",
                                                                         "message": "not JSON"}]})
    store.create(rejected)
    table = chatft(settings, "runs")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[1].startswith("new-000000000002") and lines[2].startswith("old-000000000001")
    detail = chatft(settings, "runs", "new-000000000002")
    assert "REJECTED" in detail.stdout and "line 3: invalid_json: not JSON" in detail.stdout
    as_json = json.loads(chatft(settings, "runs", "--json", "--state", "rejected").stdout)
    assert [r["run_id"] for r in as_json] == ["new-000000000002"]
    missing = chatft(settings, "runs", "nope")
    assert missing.returncode == 1 and "no run nope" in missing.stdout


def test_runs_shows_retries_with_their_delays_and_when_a_run_was_last_reconciled(settings):
    import dataclasses

    store = RunStore(settings.storage_connection, settings.runs_table)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    run = new_run("retried-000000000003", t0).advance(State.VALIDATING, t0).advance(State.QUEUED, t0)
    run = run.note(t0, "retry 1 of submit in 1.5 s: TransientError: 429", "retry", 1.5, step="submit",
                   message_id="submit-1")
    run = dataclasses.replace(run, reconciled_at="2026-01-01T00:20:00.000Z")
    store.create(run)
    table = chatft(settings, "runs")
    assert "RECONCILED" in table.stdout.splitlines()[0]
    assert "2026-01-01T00:20:00.000Z" in table.stdout.splitlines()[1]
    detail = chatft(settings, "runs", "retried-000000000003").stdout
    assert "(retry)" in detail and "[submit] retry 1 of submit in 1.5 s" in detail  # the step that wrote it
    assert "reconciled 2026-01-01T00:20:00.000Z" in detail
    stored = json.loads(chatft(settings, "runs", "--json", "retried-000000000003").stdout)
    assert stored["history"][-1] == {"state": "Queued", "at": "2026-01-01T00:00:00.000Z", "kind": "retry",
                                     "step": "submit", "message_id": "submit-1",
                                     "delay_seconds": 1.5, "detail": "retry 1 of submit in 1.5 s: TransientError: 429"}
    assert stored["reconciled_at"] == "2026-01-01T00:20:00.000Z"


def test_runs_shows_the_quality_gates_comparison_its_column_and_the_samples(settings):
    import dataclasses

    from shared.storage import Blobs
    from tests.test_quality_gate import BASE, report_document

    store = RunStore(settings.storage_connection, settings.runs_table)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    run = new_run("gated-000000000004", t0)
    for state in (State.VALIDATING, State.QUEUED, State.SUBMITTED, State.TRAINED, State.EVALUATING,
                  State.REGISTERED):
        run = run.advance(state, t0)
    run = run.advance(State.HELD, t0, "worse than the base model")
    evaluation = {"gate": "enforce", "metric": "eval_loss", "records": 40, "verdict": "worse", "deploy": False,
                  "reason": "worse than the base model (eval_loss, lower is better): improvement -1",
                  "report_path": "gated-000000000004/evaluation.json",
                  "metrics": {"eval_loss": {"base": 3.0, "tuned": 4.0, "improvement": -1.0, "low": -1.2,
                                            "high": -0.8, "higher_is_better": False, "verdict": "worse"},
                              "chrf": {"base": 20.0, "tuned": 15.5, "improvement": -4.5, "low": -6.0,
                                       "high": -3.0, "higher_is_better": True, "verdict": "worse"}}}
    store.create(dataclasses.replace(run, evaluation=evaluation))
    document = report_document(run.run_id, BASE, BASE)
    document["samples"] = [{"prompt": "What is LoRA?", "reference": "A low-rank adapter.", "base": "noise",
                            "tuned": "A small adapter."}]
    Blobs(settings).write_json(settings.runs_container, evaluation["report_path"], document)

    table = chatft(settings, "runs").stdout.splitlines()
    assert "GATE" in table[0] and "worse" in table[1]
    detail = chatft(settings, "runs", run.run_id).stdout
    assert "evaluation worse -> hold (EVAL_GATE=enforce, metric eval_loss, 40 test records)" in detail
    assert any(line.split()[:4] == ["eval_loss", "3", "4", "-1"] and "[-1.2, -0.8]" in line
               for line in detail.splitlines()), detail
    assert any(line.split()[0] == "chrf" and "(higher is better)" in line for line in detail.splitlines())
    env_runs = {"RUNS_CONTAINER": settings.runs_container}
    samples = subprocess.run([sys.executable, "-m", "chatft_local", "runs", run.run_id, "--samples"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "AzureWebJobsStorage": settings.storage_connection,
                                  "RUNS_TABLE": settings.runs_table, **env_runs}).stdout
    assert "sample 1" in samples and "prompt    What is LoRA?" in samples and "tuned     A small adapter." in samples
