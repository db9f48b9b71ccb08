"""The Azure ML adapter, offline: the pipeline job built from the real component spec and serialized by
azure-ai-ml itself; the notebook's checks on real SDK entities; endpoint and deployment entities; and the adapter's
calls against an in-memory stand-in for MLClient's operations (the cloud boundary) that keeps real entities and
raises azure-core's errors."""

import dataclasses
import json
import tempfile
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from shared.config import Settings
from shared.ml.port import (TAG_APP, TAG_CREATED, TAG_RUN, BaseModel, Compute, InvalidInput, JobRequest, NameTaken,
                            NotFound, PermanentError, RegisteredModel, TransientError)
from tests.conftest import PROJECT_ROOT, REFERENCE
from tests.fakes import PHI3_MINI_TAGS, write_word_tokenizer

SPEC = REFERENCE / "chat_completion_pipeline.spec.yaml"
MODEL_ID = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
TRAIN = "azureml://datastores/workspaceblobstore/paths/chats-0123456789ab/train.jsonl"
TEST = "azureml://datastores/workspaceblobstore/paths/chats-0123456789ab/test.jsonl"
COMPUTES = ("compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation")


def test_importing_the_adapter_does_not_import_the_sdk():
    code = ("import sys, shared.ml.azureml, shared.ml.training_params; "
            "bad = sorted(m for m in sys.modules if m.startswith(('azure.ai.ml', 'azure.monitor', 'azure.identity')));"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ the pipeline job


@pytest.fixture(scope="module")
def component():
    if not SPEC.exists():
        pytest.skip(f"component spec not found at {SPEC} (public reference material, kept outside the repo)")
    from azure.ai.ml import load_component

    return load_component(source=str(SPEC))


@pytest.fixture(scope="module")
def spec():
    import yaml

    if not SPEC.exists():
        pytest.skip(f"component spec not found at {SPEC}")
    return yaml.safe_load(SPEC.read_text())


def build(component, tags=PHI3_MINI_TAGS, params=None, **kw):
    from shared.ml.azureml import build_pipeline_job

    args = dict(model_id=MODEL_ID, model_tags=tags, compute="gpu-cluster", gpus_per_node=2, train_path=TRAIN,
                test_path=TEST, params=params or {}, job_name="chatft-chats-0123456789ab",
                experiment_name="chat_completion_Phi-3-mini-4k-instruct")
    return build_pipeline_job(component, **{**args, **kw})


def node_inputs(job) -> dict:
    (node,) = job._to_dict()["jobs"].values()
    return node["inputs"]


def accepted(spec_input: dict, value) -> bool:
    kind = spec_input["type"]
    if "enum" in spec_input:
        return isinstance(value, str) and value in [str(e) for e in spec_input["enum"]]
    if kind == "integer":
        return type(value) is int and value >= spec_input.get("min", value)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    return isinstance(value, dict) and value.get("type") == kind and value.get("path")


def test_every_input_is_in_the_spec_with_a_value_it_accepts(component, spec):
    inputs = node_inputs(build(component, params={"keep": True, "lora_r": 16}))
    for name, value in inputs.items():
        assert name in spec["inputs"], name
        assert accepted(spec["inputs"][name], value), (name, value)


def test_the_job_carries_the_notebooks_model_data_computes_and_values(component):
    inputs = node_inputs(build(component, tags={}))
    assert inputs["mlflow_model_path"] == {"type": "mlflow_model", "path": MODEL_ID}
    assert inputs["train_file_path"] == {"type": "uri_file", "path": TRAIN}
    assert inputs["test_file_path"] == {"type": "uri_file", "path": TEST}
    assert all(inputs[c] == "gpu-cluster" for c in COMPUTES)
    assert inputs["number_of_gpu_to_use_finetuning"] == 2
    notebook = {"num_train_epochs": 3, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                "learning_rate": 5e-6, "lr_scheduler_type": "cosine", "apply_lora": "true", "apply_deepspeed": "true",
                "deepspeed_stage": "2"}
    assert {k: inputs[k] for k in notebook} == notebook
    assert set(inputs) == set(notebook) | set(COMPUTES) | {"mlflow_model_path", "train_file_path", "test_file_path",
                                                           "number_of_gpu_to_use_finetuning"}


def test_model_specific_defaults_override_and_upload_overrides_win(component):
    inputs = node_inputs(build(component, params={"num_train_epochs": 2, "apply_lora": False, "seed": 11,
                                                  "base_model": "Phi-4", "test_fraction": 0.2}))
    assert inputs["precision"] == "16" and inputs["save_total_limit"] == 1  # from the model's tag
    assert inputs["num_train_epochs"] == 2 and inputs["apply_lora"] == "false" and inputs["seed"] == 11  # upload
    assert not {"learning_rate_max", "base_model", "test_fraction", "keep"} & set(inputs)


def test_unknown_keywords_would_break_the_component_call(component):
    from azure.ai.ml.exceptions import UnexpectedKeywordError

    with pytest.raises(UnexpectedKeywordError):
        component(learning_rate_max=5e-5)
    build(component, params={"learning_rate_max": 5e-5, "nonsense": 1})  # filtered out: builds fine


def test_job_settings_name_display_name_output_and_tags(component):
    job = build(component, dataset="chats", params={"max_seq_length": 2048})
    data = job._to_dict()
    assert data["name"] == "chatft-chats-0123456789ab"
    assert data["experiment_name"] == "chat_completion_Phi-3-mini-4k-instruct"
    assert data["display_name"] == "Phi-3-mini-4k-instruct-chats-bs2-cosine-ds2-lora-save_limit1-seqlen2048"
    assert data["settings"] == {"force_rerun": True, "continue_on_step_failure": False}
    assert data["outputs"]["trained_model"]["type"] == "mlflow_model"
    (node,) = data["jobs"].values()
    assert node["outputs"] == {"mlflow_model_folder": "${{parent.outputs.trained_model}}"}

    rest = job._to_rest_object().as_dict()["properties"]
    assert rest["displayName"] == data["display_name"] and rest["experimentName"] == data["experiment_name"]
    assert rest["settings"]["force_rerun"] is True and rest["settings"]["continue_on_step_failure"] is False
    (rest_node,) = rest["jobs"].values()
    assert rest_node["inputs"]["deepspeed_stage"] == {"value": "2", "job_input_type": "literal"}
    assert rest_node["inputs"]["mlflow_model_path"] == {"uri": MODEL_ID, "job_input_type": "mlflow_model"}
    assert rest_node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"


def test_without_a_test_file_the_pipeline_splits_the_training_data(component):
    inputs = node_inputs(build(component, test_path=""))
    assert "test_file_path" not in inputs and inputs["train_file_path"]["path"] == TRAIN


def test_datastore_paths_come_from_the_setting_and_the_run():
    from shared.ml.azureml import datastore_uri, training_data_uris

    settings = Settings.from_env(env={}, aml_datastore="runsstore")
    assert training_data_uris(settings, "r-1/train.jsonl", "r-1/test.jsonl") == (
        "azureml://datastores/runsstore/paths/r-1/train.jsonl", "azureml://datastores/runsstore/paths/r-1/test.jsonl")
    assert training_data_uris(settings, "r-1/train.jsonl", "")[1] == ""
    assert datastore_uri("ws", "/a/b.jsonl") == "azureml://datastores/ws/paths/a/b.jsonl"


# ------------------------------------------------------------------ checks on real SDK entities


def vm_sizes(*pairs):
    from azure.ai.ml._restclient.arm_ml_service.models import VirtualMachineSize
    from azure.ai.ml.entities import VmSize

    return [VmSize._from_rest_object(VirtualMachineSize({"name": n, "gpus": g, "vCPUs": 6})) for n, g in pairs]


SIZES = [("Standard_DS3_v2", 0), ("Standard_NC6", 1), ("Standard_NC6s_v3", 1), ("Standard_NC24ads_A100_v4", 1),
         ("Standard_NC48ads_A100_v4", 2)]


def cluster(size, state="Succeeded"):
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(name="gpu-cluster", size=size, provisioning_state=state)


@pytest.mark.parametrize("size, tags, gpus", [
    ("Standard_NC48ads_A100_v4", PHI3_MINI_TAGS, 2),
    ("STANDARD_NC24ADS_A100_V4", PHI3_MINI_TAGS, 1),  # the allow-list is case-insensitive
    ("Standard_NC6s_v3", {}, 1),  # no allow-list: anything but K80
])
def test_accepted_clusters(size, tags, gpus):
    from shared.ml.azureml import compute_from_entities

    compute = compute_from_entities(cluster(size), vm_sizes(*SIZES), tags)
    assert compute == Compute(name="gpu-cluster", vm_size=size, gpus_per_node=gpus)


@pytest.mark.parametrize("entity, tags, message", [
    (("Standard_NC48ads_A100_v4", "Failed"), PHI3_MINI_TAGS, "failed provisioning state"),
    (("Standard_NC6s_v3", "Succeeded"), PHI3_MINI_TAGS, "does not allow"),
    (("Standard_NC6", "Succeeded"), {}, "K80"),
    (("Standard_NC96ads_A100_v4", "Succeeded"), PHI3_MINI_TAGS, "available SKUs: Standard_DS3_v2, Standard_NC24ads"),
    (("Standard_DS3_v2", "Succeeded"), {}, "no GPU"),
    ((None, "Succeeded"), {}, "no VM size"),
])
def test_refused_clusters(entity, tags, message):
    from shared.ml.azureml import compute_from_entities

    with pytest.raises(PermanentError, match=message):
        compute_from_entities(cluster(*entity), vm_sizes(*SIZES), tags)


def registry_model(name="Phi-4", version="7", tags=None, stage=None):
    from azure.ai.ml.entities import Model

    return Model(name=name, version=version, tags=tags or {}, stage=stage,
                 id=f"azureml://registries/azureml/models/{name}/versions/{version}")


def test_base_model_from_the_registry_entity():
    from shared.ml.azureml import base_model_from_entity

    model = base_model_from_entity(registry_model(tags={"textContextWindow": 16384, **PHI3_MINI_TAGS}), "azureml")
    assert (model.name, model.version) == ("Phi-4", "7")
    assert model.id == "azureml://registries/azureml/models/Phi-4/versions/7"
    assert model.tags["textContextWindow"] == "16384"


@pytest.mark.parametrize("stage, tags, reason", [
    ("Archived", {}, "stage is Archived"),
    (None, {"FinetuneRetirementDate": "2025-08-30", **PHI3_MINI_TAGS}, "retired on 2025-08-30"),
])
def test_an_archived_base_model_is_refused_up_front(stage, tags, reason):
    from shared.ml.azureml import base_model_from_entity

    entity = registry_model("Phi-3-mini-4k-instruct", "15", tags, stage)
    with pytest.raises(PermanentError, match=reason) as caught:
        base_model_from_entity(entity, "azureml", today=date(2026, 1, 1))
    assert "Phi-3-mini-4k-instruct" in str(caught.value) and "set BASE_MODEL" in str(caught.value)


# ------------------------------------------------------------------ endpoint and deployment entities


def test_endpoint_entity_is_key_auth_with_ownership_tags():
    from shared.ml.azureml import build_endpoint

    tags = {TAG_APP: "chatft", TAG_RUN: "chats-0123456789ab", TAG_CREATED: "2026-01-01T00:00:00.000Z"}
    endpoint = build_endpoint("ft-chats-01234567", tags=tags, description="chatft run")
    data = endpoint._to_dict()
    assert (data["name"], data["auth_mode"], data["tags"], data["description"]) == (
        "ft-chats-01234567", "key", tags, "chatft run")
    rest = endpoint._to_rest_online_endpoint(location="westeurope").as_dict()
    assert rest["properties"]["authMode"] == "Key" and rest["tags"] == tags


def test_deployment_entity_has_the_notebooks_settings():
    from shared.ml.azureml import build_deployment

    deployment = build_deployment("ft-chats-01234567", "demo", model_id="azureml:m:1",
                                  instance_type="Standard_NC6s_v3", instance_count=1)
    data = deployment._to_dict()
    assert data["liveness_probe"] == {"initial_delay": 600}
    assert data["request_settings"] == {"request_timeout_ms": 90000}
    assert (data["name"], data["endpoint_name"], data["model"], data["instance_type"], data["instance_count"]) == (
        "demo", "ft-chats-01234567", "azureml:m:1", "Standard_NC6s_v3", 1)
    rest = deployment._to_rest_object(location="westeurope").as_dict()
    assert rest["properties"]["livenessProbe"] == {"initialDelay": "PT10M"}
    assert rest["properties"]["requestSettings"] == {"requestTimeout": "PT1M30S"}
    assert rest["sku"]["capacity"] == 1 and rest["properties"]["instanceType"] == "Standard_NC6s_v3"


def test_job_error_summary_is_one_line():
    from types import SimpleNamespace

    from shared.ml.azureml import job_error_summary

    assert job_error_summary(SimpleNamespace(error=SimpleNamespace(message="OOM\nstack..."))) == "OOM"
    assert job_error_summary(SimpleNamespace(properties={"azureml.runError": "no GPUs\nmore"})) == "no GPUs"
    assert job_error_summary(SimpleNamespace(properties={}, studio_url="https://ml.azure.com/runs/x")) == \
        "see https://ml.azure.com/runs/x"
    assert job_error_summary(SimpleNamespace()) == ""


def test_requests_total_sums_every_series_of_the_metric():
    from datetime import datetime, timezone

    from azure.monitor.querymetrics import Metric, MetricsQueryResult, MetricValue, TimeSeriesElement

    from shared.ml.azureml import requests_total

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    series = [TimeSeriesElement(data=[MetricValue(timestamp=at, total=3.0), MetricValue(timestamp=at, total=None)]),
              TimeSeriesElement(data=[MetricValue(timestamp=at, total=4.0)])]
    metric = Metric(id="m", type="t", name="RequestsPerMinute", unit="Count", timeseries=series,
                    display_description="")
    results = [MetricsQueryResult(timespan="PT24H", metrics=[metric])]
    assert requests_total(results) == 7
    assert requests_total([MetricsQueryResult(timespan="PT24H", metrics=[])]) == 0


# ------------------------------------------------------------------ error mapping


def http_error(status, cls=None):
    from azure.core.exceptions import HttpResponseError

    exc = (cls or HttpResponseError)(message=f"(Code) service said {status}\nsecond line")
    exc.status_code = status
    return exc


@pytest.mark.parametrize("make, expected", [
    (lambda: http_error(429), TransientError),
    (lambda: http_error(503), TransientError),
    (lambda: http_error(400), PermanentError),
    (lambda: http_error(403), PermanentError),
    (lambda: http_error(404), NotFound),
])
def test_http_errors_map_to_the_ports(make, expected):
    from shared.ml.azureml import translate

    mapped = translate(make(), "getting job chatft-x")
    assert type(mapped) is expected
    assert "getting job chatft-x" in str(mapped) and "second line" not in str(mapped)


def test_other_azure_errors_map_to_the_ports():
    from azure.core.exceptions import (ClientAuthenticationError, ResourceExistsError, ResourceNotFoundError,
                                       ServiceRequestError)
    from azure.ai.ml.exceptions import ValidationException

    from shared.ml.azureml import Conflict, translate

    assert isinstance(translate(ServiceRequestError("connection reset"), "x"), TransientError)
    assert type(translate(ClientAuthenticationError("no identity"), "x")) is PermanentError
    assert type(translate(ResourceNotFoundError("gone"), "x", not_found="job y not found")) is NotFound
    assert str(translate(ResourceNotFoundError("gone"), "x", not_found="job y not found")) == "job y not found"
    assert type(translate(ResourceExistsError("exists"), "x")) is Conflict
    assert type(translate(ValidationException(message="bad", no_personal_data_message="bad"), "x")) is PermanentError
    bug = KeyError("a bug")
    assert translate(bug, "x") is bug


# ------------------------------------------------------------------ the adapter on a stand-in MLClient


class Poller:
    """What begin_* returns; the adapter must never wait on it."""

    def wait(self, *a, **k):
        raise AssertionError("the adapter waited on a long-running operation")

    result = wait


def not_found(what):
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(message=f"{what} not found")


class Ops:
    def __init__(self, cloud):
        self.cloud = cloud


class ModelOps(Ops):
    def __init__(self, cloud, registry=False):
        super().__init__(cloud)
        self.items, self.registry = {}, registry

    def get(self, name, version=None, label=None):
        self.cloud.calls.append(("models.get", name, version or label))
        if label == "latest":
            versions = [v for (n, v) in self.items if n == name]
            version = max(versions, key=int) if versions else None
        if (name, version) not in self.items:
            raise not_found(f"model {name}")
        return self.items[(name, version)]

    def list(self, name=None, stage=None, *, list_view_type=None):
        self.cloud.calls.append(("models.list", name))
        return [m for (n, _), m in self.items.items() if name is None or n == name]

    def create_or_update(self, model):
        from azure.ai.ml.entities import Model

        self.cloud.calls.append(("models.create_or_update", model.name, model.version))
        stored = Model(name=model.name, version=model.version, path=model.path, type=model.type,
                       description=model.description, tags=model.tags,
                       id=f"/subscriptions/s/workspaces/ws/models/{model.name}/versions/{model.version}")
        self.items[(model.name, model.version)] = stored
        if self.cloud.race_next:  # another attempt registered it first
            self.cloud.race_next = False
            from azure.core.exceptions import ResourceExistsError

            raise ResourceExistsError(message="model version exists")
        return stored


class ComputeOps(Ops):
    def get(self, name):
        if name not in self.cloud.computes:
            raise not_found(f"compute {name}")
        return self.cloud.computes[name]

    def list_sizes(self):
        return vm_sizes(*SIZES)


class JobOps(Ops):
    def get(self, name):
        self.cloud.calls.append(("jobs.get", name))
        if name not in self.cloud.jobs:
            raise not_found(f"job {name}")
        return self.cloud.jobs[name]

    def create_or_update(self, job, experiment_name=None, **kw):
        self.cloud.calls.append(("jobs.create_or_update", job.name, experiment_name))
        if self.cloud.fail_next:
            exc, self.cloud.fail_next = self.cloud.fail_next, None
            raise exc
        job._status = "NotStarted"
        self.cloud.jobs[job.name] = job
        code = getattr(job, "code", None)
        if isinstance(code, str) and Path(code).is_dir():  # what create_or_update would upload as the snapshot
            self.cloud.snapshots[job.name] = sorted(str(p.relative_to(code)) for p in Path(code).rglob("*")
                                                    if p.is_file())
        if self.cloud.race_next:  # another attempt created it first
            self.cloud.race_next = False
            from azure.core.exceptions import ResourceExistsError

            raise ResourceExistsError(message="job exists")
        return job

    def begin_cancel(self, name):
        self.cloud.calls.append(("jobs.begin_cancel", name))
        return Poller()

    def stream(self, name):
        raise AssertionError("the adapter streamed a job")


class EndpointOps(Ops):
    def get(self, name):
        if name not in self.cloud.endpoints:
            raise not_found(f"endpoint {name}")
        return self.cloud.endpoints[name]

    def begin_create_or_update(self, endpoint):
        self.cloud.calls.append(("online_endpoints.begin_create_or_update", endpoint.name, dict(endpoint.traffic)))
        self.cloud.sent.append(endpoint._to_rest_online_endpoint(location="westeurope").as_dict())
        endpoint._provisioning_state = endpoint.provisioning_state or "Creating"
        self.cloud.endpoints[endpoint.name] = endpoint
        return Poller()

    def get_keys(self, name):
        from azure.ai.ml.entities import EndpointAuthKeys

        self.get(name)
        return EndpointAuthKeys(primary_key="pk-" + "s3cr3t" * 4, secondary_key="sk")

    def list(self):
        return list(self.cloud.endpoints.values())

    def begin_delete(self, name):
        self.cloud.calls.append(("online_endpoints.begin_delete", name))
        if self.cloud.endpoints.pop(name, None) is None:
            raise not_found(f"endpoint {name}")
        return Poller()


class DeploymentOps(Ops):
    def get(self, name, endpoint_name):
        if (endpoint_name, name) not in self.cloud.deployments:
            raise not_found(f"deployment {name}")
        return self.cloud.deployments[(endpoint_name, name)]

    def begin_create_or_update(self, deployment):
        self.cloud.calls.append(("online_deployments.begin_create_or_update", deployment.name))
        if deployment.endpoint_name not in self.cloud.endpoints:
            raise not_found(f"endpoint {deployment.endpoint_name}")
        self.cloud.deployments[(deployment.endpoint_name, deployment.name)] = deployment
        return Poller()

    def list(self, endpoint_name, *, local=False):
        if endpoint_name not in self.cloud.endpoints:
            raise not_found(f"endpoint {endpoint_name}")
        return [d for (e, _), d in self.cloud.deployments.items() if e == endpoint_name]

    def begin_delete(self, name, endpoint_name, *, local=False):
        self.cloud.calls.append(("online_deployments.begin_delete", name, endpoint_name))
        if self.cloud.deployments.pop((endpoint_name, name), None) is None:
            raise not_found(f"deployment {name}")
        return Poller()


class ComponentOps(Ops):
    def get(self, name, version=None, label=None):
        self.cloud.calls.append(("components.get", name, version or label))
        if not SPEC.exists():
            pytest.skip(f"component spec not found at {SPEC}")
        from azure.ai.ml import load_component

        component = load_component(source=str(SPEC))
        if version is not None and version != component.version:
            raise not_found(f"component {name} version {version}")
        return component


class Cloud:
    """Stand-ins for a workspace MLClient and a registry MLClient sharing one record of calls."""

    def __init__(self):
        from azure.ai.ml.entities import AmlCompute

        self.calls, self.jobs, self.endpoints, self.deployments, self.snapshots, self.sent = [], {}, {}, {}, {}, []
        self.race_next, self.fail_next = False, None
        self.computes = {"gpu-cluster": AmlCompute(name="gpu-cluster", size="Standard_NC24ads_A100_v4",
                                                   provisioning_state="Succeeded")}
        self.workspace = type("Workspace", (), {})()
        self.workspace.models, self.workspace.compute = ModelOps(self), ComputeOps(self)
        self.workspace.jobs = JobOps(self)
        self.workspace.online_endpoints, self.workspace.online_deployments = EndpointOps(self), DeploymentOps(self)
        self.registry = type("Registry", (), {})()
        self.registry.models, self.registry.components = ModelOps(self, registry=True), ComponentOps(self)
        for name, version, tags in [("Phi-3-mini-4k-instruct", "15", PHI3_MINI_TAGS), ("Phi-4", "7", {})]:
            self.registry.models.items[(name, version)] = registry_model(name, version, tags)

    def count(self, call):
        return sum(1 for c in self.calls if c[0] == call)


@pytest.fixture
def cloud():
    return Cloud()


@pytest.fixture
def backend(cloud):
    settings = Settings.from_env(env={}, ml_backend="azureml", azure_subscription_id="sub", azure_resource_group="rg",
                                 aml_workspace="ws", aml_datastore="runsstore")
    return checked_azure(settings, cloud)


def checked_azure(settings, cloud):
    """The adapter over the cloud fake's clients, behind the port's input rules, as `shared.bootstrap` builds it."""
    from shared.ml.azureml import AzureMLBackend
    from shared.ml.checked import checked

    return checked(AzureMLBackend(settings, credential=object(), ml_client=cloud.workspace,
                                  registry_client=cloud.registry),
                   inference_instance_type=settings.inference_instance_type)


def request_for(backend, run_id="chats-0123456789ab", **params):
    base = backend.resolve_base_model("Phi-3-mini-4k-instruct")
    return JobRequest(job_name=f"chatft-{run_id}", run_id=run_id, experiment_name="chat_completion_Phi-3",
                      base_model=base, compute=backend.check_compute("gpu-cluster", base),
                      train_path=f"{run_id}/train.jsonl", test_path=f"{run_id}/test.jsonl", params=params)


def test_resolve_and_check_compute_through_the_clients(backend, cloud):
    base = backend.resolve_base_model("Phi-3-mini-4k-instruct")
    assert base == BaseModel("Phi-3-mini-4k-instruct", "15", MODEL_ID, tags=dict(PHI3_MINI_TAGS))
    assert ("models.get", "Phi-3-mini-4k-instruct", "latest") in cloud.calls
    assert backend.check_compute("gpu-cluster", base) == Compute("gpu-cluster", "Standard_NC24ads_A100_v4", 1)
    with pytest.raises(NotFound, match="set BASE_MODEL"):
        backend.resolve_base_model("Phi-9")
    with pytest.raises(NotFound, match="AML_COMPUTE"):
        backend.check_compute("missing", base)


def test_submit_creates_once_and_a_resubmission_finds_the_job(backend, cloud):
    request = request_for(backend, keep=True, num_train_epochs=2)
    assert backend.submit_job(request) == "chatft-chats-0123456789ab"
    assert backend.submit_job(request) == "chatft-chats-0123456789ab"
    assert cloud.count("jobs.create_or_update") == 1 and cloud.count("components.get") == 1
    # The pinned version (the spec's), never the label `latest`.
    assert ("components.get", "chat_completion_pipeline", "0.0.82") in cloud.calls
    assert ("jobs.create_or_update", "chatft-chats-0123456789ab", "chat_completion_Phi-3") in cloud.calls
    job = cloud.jobs["chatft-chats-0123456789ab"]
    inputs = node_inputs(job)
    assert inputs["train_file_path"]["path"] == "azureml://datastores/runsstore/paths/chats-0123456789ab/train.jsonl"
    assert inputs["num_train_epochs"] == 2 and "keep" not in inputs
    assert job.display_name.startswith("Phi-3-mini-4k-instruct-chats-bs1-")
    assert job.tags == {TAG_APP: "chatft", TAG_RUN: "chats-0123456789ab", "chatft-base-model": MODEL_ID}
    assert backend.get_job(request.job_name).status == "NotStarted"


def test_a_submission_that_lost_the_race_finds_the_winners_job(backend, cloud):
    request = request_for(backend)
    cloud.race_next = True
    assert backend.submit_job(request) == request.job_name
    assert cloud.count("jobs.get") == 2  # looked first, then again after the conflict


def test_submit_errors_are_the_ports(backend, cloud):
    request = request_for(backend)
    cloud.fail_next = http_error(503)
    with pytest.raises(TransientError, match="submitting job chatft-chats-0123456789ab"):
        backend.submit_job(request)
    cloud.fail_next = http_error(400)
    with pytest.raises(PermanentError, match="400"):
        backend.submit_job(request)
    assert not cloud.jobs


def test_submit_refuses_an_inference_instance_type_the_model_does_not_allow(backend, cloud):
    backend = checked_azure(backend.settings.replace(inference_instance_type="Standard_DS3_v2"), cloud)
    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE"):
        backend.submit_job(request_for(backend))
    assert cloud.count("jobs.create_or_update") == 0


def test_job_status_error_and_cancel(backend, cloud):
    request = request_for(backend)
    backend.submit_job(request)
    job = cloud.jobs[request.job_name]
    job._status = "Running"
    backend.cancel_job(request.job_name)
    assert cloud.count("jobs.begin_cancel") == 1
    job._status = "Failed"
    job.properties["azureml.runError"] = "CUDA out of memory"
    status = backend.get_job(request.job_name)
    assert (status.status, status.error) == ("Failed", "CUDA out of memory")
    backend.cancel_job(request.job_name)  # done: nothing to cancel
    assert cloud.count("jobs.begin_cancel") == 1
    with pytest.raises(NotFound):
        backend.get_job("chatft-unknown")


def completed_job(backend, cloud, run_id="chats-0123456789ab"):
    request = request_for(backend, run_id)
    backend.submit_job(request)
    cloud.jobs[request.job_name]._status = "Completed"
    return request.job_name


def test_register_points_at_the_jobs_output_and_is_idempotent(backend, cloud):
    job_name = completed_job(backend, cloud)
    model = backend.register_model(job_name, "Phi-3-mini-4k-instruct-chats", description="d",
                                   tags={TAG_RUN: "chats-0123456789ab"})
    again = backend.register_model(job_name, "Phi-3-mini-4k-instruct-chats")  # a redelivery: found by its tag
    assert model == again and model.version == "1"
    assert model.id.endswith("/models/Phi-3-mini-4k-instruct-chats/versions/1")
    assert cloud.count("models.create_or_update") == 1
    entity = cloud.workspace.models.items[("Phi-3-mini-4k-instruct-chats", "1")]
    assert entity.path == f"azureml://jobs/{job_name}/outputs/trained_model"
    assert entity.type == "mlflow_model" and entity.description == "d"
    assert entity.tags == {TAG_RUN: "chats-0123456789ab", "chatft-job": job_name, "chatft-base-model": MODEL_ID}


def test_register_numbers_versions_per_name(backend, cloud):
    first, second = completed_job(backend, cloud), completed_job(backend, cloud, "chats-ba9876543210")
    assert backend.register_model(first, "chats").version == "1"
    assert backend.register_model(second, "chats").version == "2"
    assert backend.register_model(first, "chats").version == "1"
    assert cloud.count("models.create_or_update") == 2


def test_register_takes_the_next_number_when_another_job_took_it_meanwhile(backend, cloud):
    from azure.ai.ml.entities import Model

    first, second = completed_job(backend, cloud), completed_job(backend, cloud, "chats-ba9876543210")
    real_create = cloud.workspace.models.create_or_update

    def racing(model):  # another job's registration lands on the same number just before this one
        if ("chats", model.version) not in cloud.workspace.models.items and model.version == "1":
            cloud.workspace.models.items[("chats", "1")] = Model(name="chats", version="1", id="other",
                                                                 tags={"chatft-job": first})
            from azure.core.exceptions import ResourceExistsError

            raise ResourceExistsError(message="model version exists")
        return real_create(model)

    cloud.workspace.models.create_or_update = racing
    assert backend.register_model(second, "chats").version == "2"


@pytest.mark.parametrize("version", ["0123456789ab", "0", "1.0"])
def test_register_refuses_versions_azure_refuses_before_calling(backend, cloud, version):
    job_name = completed_job(backend, cloud)
    calls = len(cloud.calls)
    with pytest.raises(InvalidInput, match="positive integers"):
        backend.register_model(job_name, "m", version)
    assert cloud.calls[calls:] == []


def test_register_conflict_returns_the_existing_model(backend, cloud):
    job_name = completed_job(backend, cloud)
    cloud.race_next = True
    model = backend.register_model(job_name, "m", "1")
    assert (model.name, model.version) == ("m", "1") and model.id.endswith("/models/m/versions/1")


def test_register_refuses_unknown_or_unfinished_jobs(backend, cloud):
    with pytest.raises(NotFound):
        backend.register_model("chatft-unknown", "m", "1")
    request = request_for(backend)
    backend.submit_job(request)
    with pytest.raises(PermanentError, match="NotStarted"):
        backend.register_model(request.job_name, "m", "1")


def test_endpoint_deployment_traffic_key_and_delete_never_wait(backend, cloud):
    job_name = completed_job(backend, cloud)
    model = backend.register_model(job_name, "m", "1")
    tags = {TAG_RUN: "chats-0123456789ab", TAG_CREATED: "2026-01-01T00:00:00.000Z"}
    backend.begin_create_endpoint("ft-chats-01234567", tags=tags, description="d")
    backend.begin_create_endpoint("ft-chats-01234567", tags=tags, description="d")
    assert cloud.count("online_endpoints.begin_create_or_update") == 1
    endpoint = backend.get_endpoint("ft-chats-01234567")
    assert endpoint.provisioning_state == "Creating" and endpoint.tags == {TAG_APP: "chatft", **tags}
    assert [e.name for e in backend.list_endpoints()] == ["ft-chats-01234567"]
    # Azure refuses a deployment on an endpoint still Creating or Updating (shared/ml/checked.py): the step is tried
    # again later; on a Failed or Deleting endpoint waiting does not help.
    with pytest.raises(TransientError, match="is Creating; a deployment can be created once it has Succeeded"):
        backend.begin_create_deployment("ft-chats-01234567", "demo", model, "Standard_NC6s_v3", 1)
    for state, error in (("Updating", TransientError), ("Deleting", PermanentError), ("Failed", PermanentError)):
        cloud.endpoints["ft-chats-01234567"]._provisioning_state = state
        with pytest.raises(error, match=f"is {state}; a deployment can be created"):
            backend.begin_create_deployment("ft-chats-01234567", "demo", model, "Standard_NC6s_v3", 1)
    assert cloud.count("online_deployments.begin_create_or_update") == 0
    cloud.endpoints["ft-chats-01234567"]._provisioning_state = "Succeeded"

    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE Standard_DS3_v2"):
        backend.begin_create_deployment("ft-chats-01234567", "demo", model, "Standard_DS3_v2", 1)
    backend.begin_create_deployment("ft-chats-01234567", "demo", model, "Standard_NC6s_v3", 1)
    backend.begin_create_deployment("ft-chats-01234567", "demo", model, "Standard_NC6s_v3", 1)
    assert cloud.count("online_deployments.begin_create_or_update") == 1
    deployment = cloud.deployments[("ft-chats-01234567", "demo")]
    assert deployment.model == model.id and deployment.liveness_probe.initial_delay == 600
    with pytest.raises(NotFound):
        backend.begin_create_deployment("ft-missing", "demo", model, "Standard_NC6s_v3", 1)

    backend.set_traffic("ft-chats-01234567", {"demo": 100})
    assert cloud.calls[-1] == ("online_endpoints.begin_create_or_update", "ft-chats-01234567", {"demo": 100})
    uri = "https://ft-chats-01234567.westeurope.inference.ml.azure.com/score"
    cloud.endpoints["ft-chats-01234567"]._scoring_uri = uri
    target = backend.get_scoring_target("ft-chats-01234567")
    assert (target.scoring_uri, target.deployment_name) == (uri, "demo") and target.key.startswith("pk-")
    assert target.key not in repr(target)
    assert backend.requests_since("ft-chats-01234567", "2026-01-01T00:00:00Z") is None  # metrics check is off

    backend.begin_delete_endpoint("ft-chats-01234567")
    backend.begin_delete_endpoint("ft-chats-01234567")  # gone: NotFound is a no-op
    assert backend.get_endpoint("ft-chats-01234567") is None
    with pytest.raises(NotFound):
        backend.get_scoring_target("ft-chats-01234567")
    with pytest.raises(NotFound):
        backend.set_traffic("ft-chats-01234567", {"demo": 100})


def test_deployment_of_a_model_without_base_model_tag_is_not_blocked(backend, cloud):
    from azure.ai.ml.entities import Model

    cloud.workspace.models.items[("byo", "1")] = Model(name="byo", version="1", id="byo-id", tags={})
    backend.begin_create_endpoint("ft-byo", tags={})
    cloud.endpoints["ft-byo"]._provisioning_state = "Succeeded"
    backend.begin_create_deployment("ft-byo", "demo", RegisteredModel("byo", "1", "byo-id"), "Standard_DS3_v2", 1)
    assert cloud.deployments[("ft-byo", "demo")].instance_type == "Standard_DS3_v2"


def test_clients_are_made_once_from_the_settings_without_a_browser_prompt():
    from azure.identity import DefaultAzureCredential, InteractiveBrowserCredential

    from shared.ml.azureml import AzureMLBackend

    settings = Settings.from_env(env={}, ml_backend="azureml", azure_subscription_id="sub-1",
                                 azure_resource_group="rg-1", aml_workspace="ws-1")
    backend = AzureMLBackend(settings)
    credential = backend.credential
    assert isinstance(credential, DefaultAzureCredential) and backend.credential is credential
    assert not any(isinstance(c, InteractiveBrowserCredential) for c in credential.credentials)
    workspace = backend.workspace
    assert backend.workspace is workspace
    assert (workspace.subscription_id, workspace.resource_group_name, workspace.workspace_name) == (
        "sub-1", "rg-1", "ws-1")


def test_the_adapter_keeps_the_port(backend):
    from shared.ml.port import MLBackend

    assert isinstance(backend, MLBackend)


def test_an_endpoint_name_of_another_run_is_taken(backend, cloud):
    tags = {TAG_RUN: "chats-0123456789ab"}
    backend.begin_create_endpoint("ft-chats-01234567", tags=tags)
    with pytest.raises(NameTaken, match="chats-0123456789ab"):
        backend.begin_create_endpoint("ft-chats-01234567", tags={TAG_RUN: "other-0123456789ab"})
    assert cloud.count("online_endpoints.begin_create_or_update") == 1


def test_an_endpoint_name_taken_elsewhere_in_the_region_is_name_taken(backend, cloud):
    from azure.core.exceptions import HttpResponseError

    def refuse(endpoint):
        error = HttpResponseError(message="(BadRequest) The request is invalid.\nThere is already an endpoint with "
                                          "this name, Endpoint name needs to be unique within a region.")
        error.status_code = 400
        raise error

    cloud.workspace.online_endpoints.begin_create_or_update = refuse
    with pytest.raises(NameTaken, match="region"):
        backend.begin_create_endpoint("ft-chats-01234567", tags={TAG_RUN: "chats-0123456789ab"})


@pytest.mark.parametrize("name", ["ab", "1-starts-with-a-digit", "ends-", "has_underscore", "x" * 33])
def test_endpoint_and_deployment_names_are_checked_before_calling(backend, cloud, name):
    with pytest.raises(InvalidInput):
        backend.begin_create_endpoint(name, tags={})
    with pytest.raises(InvalidInput):
        backend.begin_create_deployment("ft-chats-01234567", name, RegisteredModel("m", "1", "id"),
                                        "Standard_NC6s_v3", 1)
    assert not [c for c in cloud.calls if "online" in c[0]]


# ------------------------------------------------------------------ the subscription-scope VM size list (issue 23)


def arm_forbidden(action, scope):
    """What ARM raises through azure-core when a role does not grant `action` at `scope`: 403 AuthorizationFailed."""
    from azure.core.exceptions import HttpResponseError

    exc = HttpResponseError(message=f"(AuthorizationFailed) The client 'app' with object id 'oid' does not have "
                                    f"authorization to perform action '{action}' over scope '{scope}' or the scope "
                                    f"is invalid.")
    exc.status_code = 403
    return exc


class ArmComputeOps(ComputeOps):
    """ComputeOps as ARM answers the app's identity, which holds roles on the workspace only: the subscription-scope
    GET .../locations/{location}/vmSizes (azure-ai-ml `build_virtual_machine_sizes_list_request`) is refused."""

    def list_sizes(self):
        self.cloud.calls.append(("compute.list_sizes",))
        raise arm_forbidden("Microsoft.MachineLearningServices/locations/vmsizes/read", "/subscriptions/sub")


@pytest.fixture
def arm_cloud():
    cloud = Cloud()
    cloud.workspace.compute = ArmComputeOps(cloud)
    return cloud


def azure_backend(cloud, **settings):
    settings = Settings.from_env(env={}, ml_backend="azureml", azure_subscription_id="sub", azure_resource_group="rg",
                                 aml_workspace="ws", aml_datastore="runsstore", **settings)
    return checked_azure(settings, cloud)


@pytest.mark.parametrize("size, gpus", [("Standard_NC24ads_A100_v4", 1), ("standard_nc96ads_a100_v4", 4),
                                        ("Standard_ND96amsr_A100_v4", 8), ("Standard_NC80adis_H100_v5", 2)])
def test_the_gpus_of_an_allowed_size_come_from_the_table_without_the_subscription_scope_call(arm_cloud, size, gpus):
    from azure.ai.ml.entities import AmlCompute

    arm_cloud.computes["gpu-cluster"] = AmlCompute(name="gpu-cluster", size=size, provisioning_state="Succeeded")
    backend = azure_backend(arm_cloud)
    base = backend.resolve_base_model("Phi-4")
    assert backend.check_compute("gpu-cluster", base).gpus_per_node == gpus
    assert arm_cloud.count("compute.list_sizes") == 0


def test_a_size_outside_the_table_behind_a_403_names_the_setting_and_the_setting_overrides(arm_cloud):
    from azure.ai.ml.entities import AmlCompute

    arm_cloud.computes["gpu-cluster"] = AmlCompute(name="gpu-cluster", size="Standard_NC8as_T4_v3",
                                                   provisioning_state="Succeeded")
    base = azure_backend(arm_cloud).resolve_base_model("Phi-4")
    with pytest.raises(PermanentError, match="set AML_COMPUTE_GPUS") as refused:
        azure_backend(arm_cloud).check_compute("gpu-cluster", base)
    assert "locations/vmsizes/read" in str(refused.value) and arm_cloud.count("compute.list_sizes") == 1
    assert azure_backend(arm_cloud, aml_compute_gpus=3).check_compute("gpu-cluster", base).gpus_per_node == 3
    assert arm_cloud.count("compute.list_sizes") == 1
    # Where the identity may list sizes (a user granted the read), a size outside the table is read from Azure.
    arm_cloud.workspace.compute = ComputeOps(arm_cloud)
    with pytest.raises(PermanentError, match="available SKUs: .*or set AML_COMPUTE_GPUS"):
        azure_backend(arm_cloud).check_compute("gpu-cluster", base)


def test_other_list_size_errors_are_not_hidden(arm_cloud):
    from azure.ai.ml.entities import AmlCompute

    arm_cloud.computes["gpu-cluster"] = AmlCompute(name="gpu-cluster", size="Standard_NC8as_T4_v3",
                                                   provisioning_state="Succeeded")
    backend = azure_backend(arm_cloud)
    base = backend.resolve_base_model("Phi-4")
    arm_cloud.workspace.compute.list_sizes = lambda: (_ for _ in ()).throw(http_error(503))
    with pytest.raises(TransientError):
        backend.check_compute("gpu-cluster", base)


def test_a_run_goes_from_its_queued_upload_to_submit_while_arm_refuses_the_vm_size_list(arm_cloud, offline_settings):
    """The run `ingest` queued (train/test files in RUNS_CONTAINER) is submitted through the Azure ML adapter while
    the stand-in answers the vmSizes GET with ARM's 403, as it does the template's app identity."""
    from shared.bootstrap import bootstrap
    from shared.ml.azureml import AzureMLBackend
    from shared.orchestration import submit_run
    from shared.run_store import InMemoryRunStore
    from shared.runs import State, new_run
    from tests.fakes import RecordingSender

    settings = offline_settings.model_copy(update=dict(ml_backend="azureml", azure_subscription_id="sub",
                                                       azure_resource_group="rg", aml_workspace="ws",
                                                       base_model="Phi-4",
                                                       inference_instance_type="Standard_NC24ads_A100_v4"))
    backend = AzureMLBackend(settings, credential=object(), ml_client=arm_cloud.workspace,
                             registry_client=arm_cloud.registry)
    svc = bootstrap(settings, ml=backend, messages=RecordingSender(), runs=InMemoryRunStore())
    run_id = "chats-0123456789ab"
    run = new_run(run_id, svc.clock()).advance(State.VALIDATING, svc.clock())
    svc.runs.create(run.advance(State.QUEUED, svc.clock(), train_path=f"{run_id}/train.jsonl",
                                test_path=f"{run_id}/test.jsonl"))
    run = submit_run(svc, run_id)
    assert run.state == State.SUBMITTED, run.failure
    assert arm_cloud.count("jobs.create_or_update") == 1 and arm_cloud.count("compute.list_sizes") == 0
    inputs = node_inputs(arm_cloud.jobs[run.job_name])
    assert inputs["number_of_gpu_to_use_finetuning"] == 1


# ------------------------------------------------------------------ findings 8 and 9 (issue 23)


def test_a_model_version_taken_with_another_path_is_a_conflict_and_takes_the_next_number(backend, cloud):
    """azure-ai-ml 1.35.2 raises AssetPathException for the service's "(UserError) Asset paths cannot be updated."
    (operations/_model_operations.py:292): the version is taken, so the registration takes the next number."""
    from azure.ai.ml._artifacts._constants import CHANGED_ASSET_PATH_MSG, CHANGED_ASSET_PATH_MSG_NO_PERSONAL_DATA
    from azure.ai.ml.entities import Model
    from azure.ai.ml.exceptions import AssetPathException, ErrorTarget

    from shared.ml.azureml import Conflict, translate

    exc = AssetPathException(message=CHANGED_ASSET_PATH_MSG, target=ErrorTarget.MODEL,
                             no_personal_data_message=CHANGED_ASSET_PATH_MSG_NO_PERSONAL_DATA)
    assert type(translate(exc, "registering model m version 1")) is Conflict

    first, second = completed_job(backend, cloud), completed_job(backend, cloud, "chats-ba9876543210")
    real_create = cloud.workspace.models.create_or_update

    def other_path(model):  # another job registered version 1 (another path) just before this PUT
        if model.version == "1":
            cloud.workspace.models.items[("chats", "1")] = Model(name="chats", version="1", id="other",
                                                                 tags={"chatft-job": first})
            raise AssetPathException(message=CHANGED_ASSET_PATH_MSG, target=ErrorTarget.MODEL,
                                     no_personal_data_message=CHANGED_ASSET_PATH_MSG_NO_PERSONAL_DATA)
        return real_create(model)

    cloud.workspace.models.create_or_update = other_path
    assert backend.register_model(second, "chats").version == "2"


@pytest.mark.parametrize("word", ["failed", "FAILED", "Failed"])
def test_statuses_in_any_casing_are_the_ports_words(word):
    from shared.ml.port import Deployment, Endpoint, JobStatus
    from shared.orchestration import RUN_STATUS_CHANGED, JobEvent

    event = JobEvent.from_event_grid(RUN_STATUS_CHANGED, {"runId": "chatft-x", "runStatus": word})
    assert event.status == "Failed"
    assert JobStatus("j", word).done and JobStatus("j", "completed").status == "Completed"
    assert Endpoint("e", word).provisioning_state == "Failed"
    assert Deployment("e", "d", "succeeded").provisioning_state == "Succeeded"
    assert JobStatus("j", "SomethingNew").status == "SomethingNew"


def test_data_hints_ask_the_registry_once_for_the_base_models_defaults(backend, cloud):
    first = backend.data_hints()
    assert first[1]["num_train_epochs"] == 1 and backend.data_hints() is first
    assert sum(c[:2] == ("models.get", "Phi-3-mini-4k-instruct") for c in cloud.calls) == 1


# ------------------------------------------------------------------ the evaluation job


def evaluation_request(backend, run_id="chats-0123456789ab", **limits):
    from shared.ml.port import EvaluationRequest
    from shared.runs import evaluation_job_name_for, job_name_for

    return EvaluationRequest(job_name=evaluation_job_name_for(run_id), run_id=run_id,
                             experiment_name="chat_completion_Phi-3",
                             base_model=backend.resolve_base_model("Phi-3-mini-4k-instruct"),
                             training_job=job_name_for(run_id), compute="gpu-cluster",
                             test_path=f"{run_id}/test.jsonl", report_path=f"{run_id}/evaluation.json", **limits)


def test_the_evaluation_job_is_a_command_job_on_the_runs_inputs_and_datastore(backend, tmp_path):
    from azure.ai.ml import load_job

    from shared.config import EVALUATION_ENVIRONMENT
    from shared.ml.azureml import build_evaluation_job, evaluation_code_dir

    request = evaluation_request(backend, max_records=200, samples=10, max_new_tokens=64)
    job = build_evaluation_job(request, code=evaluation_code_dir(tmp_path / "code"),
                               environment=EVALUATION_ENVIRONMENT, datastore="runsstore", tags={TAG_RUN: "x"})
    # Serialized by azure-ai-ml and loaded back: what the service would receive.
    job._to_job().dump(tmp_path / "job.yaml")  # the Command builder as the CommandJob it submits
    loaded = load_job(tmp_path / "job.yaml")
    assert loaded.type == "command" and loaded.name == "chatft-chats-0123456789ab-eval"
    assert loaded.compute == "gpu-cluster" and loaded.experiment_name == "chat_completion_Phi-3"
    assert loaded.environment == "azureml://registries/azureml/environments/acft-hf-nlp-gpu/labels/latest"
    inputs = {name: (i.type, i.path) for name, i in loaded.inputs.items()}
    assert inputs == {
        "base_model": ("mlflow_model", MODEL_ID),
        "tuned_model": ("mlflow_model", "azureml://jobs/chatft-chats-0123456789ab/outputs/trained_model"),
        "test_file": ("uri_file", "azureml://datastores/runsstore/paths/chats-0123456789ab/test.jsonl")}
    output = loaded.outputs["evaluation"]
    assert (output.type, output.mode, output.path) == (
        "uri_folder", "upload", "azureml://datastores/runsstore/paths/chats-0123456789ab/")
    command = loaded.command
    # The code is the app's evaluation package and nothing else; its entry point parses the job's arguments.
    code = Path(job.code)
    assert sorted(p.name for p in (code / "evaluation").iterdir()) == ["__init__.py", "__main__.py", "chat.py",
                                                                       "scoring.py"]
    assert [p.name for p in code.iterdir()] == ["evaluation"]
    done = subprocess.run([sys.executable, "-m", "evaluation", "--help"], cwd=code, capture_output=True, text=True)
    assert done.returncode == 0 and "--tuned-model" in done.stdout


def test_a_new_version_of_a_line_is_evaluated_beside_the_version_in_service_in_the_same_job(backend, tmp_path):
    """One command job, three models: the champion is the line's registered model, by `azureml:<name>:<version>`,
    an `mlflow_model` input like the others; its run id goes to the report through the command line."""
    from azure.ai.ml import load_job

    from shared.config import EVALUATION_ENVIRONMENT
    from shared.ml.azureml import build_evaluation_job, evaluation_code_dir
    from shared.ml.port import RegisteredModel

    champion = RegisteredModel(name="support-bot", version="3",
                               id="/subscriptions/s/resourceGroups/g/workspaces/w/models/support-bot/versions/3")
    request = dataclasses.replace(evaluation_request(backend), champion=champion, champion_run_id="week1-0123456789ab")
    job = build_evaluation_job(request, code=evaluation_code_dir(tmp_path / "code"),
                               environment=EVALUATION_ENVIRONMENT, datastore="runsstore", tags={TAG_RUN: "x"})
    job._to_job().dump(tmp_path / "job.yaml")
    loaded = load_job(tmp_path / "job.yaml")
    assert set(loaded.inputs) == {"base_model", "tuned_model", "test_file", "champion_model"}
    assert loaded.inputs["champion_model"].type == "mlflow_model"
    # What the service receives (loading the YAML back drops the `azureml:` of the short form).
    rest = job._to_job()._to_rest_object().properties.inputs["champion_model"]
    assert (rest.job_input_type, rest.uri) == ("mlflow_model", "azureml:support-bot:3")
    assert ("--champion-model ${{inputs.champion_model}} --champion-model-id azureml:support-bot:3 "
            "--champion-run-id week1-0123456789ab") in loaded.command
    # A line's first version (no champion) keeps the two-model job.
    plain = build_evaluation_job(evaluation_request(backend), code=evaluation_code_dir(tmp_path / "code2"),
                                 environment=EVALUATION_ENVIRONMENT, datastore="runsstore")
    assert "champion" not in plain.command and "champion_model" not in plain.inputs


def test_submit_evaluation_needs_the_completed_training_job_and_creates_once(backend, cloud):
    training = request_for(backend)
    backend.submit_job(training)
    request = evaluation_request(backend)
    with pytest.raises(PermanentError, match="NotStarted; only a completed job's model can be evaluated"):
        backend.submit_evaluation(request)
    cloud.jobs[training.job_name]._status = "Completed"
    assert backend.submit_evaluation(request) == request.job_name
    assert backend.submit_evaluation(request) == request.job_name
    assert cloud.count("jobs.create_or_update") == 2  # the training job and one evaluation job
    job = cloud.jobs[request.job_name]
    assert job.tags == {TAG_APP: "chatft", TAG_RUN: "chats-0123456789ab", "chatft-base-model": MODEL_ID}
    assert cloud.snapshots[request.job_name] == ["evaluation/__init__.py", "evaluation/__main__.py",
                                                "evaluation/chat.py", "evaluation/scoring.py"]
    with pytest.raises(InvalidInput):
        backend.submit_evaluation(evaluation_request(backend, run_id="Bad Name!"))


def test_doctor_can_tell_the_latest_component_version(backend, cloud):
    assert backend.latest_pipeline_component_version() == "0.0.82"
    assert ("components.get", "chat_completion_pipeline", "latest") in cloud.calls


def test_a_line_endpoint_takes_a_second_deployment_a_canary_split_mirroring_and_a_deletion(backend, cloud):
    """Traffic, mirrored traffic and deletion as the Learn safe rollout walkthrough does them, with the real
    `ManagedOnlineEndpoint` serialized as the service receives it (`mirrorTraffic` beside `traffic`)."""
    job_name = completed_job(backend, cloud)
    model = backend.register_model(job_name, "support-bot", "1")
    tags = {TAG_RUN: "chats-0123456789ab", "chatft-line": "support-bot"}
    backend.begin_create_endpoint("ln-support-bot", tags=tags)
    backend.begin_create_endpoint("ln-support-bot", tags={**tags, TAG_RUN: "later-run-0123"})  # same line: no-op
    assert cloud.count("online_endpoints.begin_create_or_update") == 1
    cloud.endpoints["ln-support-bot"]._provisioning_state = "Succeeded"
    for name in ("v01", "v02"):
        backend.begin_create_deployment("ln-support-bot", name, model, "Standard_NC6s_v3", 1)
    assert [d.name for d in backend.list_deployments("ln-support-bot")] == ["v01", "v02"]
    assert backend.list_deployments("ln-support-bot")[0].model_id == model.id

    with pytest.raises(InvalidInput, match="adds up to 90"):
        backend.set_traffic("ln-support-bot", {"v01": 90})
    with pytest.raises(InvalidInput, match="no deployment v03"):
        backend.set_traffic("ln-support-bot", {"v01": 90, "v03": 10})
    sent = len(cloud.sent)
    backend.set_traffic("ln-support-bot", {"v01": 90, "v02": 10})
    assert len(cloud.sent) == sent + 1 and cloud.sent[-1]["properties"]["traffic"] == {"v01": 90, "v02": 10}

    with pytest.raises(InvalidInput, match="0 to 50"):
        backend.set_mirror_traffic("ln-support-bot", {"v02": 60})
    backend.set_mirror_traffic("ln-support-bot", {"v02": 20})
    assert cloud.sent[-1]["properties"]["mirrorTraffic"] == {"v02": 20}
    assert cloud.sent[-1]["properties"]["traffic"] == {"v01": 90, "v02": 10}  # live traffic kept as it was
    assert backend.get_endpoint("ln-support-bot").mirror_traffic == {"v02": 20}
    backend.set_mirror_traffic("ln-support-bot", {})
    assert not cloud.sent[-1]["properties"].get("mirrorTraffic")

    with pytest.raises(InvalidInput, match="set them to 0"):
        backend.begin_delete_deployment("ln-support-bot", "v01")
    assert cloud.count("online_deployments.begin_delete") == 0
    backend.set_traffic("ln-support-bot", {"v01": 0, "v02": 100})
    backend.begin_delete_deployment("ln-support-bot", "v01")
    backend.begin_delete_deployment("ln-support-bot", "v01")  # gone: a no-op
    backend.begin_delete_deployment("ln-missing", "v01")  # no endpoint: a no-op
    assert cloud.calls[-1] == ("online_deployments.begin_delete", "v01", "ln-support-bot")
    assert [d.name for d in backend.list_deployments("ln-support-bot")] == ["v02"]
    with pytest.raises(NotFound):
        backend.list_deployments("ln-missing")


# ------------------------------------------------------------------ the base model's tokenizer from the registry


REGISTRY_DATAPLANE_API = "2021-10-01-dataplanepreview"
MODEL_FOLDER = "huggingface/phi-3-mini-4k-instruct/mlflow_model_folder"  # azureml-assets model.yaml container_path


class DataRefResponse:
    """What azure-core's `send_request` returns: the status and body are looked at only through these two."""

    def __init__(self, status: int, body: dict):
        self.status_code, self._body = status, body

    def raise_for_status(self):
        if self.status_code >= 400:
            from azure.core.exceptions import HttpResponseError

            exc = HttpResponseError(message=f"({self._body.get('code')}) {self._body.get('message')}")
            exc.status_code = self.status_code
            raise exc

    def json(self):
        return self._body


class RegistryDataPlane:
    """The registry's data plane as azure-ai-ml's hybrid client reaches it (`send_request`), with the service's rules:
    only `POST .../registries/{registry}/datarefs/{name}/versions/{version}?api-version=2021-10-01-dataplanepreview`
    with `{"assetId": "azureml://registries/{registry}/models/{name}/versions/{version}", "blobUri": <the model's
    path>}` is answered, with a container SAS URI that reads the model's files (blobReferenceForConsumption); an
    unknown model is 404; `refuse` answers 403 as for an identity the registry does not admit."""

    def __init__(self, cloud, sas_url):
        self.cloud, self.sas_url, self.refuse = cloud, sas_url, False
        self._config = type("Config", (), {"subscription_id": "reg-sub"})()

    def send_request(self, request):
        import re as _re
        from urllib.parse import parse_qs, urlparse

        self.cloud.calls.append(("datarefs", request.method, request.url))
        url = urlparse(request.url)
        match = _re.fullmatch(r"/subscriptions/reg-sub/resourceGroups/reg-rg/providers/Microsoft\.MachineLearning"
                              r"Services/registries/azureml/datarefs/([^/]+)/versions/([^/]+)", url.path)
        body = json.loads(request.content or b"{}")
        if request.method != "POST" or not match or parse_qs(url.query).get("api-version") != [REGISTRY_DATAPLANE_API]:
            return DataRefResponse(400, {"code": "BadRequest", "message": f"no such operation {request.url}"})
        if self.refuse:
            return DataRefResponse(403, {"code": "AuthorizationFailed", "message": "The client 'app' does not have "
                                         "authorization to perform action over registry azureml"})
        name, version = match.groups()
        model = self.cloud.registry.models.items.get((name, version))
        if model is None:
            return DataRefResponse(404, {"code": "NotFound", "message": f"model {name}:{version} not found"})
        expected = {"assetId": f"azureml://registries/azureml/models/{name}/versions/{version}", "blobUri": model.path}
        if body != expected:
            return DataRefResponse(400, {"code": "BadRequest", "message": f"body {body} is not {expected}"})
        return DataRefResponse(200, {"blobReferenceForConsumption": {
            "blobUri": model.path, "storageAccountArmId": None,
            "credential": {"credentialType": "SAS", "sasUri": self.sas_url}}})


@pytest.fixture
def registry_files(azurite, unique, tmp_path, monkeypatch):
    """The registry's storage on Azurite: Phi-3-mini's folder as azureml-assets lays it out (hftransformersv2: data/
    model, data/tokenizer, MLmodel), a read+list container SAS that expires in an hour, and the blob names the adapter
    downloads. The machine's temp folder (the tokenizer cache) is this test's."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.create_container(f"{unique}-registry")
    source = tmp_path / "tokenizer"
    source.mkdir()
    write_word_tokenizer(source)
    files = {
        "MLmodel": b"flavors:\n  hftransformersv2:\n    model_data: data\n",
        "data/model/model-00001-of-00002.safetensors": b"\0" * 4096,  # the weights: never read
        "data/config/config.json": b'{"max_position_embeddings": 4096}',
        "data/tokenizer/tokenizer.json": (source / "tokenizer.json").read_bytes(),
        "data/tokenizer/tokenizer_config.json": b'{"model_max_length": 4096, "chat_template": "..."}',
    }
    for name, data in files.items():
        container.upload_blob(f"{MODEL_FOLDER}/{name}", data)
    sas = generate_container_sas(service.account_name, container.container_name,
                                 account_key=service.credential.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    downloads = []
    real_download = type(container).download_blob

    def recording_download(self, blob, *args, **kwargs):
        downloads.append(getattr(blob, "name", blob))
        return real_download(self, blob, *args, **kwargs)

    monkeypatch.setattr(type(container), "download_blob", recording_download)
    yield type("RegistryFiles", (), {"sas_url": f"{container.url}?{sas}", "path": f"{container.url}/{MODEL_FOLDER}",
                                     "downloads": downloads, "container": container})()
    container.delete_container()


@pytest.fixture
def registry_cloud(registry_files):
    """The cloud stand-in whose registry model Phi-3-mini-4k-instruct has its files (and textContextWindow tag)."""
    from azure.ai.ml.entities import Model

    cloud = Cloud()
    tags = {**PHI3_MINI_TAGS, "textContextWindow": "4096"}
    cloud.registry.models.items[("Phi-3-mini-4k-instruct", "15")] = Model(
        name="Phi-3-mini-4k-instruct", version="15", tags=tags, path=registry_files.path, type="mlflow_model",
        id="azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15")
    cloud.registry.models._registry_service_client = RegistryDataPlane(cloud, registry_files.sas_url)
    cloud.registry.models._resource_group_name = "reg-rg"
    return cloud


def test_the_base_models_tokenizer_is_read_from_the_registry_without_its_weights(registry_cloud, registry_files):
    from shared.tokens import TokenizerCounter

    backend = checked_azure(AZ_SETTINGS(), registry_cloud)
    directory = Path(backend.base_model_tokenizer("Phi-3-mini-4k-instruct"))
    assert sorted(p.name for p in directory.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert sorted(registry_files.downloads) == [f"{MODEL_FOLDER}/data/tokenizer/tokenizer.json",
                                                f"{MODEL_FOLDER}/data/tokenizer/tokenizer_config.json"]
    assert TokenizerCounter(directory).count(["alpha beta gamma", "delta"]) == [3, 1]
    assert registry_cloud.count("datarefs") == 1
    # Asked again in this process: nothing is asked of Azure; in another process on this machine: the disk copy.
    assert backend.base_model_tokenizer("Phi-3-mini-4k-instruct") == str(directory)
    again = checked_azure(AZ_SETTINGS(), registry_cloud)
    assert again.base_model_tokenizer("Phi-3-mini-4k-instruct") == str(directory)
    assert registry_cloud.count("datarefs") == 1 and len(registry_files.downloads) == 2


def test_a_model_without_tokenizer_files_or_an_expired_sas_is_the_ports_error(registry_cloud, registry_files):
    backend = checked_azure(AZ_SETTINGS(), registry_cloud)
    for name in ("data/tokenizer/tokenizer.json", "data/tokenizer/tokenizer_config.json"):
        registry_files.container.delete_blob(f"{MODEL_FOLDER}/{name}")
    with pytest.raises(NotFound, match="holds no tokenizer.json"):
        backend.base_model_tokenizer("Phi-3-mini-4k-instruct")
    with pytest.raises(NotFound, match="Phi-9"):
        backend.base_model_tokenizer("Phi-9")
    # Azure Storage refuses a SAS past its expiry (403 AuthenticationFailed): a PermanentError, not a crash.
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    c = registry_files.container
    expired = generate_container_sas(c.account_name, c.container_name, account_key=c.credential.account_key,
                                     permission=ContainerSasPermissions(read=True, list=True),
                                     expiry=datetime.now(timezone.utc) - timedelta(minutes=5))
    registry_cloud.registry.models._registry_service_client.sas_url = f"{c.url}?{expired}"
    with pytest.raises(PermanentError, match="403") as refused:
        checked_azure(AZ_SETTINGS(), registry_cloud).base_model_tokenizer(
            "Phi-3-mini-4k-instruct")
    assert "sig=" not in str(refused.value) and expired.split("sig=")[1][:12] not in str(refused.value)
    registry_cloud.registry.models._registry_service_client.sas_url = "not a url?sig=s3cr3t"
    with pytest.raises(PermanentError) as refused:
        checked_azure(AZ_SETTINGS(), registry_cloud).base_model_tokenizer("Phi-3-mini-4k-instruct")
    assert "s3cr3t" not in str(refused.value)


def test_the_tokenizer_folder_is_picked_by_the_mlflow_layouts_and_its_size():
    from shared.ml.azureml import MAX_TOKENIZER_BYTES, artifact_prefix, tokenizer_blobs

    listed = [("mlflow_model_folder/data/tokenizer/tokenizer.json", 10),
              ("mlflow_model_folder/components/tokenizer/tokenizer.json", 10),
              ("mlflow_model_folder/components/tokenizer/tokenizer_config.json", 2),
              ("mlflow_model_folder/components/tokenizer/vocab.txt", 2),
              ("mlflow_model_folder/model/tokenizer.json", 10)]
    assert tokenizer_blobs(listed, "m") == {
        "tokenizer.json": "mlflow_model_folder/components/tokenizer/tokenizer.json",
        "tokenizer_config.json": "mlflow_model_folder/components/tokenizer/tokenizer_config.json"}
    assert tokenizer_blobs([("x/model/tokenizer.json", 1)], "m") == {"tokenizer.json": "x/model/tokenizer.json"}
    with pytest.raises(PermanentError, match="more than"):
        tokenizer_blobs([("data/tokenizer/tokenizer.json", MAX_TOKENIZER_BYTES + 1)], "m")
    with pytest.raises(NotFound):
        tokenizer_blobs([("data/model/model.safetensors", 10)], "m")
    assert artifact_prefix("https://acct.blob.core.windows.net/models/huggingface/phi-3/mlflow_model_folder",
                           "models") == "huggingface/phi-3/mlflow_model_folder"
    assert artifact_prefix("http://127.0.0.1:10000/devstoreaccount1/reg/a%20b/f", "reg") == "a b/f"
    with pytest.raises(PermanentError, match="not in the container"):
        artifact_prefix("https://acct.blob.core.windows.net/other/x", "models")


def registry_ingest(settings, cloud, name, lines, metadata=None):
    """An upload ingested by the app wired as in Azure (the Azure ML adapter over the cloud stand-in)."""
    from shared.ingestion import ingest_upload
    from shared.ml.azureml import AzureMLBackend

    settings = settings.replace(ml_backend="azureml", base_model="Phi-3-mini-4k-instruct", azure_subscription_id="sub",
                                azure_resource_group="rg", aml_workspace="ws")
    backend = AzureMLBackend(settings, credential=object(), ml_client=cloud.workspace, registry_client=cloud.registry)
    svc = bootstrap_for(settings, backend)
    blob = svc.blobs.blob(settings.training_container, name)
    blob.upload_blob(("\n".join(lines) + "\n").encode(), overwrite=True, metadata=metadata)
    run = ingest_upload(svc, blob.container_name, blob.blob_name, blob)
    return svc, run, svc.blobs.read_json(settings.runs_container, f"{run.run_id}/validation.json")


def bootstrap_for(settings, backend):
    from shared.bootstrap import bootstrap
    from shared.run_store import InMemoryRunStore
    from tests.fakes import RecordingSender

    return bootstrap(settings, ml=backend, messages=RecordingSender(), runs=InMemoryRunStore())


CHAT_LINES = [json.dumps({"messages": [{"role": "user", "content": "alpha " * (i + 1)},
                                       {"role": "assistant", "content": "beta gamma " * (i + 1)}]}) for i in range(30)]


def test_ingest_in_azure_counts_with_the_registry_models_tokenizer_and_its_max_length(settings, registry_cloud):
    svc, run, report = registry_ingest(settings, registry_cloud, "tok.jsonl", CHAT_LINES)
    tokens = report["tokens"]
    assert tokens["method"].startswith("tokenizer:") and "Phi-3-mini-4k-instruct" in tokens["method"]
    assert tokens["max_seq_length"] == 4096 and "tokenizer_config.json" in tokens["max_seq_length_source"]
    assert not tokens["note"]
    # Exact: user i+1 words, assistant 2(i+1) words, plus the chat format's 4 tokens per message.
    assert tokens["max"] == 3 * 30 + 8 and tokens["min"] == 3 + 8


def test_ingest_in_azure_says_estimate_and_why_when_the_registry_refuses_the_tokenizer(settings, registry_cloud):
    registry_cloud.registry.models._registry_service_client.refuse = True
    svc, run, report = registry_ingest(settings, registry_cloud, "refused.jsonl", CHAT_LINES)
    tokens = report["tokens"]
    assert tokens["method"].startswith("estimate")
    assert "403" in tokens["note"] and "datarefs" in tokens["note"] and "TOKENIZER_DIR" in tokens["note"]
    assert "sig=" not in json.dumps(report)
    # Without the tokenizer, truncation is still checked: against the model's stated context window.
    assert tokens["max_seq_length"] == 4096 and "textContextWindow" in tokens["max_seq_length_source"]
    assert run.state.value == "Queued", run.failure
    # The refusal is kept for the process: the next upload does not ask the registry again.
    calls = registry_cloud.count("datarefs")
    svc.model_hints()
    assert registry_cloud.count("datarefs") == calls == 1


def AZ_SETTINGS():  # noqa: N802 (reads as the constant it stands for)
    return Settings.from_env(env={}, ml_backend="azureml", azure_subscription_id="sub", azure_resource_group="rg",
                             aml_workspace="ws")
