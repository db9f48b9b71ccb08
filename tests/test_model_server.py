"""The model server speaks the Azure ML scoring contract: a real server process on 127.0.0.1 over a tiny MLflow
chat model (the local stand-in base model saved with mlflow.transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from chatft_local.workspace.endpoints import free_port, last_log_line
from shared.api_errors import ApiError
from shared.protocol import ScoringParameters
from shared.scoring import check_score_request
from tests.harness_local import build_chat_model, notebook_request, poll

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-" + "x" * 32
MAX_BODY = 4096
TOKEN_LIMIT = 16
CONVERSATION = [{"role": "system", "content": "You are a concise assistant for Azure ML engineers."},
                {"role": "user", "content": "What is MLflow?"}]


def start_server(model_dir: Path, key_file: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port(set())
    command = [sys.executable, "-m", "chatft_local.workspace.model_server", "--model-dir", str(model_dir),
               "--port", str(port), "--key-file", str(key_file), "--deployment", "demo", "--instance", "test",
               "--max-request-bytes", str(MAX_BODY), "--max-new-tokens-limit", str(TOKEN_LIMIT), *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return process, port


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return build_chat_model(root / "mlflow_model_folder", root / "state")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    key_file = folder / "key"
    key_file.write_text(KEY + "\n")
    process, port = start_server(model_dir, key_file, folder / "server.log")
    url = f"http://127.0.0.1:{port}"

    def ready():
        if process.poll() is not None:
            pytest.fail("the model server exited:\n" + (folder / "server.log").read_text()[-2000:])
        try:
            return requests.get(url + "/health", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # a loaded machine answers late: not ready yet
            return False

    assert poll(ready, 180, 0.5), "the model server did not become ready"
    yield {"url": url, "log": folder / "server.log"}
    process.terminate()
    process.wait(30)


def score(server, body, key=KEY, **headers):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server["url"] + "/score", data=data, headers=headers, timeout=60)


def test_answers_the_notebooks_scoring_request(server):
    response = score(server, notebook_request(CONVERSATION), **{"azureml-model-deployment": "demo"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["output"] and isinstance(body["output"], str)
    assert response.headers["azureml-model-deployment"] == "demo"
    assert int(response.headers["x-chatft-prompt-tokens"]) > 0
    # The notebook asks for 200 new tokens; the server clamps that to its limit.
    completion = int(response.headers["x-chatft-completion-tokens"])
    assert 0 < completion <= TOKEN_LIMIT
    finish = response.headers["x-chatft-finish-reason"]
    assert finish == "length" if completion == TOKEN_LIMIT else finish == "stop"


def test_greedy_generation_stops_at_max_new_tokens(server):
    body = notebook_request(CONVERSATION)
    body["input_data"]["parameters"] = {"do_sample": False, "max_new_tokens": 3}
    first, second = score(server, body), score(server, body)
    assert first.status_code == 200 and first.json() == second.json()  # greedy is deterministic
    tokens = int(first.headers["x-chatft-completion-tokens"])
    assert tokens <= 3
    assert first.headers["x-chatft-finish-reason"] == ("length" if tokens == 3 else "stop")


def test_liveness_routes_answer_once_loaded(server):
    for path in ("/", "/health"):
        response = requests.get(server["url"] + path, timeout=5)
        assert response.status_code == 200
        assert response.json() == {"status": "ready", "deployment": "demo", "instance": "test"}


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
def test_a_missing_or_wrong_key_is_refused(server, key):
    response = score(server, notebook_request(CONVERSATION), key=key)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "key" in response.json()["error"]


def test_a_key_in_another_scheme_is_refused(server):
    response = requests.post(server["url"] + "/score", json=notebook_request(CONVERSATION),
                             headers={"Authorization": f"Basic {KEY}"}, timeout=10)
    assert response.status_code == 401


def _with(**changes):
    body = notebook_request(CONVERSATION)
    for key, value in changes.items():
        if key == "input_string":
            body["input_data"]["input_string"] = value
        else:
            body["input_data"]["parameters"][key] = value
    return body


@pytest.mark.parametrize("body, says", [
    ("{not json", "not valid JSON"),
    ([], "input_data"),
    ({"params": {}}, "input_data"),
    ({"input_data": "hello"}, "input_data"),
    (_with(input_string="What is MLflow?"), "input_string"),
    (_with(input_string=[]), "input_string"),
    (_with(input_string=[[{"role": "user", "content": "hi"}]]), "input_string[0]"),
    (_with(input_string=[{"role": "robot", "content": "hi"}]), "input_string[0].role"),
    (_with(input_string=[{"role": "user"}]), "input_string[0]"),
    (_with(input_string=[{"role": "user", "content": 7}]), "input_string[0]"),
    (_with(temperature="hot"), "temperature"),
    (_with(temperature=-1), "temperature"),
    (_with(top_p=0), "top_p"),
    (_with(top_p=1.5), "top_p"),
    (_with(do_sample="yes"), "do_sample"),
    (_with(max_new_tokens=1.5), "max_new_tokens"),
    (_with(max_new_tokens=0), "max_new_tokens"),
    (_with(max_new_tokens=True), "max_new_tokens"),
    (_with(top_k=-1), "top_k"),
    (_with(return_full_text="no"), "return_full_text"),
    ({"input_data": {"input_string": CONVERSATION, "parameters": [1]}}, "parameters"),
])
def test_a_bad_request_is_refused_saying_what_is_wrong(server, body, says):
    response = score(server, body)
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_an_oversized_body_is_refused(server):
    padding = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    assert score(server, _with(input_string=padding)).status_code == 413

    def chunked():  # no Content-Length: the limit holds while reading
        yield b'{"input_data": {"input_string": [{"role": "user", "content": "'
        yield b"y" * (MAX_BODY + 1)
        yield b'"}]}}'

    response = requests.post(server["url"] + "/score", data=chunked(), timeout=30,
                             headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_an_unknown_deployment_is_not_found(server):
    response = score(server, notebook_request(CONVERSATION), **{"azureml-model-deployment": "blue"})
    assert response.status_code == 404
    assert "blue" in response.json()["error"]


def test_the_log_has_one_line_per_request_and_never_the_key_or_content(server):
    score(server, notebook_request(CONVERSATION))
    log = server["log"].read_text()
    assert "score " in log and "status=200" in log
    assert KEY not in log and "What is MLflow?" not in log


def test_a_model_that_cannot_load_ends_the_server_with_the_reason_last(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "MLmodel").write_text("this is not an MLmodel file\n")
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    process, _ = start_server(tmp_path / "broken", key_file, tmp_path / "server.log")
    assert process.wait(120) == 1
    assert last_log_line(tmp_path / "server.log").startswith("model server failed to load the model")


def test_a_missing_key_file_ends_the_server(tmp_path, model_dir):
    process, _ = start_server(model_dir, tmp_path / "no-such-key", tmp_path / "server.log")
    assert process.wait(60) == 1
    assert "key file" in last_log_line(tmp_path / "server.log")


def _parameter_cases() -> list[tuple[str, object, bool]]:
    """Every documented scoring parameter at the edges of its declared range (from the contract's JSON schema),
    with whether the contract accepts it."""
    cases = []
    for name, spec in ScoringParameters.model_json_schema()["properties"].items():
        schema = next(s for s in spec["anyOf"] if s["type"] != "null")
        if schema["type"] == "boolean":
            cases += [(name, True, True), (name, False, True), (name, "yes", False), (name, 1, False)]
            continue
        whole = schema["type"] == "integer"
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            cases += [(name, low, True), (name, low - 1, False)]
        if "exclusiveMinimum" in schema:
            edge = schema["exclusiveMinimum"]
            cases += [(name, edge, False), (name, edge + (1 if whole else 0.5), True)]
        if high is not None:
            cases += [(name, high, True), (name, high + 1, False)]
        cases += [(name, "7", False), (name, True, False)] + ([(name, 1.5, False)] if whole else [(name, 1.5, True)]
                                                               if high is None or high >= 1.5 else [])
    return cases


@pytest.mark.parametrize("name, value, accepted", _parameter_cases())
def test_every_documented_parameter_is_taken_alike_by_the_proxy_and_the_model_server(server, name, value, accepted):
    body = notebook_request(CONVERSATION)
    body["input_data"]["parameters"] = {"max_new_tokens": 2, "do_sample": True, name: value}  # sampling uses all
    try:
        check_score_request(body)  # the proxy's check
        proxy_accepts = True
    except ApiError as err:
        assert err.status == 400 and name in err.message
        proxy_accepts = False
    response = score(server, body)
    assert proxy_accepts == accepted
    assert response.status_code == (200 if accepted else 400), response.text
    if not accepted:
        assert f"parameters.{name}" in response.json()["error"]


def test_parameters_the_contract_does_not_name_pass_the_proxy_and_are_ignored_by_the_model_server(server):
    body = _with(num_beams=2, stop=["\n"])
    check_score_request(body)
    assert score(server, body).status_code == 200
