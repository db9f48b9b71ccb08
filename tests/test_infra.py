"""The azd template (azure.yaml, infra/, scripts/postdeploy.*) read as data: it parses, sets every setting the app
needs in Azure, creates every queue, container and table the settings name, assigns the README's roles to the
right principals, and its postdeploy hook makes both Event Grid subscriptions, idempotently."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chatft_local.doctor import (APP_ROLES, APP_ROLES_WITH_METRICS, APP_ROLES_WITH_WEBHOOK_SECRET, JOB_EVENT_TYPES, azure_required_settings,
                                 binding_settings, expected_subscriptions)
from shared.config import DEFAULT_DATASTORE, SETTINGS, Settings
from tests.bicep import files, load

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "scripts" / "postdeploy.sh"


def _app_settings() -> dict:
    main = load("main.bicep").variables()["appSettings"]
    base = load("app/function.bicep").variables()["baseAppSettings"]
    return {**main, **base}


def _ident(value) -> str:
    assert isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value), value
    return value


# --- syntax -----------------------------------------------------------------------------------------------------

def test_every_bicep_file_parses_without_error_nodes():
    parsed = files()
    assert {f.path.name for f in parsed} >= {"main.bicep", "function.bicep", "storage.bicep", "servicebus.bicep",
                                              "ml.bicep", "rbac.bicep", "eventgrid.bicep"}
    problems = [p for f in parsed for p in f.problems()]
    assert problems == []


def test_the_parser_sees_errors():  # so the test above can fail
    from tests.bicep import BicepFile

    broken = ROOT / "infra" / "app" / "storage.bicep"
    text = broken.read_text().replace("properties: {", "properties: {{", 1)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"broken-{os.getpid()}.bicep"
    path.write_text(text)
    try:
        assert BicepFile(path).problems()
    finally:
        path.unlink()


def test_azure_yaml_deploys_the_app_and_runs_both_hooks():
    doc = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert doc["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    hooks = doc["hooks"]["postdeploy"]
    assert (ROOT / hooks["posix"]["run"]).exists() and (ROOT / hooks["windows"]["run"]).exists()
    assert hooks["windows"]["shell"] == "pwsh" and hooks["posix"]["shell"] == "sh"
    # Every parameter main.parameters.json fills exists in main.bicep, and every required one is filled.
    filled = json.loads((ROOT / "infra" / "main.parameters.json").read_text())["parameters"]
    params = load("main.bicep").params()
    assert set(filled) <= set(params)
    assert {n for n, default in params.items() if default is None} <= set(filled)


# --- settings -----------------------------------------------------------------------------------------------------

def test_every_setting_the_app_needs_in_azure_is_set_on_the_function_app():
    settings = _app_settings()
    missing = [n for n in azure_required_settings() if n not in settings]
    assert missing == []
    # The reliability settings another module adds (see the README) are set already.
    assert {"RECONCILE_SCHEDULE", "RECONCILE_AFTER_MINUTES", "RETRY_WINDOW_MINUTES"} <= set(settings)
    assert settings["ML_BACKEND"] == "azureml" and settings["MESSAGING"] == "servicebus"
    assert not any(n.startswith("LOCAL_") or n in ("CHATFT_STATE_DIR", "CHATFT_HOST_PORT") for n in settings)
    # Flex Consumption refuses these as app settings (the runtime is functionAppConfig.runtime).
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"} & set(settings)
    assert "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in settings


def test_every_binding_expression_and_connection_of_functions_is_set():
    names, connections = binding_settings()
    assert {"TRAINING_CONTAINER", "RUNS_QUEUE", "DEPLOY_QUEUE", "CLEANUP_SCHEDULE"} <= names  # the scan works
    settings = _app_settings()
    assert sorted(n for n in names if n not in settings) == []
    assert connections == {"AzureWebJobsStorage", "ServiceBusConnection"}
    for prefix in connections:
        assert settings[f"{prefix}__credential"] == "managedidentity"
        assert settings[f"{prefix}__clientId"] == "identity.outputs.clientId"
    assert settings["AZURE_CLIENT_ID"] == "identity.outputs.clientId"
    # The blob trigger with source=EventGrid needs the blob and queue service URIs of an identity connection.
    assert {"AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri"} <= set(settings)


def test_names_and_defaults_agree_with_shared_config():
    params = load("main.bicep").params()
    settings = _app_settings()
    for name in ("TRAINING_CONTAINER", "RUNS_CONTAINER", "RUNS_TABLE", "RUNS_QUEUE", "DEPLOY_QUEUE", "NOTIFY_QUEUE"):
        assert params[_ident(settings[name])] == SETTINGS[name].default, name
    assert params["maxDeliveryCount"] == SETTINGS["MAX_DELIVERY_COUNT"].default
    assert settings["MAX_DELIVERY_COUNT"] == "string(maxDeliveryCount)"
    assert settings["AML_DATASTORE"] == "runsDatastoreName" and params["runsDatastoreName"] == DEFAULT_DATASTORE
    assert settings["AML_COMPUTE"] == "computeName" and params["computeName"] == SETTINGS["AML_COMPUTE"].default


def _created(module: str, kind: str) -> dict[str, dict]:
    """Resources of `kind` (type suffix) in `module`, by the param naming them."""
    return {r.body["name"]: r.body for r in load(module).resources()
            if r.type.split("@")[0].endswith(kind) and not r.existing}


def test_every_container_table_and_queue_the_settings_name_is_created():
    settings = _app_settings()
    modules = load("main.bicep").modules()
    storage_params = modules["storage"][1]["params"]
    bus_params = modules["servicebus"][1]["params"]
    containers = _created("app/storage.bicep", "/containers")
    tables = _created("app/storage.bicep", "/tables")
    queues = _created("app/servicebus.bicep", "/queues")
    for name in ("TRAINING_CONTAINER", "RUNS_CONTAINER"):
        param = _ident(settings[name])
        assert storage_params[param] == param and param in containers, name
    assert storage_params["runsTableName"] == settings["RUNS_TABLE"] and settings["RUNS_TABLE"] in tables
    assert "deploymentContainerName" in containers  # Flex Consumption's package container
    sb = load("app/servicebus.bicep")
    variables = sb.variables()
    for name in ("RUNS_QUEUE", "DEPLOY_QUEUE", "NOTIFY_QUEUE"):
        param = _ident(settings[name])
        assert bus_params[param] == param and param in queues, name
        props = queues[param]["properties"]
        assert props["requiresDuplicateDetection"] is True
        assert props["maxDeliveryCount"] == "maxDeliveryCount" and bus_params["maxDeliveryCount"] == "maxDeliveryCount"
        lock = variables[props["lockDuration"]]
        minutes = re.fullmatch(r"PT(\d+)M", lock)
        assert minutes and 1 <= int(minutes.group(1)) <= 5  # Service Bus allows at most 5 minutes
    namespace = next(r for r in sb.resources() if r.type.startswith("Microsoft.ServiceBus/namespaces@"))
    assert namespace.body["sku"]["name"] == "Standard"  # scheduled messages and duplicate detection
    storage = next(r for r in load("app/storage.bicep").resources()
                   if r.type.startswith("Microsoft.Storage/storageAccounts@"))
    assert storage.body["properties"]["allowSharedKeyAccess"] is False


def test_the_ml_workspace_has_a_gpu_cluster_at_zero_nodes_and_an_identity_datastore_over_runs():
    ml = load("app/ml.bicep")
    by_type = {r.type.split("@")[0]: r for r in ml.resources()}
    compute = by_type["Microsoft.MachineLearningServices/workspaces/computes"].body
    assert compute["properties"]["computeType"] == "AmlCompute"
    assert compute["properties"]["properties"]["vmSize"] == "gpuVmSize"
    assert compute["properties"]["properties"]["scaleSettings"]["minNodeCount"] == 0
    store = by_type["Microsoft.MachineLearningServices/workspaces/datastores"].body
    assert store["name"] == "'${workspaceName}/${runsDatastoreName}'"
    assert store["properties"]["containerName"] == "runsContainerName"
    assert store["properties"]["credentials"] == {"credentialsType": "None"}
    ml_params = load("main.bicep").modules()["ml"][1]["params"]
    assert ml_params["runsContainerName"] == "runsContainerName" and ml_params["runsDatastoreName"] == "runsDatastoreName"
    assert ml_params["createWorkspace"] == "createMlWorkspace"  # new, or existing by parameter
    assert "Standard_NC6s_v3" not in load("main.bicep").params().values()  # retired 2025-09-30


def test_the_function_app_is_flex_consumption_python_311_with_the_user_assigned_identity():
    fn = load("app/function.bicep")
    by_type = {r.type.split("@")[0]: r.body for r in fn.resources()}
    plan = by_type["Microsoft.Web/serverfarms"]
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = by_type["Microsoft.Web/sites"]
    assert site["identity"]["type"] == "UserAssigned"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"


def test_run_events_go_to_a_cloudevents_topic_with_local_auth_off_and_the_secret_to_a_key_vault():
    module = load("app/notifications.bicep")
    by_type = {r.type.split("@")[0]: r for r in module.resources() if not r.existing}
    topic = by_type["Microsoft.EventGrid/topics"].body
    assert topic["properties"]["inputSchema"] == "CloudEventSchemaV1_0"  # what EventGridPublisherClient sends
    assert topic["properties"]["disableLocalAuth"] is True  # identity only
    outputs = module.path.read_text()
    assert "output topicEndpoint string = topic.properties.endpoint" in outputs
    params = load("main.bicep").modules()["notifications"][1]["params"]
    assert params["appPrincipalId"] == "identity.outputs.principalId"
    assert params["webhookSecret"] == "notifyWebhookSecret"
    main = load("main.bicep").path.read_text()
    assert re.search(r"@secure\(\)\s*(@description\('[^']*'\)\s*)?param notifyWebhookSecret string", main)
    settings = _app_settings()
    assert settings["EVENTGRID_TOPIC_ENDPOINT"] == "notifications.outputs.topicEndpoint"
    # The secret is a Key Vault reference, never its value, and the site resolves it with the app's identity.
    assert settings["NOTIFY_WEBHOOK_SECRET"] == "notifications.outputs.webhookSecretSetting"
    assert "@Microsoft.KeyVault(VaultName=" in outputs and "secrets" in outputs
    vault = by_type["Microsoft.KeyVault/vaults"].body
    assert vault["properties"]["enableRbacAuthorization"] is True
    site = {r.type.split("@")[0]: r.body for r in load("app/function.bicep").resources()}["Microsoft.Web/sites"]
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    roles = {role for role, who, _ in _assignments() if who == "app"}
    assert {"EventGrid Data Sender", "Key Vault Secrets User"} <= roles


# --- roles --------------------------------------------------------------------------------------------------------

PRINCIPALS = {"appPrincipalId": "app", "computePrincipalId": "compute", "compute.identity.principalId": "compute",
              "computeIdentity.properties.principalId": "compute", "workspacePrincipalId": "workspace"}


def _role_names(bicep) -> dict[str, str]:
    """roles.<key> -> role name, from the `var roles = { key: 'guid' // Role Name }` comments."""
    text = bicep.path.read_text()
    block = text[text.index("var roles = {"):]
    block = block[:block.index("}")]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"(\w+): '[0-9a-f-]{36}' // (.+)", block)}


def _assignments() -> list[tuple[str, str, str]]:
    out = []
    for bicep in files():
        for r in bicep.resources():
            if not r.type.startswith("Microsoft.Authorization/roleAssignments@"):
                continue
            props = r.body["properties"]
            key = re.search(r"roles\.(\w+)", props["roleDefinitionId"]).group(1)
            assert r.comment.startswith("//") and "->" in r.comment, f"{r.symbol}: say why in a comment"
            out.append((_role_names(bicep)[key], PRINCIPALS[props["principalId"]], r.symbol))
    return out


def _readme_roles() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("#### Roles"):]
    rows = re.findall(r"^\| ([^|]+?) \| (app|compute|workspace) \|", table, re.M)
    return [(role.strip(), who) for role, who in rows]


def test_each_readme_role_is_assigned_to_the_right_principal_and_nothing_else():
    readme = _readme_roles()
    assert len(readme) >= 8
    assigned = [(role, who) for role, who, _ in _assignments()]
    assert sorted(readme) == sorted(assigned)
    # The doctor checks the app's roles: the same list.
    assert {r for r, who in readme if who == "app"} == (set(APP_ROLES) | set(APP_ROLES_WITH_METRICS)
                                                        | set(APP_ROLES_WITH_WEBHOOK_SECRET))


def test_role_definition_ids_are_the_built_in_ones():
    # Built-in role ids (Learn: "Azure built-in roles"; the storage/monitoring ones as in the azd quickstart).
    # The built-in role definitions kept as test data (tests/data/builtin_roles.json, with their source).
    roles = json.loads((ROOT / "tests" / "data" / "builtin_roles.json").read_text())["roles"]
    known = {r["roleName"]: guid for guid, r in roles.items()}
    for bicep in files():
        if "var roles = {" in bicep.path.read_text():
            for key, guid in bicep.variables()["roles"].items():
                assert known[_role_names(bicep)[key]] == guid, key


# --- the postdeploy hook ------------------------------------------------------------------------------------------

HOOK_ENV = {"RESOURCE_GROUP": "rg-chatft", "AZURE_FUNCTION_APP_NAME": "func-abc",
            "SERVICE_API_BASE_URL": "https://func-abc.azurewebsites.net", "STORAGE_SYSTEM_TOPIC_NAME": "evgt-st-abc",
            "TRAINING_CONTAINER": "training-data", "ML_RESOURCE_GROUP": "rg-ml", "ML_SYSTEM_TOPIC_NAME": "evgt-ml-abc",
            "APP_ID": "chatft"}


@pytest.fixture
def fake_az(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(f"#!/bin/sh\nexec {sys.executable} {ROOT / 'tests' / 'fake_az.py'} \"$@\"\n")
    az.chmod(0o755)
    state = tmp_path / "az-state.json"
    state.write_text(json.dumps({"topics": {"evgt-st-abc": "storage", "evgt-ml-abc": "ml"},
                                 "system_keys": {"blobs_extension": "BLOBKEY", "eventgrid_extension": "EGKEY"}}))
    log = tmp_path / "az-calls.jsonl"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_AZ_STATE": str(state), "FAKE_AZ_LOG": str(log),
           "HOME": str(tmp_path), "POSTDEPLOY_KEY_WAIT_SECONDS": "0", **HOOK_ENV}

    def run(**overrides):
        return subprocess.run(["bash", str(HOOK)], env={**env, **overrides}, capture_output=True, text=True,
                              timeout=60)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    run.state = lambda: json.loads(state.read_text())
    run.calls = calls
    run.state_path = state
    return run


def test_the_hook_makes_both_subscriptions_with_their_filters(fake_az):
    done = fake_az()
    assert done.returncode == 0, done.stderr
    subs = fake_az.state()["subscriptions"]
    assert set(subs) == {"rg-chatft/evgt-st-abc/ingest-blob-created", "rg-ml/evgt-ml-abc/job-events"}
    blob = subs["rg-chatft/evgt-st-abc/ingest-blob-created"]
    assert blob["endpoint"] == ("https://func-abc.azurewebsites.net/runtime/webhooks/blobs"
                                "?functionName=Host.Functions.ingest&code=BLOBKEY")
    assert blob["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert blob["subjectBeginsWith"] == "/blobServices/default/containers/training-data/"
    assert blob["subjectEndsWith"] == ".jsonl"  # tests/test_uploads.py: the same rule as the app's
    assert blob["eventDeliverySchema"] == "eventgridschema" and blob["endpointType"] == "webhook"
    ml = subs["rg-ml/evgt-ml-abc/job-events"]
    assert ml["endpoint"] == ("https://func-abc.azurewebsites.net/runtime/webhooks/EventGrid"
                              "?functionName=job_events&code=EGKEY")
    assert ml["includedEventTypes"] == list(JOB_EVENT_TYPES)
    assert ml["advancedFilters"] == [{"key": "data.runType", "operatorType": "StringIn", "values": ["azureml.PipelineRun",
                                                                                              "azureml.scriptrun"]},
                                     {"key": "data.runTags.chatft-app", "operatorType": "StringIn", "values": ["chatft"]}]
    assert ml["eventDeliverySchema"] == "eventgridschema"
    assert "BLOBKEY" not in done.stdout and "EGKEY" not in done.stdout  # keys never printed


def test_the_hook_and_the_doctor_agree_on_what_the_subscriptions_are(fake_az):
    from chatft_local.azure_cloud import subscription_from_arm

    assert fake_az().returncode == 0
    settings = Settings.from_env({"TRAINING_CONTAINER": "training-data", "APP_ID": "chatft"})
    topic_types = {"storage": "Microsoft.Storage.StorageAccounts", "ml": "Microsoft.MachineLearningServices.Workspaces"}
    state = fake_az.state()
    for key, sub in state["subscriptions"].items():
        group, topic, name = key.split("/")
        arm = {"destination": {"endpointUrl": sub["endpoint"]},
               "filter": {"includedEventTypes": sub["includedEventTypes"],
                          "subjectBeginsWith": sub.get("subjectBeginsWith"),
                          "subjectEndsWith": sub.get("subjectEndsWith"),
                          "advancedFilters": sub.get("advancedFilters", [])},
               "eventDeliverySchema": "EventGridSchema"}
        found = subscription_from_arm(name, topic_types[state["topics"][topic]], arm)
        assert found == expected_subscriptions(settings)[name]


def test_the_hook_is_idempotent(fake_az):
    assert fake_az().returncode == 0
    first = fake_az.state()
    second_run = fake_az()
    assert second_run.returncode == 0, second_run.stderr
    assert fake_az.state() == first
    verbs = [c[3] for c in fake_az.calls() if c[:3] == ["eventgrid", "system-topic", "event-subscription"]]
    assert verbs == ["show", "create", "show", "create", "show", "update", "show", "update"]
    assert "updated Event Grid subscription job-events" in second_run.stdout


def test_the_hook_refreshes_a_rotated_key_and_a_changed_container(fake_az):
    assert fake_az().returncode == 0
    state = fake_az.state()
    state["system_keys"]["blobs_extension"] = "NEWKEY"
    fake_az.state_path.write_text(json.dumps(state))
    assert fake_az(TRAINING_CONTAINER="uploads").returncode == 0
    blob = fake_az.state()["subscriptions"]["rg-chatft/evgt-st-abc/ingest-blob-created"]
    assert blob["endpoint"].endswith("code=NEWKEY") and blob["subjectBeginsWith"].endswith("/uploads/")


def test_the_hook_fails_clearly_without_keys_or_settings(fake_az):
    state = fake_az.state()
    state["system_keys"] = {}
    fake_az.state_path.write_text(json.dumps(state))
    done = fake_az(POSTDEPLOY_KEY_ATTEMPTS="2")
    assert done.returncode != 0 and "no blobs_extension system key" in done.stderr
    assert "subscriptions" not in fake_az.state()
    done = fake_az(APP_ID="")
    assert done.returncode != 0 and "APP_ID is not set" in done.stderr


def test_the_powershell_hook_makes_the_same_subscriptions():
    sh, ps1 = HOOK.read_text(), (ROOT / "scripts" / "postdeploy.ps1").read_text()
    for fragment in ("ingest-blob-created", "job-events", "Host.Functions.ingest", "functionName=job_events",
                     "/runtime/webhooks/blobs", "/runtime/webhooks/EventGrid", "Microsoft.Storage.BlobCreated",
                     *JOB_EVENT_TYPES, "data.runType", "azureml.PipelineRun", "azureml.scriptrun", "data.runTags.chatft-app",
                     "/blobServices/default/containers/", "blobs_extension", "eventgrid_extension",
                     "eventgridschema", "system-topic event-subscription show", "update", "create"):
        assert fragment in sh and fragment in ps1, fragment
    if shutil.which("pwsh"):  # pragma: no cover - not installed on the build machines
        subprocess.run(["pwsh", "-NoProfile", "-Command", f"$null = [ScriptBlock]::Create((Get-Content -Raw '{ROOT / 'scripts' / 'postdeploy.ps1'}'))"],
                       check=True)


# --- the package ----------------------------------------------------------------------------------------------------

def test_funcignore_keeps_only_the_app():
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".funcignore").read_text().splitlines())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    kept = [p for p in tracked if not spec.match_file(p)]
    allowed = re.compile(r"(function_app\.py|host\.json|requirements\.txt|(functions|shared|evaluation)/.+\.py)$")
    assert [p for p in kept if not allowed.match(p)] == []
    assert {"function_app.py", "host.json", "requirements.txt", "functions/ingest.py", "shared/config.py"} <= set(kept)
    for heavy in (".venv/lib/x.py", "node_modules/azurite/x.js", ".chatft/workspace/mlflow.db", "tests/test_x.py",
                  "chatft_local/host.py", "bench/cold_start.py", "local.settings.json"):
        assert spec.match_file(heavy), heavy


def test_requirements_pin_the_blob_extension_and_keep_the_local_runtime_out():
    reqs = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^azurefunctions-extensions-bindings-blob>=1\.1\.2$", reqs, re.M)
    for local_only in ("torch", "transformers", "mlflow", "peft", "trl", "tree-sitter", "pytest"):
        assert not re.search(rf"^{local_only}\b", reqs, re.M), local_only


# --- issue 23: the template's traps --------------------------------------------------------------------------------

def test_issue_23_findings_in_the_template():
    from shared.ml.training_params import resolve_inference_instance_type

    ml = {r.symbol: r for r in load("app/ml.bicep").resources()}
    # 2: a default inference size in Phi-4's published inference computes; with a size set, no list is no error.
    assert load("main.bicep").params()["inferenceInstanceType"] == "Standard_NC24ads_A100_v4"
    assert resolve_inference_instance_type("Standard_NC24ads_A100_v4", {}) == "Standard_NC24ads_A100_v4"
    # 3: the cluster has a user-assigned identity, which holds Blob Data Contributor on the workspace storage.
    assert ml["compute"].body["identity"]["type"] == "UserAssigned"
    assert ml["computeWorkspaceStorage"].body["properties"]["principalId"] == "computeIdentity.properties.principalId"
    assert "how-to-disable-local-auth-storage.md" in ml["computeIdentity"].comment
    # 4: a Basic registry with the admin account off is the workspace's containerRegistry.
    assert ml["registry"].body["sku"] == {"name": "Basic"}
    assert ml["registry"].body["properties"] == {"adminUserEnabled": False}
    assert ml["newWorkspace"].body["properties"]["containerRegistry"] == "registry.id"
    # 5: existing topics are used instead of a second one per source, and the outputs the hook reads say which.
    assert ml["mlTopic"].conditional and load("app/eventgrid.bicep").resources()[0].conditional
    outputs = load("app/eventgrid.bicep").src.decode()
    assert "empty(existingStorageTopicName) ? storageTopic.name : existingStorageTopicName" in outputs
    assert "empty(existingMlTopicName) ? mlTopic.name : existingMlTopicName" in load("app/ml.bicep").src.decode()
    # 6: an existing workspace's own region for what goes into it.
    assert ml["compute"].body["location"] == "mlLocation" and ml["mlTopic"].body["location"] == "mlLocation"
    # 7: GA API versions only.
    assert not [r.type for f in files() for r in f.resources() if "preview" in r.type]
