"""`chatft doctor`: the local checks against the real local stack, the Azure checks against the cloud fake."""

from __future__ import annotations

import dataclasses

import pytest

from chatft_local.doctor import Report, Subscription, azure_checks, local_checks, render
from tests.cloud_fake import AzureRefused, healthy_cloud, with_setting

DOWN = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;")


def _azure(cloud) -> Report:
    report = Report()
    azure_checks(cloud, report)
    return report


def _failed(report: Report) -> dict[str, str]:
    return {c.name: c.line() for c in report.checks if not c.ok}


# --- local, for real ---------------------------------------------------------------------------------------------

@pytest.fixture
def local_host(settings, tmp_path):
    from chatft_local.host import LocalHost

    env = {"AzureWebJobsStorage": settings.storage_connection, "TRAINING_CONTAINER": settings.training_container,
           "RUNS_CONTAINER": settings.runs_container, "RUNS_TABLE": settings.runs_table,
           "RUNS_QUEUE": settings.runs_queue, "DEPLOY_QUEUE": settings.deploy_queue}
    host = LocalHost("function_app", state_dir=tmp_path / "state", port=0, env=env, services=False,
                     blob_scan_seconds=5).start()
    yield host, settings.replace(chatft_state_dir=str(tmp_path / "state"), chatft_host_port=host.port)
    host.stop()


def test_doctor_passes_on_a_healthy_local_stack(local_host):
    _, settings = local_host
    report = Report()
    local_checks(settings, report)
    assert report.ok, "\n".join(render(report))
    assert [c.name for c in report.checks] == ["Azurite reachable", "local host up", "function key present",
                                               "local ML workspace state readable"]


def test_doctor_fails_with_the_fix_when_azurite_is_down(local_host):
    _, settings = local_host
    report = Report()
    local_checks(settings.replace(azurewebjobsstorage=DOWN), report)
    failed = _failed(report)
    assert list(failed) == ["Azurite reachable"]
    assert "nothing answers at http://127.0.0.1:9" in failed["Azurite reachable"]
    assert "fix: start it: `chatft host` starts Azurite" in failed["Azurite reachable"]


def test_doctor_command_exit_code_and_lines(tmp_path, monkeypatch, capsys):
    from chatft_local.cli import main

    monkeypatch.chdir(tmp_path)  # no local.settings.json here
    monkeypatch.setenv("AzureWebJobsStorage", DOWN)
    monkeypatch.setenv("CHATFT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CHATFT_HOST_PORT", "9")
    assert main(["doctor", "--local"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("✘ Azurite reachable") and "fix:" in out[0]
    assert out[1].startswith("✘ local host up") and "`chatft host`" in out[1]
    assert out[2].startswith("✘ function key present") and "`chatft key`" in out[2]
    assert out[-1] == "3 of 4 checks failed"
    assert not (tmp_path / "state").exists()  # read-only: nothing was created


def test_doctor_without_a_deployment_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from chatft_local.cli import main
    from chatft_local.commands import doctor

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(doctor, "azd_values", lambda: {})
    for name in ("RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert main(["doctor", "--azure"]) == 1
    assert "run `azd up`" in capsys.readouterr().out


# --- Azure, against the fake -------------------------------------------------------------------------------------

def test_a_healthy_deployment_passes_every_check():
    report = _azure(healthy_cloud())
    assert report.ok, "\n".join(render(report))
    names = [c.name for c in report.checks]
    assert "Event Grid subscription ingest-blob-created" in names and "queue deployments" in names
    assert list(render(report))[-1] == "all checks passed"


@pytest.mark.parametrize("name,value,fragment", [
    ("ML_BACKEND", "local", "ML_BACKEND is 'local'"),
    ("MESSAGING", "storage-queue", "set MESSAGING=servicebus"),
    ("AML_DATASTORE", "workspaceblobstore", "AML_DATASTORE is workspaceblobstore"),
    ("CLEANUP_SCHEDULE", None, "not set: CLEANUP_SCHEDULE"),
    ("ServiceBusConnection__clientId", None, "ServiceBusConnection__clientId"),
    ("LOCAL_FAULTS", "submit_job=transient:1", "LOCAL_FAULTS is a local-only aid"),
])
def test_settings_missing_or_local_only_are_named(name, value, fragment):
    failed = _failed(_azure(with_setting(healthy_cloud(), name, value)))
    assert fragment in failed["app settings complete, none local-only"]


def test_the_doctor_says_when_the_registry_offers_a_newer_pipeline_component():
    name = "pipeline component chat_completion_pipeline at its pinned version"
    current = next(c for c in _azure(healthy_cloud()).checks if c.name == name)
    assert current.ok and "pinned at 0.0.82, the registry's latest" in current.detail
    cloud = healthy_cloud()
    cloud.component_versions.append("0.0.83")
    newer = next(c for c in _azure(cloud).checks if c.name == name)
    assert newer.ok and "offers a newer one, 0.0.83" in newer.detail
    assert "AML_PIPELINE_COMPONENT_VERSION=0.0.83" in newer.detail
    cloud.component_versions[:] = ["0.0.90"]
    assert "version 0.0.82 not in registry" in _failed(_azure(cloud))[name]


def test_an_archived_base_model_fails_with_the_fix():
    cloud = healthy_cloud()
    cloud.models["Phi-4"] = ("Archived", cloud.models["Phi-4"][1])
    failed = _failed(_azure(cloud))
    assert "is archived" in failed["base model Phi-4 found and not archived"]
    assert "set BASE_MODEL" in failed["base model Phi-4 found and not archived"]


def test_a_compute_without_gpus_or_missing_fails():
    cloud = healthy_cloud()
    cloud.models["Phi-4"] = (None, {})  # no allow-list: the GPU check decides
    cloud.computes["gpu-cluster"] = ("Standard_DS3_v2", "Succeeded")
    assert "has no GPU" in _failed(_azure(cloud))["compute gpu-cluster exists and has GPUs"]
    del cloud.computes["gpu-cluster"]
    assert "not found" in _failed(_azure(cloud))["compute gpu-cluster exists and has GPUs"]


def test_a_datastore_over_the_wrong_container_fails():
    cloud = healthy_cloud()
    cloud.register_datastore("chatft_runs", "stml", "azureml-blobstore")
    assert "not stchatft/runs" in _failed(_azure(cloud))["datastore chatft_runs points at RUNS_CONTAINER"]
    with pytest.raises(AzureRefused):
        cloud.register_datastore("chatft-runs", "stchatft", "runs")


def test_queues_need_duplicate_detection_and_the_delivery_count():
    cloud = healthy_cloud()
    with pytest.raises(AzureRefused, match="cannot be changed"):
        cloud.create_queue("runs", requires_duplicate_detection=False, max_delivery_count=10)
    cloud.queues.clear()
    cloud.create_queue("runs", requires_duplicate_detection=False, max_delivery_count=10)
    cloud.create_queue("deployments", requires_duplicate_detection=True, max_delivery_count=3)
    failed = _failed(_azure(cloud))
    assert "duplicate detection is off" in failed["queue runs"]
    assert "maxDeliveryCount 3 ≠ MAX_DELIVERY_COUNT 10" in failed["queue deployments"]


def test_event_grid_subscriptions_need_their_filters_and_endpoints():
    cloud = healthy_cloud()
    ml = cloud.subscriptions["job-events"]
    cloud.subscribe(dataclasses.replace(ml, advanced_filters=ml.advanced_filters[:1]))  # every app's jobs
    del cloud.subscriptions["ingest-blob-created"]
    failed = _failed(_azure(cloud))
    assert "advanced_filters" in failed["Event Grid subscription job-events"]
    assert "azd hooks run postdeploy" in failed["Event Grid subscription ingest-blob-created"]
    with pytest.raises(AzureRefused):
        cloud.subscribe(Subscription("x", "Microsoft.Storage.StorageAccounts", "/", "f", (ml.included_event_types)))


def test_the_identity_must_hold_its_roles():
    cloud = healthy_cloud()
    cloud.roles = [r for r in cloud.roles if r.role != "Azure Service Bus Data Owner"]
    assert "lacks Azure Service Bus Data Owner on a namespace" in _failed(_azure(cloud))["app identity holds its roles"]
    cloud = healthy_cloud()
    cloud.settings["CLEANUP_CHECK_METRICS"] = "true"
    assert "Monitoring Reader" in _failed(_azure(cloud))["app identity holds its roles"]
    with pytest.raises(AzureRefused):
        cloud.assign("Storage Blob Data Superuser", "Microsoft.Storage/storageAccounts")


def test_no_function_app_stops_the_azure_checks_with_the_fix():
    cloud = healthy_cloud()
    cloud.app_exists = False
    report = _azure(cloud)
    assert [c.name for c in report.checks] == ["Function App found"] and "azd up" in report.checks[0].fix


def test_a_cluster_of_another_size_than_gpu_vm_size_is_reported():
    from chatft_local.doctor import Report, azure_checks

    cloud = healthy_cloud()
    size = cloud.computes["gpu-cluster"][0]
    report = Report()
    azure_checks(cloud, report, gpu_vm_size="Standard_NC96ads_A100_v4")
    failed = _failed(report)["compute gpu-cluster has GPU_VM_SIZE"]
    assert size in failed and "GPU_VM_SIZE is Standard_NC96ads_A100_v4" in failed
    report = Report()
    azure_checks(cloud, report, gpu_vm_size=size.upper())
    assert report.ok


def test_the_run_events_topic_must_take_cloudevents_with_local_auth_off():
    cloud = healthy_cloud()
    topic = "Event Grid topic for run events"
    with pytest.raises(AzureRefused, match="cannot be changed"):
        cloud.create_topic("evgt-runs-chatft", "eastus2", input_schema="EventGridSchema", disable_local_auth=True)
    cloud.topics.clear()
    cloud.create_topic("evgt-runs-chatft", "eastus2", input_schema="EventGridSchema", disable_local_auth=False)
    failed = _failed(_azure(cloud))[topic]
    assert "input schema EventGridSchema, not CloudEventSchemaV1_0" in failed and "local (key) auth is on" in failed
    cloud.topics.clear()
    assert "no topic at https://evgt-runs-chatft" in _failed(_azure(cloud))[topic]
    assert "EVENTGRID_TOPIC_ENDPOINT is empty" in _failed(_azure(with_setting(healthy_cloud(),
                                                                            "EVENTGRID_TOPIC_ENDPOINT", "")))[topic]
    assert "queue notifications" in [c.name for c in _azure(healthy_cloud()).checks]


def test_the_identity_must_be_able_to_publish_run_events_and_read_the_webhook_secret():
    cloud = healthy_cloud()
    cloud.roles = [r for r in cloud.roles if r.role != "EventGrid Data Sender"]
    assert "lacks EventGrid Data Sender on a topic" in _failed(_azure(cloud))["app identity holds its roles"]
    cloud = healthy_cloud()
    cloud.settings.update(NOTIFY_WEBHOOK_URLS="https://hooks.example.com/a",
                          NOTIFY_WEBHOOK_SECRET="@Microsoft.KeyVault(VaultName=kvn-chatft;SecretName=s)")
    assert "lacks Key Vault Secrets User on a vault" in _failed(_azure(cloud))["app identity holds its roles"]
    cloud.assign("Key Vault Secrets User", "Microsoft.KeyVault/vaults")
    assert _azure(cloud).ok
