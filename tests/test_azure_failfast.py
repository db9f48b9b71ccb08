"""Running in Azure with local-only settings: /api/health answers 503 naming each one, and every trigger fails
with the same message (the check lives in shared.config.check_runtime, called by shared.bootstrap.services())."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from shared import bootstrap, config
from shared.config import (SETTINGS, MisconfiguredForAzure, Settings, check_runtime,
                           local_only_problems, running_in_azure)

# What App Service / Functions put in every worker's environment (Kudu wiki "Azure runtime environment").
AZURE_PLATFORM = {"WEBSITE_INSTANCE_ID": "0f1e2d3c", "WEBSITE_SITE_NAME": "func-chatft",
                  "FUNCTIONS_EXTENSION_VERSION": "~4"}
# What infra/ sets: identity-based, Service Bus, Azure ML.
AZURE_READY = {"ML_BACKEND": "azureml", "MESSAGING": "servicebus",
               "ServiceBusConnection__fullyQualifiedNamespace": "sb-x.servicebus.windows.net",
               "AzureWebJobsStorage__accountName": "stx", "AZURE_SUBSCRIPTION_ID": "sub",
               "AZURE_RESOURCE_GROUP": "rg", "AML_WORKSPACE": "mlw"}


@pytest.fixture
def environment(monkeypatch):
    """Set an environment (nothing else of the app's settings) and make the worker read it afresh."""
    def apply(values: dict[str, str]) -> None:
        for name in [*SETTINGS, *AZURE_PLATFORM, "LOCAL_FAULTS"]:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        config._cached = None  # the worker reads its settings afresh (a malformed one raises then, not here)
        bootstrap.override_services(None)

    yield apply
    monkeypatch.undo()
    config._cached = None
    bootstrap.override_services(None)


def _health() -> func.HttpResponse:
    from functions.health import health

    return health(func.HttpRequest("GET", "/api/health", body=b""))


def test_health_is_503_naming_ml_backend_and_messaging_in_azure_with_local_defaults(environment):
    environment(AZURE_PLATFORM)
    response = _health()
    assert response.status_code == 503
    body = json.loads(response.get_body())
    named = {s["name"]: s["fix"] for s in body["settings"]}
    assert "set ML_BACKEND=azureml" in named["ML_BACKEND"]
    assert "set MESSAGING=servicebus" in named["MESSAGING"]
    for name in ("AzureWebJobsStorage__accountName", "AZURE_SUBSCRIPTION_ID", "AML_WORKSPACE",
                 "ServiceBusConnection__fullyQualifiedNamespace"):
        assert name in named
    assert "ML_BACKEND" in body["error"] and "UseDevelopmentStorage" not in body["error"]


def test_every_trigger_fails_with_the_same_message(environment):
    from azure.functions.servicebus import ServiceBusMessage
    from azure.functions.timer import TimerRequest

    from functions import cleanup, submit

    environment(AZURE_PLATFORM)
    with pytest.raises(MisconfiguredForAzure, match="ML_BACKEND.*MESSAGING"):
        submit.submit(ServiceBusMessage(body=b'{"run_id": "r-1"}', message_id="r-1", delivery_count=1,
                                        application_properties={}, user_properties={}))
    with pytest.raises(MisconfiguredForAzure, match="ML_BACKEND"):
        cleanup.cleanup(TimerRequest(past_due=False))
    with pytest.raises(MisconfiguredForAzure):  # not cached: each call says it again
        bootstrap.services()


def test_a_complete_azure_configuration_is_healthy(environment):
    environment({**AZURE_PLATFORM, **AZURE_READY})
    response = _health()
    assert response.status_code == 200, response.get_body()
    assert json.loads(response.get_body())["ml_backend"] == "azureml"


def test_local_aids_and_the_ml_workspaces_own_datastore_are_refused_in_azure(environment):
    environment({**AZURE_PLATFORM, **AZURE_READY, "AML_DATASTORE": "workspaceblobstore",
                 "LOCAL_BASE_MODEL": "/models/phi", "LOCAL_FAULTS": "submit_job=transient:1"})
    body = json.loads(_health().get_body())
    assert [s["name"] for s in body["settings"]] == ["AML_DATASTORE", "LOCAL_BASE_MODEL", "LOCAL_FAULTS"]


def test_local_defaults_are_fine_outside_azure(environment):
    environment({})
    assert _health().status_code == 200
    check_runtime(Settings.from_env({}), {})  # no raise


@pytest.mark.parametrize("env,azure", [
    ({}, False),
    ({"WEBSITE_HOSTNAME": "localhost:7071", "FUNCTIONS_WORKER_RUNTIME": "python"}, False),  # Core Tools locally
    ({"FUNCTIONS_EXTENSION_VERSION": "~4"}, False),
    ({"WEBSITE_INSTANCE_ID": "abc"}, True),
    ({"WEBSITE_SITE_NAME": "app", "FUNCTIONS_EXTENSION_VERSION": "~4"}, True),
])
def test_azure_is_detected_from_the_platforms_variables(env, azure):
    assert running_in_azure(env) is azure


def test_a_malformed_setting_is_also_503(environment):
    environment({"DEPLOY_TIMEOUT_MINUTES": "soon"})
    response = _health()
    assert response.status_code == 503 and b"DEPLOY_TIMEOUT_MINUTES" in response.get_body()


def test_problems_list_is_empty_for_what_infra_sets():
    assert local_only_problems(Settings.from_env(AZURE_READY), AZURE_READY) == []


def test_health_through_the_real_local_host_with_azures_variables(settings, tmp_path, environment):
    """The same answer over HTTP from the real function_app served by the local host."""
    import requests

    from chatft_local.host import LocalHost

    environment({})
    env = {"AzureWebJobsStorage": settings.storage_connection, "TRAINING_CONTAINER": settings.training_container,
           "RUNS_CONTAINER": settings.runs_container, **AZURE_PLATFORM}
    host = LocalHost("function_app", state_dir=tmp_path / "state", port=0, env=env, services=False,
                     blob_scan_seconds=5).start()
    try:
        response = requests.get(host.base_url + "/api/health", timeout=10)
    finally:
        host.stop()
    assert response.status_code == 503
    named = [s["name"] for s in response.json()["settings"]]
    assert named[:2] == ["ML_BACKEND", "MESSAGING"]
