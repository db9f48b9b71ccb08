"""The HTTP API end to end: the real function_app served by the local host on 127.0.0.1, the in-memory run store
(the table store has its own contract tests), a FakeMLBackend at the Azure ML boundary whose endpoints point at a
stand-in deployment served here (the Azure ML scoring contract: Bearer key, deployment header, `{"output": ...}`),
and the official `openai` client."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import socket
import threading
import importlib
import uuid
import zlib
from datetime import datetime, timedelta

import openai
import pytest
import requests
from aiohttp import web

from chatft_local.host import LocalHost
from shared.bootstrap import bootstrap, override_services
from shared.run_store import InMemoryRunStore
from shared.runs import Run, State, endpoint_name_for, iso, new_run, utcnow
from shared.scoring_proxy import close_proxy, proxy
from tests.fakes import FakeMLBackend

NEVER = "0 0 0 1 1 *"  # the cleanup timer stays quiet
SCORE_TIMEOUT = 1.0  # the stand-in's "slow" answer takes longer


# ------------------------------------------------------------------------------------------ stand-ins


class StandInBackend(FakeMLBackend):
    """The fake workspace, its endpoints' scoring URIs pointing at the stand-in deployment."""

    def __init__(self, base_url: str):
        super().__init__(instant_provisioning=True)
        self.base_url = base_url

    def _uri(self, name: str) -> str:
        return f"{self.base_url}/{name}/score"


class StandInDeployment:
    """Online endpoints as Azure ML serves them, one path per endpoint; keys are the fake backend's. The last user
    message steers it: "slow" sleeps past the proxy's timeout, "fail <status>" answers that status, "usage" adds
    the local model server's token headers; otherwise it answers {"output": "echo: <text>"}."""

    def __init__(self) -> None:
        self.backend: FakeMLBackend | None = None
        self.seen: list[dict] = []  # every request: endpoint, headers, body, status answered
        self.broken: set[str] = set()  # deployments that answer 500 (a broken model)
        self._split = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    async def _score(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        body = await request.read()
        record = {"endpoint": endpoint, "headers": dict(request.headers), "body": body}
        self.seen.append(record)
        ep = self.backend.endpoints.get(endpoint) if self.backend else None
        if ep is None:
            record["status"] = 404
            return web.json_response({"error": "endpoint not found"}, status=404)
        if request.headers.get("Authorization") != f"Bearer {ep.key}":
            record["status"] = 401
            return web.json_response({"error": "unauthorized"}, status=401)
        # Routed as an endpoint with several deployments: the pinning header, else the live traffic by weight; the
        # answer names its deployment, as Azure ML's do.
        from chatft_local.workspace.model_server import TrafficSplit

        self._split = self._split or TrafficSplit()
        shares = {k: v for k, v in ep.endpoint.traffic.items() if v > 0}
        chosen = request.headers.get("azureml-model-deployment") or (self._split.pick(shares) if shares else "")
        record["deployment"] = chosen
        if chosen in self.broken:
            record["status"] = 500
            return web.json_response({"error": "model crashed"}, status=500,
                                     headers={"azureml-model-deployment": chosen})
        doc = json.loads(body)
        text = [m for m in doc["input_data"]["input_string"] if isinstance(m, dict) and m["role"] == "user"]
        text = text[-1]["content"] if text else ""
        record["status"] = 200
        if text == "slow":
            await asyncio.sleep(SCORE_TIMEOUT * 3)
        if text.startswith("fail "):
            record["status"] = int(text.split()[1])
            return web.json_response({"error": "model crashed"}, status=record["status"])
        headers = {}
        if "usage" in text:
            headers = {"x-chatft-prompt-tokens": "12", "x-chatft-completion-tokens": "5",
                       "x-chatft-finish-reason": "length"}
        if chosen:
            headers["azureml-model-deployment"] = chosen
        return web.json_response({"output": f"echo: {text}"}, headers=headers)

    def start(self) -> "StandInDeployment":
        started = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{endpoint}/score", self._score)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            started.set()

        def main() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def deployment():
    stand_in = StandInDeployment().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def host(azurite, tmp_path_factory):
    names = "m" + uuid.uuid4().hex[:8]
    env = {"AzureWebJobsStorage": azurite, "TRAINING_CONTAINER": f"{names}-training", "RUNS_CONTAINER": f"{names}-runs",
           "RUNS_TABLE": f"{names}runs", "RUNS_QUEUE": f"{names}-runs", "DEPLOY_QUEUE": f"{names}-deploy",
           "CLEANUP_SCHEDULE": NEVER}
    local = LocalHost("function_app", state_dir=tmp_path_factory.mktemp("host-state"), port=0, env=env,
                      services=False).start()
    yield local
    local.stop()


@pytest.fixture
def api(host, deployment, settings):
    """Services for this test (own table, the stand-in backend, a settable clock) installed in the host."""
    backend = StandInBackend(deployment.base_url)
    deployment.backend = backend
    clock = Clock()
    svc = bootstrap(settings.replace(score_timeout_seconds=SCORE_TIMEOUT), ml=backend, clock=clock,
                    runs=InMemoryRunStore())
    override_services(svc)
    deployment.broken.clear()
    yield Api(host, svc, backend, clock, deployment)
    # Close the proxy's HTTP client on the host's loop, where it was made.
    asyncio.run_coroutine_threadsafe(close_proxy(), host._loop).result(10)
    override_services(None)


class Api:
    def __init__(self, host: LocalHost, svc, backend: StandInBackend, clock: Clock, deployment: StandInDeployment):
        self.host, self.svc, self.backend, self.clock, self.deployment = host, svc, backend, clock, deployment
        self.url = host.base_url + "/api"
        self.headers = {"x-functions-key": host.function_key}

    def post(self, path: str, body=None, raw: bytes | None = None, **kwargs) -> requests.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        return requests.post(self.url + path, data=data, headers={**self.headers, **kwargs.pop("headers", {})},
                             timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, headers={**self.headers, **kwargs.pop("headers", {})}, timeout=30,
                            **kwargs)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0,
                             default_headers=self.headers)

    def run(self, state: State = State.DEPLOYED, name: str = "phi-chat", endpoint: bool = True, **fields) -> Run:
        """A run in `state` with a registered model; Deployed runs get an endpoint in the backend."""
        run_id = f"{name}-{uuid.uuid4().hex[:12]}"
        # Runs made one after another are newer one after another (times are kept to the millisecond).
        now = max(utcnow(), getattr(self, "_last_created", utcnow()) + timedelta(milliseconds=1))
        self._last_created = now
        run = new_run(run_id, now)
        for step in (State.VALIDATING, State.QUEUED, State.SUBMITTED, State.TRAINED):
            run = run.advance(step, now)
        if state != State.FAILED or fields.pop("with_model", True):
            run = run.advance(State.REGISTERED, now, model_name=f"{name}-model", model_version=run_id[-12:],
                              model_id=f"fake://models/{name}/{run_id[-12:]}")
            if state in (State.DEPLOYING, State.DEPLOYED, State.RETIRED):
                run = run.advance(State.DEPLOYING, now, endpoint_name=endpoint_name_for(run_id),
                                  deployment_name="demo")
            if state in (State.DEPLOYED, State.RETIRED):
                run = run.advance(State.DEPLOYED, now, scoring_uri=f"{self.backend.base_url}/x/score")
        if state == State.FAILED:
            run = run.fail("deploy", "endpoint failed: quota exceeded", now)
        elif state == State.HELD:
            run = run.advance(State.HELD, now, detail="worse than the base model")
        elif state == State.RETIRED:
            run = run.advance(State.RETIRED, now, detail="idle for 24 h")
        run = dataclasses.replace(run, **fields)
        self.svc.runs.create(run)
        if endpoint and state == State.DEPLOYED:
            self.backend.add_endpoint(run.endpoint_name)
        return run

    def retire(self, run: Run) -> None:
        """As cleanup does: mark the run Retired, then delete its endpoint."""
        self.svc.runs.update(run.run_id, lambda r: r.advance(State.RETIRED, utcnow(), detail="idle"))
        self.backend.begin_delete_endpoint(run.endpoint_name)


def chat(text: str) -> dict:
    return {"input_data": {"input_string": [{"role": "user", "content": text}],
                           "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True,
                                          "max_new_tokens": 200}}, "params": {}}


def error_of(response: requests.Response) -> dict:
    return response.json()["error"]


# ------------------------------------------------------------------------------------------ scoring


def test_score_sends_the_notebook_request_to_the_newest_deployed_model(api):
    older = api.run(name="older")
    newer = api.run(name="newer")
    response = api.post("/score", chat("hello"))
    assert response.status_code == 200, response.text
    assert response.json() == {"output": "echo: hello"}  # the deployment's JSON as is
    assert response.headers["x-chatft-run"] == newer.run_id
    seen = api.deployment.seen[-1]
    assert seen["endpoint"] == newer.endpoint_name != older.endpoint_name
    assert seen["headers"]["Authorization"] == f"Bearer {api.backend.endpoints[newer.endpoint_name].key}"
    assert seen["headers"]["azureml-model-deployment"] == "demo"
    assert json.loads(seen["body"]) == chat("hello")


def test_the_hosts_shutdown_closes_the_proxys_session_on_the_hosts_loop(api):
    from shared.lifecycle import shutdown

    api.run(name="closing")
    assert api.post("/score", chat("open the pooled session")).status_code == 200
    upstream = proxy().upstream
    session = upstream._state.session
    assert session is not None and not session.closed and upstream._state.loop is api.host._loop
    # What LocalHost does as it stops, without stopping this module's host: the hook the proxy registered runs.
    asyncio.run_coroutine_threadsafe(shutdown(), api.host._loop).result(10)
    assert session.closed


def test_score_a_model_by_name_version_or_run_id(api):
    first = api.run(name="pick")
    second = api.run(name="pick")  # same model name, newer: serves the name
    for model, served in [(first.model_name, second), (first.run_id, first),
                          (f"{first.model_name}:{first.model_version}", first), (second.run_id, second)]:
        response = api.post(f"/score/{model}", chat("hi"))
        assert response.status_code == 200, (model, response.text)
        assert response.headers["x-chatft-run"] == served.run_id, model


def test_a_model_line_is_called_by_its_name_and_a_version_by_line_colon_version(api):
    v1 = api.run(name="weekly-a", line="support-bot", model_version="1")
    v2 = api.run(name="weekly-b", line="support-bot", model_version="2")
    api.run(name="unrelated")  # newer, but of no line: the line's name still means the line's newest version
    for model, served in [("support-bot", v2), ("support-bot:1", v1), ("support-bot:2", v2), (v1.run_id, v1)]:
        response = api.post(f"/score/{model}", chat("hi"))
        assert response.status_code == 200, (model, response.text)
        assert response.headers["x-chatft-run"] == served.run_id, model
    completion = api.openai().chat.completions.create(model="support-bot", messages=[{"role": "user",
                                                                                      "content": "hi"}])
    assert completion.model == "support-bot" and completion.choices[0].message.content == "echo: hi"
    listed = [m.id for m in api.openai().models.list().data]
    assert "support-bot" in listed and listed.count("support-bot") == 1
    unknown = api.post("/score/support-bot:9", chat("hi"))
    assert unknown.status_code == 404, unknown.text


def test_a_run_deployed_after_the_cache_was_filled_is_found_at_once(api):
    api.run(name="early")
    assert api.post("/score", chat("warm the cache")).status_code == 200
    late = api.run(name="late")
    response = api.post(f"/score/{late.model_name}", chat("hi"))
    assert response.status_code == 200, response.text
    assert response.headers["x-chatft-run"] == late.run_id


def test_openai_client_plain_and_streamed_completions(api):
    run = api.run(name="oai")
    client = api.openai()
    completion = client.chat.completions.create(model=run.model_name, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        temperature=0.6, top_p=0.9, max_tokens=50)
    assert completion.object == "chat.completion"
    assert completion.model == run.model_name
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is None  # the stand-in sent no token counts
    sent = json.loads(api.deployment.seen[-1]["body"])
    assert sent == {"input_data": {"input_string": [{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": "hello there"}],
                                   "parameters": {"temperature": 0.6, "do_sample": True, "top_p": 0.9,
                                                  "max_new_tokens": 50}}, "params": {}}

    chunks = list(client.chat.completions.create(model=run.run_id, stream=True,
                                                  messages=[{"role": "user", "content": "stream me"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: stream me"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"

    listed = {m.id for m in client.models.list()}
    assert {run.model_name, run.run_id} <= listed
    assert client.models.retrieve(run.model_name).id == run.model_name


def test_usage_finish_reason_and_stop_sequences(api):
    run = api.run(name="usage")
    client = api.openai()
    completion = client.chat.completions.create(model=run.model_name,
                                                messages=[{"role": "user", "content": "usage please"}])
    assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 17
    assert completion.choices[0].finish_reason == "length"
    cut = client.chat.completions.create(model=run.model_name, stop=[" please", "zzz"],
                                         messages=[{"role": "user", "content": "usage please"}])
    assert cut.choices[0].message.content == "echo: usage"
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(model=run.model_name, stream=True,
                                                   stream_options={"include_usage": True},
                                                   messages=[{"role": "user", "content": "usage"}]))
    assert streamed[-1].usage.total_tokens == 17


def test_temperature_zero_decodes_greedily(api):
    run = api.run(name="greedy")
    api.openai().chat.completions.create(model=run.model_name, temperature=0,
                                         messages=[{"role": "user", "content": "hi"}])
    assert json.loads(api.deployment.seen[-1]["body"])["input_data"]["parameters"] == {"do_sample": False}


# ------------------------------------------------------------------------------------------ errors


def test_malformed_bodies_get_400_saying_what_is_wrong(api):
    api.run(name="bad")
    cases = [(b"{not json", "not valid JSON"), (b"", "empty"), (b"[]", "must be a JSON object"),
             (json.dumps({"input": []}).encode(), "input_data is required"),
             (json.dumps({"input_data": {"input_string": []}}).encode(), "non-empty list"),
             (json.dumps({"input_data": {"input_string": [{"role": "robot", "content": "x"}]}}).encode(),
              "input_string[0].role must be one of system, user, assistant"),
             (json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}],
                                         "parameters": {"temperature": "hot"}}}).encode(),
              "parameters.temperature must be a number"),
             # Plain strings are the text-generation shape: a chat deployment would fail on them (a 502 before).
             (json.dumps({"input_data": {"input_string": ["What is LoRA?"]}}).encode(),
              "input_data.input_string[0] must be a message {role, content}"),
             (json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}],
                                         "parameters": {"top_p": 0}}}).encode(), "top_p must be a number above 0")]
    seen = len(api.deployment.seen)
    for raw, fragment in cases:
        response = api.post("/score", raw=raw)
        assert response.status_code == 400, raw
        assert error_of(response)["code"] == "invalid_body"
        assert fragment in error_of(response)["message"], (raw, error_of(response))
    assert len(api.deployment.seen) == seen  # nothing malformed reached the deployment

    client = api.openai()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="bad-model", n=2, messages=[{"role": "user", "content": "x"}])
    assert "n must be 1" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["param"] == "n"
    response = api.post("/v1/chat/completions", {"model": "bad-model", "messages": [{"role": "tool", "content": "x"}]})
    assert response.status_code == 400
    assert "tool messages are not supported" in error_of(response)["message"]
    assert set(error_of(response)) == {"message", "type", "param", "code"}
    assert error_of(response)["param"] == "messages"


REFUSED = [({"logit_bias": {"50256": -100}}, "logit_bias"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
           ({"presence_penalty": -1.0}, "presence_penalty"), ({"seed": 7}, "seed"), ({"top_logprobs": 2}, "top_logprobs"),
           ({"logprobs": True}, "logprobs"), ({"n": 3}, "n"), ({"response_format": {"type": "json_object"}},
                                                               "response_format"),
           ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
           ({"tool_choice": "auto"}, "tool_choice"), ({"modalities": ["text", "audio"]}, "modalities"),
           ({"reasoning_effort": "low"}, "reasoning_effort")]
NO_OPS = {"logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0.0, "seed": None, "top_logprobs": 0,
          "logprobs": False, "n": 1, "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
          "modalities": ["text"], "user": "someone", "store": False, "metadata": {"team": "a"},
          "parallel_tool_calls": True}


def test_parameters_the_deployment_cannot_honour_are_refused_by_name_and_their_no_op_forms_accepted(api):
    run = api.run(name="params")
    client = api.openai()
    seen = len(api.deployment.seen)
    for extra, param in REFUSED:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=run.model_name, messages=[{"role": "user", "content": "x"}],
                                           **extra)
        assert caught.value.param == param and caught.value.body["type"] == "invalid_request_error", extra
        assert caught.value.body["message"].startswith(param), caught.value.body
    assert len(api.deployment.seen) == seen  # nothing refused reached the deployment
    ok = client.chat.completions.create(model=run.model_name, messages=[{"role": "user", "content": "fine"}],
                                        **NO_OPS)
    assert ok.choices[0].message.content == "echo: fine"


# The HTTP library the openai client is built on (httpx, or its successor httpx2 in recent releases).
_http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


class GzipRequests(_http.BaseTransport):
    """A transport for the openai client that sends every request body gzip-compressed, declared with
    Content-Encoding (the client itself never compresses)."""

    def __init__(self) -> None:
        self._inner = _http.HTTPTransport()

    def handle_request(self, request):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        body = gzip.compress(request.read())
        return self._inner.handle_request(_http.Request(request.method, request.url, content=body,
                                                        headers={**headers, "Content-Encoding": "gzip"},
                                                        extensions=request.extensions))

    def close(self) -> None:
        self._inner.close()


def test_a_compressed_or_latin1_body_is_decoded_as_its_headers_declare(api):
    run = api.run(name="encodings")
    with openai.DefaultHttpxClient(transport=GzipRequests()) as http:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0,
                               default_headers=api.headers, http_client=http)
        reply = client.chat.completions.create(model=run.model_name, messages=[{"role": "user", "content": "café"}])
    assert reply.choices[0].message.content == "echo: café"
    assert json.loads(api.deployment.seen[-1]["body"])["input_data"]["input_string"][0]["content"] == "café"

    latin1 = json.dumps(chat("crème brûlée"), ensure_ascii=False).encode("latin-1")
    response = api.post(f"/score/{run.run_id}", raw=latin1,
                        headers={"Content-Type": "application/json; charset=ISO-8859-1"})
    assert response.status_code == 200 and response.json() == {"output": "echo: crème brûlée"}
    # The deployment gets UTF-8 JSON, as the Azure ML scoring contract expects.
    assert json.loads(api.deployment.seen[-1]["body"].decode("utf-8")) == chat("crème brûlée")
    deflated = api.post("/v1/chat/completions", raw=zlib.compress(json.dumps(
        {"model": run.model_name, "messages": [{"role": "user", "content": "deflated"}]}).encode()),
        headers={"Content-Encoding": "deflate"})
    assert deflated.status_code == 200 and deflated.json()["choices"][0]["message"]["content"] == "echo: deflated"


def test_an_undeclared_unknown_or_oversized_encoding_is_refused_naming_the_header(api):
    run = api.run(name="refused-encodings")
    body = json.dumps({"model": run.model_name, "messages": [{"role": "user", "content": "naïve"}]},
                      ensure_ascii=False)
    seen = len(api.deployment.seen)
    brotli = api.post("/v1/chat/completions", raw=body.encode(), headers={"Content-Encoding": "br"})
    assert brotli.status_code == 415 and error_of(brotli)["code"] == "unsupported_content_encoding"
    assert "Content-Encoding 'br'" in error_of(brotli)["message"]
    assert brotli.headers["Accept-Encoding"] == "gzip, deflate"
    unknown = api.post("/v1/chat/completions", raw=body.encode(),
                       headers={"Content-Type": "application/json; charset=klingon"})
    assert unknown.status_code == 415 and "Content-Type charset 'klingon'" in error_of(unknown)["message"]
    undeclared = api.post("/v1/chat/completions", raw=body.encode("latin-1"))
    assert undeclared.status_code == 400 and "not valid UTF-8" in error_of(undeclared)["message"]
    assert "charset=latin-1" in error_of(undeclared)["message"]
    unlabelled = api.post("/v1/chat/completions", raw=gzip.compress(body.encode()))
    assert unlabelled.status_code == 400 and "Content-Encoding: gzip" in error_of(unlabelled)["message"]
    cut = api.post("/score", raw=gzip.compress(json.dumps(chat("x")).encode())[:-6],
                   headers={"Content-Encoding": "gzip"})
    assert cut.status_code == 400 and "cut short" in error_of(cut)["message"]
    # A gzip bomb: 10 KB on the wire, 10 MiB once inflated, beyond MAX_REQUEST_BYTES (1 MiB): refused part way.
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    refused = api.post("/score", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert refused.status_code == 413 and "once decompressed" in error_of(refused)["message"]
    assert len(api.deployment.seen) == seen


def test_unknown_model_is_404(api):
    api.run(name="known")
    response = api.post("/score/no-such-model", chat("x"))
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"
    assert "GET /api/v1/models" in error_of(response)["message"]
    with pytest.raises(openai.NotFoundError):
        api.openai().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert api.post("/score/bad%20name!", chat("x")).status_code == 404


def test_a_held_model_is_409_with_the_gates_reason_and_how_to_deploy_it_anyway(api):
    held = api.run(State.HELD, name="held", evaluation={"verdict": "worse", "deploy": False,
                                                        "reason": "worse than the base model (eval_loss)"})
    response = api.post(f"/score/{held.model_name}", chat("x"))
    assert response.status_code == 409, response.text
    assert error_of(response)["code"] == "model_held"
    assert "worse than the base model (eval_loss)" in error_of(response)["message"]
    assert f"POST /api/runs/{held.run_id}/deploy" in error_of(response)["message"]
    view = api.get(f"/runs/{held.run_id}").json()
    assert view["state"] == "Held" and view["evaluation"]["verdict"] == "worse"
    assert view["links"]["deploy"] == f"/api/runs/{held.run_id}/deploy"


def test_retired_model_is_410_with_how_to_redeploy(api):
    retired = api.run(State.RETIRED, name="gone")
    response = api.post(f"/score/{retired.model_name}", chat("x"))
    assert response.status_code == 410, response.text
    assert error_of(response)["code"] == "model_retired"
    assert f"POST /api/runs/{retired.run_id}/deploy" in error_of(response)["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        api.openai().chat.completions.create(model=retired.run_id, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 410

    failed = api.run(State.FAILED, name="broke")
    response = api.post(f"/score/{failed.run_id}", chat("x"))
    assert response.status_code == 410 and "quota exceeded" in error_of(response)["message"]


def test_a_model_retired_while_cached_is_410_at_once(api):
    run = api.run(name="retiring")
    assert api.post(f"/score/{run.model_name}", chat("x")).status_code == 200  # now cached
    api.retire(run)
    response = api.post(f"/score/{run.model_name}", chat("x"))
    assert response.status_code == 410, response.text
    assert error_of(response)["code"] == "model_retired"


def test_a_model_deployed_again_while_cached_is_served_by_its_new_endpoint(api):
    run = api.run(name="moved")
    assert api.post(f"/score/{run.model_name}", chat("x")).status_code == 200  # cached: the first endpoint
    api.retire(run)
    moved = endpoint_name_for(run.run_id, attempt=1)
    api.svc.runs.update(run.run_id, lambda r: r.advance(State.DEPLOYING, utcnow(), endpoint_name=moved)
                        .advance(State.DEPLOYED, utcnow()))
    api.backend.add_endpoint(moved)
    response = api.post(f"/score/{run.model_name}", chat("x"))
    assert response.status_code == 200, response.text
    assert api.deployment.seen[-1]["endpoint"] == moved


def test_without_a_model_name_a_retired_newest_run_gives_way_to_the_next(api):
    older = api.run(name="older")
    newest = api.run(name="newest")
    assert api.post("/score", chat("x")).headers["x-chatft-run"] == newest.run_id  # cached
    api.retire(newest)
    response = api.post("/score", chat("x"))
    assert response.status_code == 200, response.text
    assert response.headers["x-chatft-run"] == older.run_id
    api.retire(older)
    response = api.post("/score", chat("x"))
    assert response.status_code == 503 and error_of(response)["code"] == "no_deployed_model"


def test_endpoint_refusing_connections(api):
    run = api.run(name="refused", endpoint=False)
    api.backend.add_endpoint(run.endpoint_name)
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    api.backend.endpoints[run.endpoint_name].endpoint = dataclasses.replace(
        api.backend.endpoints[run.endpoint_name].endpoint, scoring_uri=f"http://127.0.0.1:{closed}/score")
    response = api.post(f"/score/{run.run_id}", chat("x"))
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_unreachable"
    assert "127.0.0.1" not in response.text  # the scoring URI stays private
    api.svc.runs.update(run.run_id, lambda r: r.advance(State.RETIRED, utcnow()))
    assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 410


def test_model_still_deploying_is_503_and_no_model_at_all_is_503(api):
    response = api.post("/score", chat("x"))
    assert response.status_code == 503 and error_of(response)["code"] == "no_deployed_model"
    assert "Retry-After" in response.headers
    deploying = api.run(State.DEPLOYING, name="soon")
    response = api.post(f"/score/{deploying.model_name}", chat("x"))
    assert response.status_code == 503 and error_of(response)["code"] == "model_not_ready"
    assert f"GET /api/runs/{deploying.run_id}" in error_of(response)["message"]


def test_body_over_the_limit_is_413(api):
    api.svc = dataclasses.replace(api.svc, settings=api.svc.settings.replace(max_request_bytes=4096))
    override_services(api.svc)
    api.run(name="big")
    big = chat("x" * 5000)
    response = api.post("/score", big)
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"
    assert "MAX_REQUEST_BYTES" in error_of(response)["message"]
    response = api.post("/v1/chat/completions", {"model": "big-model", "messages": [{"role": "user",
                                                                                      "content": "x" * 5000}]})
    assert response.status_code == 413 and error_of(response)["type"] == "invalid_request_error"
    # Beyond the host's own limit (the same setting, 1 MiB by default) the host refuses it before the app runs.
    assert api.post("/score", raw=b"x" * (2 * 1024 * 1024)).status_code == 413


def test_upstream_error_is_502_with_its_status(api):
    run = api.run(name="crash")
    response = api.post(f"/score/{run.run_id}", chat("fail 500"))
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert "HTTP 500" in error_of(response)["message"]
    assert response.headers["x-chatft-upstream-status"] == "500"
    with pytest.raises(openai.APIStatusError) as caught:
        api.openai().chat.completions.create(model=run.run_id, messages=[{"role": "user", "content": "fail 503"}])
    assert caught.value.status_code == 502 and "HTTP 503" in caught.value.message


def test_upstream_timeout_is_504(api):
    run = api.run(name="slow")
    response = api.post(f"/score/{run.run_id}", chat("slow"))
    assert response.status_code == 504, response.text
    assert error_of(response)["code"] == "upstream_timeout"
    assert "SCORE_TIMEOUT_SECONDS" in error_of(response)["message"]


def test_every_route_needs_the_function_key(api):
    run = api.run(name="locked")
    for method, path in [("post", "/score"), ("post", f"/score/{run.run_id}"), ("post", "/v1/chat/completions"),
                         ("get", "/v1/models"), ("get", "/runs"), ("get", f"/runs/{run.run_id}"),
                         ("post", f"/runs/{run.run_id}/deploy"), ("get", "/openapi.json")]:
        for headers in ({}, {"x-functions-key": "wrong"}):
            response = getattr(requests, method)(api.url + path, headers=headers, timeout=30)
            assert response.status_code == 401, (method, path, headers)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.url + "/v1", api_key="unused", max_retries=0).models.list()
    assert not [s for s in api.deployment.seen if s["endpoint"] == run.endpoint_name]


# --------------------------------------------------------------------------------- key refresh, last use


def test_a_rotated_key_is_read_again_on_upstream_401(api):
    run = api.run(name="rotate")
    assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 200
    reads = api.backend.calls.count("get_scoring_target")
    assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 200
    assert api.backend.calls.count("get_scoring_target") == reads  # cached
    api.backend.endpoints[run.endpoint_name].key = "rotated-key"
    response = api.post(f"/score/{run.run_id}", chat("x"))
    assert response.status_code == 200, response.text
    assert api.backend.calls.count("get_scoring_target") == reads + 1
    statuses = [s["status"] for s in api.deployment.seen if s["endpoint"] == run.endpoint_name]
    assert statuses[-2:] == [401, 200]
    assert api.deployment.seen[-1]["headers"]["Authorization"] == "Bearer rotated-key"


def test_last_use_is_recorded_at_most_once_a_minute(api):
    run = api.run(name="used")
    first = api.clock.now
    assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 200
    proxy().flush()
    assert api.svc.runs.get(run.run_id).last_used_at == iso(first)
    api.clock.advance(30)
    for _ in range(3):
        assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 200
    proxy().flush()
    assert api.svc.runs.get(run.run_id).last_used_at == iso(first)  # throttled
    api.clock.advance(31)
    assert api.post(f"/score/{run.run_id}", chat("x")).status_code == 200
    proxy().flush()
    assert api.svc.runs.get(run.run_id).last_used_at == iso(api.clock.now)
    # A run retired meanwhile is not written back to Deployed, nor its last use moved.
    api.retire(run)
    api.clock.advance(61)
    proxy()._note_use(run)
    proxy().flush()
    retired = api.svc.runs.get(run.run_id)
    assert retired.state == State.RETIRED and retired.last_used_at != iso(api.clock.now)


def test_failed_scores_do_not_count_as_use(api):
    run = api.run(name="unused")
    assert api.post(f"/score/{run.run_id}", chat("fail 500")).status_code == 502
    proxy().flush()
    assert api.svc.runs.get(run.run_id).last_used_at == ""


def test_the_proxy_records_each_deployments_outcomes_on_its_run(api):
    run = api.run(name="outcomes")
    for text in ("ok", "fail 500", "ok", "fail 503", "fail 400"):
        api.post(f"/score/{run.run_id}", chat(text))
    proxy().flush()
    served = api.svc.runs.get(run.run_id).served
    # The 400 is the caller's request, not the deployment's failure: 4 counted, 2 of them errors.
    assert (served["requests"], served["errors"]) == (4, 2) and served["latency_ms_total"] > 0
    api.post(f"/score/{run.run_id}", chat("ok"))
    proxy().flush()
    assert api.svc.runs.get(run.run_id).served["requests"] == 5  # cumulative: a reader compares two readings


# ------------------------------------------------------------------------------------------ runs


def test_runs_list_filter_and_one_run(api):
    deployed = api.run(name="listed")
    retired = api.run(State.RETIRED, name="listed")
    everything = api.get("/runs").json()
    assert everything["count"] == 2
    assert [r["run_id"] for r in everything["runs"]] == [retired.run_id, deployed.run_id]  # newest first
    only = api.get("/runs", params={"state": "Deployed", "limit": "5"}).json()
    assert [r["run_id"] for r in only["runs"]] == [deployed.run_id]
    assert api.get("/runs", params={"limit": "1"}).json()["count"] == 1
    for params, fragment in [({"state": "Sleeping"}, "state 'Sleeping' is unknown"), ({"limit": "0"}, "limit")]:
        response = api.get("/runs", params=params)
        assert response.status_code == 400 and fragment in error_of(response)["message"]

    view = api.get(f"/runs/{deployed.run_id}").json()
    assert view["state"] == "Deployed"
    assert [h["state"] for h in view["history"]][-2:] == ["Deploying", "Deployed"]
    assert view["model"]["name"] == deployed.model_name
    assert view["endpoint"]["name"] == deployed.endpoint_name
    assert view["links"]["score"] == f"/api/score/{deployed.run_id}"
    assert api.backend.endpoints[deployed.endpoint_name].key not in json.dumps(view)
    assert api.get(f"/runs/{retired.run_id}").json()["links"]["deploy"] == f"/api/runs/{retired.run_id}/deploy"
    response = api.get("/runs/no-such-run")
    assert response.status_code == 404 and error_of(response)["code"] == "run_not_found"


def test_deploy_a_retired_run_again(api):
    retired = api.run(State.RETIRED, name="again")
    response = api.post(f"/runs/{retired.run_id}/deploy")
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "Deploying"
    assert response.headers["Location"] == f"/api/runs/{retired.run_id}"
    endpoint = api.svc.runs.get(retired.run_id).endpoint_name
    assert endpoint != retired.endpoint_name and endpoint in api.backend.endpoints  # a fresh endpoint name
    response = api.post(f"/runs/{retired.run_id}/deploy")
    assert response.status_code == 409 and error_of(response)["code"] == "not_redeployable"
    no_model = api.run(State.FAILED, name="nomodel", with_model=False)
    assert api.post(f"/runs/{no_model.run_id}/deploy").status_code == 409
    assert api.post("/runs/no-such-run/deploy").status_code == 404


def test_openapi_document_is_served(api):
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/score", "/api/score/{model}", "/api/v1/chat/completions", "/api/v1/models", "/api/runs",
            "/api/runs/{run_id}", "/api/runs/{run_id}/deploy"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["functionKey"] == {"type": "apiKey", "in": "header",
                                                                   "name": "x-functions-key"}


def test_no_key_scoring_uri_or_upstream_body_in_the_logs(api, caplog):
    caplog.set_level("DEBUG")
    run = api.run(name="quiet")
    key = api.backend.endpoints[run.endpoint_name].key
    for text in ("hello", "fail 500", "slow"):
        api.post(f"/score/{run.run_id}", chat(text))
    api.backend.endpoints[run.endpoint_name].key = "rotated-secret"
    api.post(f"/score/{run.run_id}", chat("x"))
    api.retire(run)
    api.post(f"/score/{run.run_id}", chat("x"))
    logged = caplog.text
    assert "scoring via endpoint" in logged  # the failures were logged...
    for secret in (key, "rotated-secret", api.deployment.base_url, "model crashed"):
        assert secret not in logged  # ...without what must stay private


# ------------------------------------------------------------------------------------------ model lines


def line_endpoint(api, traffic: dict[str, int]) -> str:
    """`ln-support-bot` in the backend with these deployments and live traffic."""
    from shared.ml.port import TAG_APP, TAG_LINE, Deployment

    name = "ln-support-bot"
    api.backend.add_endpoint(name, tags={TAG_APP: api.svc.settings.app_id, TAG_LINE: "support-bot"})
    for deployment in traffic:
        api.backend.endpoints[name].deployments[deployment] = Deployment(name, deployment, "Succeeded")
    api.backend.set_traffic(name, traffic)
    return name


def line_run(api, version: str, state: State = State.DEPLOYED, **fields) -> Run:
    return api.run(state, name=f"week{version}", endpoint=False, line="support-bot", model_name="support-bot",
                   model_version=version, endpoint_name="ln-support-bot", deployment_name=f"v{version:0>2}",
                   **fields)


def test_a_failing_canary_never_fails_a_caller_of_the_line_and_its_errors_count_against_it(api):
    line_endpoint(api, {"v01": 90, "v02": 10})
    stable = line_run(api, "1")
    canary = line_run(api, "2", State.DEPLOYING)
    api.deployment.broken.add("v02")
    client = api.openai()
    for _ in range(20):
        completion = client.chat.completions.create(model="support-bot", messages=[{"role": "user",
                                                                                  "content": "hi"}])
        assert completion.choices[0].message.content == "echo: hi"
    proxy().flush()
    sent = [s for s in api.deployment.seen if s["endpoint"] == "ln-support-bot"]
    assert [s["deployment"] for s in sent].count("v02") == 2, "10% of 20 reached the canary"
    assert "azureml-model-deployment" not in sent[0]["headers"], "a call by line is not pinned"
    assert api.svc.runs.get(canary.run_id).served["errors"] == 2
    assert api.svc.runs.get(canary.run_id).served["requests"] == 2
    assert api.svc.runs.get(stable.run_id).served == {**api.svc.runs.get(stable.run_id).served, "requests": 20,
                                                      "errors": 0}
    api.deployment.broken.clear()
    answers = [api.post("/score/support-bot", chat("x")).headers["x-chatft-run"] for _ in range(10)]
    assert answers.count(canary.run_id) == 1, "a healthy canary's answers name its run"


def test_lines_api_and_rollback(api):
    line_endpoint(api, {"v01": 0, "v02": 100})
    kept = line_run(api, "1", standby_until=iso(utcnow() + timedelta(hours=24)))
    serving = line_run(api, "2")
    lines = api.get("/lines")
    assert lines.status_code == 200, lines.text
    assert [item["line"] for item in lines.json()["lines"]] == ["support-bot"]
    one = api.get("/lines/support-bot").json()
    assert one["endpoint"] == "ln-support-bot" and one["traffic"] == {"v01": 0, "v02": 100}
    assert [(d["name"], d["run_id"], d["standby_until"] != "") for d in one["deployments"]] == [
        ("v01", kept.run_id, True), ("v02", serving.run_id, False)]
    assert api.openai().chat.completions.create(model="support-bot", messages=[
        {"role": "user", "content": "hi"}]).choices[0].message.content == "echo: hi"
    back = api.post("/lines/support-bot/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["serving"] == "v01" and back.json()["traffic"] == {"v01": 100, "v02": 0}
    assert api.svc.runs.get(serving.run_id).state == State.RETIRED
    assert "rolled back by" in api.svc.runs.get(kept.run_id).history[-1].detail
    again = api.post("/lines/support-bot/rollback")
    assert again.status_code == 409 and error_of(again)["code"] == "no_previous_deployment"
    assert "ROLLOUT_KEEP_PREVIOUS_HOURS" in error_of(again)["message"]
    assert api.get("/lines/no-such-line").status_code == 404
    assert api.post("/lines/Not_A_Line/rollback").status_code == 404
    for method, path in [("get", "/lines"), ("get", "/lines/support-bot"), ("post", "/lines/support-bot/rollback")]:
        assert getattr(requests, method)(api.url + path, timeout=30).status_code == 401, path
    doc = api.get("/openapi.json").json()
    assert {"/api/lines", "/api/lines/{line}", "/api/lines/{line}/rollback"} <= set(doc["paths"])
