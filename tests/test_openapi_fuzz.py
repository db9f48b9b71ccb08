"""Schemathesis against `/api/openapi.json` on the running local host: generated requests (valid and invalid) to
every documented operation get no server error and answers that match the document. One model is deployed (its
endpoint a stand-in deployment that always answers), so valid scoring requests go all the way through."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from shared.bootstrap import bootstrap, override_services
from shared.config import Settings
from shared.openapi import openapi_document
from shared.scoring_proxy import close_proxy
from tests.test_http_api import Api, Clock, StandInBackend, StandInDeployment, host  # noqa: F401 (fixture)

MAX_EXAMPLES = 50  # per operation and generation mode: bounded, the whole file takes about a minute


class AlwaysAnswers(StandInDeployment):
    """A deployment that answers every keyed request, whatever the conversation."""

    async def _score(self, request: web.Request) -> web.Response:
        endpoint = self.backend.endpoints.get(request.match_info["endpoint"])
        if endpoint is None or request.headers.get("Authorization") != f"Bearer {endpoint.key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        await request.read()
        return web.json_response({"output": "ok"})


@pytest.fixture(scope="module")
def fuzz_api(host, azurite, tmp_path_factory):  # noqa: F811 (the imported fixture)
    deployment = AlwaysAnswers().start()
    backend = StandInBackend(deployment.base_url)
    deployment.backend = backend
    names = "f" + uuid.uuid4().hex[:8]
    settings_ = Settings.from_env(env={}, azurewebjobsstorage=azurite, runs_table=f"{names}runs",
                                  runs_container=f"{names}-runs", deploy_queue=f"{names}-deploy",
                                  runs_queue=f"{names}-runs", training_container=f"{names}-training",
                                  chatft_state_dir=str(tmp_path_factory.mktemp("fuzz-state")))
    svc = bootstrap(settings_.replace(score_timeout_seconds=5.0), ml=backend, clock=Clock())
    override_services(svc)
    api = Api(host, svc, backend, Clock(), deployment)
    api.run(name="fuzzed")
    yield api
    asyncio.run_coroutine_threadsafe(close_proxy(), host._loop).result(10)
    override_services(None)
    deployment.stop()


# The document the app serves, loaded here so each operation is a test of its own (and a test below checks the
# served document is this one).
DOCUMENT = openapi_document()
OPERATIONS = [result.ok() for result in schemathesis.openapi.from_dict(DOCUMENT).get_all_operations()]


def test_the_served_document_is_the_one_fuzzed(fuzz_api):
    assert fuzz_api.get("/openapi.json").json() == json.loads(json.dumps(DOCUMENT))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o.label)
def test_no_server_errors_and_answers_match_the_document(fuzz_api, operation, mode):
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=fuzz_api.host.base_url, headers=fuzz_api.headers, timeout=30)

    check()
