"""The product end to end, on this machine: the local host serving function_app.py against Azurite, and the local
ML workspace really fine-tuning, registering, serving — the flow a user meets with `make demo`.

One module-scoped host trains and deploys two models once, each evaluated against its base model by the quality
gate (really: the evaluation module on the stand-in); beside them it trains a sabotaged upload (a learning rate that
makes the loss diverge), which the gate holds, and one whose test split is too small to decide on. The tests then
score through both routes, check that duplicate triggers change nothing, deploy the held run by a person's choice,
and run the idle cleanup. The host-restart test runs its own
host as a child process.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from chatft_local.host import HostProcess, LocalHost
from chatft_local.sample_data import sample_records
from chatft_local.uploads import upload_training_file
from shared.config import Settings
from shared.ml.port import TAG_APP
from shared.run_store import RunStore
from shared.runs import Run, State, iso, parse_iso

pytestmark = pytest.mark.slow

NOTEBOOK_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
RUN_TIMEOUT = 300


def names_env(state_dir: Path) -> dict[str, str]:
    u = "e" + uuid.uuid4().hex[:8]
    return {
        "TRAINING_CONTAINER": f"{u}-training", "RUNS_CONTAINER": f"{u}-runs", "RUNS_TABLE": f"{u}runs",
        "RUNS_QUEUE": f"{u}-runs", "DEPLOY_QUEUE": f"{u}-deploy", "CHATFT_STATE_DIR": str(state_dir),
        "ML_BACKEND": "local", "MESSAGING": "storage-queue", "DEPLOY_CHECK_SECONDS": "1",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLEANUP_SCHEDULE": "*/2 * * * * *",
        # The evaluation on a CPU: few greedy answers, short ones; a test split of 60 * 0.3 records decides.
        "EVAL_SAMPLES": "3", "EVAL_MAX_NEW_TOKENS": "16", "EVAL_MIN_RECORDS": "10",
    }


def write_sample(path: Path, count: int = 60, seed: int = 7) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_records(count, seed=seed)))
    return path


def wait_for_run(store: RunStore, run_id: str, states: tuple[State, ...], timeout: float = RUN_TIMEOUT) -> Run:
    deadline = time.monotonic() + timeout
    run = None
    while time.monotonic() < deadline:
        run = store.find(run_id)
        if run is not None and run.state in states:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not reach {states}: {run.state if run else 'no run'} "
                         f"{run.history if run else ''}")


def wait_until(ok, what: str, timeout: float = 120) -> None:
    """Poll `ok()` until it holds; `what` says what was awaited when it never does."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.3)


def _wait_drained(settings: Settings, queues: tuple[str, ...], timeout: float = 300) -> None:
    """Wait until `queues` hold no message, scheduled ones included: every delivery sent so far was handled and
    deleted. (A Storage queue's approximate count includes invisible messages; Azurite's is exact.)"""
    from azure.storage.queue import QueueClient

    clients = [QueueClient.from_connection_string(settings.storage_connection, name) for name in queues]
    counts: list[int] = []

    def drained() -> bool:
        counts[:] = [q.get_queue_properties().approximate_message_count for q in clients]
        return not any(counts)

    try:
        wait_until(drained, f"queues {list(queues)} drained", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}; they still hold {counts} messages") from None


def notebook_request(content: str) -> dict:
    return {"input_data": {"input_string": [{"role": "user", "content": content}], "parameters": NOTEBOOK_PARAMETERS},
            "params": {}}


class Deployed:
    """The module's host, settings and the two deployed runs."""

    def __init__(self, host: LocalHost, settings: Settings, store: RunStore, runs: list[Run],
                 gated: dict[str, Run], env: dict[str, str]):
        self.host, self.settings, self.store, self.runs, self.gated = host, settings, store, runs, gated
        self.env = env  # the host's settings: a second host instance gets the same

    def store_blobs(self):
        from shared.storage import Blobs

        return Blobs(self.settings)

    def post(self, path: str, body, key: bool = True, **kwargs):
        headers = {"x-functions-key": self.host.function_key} if key else {}
        return requests.post(f"{self.host.base_url}{path}", json=body, headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def deployed(azurite, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    env = names_env(tmp / "state")
    host = LocalHost(port=0, env=env).start()
    try:
        settings = Settings.from_env({**os.environ, **env})
        store = RunStore(settings.storage_connection, settings.runs_table)
        run_ids = []
        for i, name in enumerate(("alpha", "beta")):
            data = write_sample(tmp / f"{name}.jsonl", seed=i)
            run_ids.append(upload_training_file(settings, data, {"epochs": "2", "test_fraction": "0.3"},
                                                blob_name=f"{name}.jsonl")[1])
        gated_ids = {
            # A learning rate this high makes the stand-in's loss diverge (not a number) over three epochs (one is not
            # enough on 48 records: the loss still falls below the random base's).
            "sabotaged": upload_training_file(settings, write_sample(tmp / "sabotaged.jsonl", seed=5),
                                              {"epochs": "3", "learning_rate": "0.9", "test_fraction": "0.3"},
                                              blob_name="sabotaged.jsonl")[1],
            # 4 test records (the split is a stable hash): fewer than EVAL_MIN_RECORDS.
            "tiny": upload_training_file(settings, write_sample(tmp / "tiny.jsonl", seed=6),
                                         {"epochs": "1", "test_fraction": "0.1"}, blob_name="tiny.jsonl")[1],
        }
        done = (State.DEPLOYED, State.HELD, State.FAILED, State.REJECTED)
        # Four runs train, are evaluated and deploy side by side on the CPU: more than one run's time.
        runs = [wait_for_run(store, r, done, timeout=2 * RUN_TIMEOUT) for r in run_ids]
        for run in runs:
            assert run.state == State.DEPLOYED, (run.state, run.failure, run.history)
        gated = {name: wait_for_run(store, r, done, timeout=2 * RUN_TIMEOUT) for name, r in gated_ids.items()}
        yield Deployed(host, settings, store, runs, gated, env)
    finally:
        host.stop()


def test_upload_reaches_deployed_with_history_metrics_and_model(deployed):
    run = deployed.store.get(deployed.runs[0].run_id)
    states = [t.state for t in run.history]
    assert states[:4] == [State.RECEIVED, State.VALIDATING, State.QUEUED, State.SUBMITTED]
    assert states[-5:] == [State.TRAINED, State.EVALUATING, State.REGISTERED, State.DEPLOYING, State.DEPLOYED]
    assert run.metrics.get("eval_loss") is not None and run.model_name and run.scoring_uri.startswith("http://127.0.0.1")
    assert run.report["valid_records"] == 60
    assert run.report["tokens"]["eval_tokens_total"] > 0  # the evaluation's cost, stated at ingestion


def test_score_through_the_proxy_with_the_notebooks_request(deployed):
    # Runs before the gate tests: once a person deploys the sabotaged run, it is the newest Deployed model.
    response = deployed.post(f"/api/score/{deployed.runs[0].run_id}", notebook_request("What is LoRA?"))
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["output"], str)
    newest = deployed.post("/api/score", notebook_request("What is MLflow?"))
    assert newest.status_code == 200, newest.text


def test_the_quality_gate_deploys_a_better_fine_tune_with_real_numbers(deployed):
    from shared.protocol import EvaluationReport

    s = deployed.settings
    for run in deployed.runs:
        run = deployed.store.get(run.run_id)
        e = run.evaluation
        assert e["verdict"] == "better" and e["deploy"] and e["gate"] == "enforce" and e["metric"] == "eval_loss"
        assert e["records"] >= 10 and e["tuned"] < e["base"] and e["low"] > 0
        report = EvaluationReport.model_validate(
            deployed.store_blobs().read_json(s.runs_container, e["report_path"]), strict=False)
        loss = report.metrics["eval_loss"]
        assert loss.tuned < loss.base and report.records == e["records"] and report.run_id == run.run_id
        assert report.sampled == 3 and len(report.samples) == 3 and report.samples[0].reference
        assert {"rougeL", "chrf", "perplexity"} <= set(e["metrics"])
    # What users look at: the API's run view and `chatft runs`.
    view = requests.get(f"{deployed.host.base_url}/api/runs/{deployed.runs[0].run_id}",
                        headers={"x-functions-key": deployed.host.function_key}, timeout=30).json()
    assert view["evaluation"]["verdict"] == "better" and view["evaluation"]["metrics"]["eval_loss"]["low"] > 0


def test_a_sabotaged_fine_tune_is_held_then_deployed_by_a_persons_choice(deployed):
    run = deployed.store.get(deployed.gated["sabotaged"].run_id)
    assert run.state == State.HELD, (run.state, run.failure, run.history)
    e = run.evaluation
    assert e["verdict"] == "worse" and not e["deploy"] and "diverged" in e["reason"] and e["base"] > 0
    assert run.model_name and not run.endpoint_name  # registered, nothing billed
    owned = [x for x in _workspace(deployed.settings).list_endpoints() if x.tags.get("chatft-run") == run.run_id]
    assert owned == []
    held = deployed.post(f"/api/score/{run.run_id}", notebook_request("hello"))
    assert held.status_code == 409 and "diverged" in held.text and "/deploy" in held.text
    chosen = deployed.post(f"/api/runs/{run.run_id}/deploy", {})
    assert chosen.status_code == 202, chosen.text
    after = wait_for_run(deployed.store, run.run_id, (State.DEPLOYED, State.FAILED), timeout=120)
    assert after.state == State.DEPLOYED and after.deployed_by_choice and after.evaluation["verdict"] == "worse"


def test_a_tiny_test_split_cannot_decide_and_says_so(deployed):
    run = deployed.store.get(deployed.gated["tiny"].run_id)
    e = run.evaluation
    assert e["verdict"] == "undecided" and "cannot decide" in e["reason"] and e["records"] < 10
    # The point estimate is not worse (the stand-in learns), so under enforce it deploys.
    assert run.state == State.DEPLOYED and e["deploy"] and e["improvement"] > 0


def test_the_apps_health_route_answers_without_a_key(deployed):
    health = requests.get(f"{deployed.host.base_url}/api/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "ml_backend": "local",
                                                           "messaging": "storage-queue"}


def test_score_without_a_key_is_401(deployed):
    assert deployed.post("/api/score", notebook_request("hi"), key=False).status_code == 401


def test_openai_client_plain_and_streamed(deployed):
    from openai import OpenAI

    client = OpenAI(base_url=f"{deployed.host.base_url}/api/v1", api_key="unused",
                    default_headers={"x-functions-key": deployed.host.function_key})
    model = deployed.runs[1].model_name
    assert model in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is Event Grid?"}],
                                           max_tokens=20, temperature=0)
    assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
    chunks = list(client.chat.completions.create(model=model, stream=True, max_tokens=20,
                                                 messages=[{"role": "user", "content": "What is Service Bus?"}]))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_duplicate_triggers_make_no_second_job_model_or_endpoint(deployed):
    from azure.storage.blob import BlobServiceClient

    from shared.messages import SubmitRun
    from shared.messaging import StorageQueueSender

    run = deployed.runs[0]
    s = deployed.settings
    # The same queue message again, and the same Completed event twice and out of order.
    StorageQueueSender(s.storage_connection).send(s.runs_queue, SubmitRun(run.run_id))
    events = [_run_event(run.job_name, status) for status in ("Completed", "Running", "Completed")]
    url = f"{deployed.host.eventgrid_url}&functionName=job_events"
    for e in events:
        assert requests.post(url, json=[e], timeout=60).status_code in (200, 202)
    # The same blob version again: drop its receipt and start a second host instance (a scale-out in Azure),
    # which has not seen the blob, so its blob trigger delivers that version to ingest once more. The local ML
    # workspace stays the first host's (services=False): it stands for the cloud, which instances share.
    hosts = BlobServiceClient.from_connection_string(s.storage_connection).get_container_client("azure-webjobs-hosts")
    receipts = [b.name for b in hosts.list_blobs(name_starts_with="blobreceipts/")
                if b.name.endswith(f"{s.training_container}/alpha.jsonl")]
    assert receipts, "the first delivery left a receipt"
    for name in receipts:
        hosts.delete_blob(name)
    second = LocalHost(port=0, env=deployed.env, services=False).start()
    try:
        # Written when the second delivery's invocation ends: the duplicate was handled.
        wait_until(lambda: all(hosts.get_blob_client(n).exists() for n in receipts), "the second delivery's receipt")
        _wait_drained(s, (s.runs_queue,))  # the submit message again was handled too
    finally:
        second.stop()
    after = deployed.store.get(run.run_id)
    assert after.state == State.DEPLOYED and after.history == deployed.store.get(run.run_id).history
    assert after.endpoint_name == run.endpoint_name and after.model_version == run.model_version
    assert len([r for r in deployed.store.list() if r.upload.get("blob") == "alpha.jsonl"]) == 1
    jobs_dir = Path(s.chatft_state_dir) / "workspace" / "jobs"
    every = [deployed.store.get(r.run_id) for r in [*deployed.runs, *deployed.gated.values()]]
    assert sorted(p.name for p in jobs_dir.iterdir()) == sorted(n for r in every for n in (r.job_name,
                                                                                           r.evaluation_job))
    owned = [e for e in _workspace(s).list_endpoints() if e.tags.get(TAG_APP) == s.app_id]
    assert sorted(e.name for e in owned) == sorted(r.endpoint_name for r in every if r.endpoint_name)


def test_invalid_upload_is_rejected_and_starts_no_job(deployed, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in sample_records(20)]
    lines[3] = '{"messages": [{"role": "user", "content": "no answer"}]}'
    bad.write_text("\n".join(lines) + "\n")
    _, run_id = upload_training_file(deployed.settings, bad, blob_name="bad.jsonl")
    run = wait_for_run(deployed.store, run_id, (State.REJECTED, State.QUEUED), timeout=60)
    assert run.state == State.REJECTED and "line 4" in run.history[-1].detail
    assert not run.job_name
    assert not (Path(deployed.settings.chatft_state_dir) / "workspace" / "jobs" / f"chatft-{run_id}").exists()


def test_an_impossible_max_seq_length_is_rejected_before_any_training(deployed, tmp_path):
    # Every conversation opens with a long system message: 16 tokens leave no assistant token to learn from. The
    # token budget at ingestion says so per line (the trainer's own check, for what a count misses, is in
    # test_local_training).
    system = {"role": "system", "content": "You are a careful assistant for Azure Machine Learning engineers who "
                                           "answer in full sentences and explain every term you use."}
    records = [{**r, "messages": [system] + [m for m in r["messages"] if m["role"] != "system"]}
               for r in sample_records(30, seed=3)]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, run_id = upload_training_file(deployed.settings, data, {"max_seq_length": "16"}, blob_name="short.jsonl")
    run = wait_for_run(deployed.store, run_id, (State.REJECTED, State.FAILED, State.DEPLOYED), timeout=RUN_TIMEOUT)
    assert run.state == State.REJECTED and run.report["error_counts"] == {"too_few_records": 1,
                                                                          "assistant_truncated": 30}
    assert run.report["errors"][1]["code"] == "assistant_truncated" and run.report["errors"][1]["line"] == 1
    assert "max_seq_length 16 (the upload's override)" in run.report["errors"][1]["message"]


def test_idle_cleanup_deletes_only_the_idle_owned_endpoint_and_redeploy_brings_it_back(deployed):
    import dataclasses

    from chatft_local.workspace.local import LocalWorkspace
    from shared.bootstrap import bootstrap, override_services

    s = deployed.settings
    used, idle = deployed.runs
    ws = LocalWorkspace(s)
    ws.begin_create_endpoint("someone-elses", tags={})  # made by someone else: never touched

    def never_scored(r):
        changed = dataclasses.replace(r, last_used_at="")
        changed.etag = r.etag
        return changed

    deployed.store.update(idle.run_id, never_scored)
    assert deployed.post(f"/api/score/{used.run_id}", notebook_request("hello")).status_code == 200
    last_use = parse_iso(_wait(lambda: deployed.store.get(used.run_id).last_used_at, "the last use to be recorded"))
    idle_run = deployed.store.get(idle.run_id)
    port = int(ws.get_scoring_target(idle_run.endpoint_name).scoring_uri.split(":")[2].split("/")[0])

    # The timer fires every 2 s (CLEANUP_SCHEDULE); give the app a clock just short of the idle window after the
    # last use: both endpoints are older than the window, only one was scored within it.
    later = last_use + timedelta(hours=s.endpoint_idle_hours) - timedelta(seconds=1)
    override_services(bootstrap(s, clock=lambda: later))
    try:
        _wait(lambda: deployed.store.get(idle.run_id).state == State.RETIRED, "the idle run to retire", 30)
    finally:
        override_services(None)
    time.sleep(3)  # let a cleanup tick already running on the advanced clock finish before redeploying
    assert deployed.store.get(used.run_id).state == State.DEPLOYED
    assert ws.get_endpoint("someone-elses") is not None
    assert ws.get_endpoint(deployed.store.get(used.run_id).endpoint_name) is not None
    _wait(lambda: ws.get_endpoint(idle_run.endpoint_name) is None, "the idle endpoint to go")
    _wait(lambda: _port_free(port), "the idle model server's port to be free")
    gone = deployed.post(f"/api/score/{idle.run_id}", notebook_request("hello"))
    assert gone.status_code == 410 and f"/api/runs/{idle.run_id}/deploy" in gone.text
    again = deployed.post(f"/api/runs/{idle.run_id}/deploy", {})
    assert again.status_code == 202, again.text
    wait_for_run(deployed.store, idle.run_id, (State.DEPLOYED,), timeout=120)
    assert deployed.post(f"/api/score/{idle.run_id}", notebook_request("hello")).status_code == 200
    ws.begin_delete_endpoint("someone-elses")


def test_identical_data_again_links_the_first_run_and_force_true_trains_again(deployed, tmp_path):
    s, first = deployed.settings, deployed.runs[0]
    jobs_dir = Path(s.chatft_state_dir) / "workspace" / "jobs"
    data = write_sample(tmp_path / "alpha again.jsonl", seed=0)  # the bytes of the module's "alpha" upload
    # The same overrides as the module's upload: other settings would be another key, hence no duplicate.
    _, copy_id = upload_training_file(s, data, {"epochs": "2", "test_fraction": "0.3"}, blob_name="alpha-again.jsonl")
    copy = wait_for_run(deployed.store, copy_id, (State.REJECTED, State.QUEUED, State.SUBMITTED), timeout=120)
    assert copy.state == State.REJECTED and copy.duplicate_of == first.run_id, copy.history
    assert f"same data and settings as run {first.run_id} (/api/runs/{first.run_id}" in copy.history[-1].detail
    view = requests.get(f"{deployed.host.base_url}/api/runs/{copy_id}", timeout=30,
                        headers={"x-functions-key": deployed.host.function_key}).json()
    assert view["links"]["duplicate_of"] == f"/api/runs/{first.run_id}"
    assert not copy.job_name and not (jobs_dir / f"chatft-{copy_id}").exists()

    _, forced_id = upload_training_file(s, data, {"epochs": "2", "test_fraction": "0.3", "force": "true"},
                                        blob_name="alpha-forced.jsonl")
    forced = wait_for_run(deployed.store, forced_id, (State.DEPLOYED, State.FAILED, State.REJECTED))
    assert forced.state == State.DEPLOYED, (forced.failure, forced.history)
    assert forced.job_name not in (first.job_name, "") and (jobs_dir / forced.job_name).is_dir()
    assert forced.model_version != first.model_version or forced.model_name != first.model_name


def test_host_killed_during_training_still_reaches_deployed(azurite, tmp_path):
    env = names_env(tmp_path / "state")
    settings = Settings.from_env({**os.environ, **env})
    store = RunStore(settings.storage_connection, settings.runs_table)
    port = _free_port()  # the restarted host listens where the job process posts its events
    host = HostProcess(state_dir=tmp_path / "state", env=env, port=port).start()
    try:
        data = write_sample(tmp_path / "restart.jsonl", count=60, seed=11)
        _, run_id = upload_training_file(settings, data, {"epochs": "3"}, blob_name="restart.jsonl")
        wait_for_run(store, run_id, (State.SUBMITTED, State.TRAINING), timeout=60)
        host.kill()
        host = HostProcess(state_dir=tmp_path / "state", env=env, port=port).start()
        run = wait_for_run(store, run_id, (State.DEPLOYED, State.FAILED))
        assert run.state == State.DEPLOYED, (run.failure, run.history)
    finally:
        host.stop()


def _run_event(job_name: str, status: str) -> dict:
    return {"id": str(uuid.uuid4()), "topic": "/subscriptions/local/resourceGroups/local/providers/"
            "Microsoft.MachineLearningServices/workspaces/local", "subject": f"experiments/x/runs/{job_name}",
            "eventType": "Microsoft.MachineLearningServices.RunStatusChanged", "eventTime": iso(parse_iso(
                "2026-01-01T00:00:00Z")), "dataVersion": "2", "metadataVersion": "1",
            "data": {"runId": job_name, "runStatus": status, "runType": "azureml.PipelineRun", "experimentName": "x",
                     "experimentId": "x", "runTags": {}, "runProperties": {}}}


def _workspace(settings):
    from chatft_local.workspace.local import LocalWorkspace

    return LocalWorkspace(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
