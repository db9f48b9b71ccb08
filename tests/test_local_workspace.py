"""The local ML workspace's own behaviour beyond the port contract: endpoints whose deployments are real model
server processes, the supervisor that keeps them running, and the local stand-ins for base model and compute."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from chatft_local.workspace.endpoints import port_free, probe, server_alive
from chatft_local.workspace.local import ARCHIVED_LIST, ARCHIVED_MARKER, LocalWorkspace
from shared.config import Settings
from shared.ml.checked import checked
from shared.ml.port import (PROVISIONING_DONE, TAG_APP, TAG_RUN, InvalidInput, JobRequest, MLBackend, NameTaken,
                            NotFound, PermanentError, RegisteredModel, TransientError)
from shared.runs import job_name_for
from tests.harness_local import LocalHarness, build_chat_model, notebook_request, poll

READY_TIMEOUT = 180.0
CONVERSATION = [{"role": "user", "content": "What is Event Grid?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return build_chat_model(root / "mlflow_model_folder", root / "state")


@pytest.fixture
def local_settings(tmp_path):
    return Settings.from_env(env={}, chatft_state_dir=str(tmp_path / "state"))


@pytest.fixture
def workspace(local_settings):
    # As the app builds it (shared.bootstrap): the port's input rules (shared.ml.checked) around the workspace.
    ws = checked(LocalWorkspace(local_settings, provision_seconds=0.0))
    yield ws
    for endpoint in ws.list_endpoints():
        ws.begin_delete_endpoint(endpoint.name)


def register(ws: LocalWorkspace, model_dir: Path, job: str = "chatft-test-job", version: str = "1") -> RegisteredModel:
    return ws.registry.register(job, model_dir, "tiny-chat", version, description="test")


def wait_deployed(ws: LocalWorkspace, endpoint: str, deployment: str = "demo") -> str:
    found = poll(lambda: (lambda d: d if d.provisioning_state in PROVISIONING_DONE else None)(
        ws.get_deployment(endpoint, deployment)), READY_TIMEOUT, 0.5)
    assert found, f"deployment {deployment} of {endpoint} is still starting"
    return found.provisioning_state


def deploy(ws: LocalWorkspace, model_dir: Path, endpoint: str, deployment: str = "demo") -> dict:
    ws.begin_create_endpoint(endpoint, tags={TAG_APP: "chatft"})
    ws.begin_create_deployment(endpoint, deployment, register(ws, model_dir), "Standard_NC6s_v3", 1)
    assert wait_deployed(ws, endpoint, deployment) == "Succeeded"
    return ws.endpoints.deployment_record(endpoint, deployment)


def score(ws: LocalWorkspace, endpoint: str, uri: str | None = None, **headers: str) -> requests.Response:
    target = ws.get_scoring_target(endpoint)
    headers["Authorization"] = f"Bearer {target.key}"
    return requests.post(uri or target.scoring_uri, json=notebook_request(CONVERSATION), headers=headers, timeout=60)


def test_the_workspace_implements_the_port(workspace):
    assert isinstance(workspace, MLBackend)


@pytest.mark.slow
def test_endpoint_lifecycle_with_two_deployments(workspace, model_dir):
    ws = workspace
    tags = {TAG_APP: "chatft", TAG_RUN: "run-1"}
    ws.begin_create_endpoint("ep-life", tags=tags, description="lifecycle")
    ws.begin_create_endpoint("ep-life", tags={**tags, "other": "tag"})  # the same run's endpoint exists: a no-op
    with pytest.raises(NameTaken):  # another run's create would take this one over
        ws.begin_create_endpoint("ep-life", tags={TAG_APP: "chatft", TAG_RUN: "run-2"})
    key_file = ws.endpoints.key_path("ep-life")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [(e.name, e.tags, e.provisioning_state) for e in ws.list_endpoints()] == [("ep-life", tags, "Succeeded")]
    assert ws.get_endpoint("ep-life").scoring_uri == ""  # nothing deployed yet

    model = register(ws, model_dir)
    for name in ("blue", "green"):
        ws.begin_create_deployment("ep-life", name, model, "Standard_NC6s_v3", 1)
    ws.begin_create_deployment("ep-life", "blue", model, "Standard_NC6s_v3", 1)  # exists: a no-op
    assert ws.get_deployment("ep-life", "blue").provisioning_state == "Creating"
    assert wait_deployed(ws, "ep-life", "blue") == "Succeeded"
    assert wait_deployed(ws, "ep-life", "green") == "Succeeded"
    blue, green = (ws.endpoints.deployment_record("ep-life", n) for n in ("blue", "green"))
    assert blue["port"] != green["port"]

    # No traffic yet: only a request naming a deployment is served, as on Azure.
    assert score(ws, "ep-life").status_code == 404
    named = score(ws, "ep-life", **{"azureml-model-deployment": "blue"})
    assert named.status_code == 200 and isinstance(named.json()["output"], str)

    with pytest.raises(InvalidInput, match="no deployment nosuch"):
        ws.set_traffic("ep-life", {"nosuch": 100})
    with pytest.raises(InvalidInput, match="100"):
        ws.set_traffic("ep-life", {"blue": 50})
    ws.set_traffic("ep-life", {"blue": 0, "green": 100})
    endpoint = ws.get_endpoint("ep-life")
    assert endpoint.traffic == {"blue": 0, "green": 100}
    assert endpoint.scoring_uri == f"http://127.0.0.1:{green['port']}/score"
    target = ws.get_scoring_target("ep-life")
    assert target.deployment_name == "green" and target.key == key_file.read_text().strip()
    assert target.key not in repr(target)

    served = score(ws, "ep-life")
    assert served.status_code == 200 and served.headers["azureml-model-deployment"] == "green"
    # The endpoint's address serves every deployment: a request naming blue is handed to blue's server.
    forwarded = score(ws, "ep-life", **{"azureml-model-deployment": "blue"})
    assert forwarded.status_code == 200 and forwarded.headers["azureml-model-deployment"] == "blue"
    assert score(ws, "ep-life", **{"azureml-model-deployment": "nosuch"}).status_code == 404
    wrong = requests.post(target.scoring_uri, json=notebook_request(CONVERSATION), timeout=10,
                          headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401

    # A canary split, counted exactly: over 20 requests a 10% deployment serves 2, interleaved (TrafficSplit).
    ws.set_traffic("ep-life", {"blue": 10, "green": 90})
    served_by = [score(ws, "ep-life").headers["azureml-model-deployment"] for _ in range(20)]
    assert served_by.count("blue") == 2 and served_by.count("green") == 18
    # Mirroring copies every fifth request (20%) to blue; callers still get the live split's answers.
    ws.set_traffic("ep-life", {"green": 100})
    ws.set_mirror_traffic("ep-life", {"blue": 20})
    assert ws.get_endpoint("ep-life").mirror_traffic == {"blue": 20}
    before = (ws.endpoints.root / "ep-life" / "deployments" / "blue" / "server.log").read_text().count("-mirror")
    assert {score(ws, "ep-life").headers["azureml-model-deployment"] for _ in range(10)} == {"green"}
    blue_log = ws.endpoints.root / "ep-life" / "deployments" / "blue" / "server.log"
    assert poll(lambda: blue_log.read_text().count("-mirror") - before == 2, 30), "blue did not get 2 mirrored copies"
    with pytest.raises(InvalidInput, match="set them to 0"):  # blue still takes mirrored traffic
        ws.begin_delete_deployment("ep-life", "blue")
    ws.set_mirror_traffic("ep-life", {})
    ws.begin_delete_deployment("ep-life", "blue")
    assert [d.name for d in ws.list_deployments("ep-life")] == ["green"]
    assert ws.get_deployment("ep-life", "blue") is None
    assert poll(lambda: not server_alive(blue), 30), "blue's server still runs after its deployment was deleted"
    assert score(ws, "ep-life").headers["azureml-model-deployment"] == "green"

    ws.begin_delete_endpoint("ep-life")
    assert ws.get_endpoint("ep-life") is None and ws.get_deployment("ep-life", "blue") is None
    assert ws.list_endpoints() == []
    with pytest.raises(NotFound):
        ws.get_scoring_target("ep-life")
    ws.begin_delete_endpoint("ep-life")  # gone: a no-op
    for record in (blue, green):
        assert poll(lambda: not server_alive(record) and port_free(record["port"]), 30), \
            f"the server of {record['name']} still runs after the endpoint was deleted"


def test_an_endpoint_can_be_made_without_tags(workspace):
    workspace.begin_create_endpoint("someone-elses", tags={})
    assert [(e.name, e.tags) for e in workspace.list_endpoints()] == [("someone-elses", {})]


@pytest.mark.slow
def test_an_endpoint_is_creating_until_provisioned(local_settings, model_dir):
    ws = checked(LocalWorkspace(local_settings, provision_seconds=3600))
    ws.begin_create_endpoint("ep-slow", tags={})
    assert ws.get_endpoint("ep-slow").provisioning_state == "Creating"
    with pytest.raises(TransientError, match="Creating"):
        ws.begin_create_deployment("ep-slow", "demo", register(ws, model_dir), "Standard_NC6s_v3", 1)
    assert ws.get_deployment("ep-slow", "demo") is None


def test_invalid_names_are_refused_before_touching_the_disk(workspace):
    for name in ("../escape", "ab", "9starts-with-digit", "x" * 33, "has space"):
        with pytest.raises(PermanentError, match="not valid"):
            workspace.begin_create_endpoint(name, tags={})
    assert not (workspace.root / "escape").exists()


@pytest.mark.slow
def test_unknown_endpoints_and_models(workspace, model_dir):
    with pytest.raises(NotFound):
        workspace.begin_create_deployment("nosuch-ep", "demo", register(workspace, model_dir), "x", 1)
    with pytest.raises(NotFound):
        workspace.set_traffic("nosuch-ep", {})
    workspace.begin_create_endpoint("ep-models", tags={})
    with pytest.raises(NotFound):
        workspace.begin_create_deployment("ep-models", "demo", RegisteredModel("nosuch", "1", "models:/nosuch/1"),
                                          "x", 1)
    with pytest.raises(NotFound):
        workspace.begin_create_deployment("ep-models", "demo", RegisteredModel("nosuch", "1", ""), "x", 1)


@pytest.mark.slow
def test_a_deployment_whose_server_dies_while_starting_fails_with_the_reason(workspace, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("not an MLmodel file\n")
    workspace.begin_create_endpoint("ep-broken", tags={})
    workspace.begin_create_deployment("ep-broken", "demo", register(workspace, broken), "Standard_NC6s_v3", 1)
    assert wait_deployed(workspace, "ep-broken") == "Failed"
    assert workspace.get_deployment("ep-broken", "demo").error.startswith("model server failed to load the model")


@pytest.mark.slow
def test_the_supervisor_restarts_a_killed_model_server(workspace, model_dir):
    before = deploy(workspace, model_dir, "ep-killed")
    supervisor = workspace.supervisor(interval=0.5).start()
    try:
        os.kill(before["pid"], signal.SIGKILL)
        after = poll(lambda: (lambda r: r if r["instance"] != before["instance"]
                              and probe(r["port"], r["instance"]) == "ready" else None)(
            workspace.endpoints.deployment_record("ep-killed", "demo")), READY_TIMEOUT, 0.5)
        assert after, "the killed model server was not restarted"
        assert (after["port"], after["restarts"]) == (before["port"], 1)
        assert workspace.get_deployment("ep-killed", "demo").provisioning_state == "Succeeded"
        workspace.set_traffic("ep-killed", {"demo": 100})
        assert score(workspace, "ep-killed").status_code == 200
    finally:
        supervisor.stop()
    assert not server_alive(workspace.endpoints.deployment_record("ep-killed", "demo"))


@pytest.mark.slow
def test_deployments_come_back_after_a_host_restart(local_settings, model_dir):
    first = LocalWorkspace(local_settings, provision_seconds=0.0)
    supervisor = first.supervisor(interval=0.5).start()
    before = deploy(first, model_dir, "ep-restart")
    first.set_traffic("ep-restart", {"demo": 100})
    supervisor.stop()  # the host shuts down: its model servers stop
    assert not server_alive(before) and port_free(before["port"])
    assert first.get_deployment("ep-restart", "demo").provisioning_state == "Succeeded"

    second = LocalWorkspace(local_settings)  # the next host, over the same state folder
    supervisor = second.supervisor(interval=0.5).start()
    try:
        back = poll(lambda: (lambda r: r if probe(r["port"], r["instance"]) == "ready" else None)(
            second.endpoints.deployment_record("ep-restart", "demo")), READY_TIMEOUT, 0.5)
        assert back and back["port"] == before["port"] and back["instance"] != before["instance"]
        assert score(second, "ep-restart").status_code == 200
        assert second.get_endpoint("ep-restart").scoring_uri == first.get_endpoint("ep-restart").scoring_uri
    finally:
        supervisor.stop()
        second.begin_delete_endpoint("ep-restart")


@pytest.mark.slow
def test_registering_the_same_job_twice_finds_the_first(workspace, model_dir):
    first = register(workspace, model_dir, job="chatft-job-a", version="100")
    assert (first.name, first.version, first.id) == ("tiny-chat", "100", "models:/tiny-chat/1")
    assert register(workspace, model_dir, job="chatft-job-a", version="100") == first
    assert register(workspace, model_dir, job="chatft-job-a", version="101") == first  # same job
    other = register(workspace, model_dir, job="chatft-job-b", version="200")
    assert (other.version, other.id) == ("200", "models:/tiny-chat/2")
    assert workspace.registry.find("tiny-chat", "200") == other
    assert workspace.registry.model_dir(other) == model_dir.resolve()
    with pytest.raises(PermanentError, match="no MLflow model"):
        workspace.registry.register("chatft-job-c", model_dir.parent, "tiny-chat", "300")
    with pytest.raises(PermanentError, match="not valid"):
        workspace.registry.register("chatft-job-c", model_dir, "tiny chat'; --", "300")


# ------------------------------------------------------------------ local stand-ins: base model, compute, events


def test_the_base_model_answers_to_base_model_and_its_own_name(workspace, local_settings):
    model = workspace.resolve_base_model(local_settings.base_model)
    assert model.name == local_settings.base_model and Path(model.id, "config.json").is_file()
    assert model.tags["chatft-local-model"] == "phi3-tiny"
    assert workspace.resolve_base_model("phi3-tiny").id == model.id
    with pytest.raises(NotFound, match="BASE_MODEL"):
        workspace.resolve_base_model("Phi-4")


def test_an_archived_base_model_is_refused(workspace, local_settings, tmp_path):
    workspace.root.mkdir(parents=True)
    (workspace.root / ARCHIVED_LIST).write_text("# names treated as archived\nPhi-3.5-mini-instruct\n")
    with pytest.raises(PermanentError, match="Phi-3.5-mini-instruct.*archived.*BASE_MODEL"):
        workspace.resolve_base_model("Phi-3.5-mini-instruct")

    local_model = Path(workspace.resolve_base_model(local_settings.base_model).id)
    copy = tmp_path / "my-model"
    copy.mkdir()
    for item in local_model.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / ARCHIVED_MARKER).touch()
    marked = LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=local_settings.chatft_state_dir,
                                              local_base_model=str(copy)))
    with pytest.raises(PermanentError, match=ARCHIVED_MARKER):
        marked.resolve_base_model(local_settings.base_model)


def test_a_bad_local_base_model_is_a_permanent_error(local_settings, tmp_path):
    ws = LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=local_settings.chatft_state_dir,
                                          local_base_model=str(tmp_path / "nothing-here")))
    with pytest.raises(PermanentError, match="LOCAL_BASE_MODEL"):
        ws.resolve_base_model(local_settings.base_model)


def test_the_compute_is_this_machine(workspace, local_settings):
    base = workspace.resolve_base_model(local_settings.base_model)
    for name in (local_settings.aml_compute, "local"):
        compute = workspace.check_compute(name, base)
        assert compute.name == name and compute.vm_size in ("local-cpu", "local-cuda")
        assert compute.gpus_per_node >= 1
    with pytest.raises(NotFound, match="AML_COMPUTE"):
        workspace.check_compute("another-cluster", base)


def test_job_events_go_to_the_setting_else_the_running_host_else_the_default_host(local_settings):
    ws = LocalWorkspace(local_settings)
    default = ws.events_url()
    assert default.startswith(f"http://127.0.0.1:{local_settings.chatft_host_port}/runtime/webhooks/eventgrid?")
    assert "functionName=job_events" in default and "&code=" in default

    ws.publish_events_url("http://127.0.0.1:5555/runtime/webhooks/eventgrid?code=k&functionName=job_events")
    assert stat.S_IMODE(ws.events_url_file.stat().st_mode) == 0o600
    assert ws.events_url().startswith("http://127.0.0.1:5555/")
    ws.retract_events_url()
    assert ws.events_url() == default

    configured = LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=local_settings.chatft_state_dir,
                                                  local_events_url="http://127.0.0.1:6666/events"))
    configured.publish_events_url("http://127.0.0.1:5555/ignored")
    assert configured.events_url() == "http://127.0.0.1:6666/events"


# ------------------------------------------------------------------ jobs and the host's services


def _job_request(harness, run_id: str, train: str, test: str) -> JobRequest:
    backend = harness.backend
    base = backend.resolve_base_model(harness.base_model_name)
    return JobRequest(job_name=job_name_for(run_id), run_id=run_id, experiment_name="chatft-local-test",
                      base_model=base, compute=backend.check_compute(harness.compute_name, base), train_path=train,
                      test_path=test, params={"num_train_epochs": 1})


@pytest.mark.slow
def test_a_job_trains_on_the_run_files_and_posts_its_events(settings):
    harness = LocalHarness(settings)
    try:
        run_id = "local-job-0123456789ab"
        train, test = harness.prepare_training_data(run_id)
        request = _job_request(harness, run_id, train, test)
        assert harness.backend.submit_job(request) == request.job_name
        assert harness.backend.submit_job(request) == request.job_name  # found, not started twice
        inputs = harness.backend.root / "jobs" / request.job_name / "inputs"
        assert len((inputs / "train.jsonl").read_text().splitlines()) == 24
        assert len((inputs / "test.jsonl").read_text().splitlines()) == 6

        status = harness.wait_for_job(request.job_name, harness.timeout)
        assert status.status == "Completed", status.error
        completed = poll(lambda: [e for e in harness.events.events
                                  if e["data"].get("runId") == request.job_name
                                  and e["data"].get("runStatus") == "Completed"], 60)
        assert completed, f"no RunStatusChanged Completed event arrived: {harness.events.events}"
        assert completed[0]["eventType"] == "Microsoft.MachineLearningServices.RunStatusChanged"
    finally:
        harness.close()


def test_a_missing_training_file_is_a_permanent_error(settings):
    harness = LocalHarness(settings)
    try:
        request = _job_request(harness, "local-missing-0123456789ab", "nowhere/train.jsonl", "nowhere/test.jsonl")
        with pytest.raises(PermanentError, match="nowhere/train.jsonl"):
            harness.backend.submit_job(request)
        with pytest.raises(NotFound):
            harness.backend.get_job(request.job_name)
    finally:
        harness.close()


def test_the_host_services_publish_the_events_url_and_supervise(local_settings, tmp_path):
    from chatft_local import services

    host_state = tmp_path / "host-state"
    host = SimpleNamespace(state_dir=host_state, port=7999,
                           eventgrid_url="http://127.0.0.1:7999/runtime/webhooks/eventgrid?code=hostkey")
    services.start(local_settings, host)
    try:
        ws = LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=str(host_state)))
        assert ws.events_url() == host.eventgrid_url + "&functionName=job_events"
        leftover = ws.endpoints.root / ".deleting" / "ep-old-12345678"  # a deletion a killed host left half-done
        leftover.mkdir(parents=True)
        assert poll(lambda: not leftover.exists(), 30), "the supervisor did not finish the deletion"
    finally:
        services.stop()
    assert not LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=str(host_state))).events_url_file.exists()
    services.stop()  # stopped: a no-op


def test_the_base_models_tokenizer_is_the_local_models_own_and_nothing_is_built_for_it(local_settings, tmp_path):
    ws = checked(LocalWorkspace(local_settings))
    with pytest.raises(NotFound, match="not built yet"):
        ws.base_model_tokenizer(local_settings.base_model)
    assert not (Path(local_settings.chatft_state_dir) / "workspace" / "base-models").exists()
    with pytest.raises(NotFound):
        ws.base_model_tokenizer("Phi-9")
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Phi3ForCausalLM"]}')
    own = LocalWorkspace(Settings.from_env(env={}, chatft_state_dir=local_settings.chatft_state_dir,
                                           local_base_model=str(folder)))
    with pytest.raises(NotFound, match="has no tokenizer.json"):
        own.base_model_tokenizer("my-model")
    (folder / "tokenizer.json").write_text("{}")
    assert own.base_model_tokenizer("my-model") == own.base_model_tokenizer(local_settings.base_model) == str(folder)
