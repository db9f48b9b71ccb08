"""ingest, service level, against Azurite: validate, split, record the run, queue it — once per blob version."""

import json

import pytest

from shared.bootstrap import bootstrap
from shared.messaging import decode_envelope
from shared.runs import State
from shared.tokens import estimate_tokens
from shared.validation import ValidationReport
from tests.fakes import FakeMLBackend


def record(i, **extra):
    r = {"prompt": f"q{i}", "prompt_id": f"id-{i}",
         "messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]}
    r.update(extra)
    return json.dumps(r)


def valid_lines(n=40):
    return [record(i) for i in range(n)]


@pytest.fixture
def svc(settings):
    return bootstrap(settings, ml=FakeMLBackend())


def upload(svc, name, lines, metadata=None):
    blob = svc.blobs.blob(svc.settings.training_container, name)
    blob.upload_blob(("\n".join(lines) + "\n").encode(), overwrite=True, metadata=metadata)
    return blob


def queued_messages(svc, queue):
    from azure.storage.queue import QueueClient

    client = QueueClient.from_connection_string(svc.settings.storage_connection, queue)
    try:
        return [decode_envelope(m.content) for m in client.peek_messages(max_messages=32)]
    except Exception:
        return []


def ingest(svc, blob):
    from shared.ingestion import ingest_upload

    return ingest_upload(svc, blob.container_name, blob.blob_name, blob)


def read_lines(svc, path):
    data = svc.blobs.blob(svc.settings.runs_container, path).download_blob().readall()
    return [json.loads(line) for line in data.decode().splitlines()]


def test_valid_upload_is_split_reported_and_queued(svc):
    blob = upload(svc, "team/ultra chat.jsonl", valid_lines(60))
    run = ingest(svc, blob)
    assert run.state == State.QUEUED
    train, test = read_lines(svc, run.train_path), read_lines(svc, run.test_path)
    assert len(train) + len(test) == 60 and 0 < len(test) < 20
    assert {r["prompt_id"] for r in train}.isdisjoint({r["prompt_id"] for r in test})
    report = svc.blobs.read_json(svc.settings.runs_container, f"{run.run_id}/validation.json")
    assert report["ok"] and report["valid_records"] == 60
    assert queued_messages(svc, svc.settings.runs_queue) == [(run.run_id, json.dumps({"run_id": run.run_id},
                                                                                      separators=(",", ":")).encode())]
    assert run.upload["blob"] == "team/ultra chat.jsonl" and "/" not in run.run_id


def test_split_is_deterministic_across_uploads(svc):
    a = ingest(svc, upload(svc, "a.jsonl", valid_lines(50)))
    b = ingest(svc, upload(svc, "b.jsonl", valid_lines(50), metadata={"force": "true"}))  # else a duplicate
    assert b.state == State.QUEUED
    assert read_lines(svc, a.test_path) == read_lines(svc, b.test_path)


def test_same_blob_version_twice_is_one_run_and_one_message(svc):
    blob = upload(svc, "data.jsonl", valid_lines())
    first, second = ingest(svc, blob), ingest(svc, blob)
    assert first.run_id == second.run_id
    assert len(svc.runs.list()) == 1
    assert second.history == first.history or second.state == State.QUEUED
    # A redelivery of a queued run sends its message again; the message id lets Service Bus drop the copy.
    assert {m[0] for m in queued_messages(svc, svc.settings.runs_queue)} == {first.run_id}


def test_new_blob_version_is_a_new_run(svc):
    first = ingest(svc, upload(svc, "data.jsonl", valid_lines()))
    second = ingest(svc, upload(svc, "data.jsonl", valid_lines(30)))
    assert first.run_id != second.run_id


def test_invalid_upload_is_rejected_with_lines_named_and_nothing_queued(svc):
    lines = valid_lines(20)
    lines[4] = '{"messages": [{"role": "user", "content": "only a question"}], "prompt_id": "x"}'
    lines[9] = "not json"
    blob = upload(svc, "bad.jsonl", lines)
    run = ingest(svc, blob)
    assert run.state == State.REJECTED
    report = svc.blobs.read_json(svc.settings.runs_container, run.report["report_path"])
    assert {(e["line"], e["code"]) for e in report["errors"]} >= {(5, "too_few_messages"), (10, "invalid_json")}
    assert "line 5" in run.history[-1].detail
    assert queued_messages(svc, svc.settings.runs_queue) == []
    assert blob.download_blob().readall().decode().splitlines()[9] == "not json", "the upload is left as it was"


def test_unknown_override_rejects_with_report(svc):
    run = ingest(svc, upload(svc, "o.jsonl", valid_lines(), metadata={"epochz": "3"}))
    assert run.state == State.REJECTED
    report = svc.blobs.read_json(svc.settings.runs_container, run.report["report_path"])
    assert report["errors"][0]["code"] == "unknown_key" and "epochz" in report["errors"][0]["message"]


def test_overrides_are_typed_onto_the_run(svc):
    run = ingest(svc, upload(svc, "o.jsonl", valid_lines(), metadata={"epochs": "2", "keep": "true"}))
    assert run.state == State.QUEUED
    assert run.overrides["num_train_epochs"] == 2 and run.keep is True


def test_non_jsonl_upload_is_left_alone(svc):
    assert ingest(svc, upload(svc, "notes.txt", ["hello"])) is None
    assert svc.runs.list() == []


def test_identical_data_and_settings_again_end_as_a_duplicate_with_no_second_job(svc):
    first = ingest(svc, upload(svc, "a.jsonl", valid_lines(), metadata={"epochs": "2"}))
    again = ingest(svc, upload(svc, "copy of a.jsonl", valid_lines(), metadata={"EPOCHS": "2.0"}))
    assert first.state == State.QUEUED
    assert again.state == State.REJECTED and again.duplicate_of == first.run_id
    assert f"same data and settings as run {first.run_id} (/api/runs/{first.run_id}, Queued)" in \
        again.history[-1].detail and "force=true" in again.history[-1].detail
    assert again.report["ok"] and not again.job_name and not again.train_path
    assert {m[0] for m in queued_messages(svc, svc.settings.runs_queue)} == {first.run_id}
    from shared.run_views import run_view

    assert run_view(again)["links"]["duplicate_of"] == f"/api/runs/{first.run_id}"


def test_other_bytes_or_other_settings_are_not_duplicates_and_force_trains_anyway(svc):
    first = ingest(svc, upload(svc, "a.jsonl", valid_lines(), metadata={"epochs": "2"}))
    other_settings = ingest(svc, upload(svc, "b.jsonl", valid_lines(), metadata={"epochs": "3"}))
    other_bytes = ingest(svc, upload(svc, "c.jsonl", valid_lines()[:-1], metadata={"epochs": "2"}))
    forced = ingest(svc, upload(svc, "d.jsonl", valid_lines(), metadata={"epochs": "2", "force": "true"}))
    assert [r.state for r in (first, other_settings, other_bytes, forced)] == [State.QUEUED] * 4
    assert forced.overrides == {"num_train_epochs": 2, "force": True}


def test_data_whose_earlier_run_failed_trains_again_and_takes_over(svc):
    first = ingest(svc, upload(svc, "a.jsonl", valid_lines()))
    svc.runs.update(first.run_id, lambda r: r.fail("training", "the job failed: out of memory", svc.clock()))
    retry = ingest(svc, upload(svc, "a-retry.jsonl", valid_lines()))
    assert retry.state == State.QUEUED
    third = ingest(svc, upload(svc, "a-third.jsonl", valid_lines()))
    assert third.state == State.REJECTED and third.duplicate_of == retry.run_id


def test_identical_uploads_at_once_give_one_job(svc):
    import threading

    blobs = [upload(svc, f"same-{i}.jsonl", valid_lines()) for i in range(4)]
    barrier, runs = threading.Barrier(len(blobs)), []

    def go(blob):
        barrier.wait()
        runs.append(ingest(svc, blob))

    threads = [threading.Thread(target=go, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = [r for r in runs if r.state == State.QUEUED]
    assert len(queued) == 1 and len(runs) == 4
    assert {r.duplicate_of for r in runs if r.state == State.REJECTED} == {queued[0].run_id}
    assert {m[0] for m in queued_messages(svc, svc.settings.runs_queue)} == {queued[0].run_id}


def test_crash_mid_validation_is_completed_by_redelivery(svc):
    blob = upload(svc, "data.jsonl", valid_lines())
    from shared.runs import new_run, run_id_for

    props = blob.get_blob_properties()
    run_id = run_id_for(blob.container_name, blob.blob_name, props.etag)
    stuck = new_run(run_id, svc.clock()).advance(State.VALIDATING, svc.clock())
    svc.runs.create(stuck)
    run = ingest(svc, blob)
    assert run.run_id == run_id and run.state == State.QUEUED


def _long_record(i, user_chars, assistant_chars):
    return json.dumps({"prompt_id": f"long-{i}", "messages": [{"role": "user", "content": "u" * user_chars},
                                                              {"role": "assistant", "content": "a" * assistant_chars}]})


def test_the_uploads_max_seq_length_sets_the_token_budget(settings):
    svc = bootstrap(settings.replace(validation_max_invalid_fraction=0.1), ml=FakeMLBackend())
    # 400 + 400 characters: 208 estimated tokens, the assistant's first at 106
    lines = valid_lines(40) + [_long_record(1, 400, 400), _long_record(2, 40000, 40)]
    blob = upload(svc, "budget.jsonl", lines, metadata={"max_seq_length": "150", "epochs": "2"})
    run = ingest(svc, blob)
    report = svc.blobs.read_json(svc.settings.runs_container, f"{run.run_id}/validation.json")
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(42, "assistant_truncated")]
    assert [(w["line"], w["code"]) for w in report["warnings"]] == [(41, "exceeds_max_seq_length")]
    assert "the upload's override" in report["warnings"][0]["message"]
    tokens = report["tokens"]
    assert tokens["method"].startswith("estimate") and tokens["max_seq_length"] == 150 and tokens["epochs"] == 2
    assert tokens["truncated_records"] == 1 and tokens["tokens_cut"] == 58
    assert run.state == State.QUEUED
    train = read_lines(svc, run.train_path)
    expected = sum(min(150, sum(estimate_tokens(m["content"]) for m in r["messages"]) + 8) for r in train)
    assert tokens["trained_tokens_per_epoch"] == expected > 0 and tokens["trained_tokens_total"] == 2 * expected
    # one report shape: the run keeps the same one, its issue lists capped, with the split the validator counted
    assert run.report["tokens"] == tokens and run.report["report_path"] == f"{run.run_id}/validation.json"
    assert report["split"]["train"] == len(train) and report["split"]["train"] + report["split"]["test"] == 41
    assert ValidationReport.model_validate(report) and ValidationReport.model_validate(run.report)


def test_the_token_totals_include_what_the_evaluation_will_process(settings):
    svc = bootstrap(settings.replace(eval_gate="enforce", eval_max_records=2, eval_samples=1, eval_max_new_tokens=10),
                    ml=FakeMLBackend())
    run = ingest(svc, upload(svc, "evaltokens.jsonl", valid_lines(60)))
    tokens = svc.blobs.read_json(svc.settings.runs_container, f"{run.run_id}/validation.json")["tokens"]
    test = read_lines(svc, run.test_path)
    assert len(test) > 2
    scored = sum((len(m["messages"][0]["content"]) + len(m["messages"][1]["content"]) + 3) // 4 + 8 for m in test[:2])
    # Both models read the first EVAL_MAX_RECORDS test records and answer EVAL_SAMPLES prompts.
    assert tokens["eval_tokens_scored"] == 2 * scored and tokens["eval_tokens_generated_max"] == 2 * 1 * 10
    assert tokens["eval_tokens_total"] == 2 * scored + 20
    off = ingest(svc, upload(svc, "evaloff.jsonl", valid_lines(60), metadata={"eval_gate": "off"}))
    tokens = svc.blobs.read_json(svc.settings.runs_container, f"{off.run_id}/validation.json")["tokens"]
    assert tokens["eval_tokens_total"] == 0


def test_without_an_override_or_model_hint_truncation_is_not_checked(svc):
    run = ingest(svc, upload(svc, "nobudget.jsonl", valid_lines(40) + [_long_record(1, 40000, 40)]))
    assert run.state == State.QUEUED
    assert run.report["tokens"]["max_seq_length"] is None and run.report["tokens"]["epochs"] == 3


def test_the_first_folder_or_model_line_names_the_runs_line_and_a_root_upload_has_none(svc):
    import uuid

    tag = uuid.uuid4().hex[:6]
    assert ingest(svc, upload(svc, f"Support Bot {tag}/2026-12-01.jsonl", valid_lines())).line == f"support-bot-{tag}"
    assert ingest(svc, upload(svc, f"root-{tag}.jsonl", valid_lines())).line == ""
    run = ingest(svc, upload(svc, f"root2-{tag}.jsonl", valid_lines(), metadata={"model_line": f"Triage {tag}"}))
    assert run.state == State.QUEUED and run.line == f"triage-{tag}"


def test_an_upload_to_a_line_whose_endpoint_belongs_to_another_is_rejected_saying_whose(svc):
    from shared.ml.port import TAG_APP, TAG_LINE

    svc.ml.add_endpoint("ln-taken-by-other", tags={TAG_APP: "another-app"})
    svc.ml.add_endpoint("ln-taken-by-line", tags={TAG_APP: svc.settings.app_id, TAG_LINE: "something-else"})
    for folder, whose in [("taken-by-other", "app 'another-app'"), ("taken-by-line", "line 'something-else'")]:
        run = ingest(svc, upload(svc, f"{folder}/data.jsonl", valid_lines()))
        assert run.state == State.REJECTED, folder
        assert whose in run.history[-1].detail and f"ln-{folder}" in run.history[-1].detail
        assert run.report["error_counts"] == {"invalid_model_line": 1}
    run = ingest(svc, upload(svc, "x" * 40 + "/data.jsonl", valid_lines()))
    assert run.state == State.REJECTED and "at most 29" in run.history[-1].detail
    # The line's own endpoint (this app, this line) is no obstacle: later uploads roll out beside it.
    svc.ml.add_endpoint("ln-ours", tags={TAG_APP: svc.settings.app_id, TAG_LINE: "ours"})
    assert ingest(svc, upload(svc, "ours/data.jsonl", valid_lines())).state == State.QUEUED
