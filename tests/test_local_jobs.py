"""Local fine-tuning jobs (real detached processes that really train) and their Event Grid events (posted to a
real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from chatft_local.workspace import jobs
from chatft_local.workspace.base_model import ensure_base_model
from chatft_local.workspace.events import (RUN_COMPLETED, RUN_STATUS_CHANGED, TOPIC, EventOutbox, build_run_event,
                                           experiment_id, post_event, run_events, safe_url)
from tests.test_local_training import chat_records, write_jsonl

KEY = "s3cret-webhook-key"


class Receiver:
    """An Event Grid webhook stand-in: records each POST (query and JSON body), answers `status`."""

    def __init__(self, port: int = 0, status: int = 200):
        self.posts: list[tuple[dict, list]] = []
        self.status = status
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.arrived:
                    receiver.posts.append((parse_qs(urlsplit(self.path).query), body))
                    receiver.arrived.notify_all()
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/runtime/webhooks/eventgrid" \
                   f"?functionName=job_events&code={KEY}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [event for _, body in self.posts for event in body]

    def wait_for(self, predicate, timeout: float = 120.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: predicate(self.events()), timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-state")
    ensure_base_model(root)
    yield root
    # Long jobs a failed test left running must not keep the CPU busy.
    for directory in jobs.jobs_root(root).iterdir():
        if jobs.job_exists(root, directory.name):
            jobs.cancel(root, directory.name)


def make_spec(state: Path, name: str, events_url: str = "", **params) -> dict:
    base = ensure_base_model(state)
    data = state / f"{name}-data"
    data.mkdir()
    records = chat_records(50)
    return {"job_name": name, "run_id": f"run-{name}", "experiment_name": "chat_completion_local",
            "base_model": base.path, "base_model_name": base.name,
            "train_file": write_jsonl(data / "train.jsonl", records[:45]),
            "test_file": write_jsonl(data / "test.jsonl", records[45:]),
            "params": {**ast.literal_eval(base.tags["model_specific_defaults"]), "apply_lora": "true", **params},
            "events_url": events_url}


def wait_status(state: Path, name: str, until, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = jobs.read_status(state, name)
        if until(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def processes_of(directory: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line names the job directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state_line = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(directory.resolve()).encode() in command and state_line != "Z":
            found.append(int(entry.name))
    return found


def wait_for_delivery_process(pid: int, timeout: float = 60.0) -> None:
    """Until the job process has become its delivery process (`... jobs deliver <job_dir>`)."""
    deadline = time.monotonic() + timeout
    while b"deliver" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") and time.monotonic() < deadline:
        time.sleep(0.2)


def running(status: dict) -> bool:
    return status["status"] == "Running" and (status.get("progress") or {}).get("step", 0) >= 1


# ------------------------------------------------------------------------------------------ jobs


@pytest.mark.slow
def test_job_runs_detached_to_completion_and_posts_its_events(state, receiver):
    spec = make_spec(state, "job-complete", receiver.url)
    assert jobs.submit(state, spec) == "job-complete"
    assert jobs.read_status(state, "job-complete")["status"] in ("Queued", "Running")

    status = wait_status(state, "job-complete", lambda s: s["status"] in jobs.FINAL)
    assert status["status"] == "Completed", status
    metrics = status["metrics"]
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    assert metrics["last_step_loss"] < metrics["first_step_loss"]
    assert metrics["steps"] > 0 and metrics["tokens_per_second"] > 0 and metrics["perplexity"] > 1
    assert status["progress"]["step"] == status["progress"]["total_steps"] == metrics["steps"]
    assert status["started_at"] and status["ended_at"] and status["error"] == ""
    assert (jobs.model_dir(state, "job-complete") / "MLmodel").is_file()
    print(f"job metrics: {metrics}")

    assert receiver.wait_for(lambda events: len(events) == 3)
    assert all(len(body) == 1 for _, body in receiver.posts)  # one event per POST, in an array
    assert all(query == {"functionName": ["job_events"], "code": [KEY]} for query, _ in receiver.posts)
    kinds = [(e["eventType"], e["data"].get("runStatus")) for e in receiver.events()]
    assert kinds == [(RUN_STATUS_CHANGED, "Running"), (RUN_STATUS_CHANGED, "Completed"), (RUN_COMPLETED, None)]
    first = receiver.events()[0]
    assert first["data"]["runId"] == "job-complete" and first["data"]["experimentName"] == "chat_completion_local"
    assert first["subject"] == f"experiments/{experiment_id('chat_completion_local')}/runs/job-complete"
    # The webhook key never reaches the job's log, and its spec (which holds the URL) is the owner's only.
    assert KEY not in (jobs.job_dir(state, "job-complete") / "log.txt").read_text()
    assert (jobs.job_dir(state, "job-complete") / "job.json").stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_submitting_twice_starts_one_process(state):
    spec = make_spec(state, "job-twice", num_train_epochs=200)
    threads = [threading.Thread(target=jobs.submit, args=(state, spec)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert jobs.submit(state, spec) == "job-twice"
    status = wait_status(state, "job-twice", running)
    assert status["status"] == "Running"
    assert processes_of(jobs.job_dir(state, "job-twice")) == [status["pid"]]
    jobs.cancel(state, "job-twice")


@pytest.mark.slow
def test_cancel_stops_the_process_and_posts_canceled(state, receiver):
    spec = make_spec(state, "job-cancel", receiver.url, num_train_epochs=200)
    jobs.submit(state, spec)
    status = wait_status(state, "job-cancel", running)
    assert running(status), status

    jobs.cancel(state, "job-cancel")
    assert jobs.read_status(state, "job-cancel")["status"] == "Canceled"
    assert receiver.wait_for(lambda events: any(e["data"].get("runStatus") == "Canceled" for e in events))
    deadline = time.monotonic() + 60
    while processes_of(jobs.job_dir(state, "job-cancel")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(jobs.job_dir(state, "job-cancel")) == []
    final = jobs.read_status(state, "job-cancel")
    assert final["status"] == "Canceled" and final["error"] == "canceled"
    assert not jobs.model_dir(state, "job-cancel").exists()
    jobs.cancel(state, "job-cancel")  # canceling a finished job does nothing
    assert [e["data"].get("runStatus") for e in receiver.events()] == ["Running", "Canceled"]


@pytest.mark.slow
def test_a_job_beyond_max_running_waits_queued_until_a_slot_is_free(state):
    """LOCAL_MAX_JOBS=1 (the spec's `max_running`): the second job's process waits Queued, alive and not taken
    for dead, while the first trains; once the first ends, the second takes the slot and runs."""
    first = make_spec(state, "job-slot-first", num_train_epochs=200)
    second = make_spec(state, "job-slot-second", num_train_epochs=200)
    first["max_running"] = second["max_running"] = 1
    jobs.submit(state, first)
    assert running(wait_status(state, "job-slot-first", running))
    jobs.submit(state, second)
    time.sleep(3)  # long enough for an unlimited job to have started (it is Running within a second or two)
    waiting = jobs.read_status(state, "job-slot-second")
    assert waiting["status"] == "Queued" and waiting["started_at"] is None, waiting
    assert processes_of(jobs.job_dir(state, "job-slot-second")) == [waiting["pid"]], "alive, holding no slot"
    jobs.cancel(state, "job-slot-first")
    status = wait_status(state, "job-slot-second", lambda s: s["status"] != "Queued")
    assert status["status"] == "Running", status
    jobs.cancel(state, "job-slot-second")
    assert jobs.read_status(state, "job-slot-second")["status"] == "Canceled"


@pytest.mark.slow
def test_a_job_whose_process_died_is_failed_and_stays_failed(state):
    jobs.submit(state, make_spec(state, "job-killed", num_train_epochs=200))
    status = wait_status(state, "job-killed", running)
    assert running(status), status
    os.kill(status["pid"], signal.SIGKILL)  # no chance to write its status

    failed = wait_status(state, "job-killed", lambda s: s["status"] != "Running", timeout=30)
    assert failed["status"] == "Failed" and failed["error"] == "training process died"
    on_disk = json.loads((jobs.job_dir(state, "job-killed") / "status.json").read_text())
    assert on_disk["status"] == "Failed" and on_disk["ended_at"]


@pytest.mark.slow
def test_a_job_that_cannot_train_fails_with_a_one_line_error(state, receiver, tmp_path):
    # The host it was submitted to is gone; a host started later publishes its own URL, and the job finds it.
    gone = receiver.url.replace(f":{receiver.server.server_address[1]}/", f":{_free_port()}/")
    published = tmp_path / "events-url"
    spec = {**make_spec(state, "job-bad-params", gone, num_train_epochs="many"), "events_url_file": str(published)}
    jobs.submit(state, spec)
    directory = jobs.job_dir(state, "job-bad-params")
    status = wait_status(state, "job-bad-params", lambda s: s["status"] in jobs.FINAL)
    assert status["status"] == "Failed"
    assert "num_train_epochs" in status["error"] and "\n" not in status["error"]
    assert receiver.events() == []
    # Undelivered, the events pass to a delivery process (the same pid, without the training libraries).
    wait_for_delivery_process(status["pid"])
    command = Path(f"/proc/{status['pid']}/cmdline").read_bytes()
    assert command.split(b"\0")[3:5] == [b"deliver", str(directory.resolve()).encode()]
    assert (directory / "events.pending.json").is_file()

    published.write_text(receiver.url + "\n")
    assert receiver.wait_for(lambda events: len(events) == 2)
    assert [e["data"].get("runStatus") for e in receiver.events()] == ["Running", "Failed"]  # no RunCompleted
    assert "Traceback" in (directory / "log.txt").read_text()
    deadline = time.monotonic() + 30
    while processes_of(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(directory) == [] and not (directory / "events.pending.json").exists()


@pytest.mark.slow
def test_the_delivery_process_stops_on_sigterm(state):
    spec = make_spec(state, "job-undeliverable", f"http://127.0.0.1:{_free_port()}/x?code={KEY}",
                     num_train_epochs="many")
    jobs.submit(state, spec)
    directory = jobs.job_dir(state, "job-undeliverable")
    pid = wait_status(state, "job-undeliverable", lambda s: s["status"] in jobs.FINAL)["pid"]
    wait_for_delivery_process(pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while processes_of(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(directory) == []


def test_unknown_and_malformed_job_names(tmp_path):
    with pytest.raises(jobs.JobNotFound) as missing:
        jobs.read_status(tmp_path, "no-such-job")
    assert isinstance(missing.value, KeyError) and str(missing.value) == "job no-such-job not found"
    with pytest.raises(KeyError):
        jobs.cancel(tmp_path, "no-such-job")
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 300):
        with pytest.raises(ValueError):
            jobs.job_dir(tmp_path, bad)
    with pytest.raises(ValueError, match="train_file"):
        jobs.submit(tmp_path, {"job_name": "j", "base_model": "/m"})


def test_a_job_dir_without_a_spec_is_not_a_job_and_submit_still_starts_it(tmp_path):
    # The workspace copies a job's data into <job_dir>/inputs before submitting: that alone is no job yet.
    directory = jobs.job_dir(tmp_path, "job-inputs-first")
    (directory / "inputs").mkdir(parents=True)
    assert not jobs.job_exists(tmp_path, "job-inputs-first")
    jobs.submit(tmp_path, {"job_name": "job-inputs-first", "base_model": str(tmp_path / "missing-model"),
                           "train_file": str(tmp_path / "missing.jsonl")})
    assert jobs.job_exists(tmp_path, "job-inputs-first")
    status = wait_status(tmp_path, "job-inputs-first", lambda s: s["status"] in jobs.FINAL, timeout=120)
    assert status["status"] == "Failed" and "missing.jsonl" in status["error"]


def test_a_final_status_is_never_overwritten(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"status": "Running", "pid": 1, "progress": {}}))
    assert jobs.update_status(tmp_path, progress={"step": 3})["progress"] == {"step": 3}
    jobs.update_status(tmp_path, status="Canceled", error="canceled")
    after = jobs.update_status(tmp_path, status="Running", progress={"step": 4})
    assert after["status"] == "Canceled" and after["progress"] == {"step": 3}


def test_a_queued_job_whose_process_never_started_is_failed(tmp_path):
    directory = jobs.job_dir(tmp_path, "job-lost")
    directory.mkdir(parents=True)
    (directory / "job.json").write_text("{}")
    (directory / "status.json").write_text(json.dumps({"status": "Queued", "pid": None,
                                                       "submitted_at": "2020-01-01T00:00:00+00:00"}))
    assert jobs.read_status(tmp_path, "job-lost")["status"] == "Failed"


# ------------------------------------------------------------------------------------------ events


def test_run_event_has_azure_mls_event_grid_shape():
    event = build_run_event(RUN_STATUS_CHANGED, job_name="job-1", experiment_name="exp", status="Running")
    assert set(event) == {"id", "topic", "subject", "eventType", "eventTime", "data", "dataVersion",
                          "metadataVersion"}
    assert event["topic"] == TOPIC and event["dataVersion"] == "2" and event["metadataVersion"] == "1"
    assert event["data"] == {"experimentId": experiment_id("exp"), "experimentName": "exp", "runId": "job-1",
                             "runType": "azureml.PipelineRun", "runTags": {}, "runProperties": {},
                             "runStatus": "Running"}
    assert event["subject"] == f"experiments/{experiment_id('exp')}/runs/job-1"
    assert experiment_id("exp") == experiment_id("exp") != experiment_id("other")
    completed = build_run_event(RUN_COMPLETED, job_name="job-1", experiment_name="exp", status="Completed")
    assert "runStatus" not in completed["data"]
    assert [e["eventType"] for e in run_events("j", "e", "Completed")] == [RUN_STATUS_CHANGED, RUN_COMPLETED]
    assert [e["eventType"] for e in run_events("j", "e", "Failed")] == [RUN_STATUS_CHANGED]
    assert safe_url("http://127.0.0.1:7071/runtime/webhooks/eventgrid?code=k") == \
        "http://127.0.0.1:7071/runtime/webhooks/eventgrid"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_delivery_is_retried_until_the_receiver_comes_up():
    port = _free_port()
    url = f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=job_events&code={KEY}"
    late: list[Receiver] = []
    timer = threading.Timer(1.0, lambda: late.append(Receiver(port)))
    timer.start()
    event = build_run_event(RUN_STATUS_CHANGED, job_name="job-late", experiment_name="exp", status="Completed")
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        time.sleep(seconds)

    try:
        assert post_event(url, event, first_delay=0.1, max_delay=0.4, sleep=sleep)
        assert len(sleeps) >= 2 and max(sleeps) <= 0.4 and sleeps[:2] == [0.1, 0.2]  # backoff, capped
        assert late[0].events() == [event]
    finally:
        timer.join()
        for r in late:
            r.close()


def test_events_go_to_the_published_url_when_there_is_one(tmp_path):
    published = tmp_path / "events-url"
    target = jobs.events_target({"events_url": "http://127.0.0.1:1/x?code=k", "events_url_file": str(published)})
    assert target() == "http://127.0.0.1:1/x?code=k"
    published.write_text("http://127.0.0.1:2/y?code=k\n")
    assert target() == "http://127.0.0.1:2/y?code=k"
    assert jobs.events_target({"events_url": "", "events_url_file": ""}) is None
    only_file = jobs.events_target({"events_url_file": str(tmp_path / "absent")})
    assert only_file() == ""  # no receiver yet: delivery waits and asks again


def test_delivery_stops_when_refused_or_out_of_time():
    refusing = Receiver(status=400)
    try:
        event = build_run_event(RUN_STATUS_CHANGED, job_name="j", experiment_name="e", status="Failed")
        assert not post_event(refusing.url, event, first_delay=0.01, sleep=lambda s: None)
        assert len(refusing.posts) == 1  # 400 is not retried
    finally:
        refusing.close()
    unavailable = Receiver(status=503)
    try:
        assert not post_event(unavailable.url, event, give_up_after=0.3, first_delay=0.05, max_delay=0.05)
        assert len(unavailable.posts) > 1  # 503 is retried until the window closes
    finally:
        unavailable.close()
    assert not post_event(f"http://127.0.0.1:{_free_port()}/x", event, give_up_after=0.2, first_delay=0.05)
    assert not post_event("127.0.0.1:7071/no-scheme", event, sleep=lambda s: pytest.fail("a bad URL is not retried"))


def test_outbox_delivers_in_order_without_blocking(receiver):
    outbox = EventOutbox(receiver.url, first_delay=0.05)
    outbox.publish(run_events("job-o", "exp", "Running"))
    outbox.publish(run_events("job-o", "exp", "Completed"))
    outbox.close(timeout=30)
    assert [(e["eventType"], e["data"].get("runStatus")) for e in receiver.events()] == \
        [(RUN_STATUS_CHANGED, "Running"), (RUN_STATUS_CHANGED, "Completed"), (RUN_COMPLETED, None)]
