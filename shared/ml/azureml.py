"""The Azure Machine Learning adapter of the ML backend port: the notebook's steps, one call at a time.

azure-ai-ml is imported inside the functions that use it (about 1.2 s and 110 MB): importing this module stays
cheap. Every call returns at once: long operations are begun (`begin_*`) and never waited on, and a job is never
streamed. Azure errors become the port's: not found -> NotFound; throttling, 5xx and network failures ->
TransientError; other 4xx and SDK validation errors -> PermanentError naming what failed. The port's input rules
(names, versions, tags, traffic, completed jobs) are checked before each call by `shared.ml.checked`, which
`shared.bootstrap` wraps around every backend; this adapter keeps only what needs Azure itself.

Archived base models: azure-ai-ml's `Model` entity drops the service's `isArchived` flag (`Model._from_rest_object`
does not read it), so the adapter reads what the entity does expose: `stage` ("Archived") and the azureml-assets
tag `FinetuneRetirementDate` (Phi-3-mini-4k-instruct: 2025-08-30). A model the registry hides once archived
surfaces as not found, and that message says so too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Iterator, Mapping

from ..config import Settings
from . import naming
from .port import (JOB_DONE, TAG_APP, TAG_JOB, TAG_RUN, BaseModel, Compute, Deployment, Endpoint, EvaluationRequest,
                   JobRequest, JobStatus, MLBackendError, NameTaken, NotFound, PermanentError, RegisteredModel, ScoringTarget,
                   TransientError)
from ..tokens import ModelHints
from .training_params import (InputSpec, archive_reason, archived_model_error, check_finetune_compute,
                              display_name, finetune_parameters, gpus_per_node, known_gpus_per_node,
                              resolve_inference_instance_type, unknown_gpus_error)

log = logging.getLogger(__name__)

# On the job and the registered model: the base model's registry id, so a deployment can be checked against the
# base model's `inference_compute_allow_list`.
TAG_BASE_MODEL = "chatft-base-model"
ENDPOINT_METRICS_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
_REGISTRY_MODEL_ID = re.compile(r"azureml://registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)"
                                r"/versions/(?P<version>[^/]+)")


# ------------------------------------------------------------------------------------ pure builders


def datastore_uri(datastore: str, path: str) -> str:
    """The `azureml://` URI of a file on a workspace datastore (AML_DATASTORE over RUNS_CONTAINER)."""
    return f"azureml://datastores/{datastore}/paths/{path.lstrip('/')}"


def training_data_uris(settings: Settings, train_path: str, test_path: str) -> tuple[str, str]:
    """Datastore URIs of a run's train and test files (paths inside RUNS_CONTAINER); an empty path stays empty."""
    return (datastore_uri(settings.aml_datastore, train_path) if train_path else "",
            datastore_uri(settings.aml_datastore, test_path) if test_path else "")


def component_inputs(component: Any) -> dict[str, InputSpec]:
    """The loaded component's inputs as `InputSpec`s: what parameters are typed and filtered against."""
    specs = {}
    for name, spec in component.inputs.items():
        enum = tuple(str(e) for e in (getattr(spec, "enum", None) or ()))
        specs[name] = InputSpec(str(spec.type), enum, getattr(spec, "min", None))
    return specs


def model_name_from_id(model_id: str) -> str:
    """The model name in a registry model id (`azureml://registries/<r>/models/<name>/versions/<v>`), else the id."""
    match = _REGISTRY_MODEL_ID.search(model_id)
    return match.group("name") if match else model_id


def build_pipeline_job(component: Any, *, model_id: str, model_tags: Mapping[str, Any] | None, compute: str,
                       gpus_per_node: int, train_path: str, test_path: str, params: Mapping[str, Any] | None,
                       job_name: str, experiment_name: str, model_name: str | None = None,
                       dataset: str = "ultrachat", tags: Mapping[str, str] | None = None) -> Any:
    """The notebook's pipeline job (steps 5-6), offline: `component` called with the base model, the four computes,
    the train/test files (full `azureml://` paths), the GPUs per node and the merged, typed parameters; output
    `trained_model`; force_rerun, no continue on step failure; named `job_name`."""
    from azure.ai.ml import Input
    from azure.ai.ml.dsl import pipeline

    values = finetune_parameters(model_tags, params, component_inputs(component))
    data = {"train_file_path": Input(type="uri_file", path=train_path)}
    if test_path:  # without a test file the pipeline's preprocess step splits the training data itself
        data["test_file_path"] = Input(type="uri_file", path=test_path)

    @pipeline()
    def create_pipeline():
        chat_completion_pipeline = component(
            mlflow_model_path=Input(type="mlflow_model", path=model_id),
            compute_model_import=compute,
            compute_preprocess=compute,
            compute_finetune=compute,
            compute_model_evaluation=compute,
            number_of_gpu_to_use_finetuning=gpus_per_node,
            **data,
            **values,
        )
        return {"trained_model": chat_completion_pipeline.outputs.mlflow_model_folder}

    job = create_pipeline()
    job.settings.force_rerun = True
    job.settings.continue_on_step_failure = False
    job.name = job_name
    job.display_name = display_name(model_name or model_name_from_id(model_id), values, gpus_per_node, dataset)
    job.experiment_name = experiment_name
    job.tags = dict(tags or {})
    return job


EVALUATION_OUTPUT = "evaluation"


def evaluation_code_dir(target: Path) -> Path:
    """A folder holding only the app's `evaluation` package (its .py files): the evaluation job's code snapshot,
    so the job runs exactly the code the local workspace runs, and nothing else of the app is uploaded."""
    source = Path(__file__).resolve().parents[2] / "evaluation"
    package = target / "evaluation"
    package.mkdir(parents=True, exist_ok=True)
    for module in sorted(source.glob("*.py")):
        shutil.copyfile(module, package / module.name)
    return target


def build_evaluation_job(request: EvaluationRequest, *, code: str | os.PathLike, environment: str, datastore: str,
                         tags: Mapping[str, str] | None = None) -> Any:
    """The evaluation as an Azure ML command job (azure-ai-ml `command()`), offline: `python -m evaluation` from
    `code` in the curated `environment`, on the run's compute; inputs the base model (its registry id, an
    `mlflow_model`), the tuned model (the fine-tuning job's `trained_model` output, the pipeline's
    `mlflow_model_folder`, as `register_model` takes it) and the run's test file on the runs datastore; output a
    `uri_folder` on that datastore at the run's folder, in `upload` mode (only what the job writes,
    `evaluation.json`, is uploaded there when it ends; the run's other files are left alone).

    Sources: Learn "Access data in a job" (azureml://datastores/<d>/paths/<p> outputs; modes rw_mount, upload),
    Learn "Train models with the Azure Machine Learning Python SDK v2" (`command(code=, command=, inputs=, outputs=,
    environment=, compute=)`), and the job output path form `azureml://jobs/<job>/outputs/<name>` used to register
    a pipeline's model (azureml-examples sdk/python/foundation-models, `Model(path=...)`)."""
    from azure.ai.ml import Input, Output, command

    folder = request.report_path.rsplit("/", 1)[0] if "/" in request.report_path else ""
    report_name = request.report_path.rsplit("/", 1)[-1]
    inputs = {
        "base_model": Input(type="mlflow_model", path=request.base_model.id),
        "tuned_model": Input(type="mlflow_model", path=f"azureml://jobs/{request.training_job}/outputs/trained_model"),
        "test_file": Input(type="uri_file", path=datastore_uri(datastore, request.test_path)),
    }
    champion_args = ""
    if request.champion is not None:
        # A model line's version in service, by its registered model in this workspace: `azureml:<name>:<version>`
        # (Learn "Register and work with models", how-to-manage-models: a registered model as a job's input).
        champion_id = registered_model_input(request.champion)
        inputs["champion_model"] = Input(type="mlflow_model", path=champion_id)
        champion_args = " --champion-model ${{inputs.champion_model}} --champion-model-id " + champion_id
        if request.champion_run_id:
            champion_args += " --champion-run-id " + request.champion_run_id
    return command(
        name=request.job_name,
        display_name=f"evaluate {request.run_id}"[:256],
        experiment_name=request.experiment_name,
        description=f"chatft: fine-tune of {request.base_model.name} (job {request.training_job}) against its base "
                    f"model on {request.test_path}",
        tags=dict(tags or {}),
        code=str(code),
        command=("python -m evaluation --base-model ${{inputs.base_model}} --tuned-model ${{inputs.tuned_model}} "
                 "--test-file ${{inputs.test_file}} --output ${{outputs.%s}}/%s --run-id %s "
                 "--max-records %d --samples %d --max-new-tokens %d")
                % (EVALUATION_OUTPUT, report_name, request.run_id, request.max_records, request.samples,
                   request.max_new_tokens) + champion_args,
        inputs=inputs,
        outputs={EVALUATION_OUTPUT: Output(type="uri_folder", path=datastore_uri(datastore, folder + "/"),
                                           mode="upload")},
        environment=environment,
        compute=request.compute,
    )


def registered_model_input(model: RegisteredModel) -> str:
    """A workspace's registered model as a job input path: `azureml:<name>:<version>`."""
    return f"azureml:{model.name}:{model.version}"


def build_endpoint(name: str, *, tags: Mapping[str, str], description: str = "") -> Any:
    """The notebook's endpoint (step 8): key auth, with the app's ownership tags."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=name, auth_mode="key", description=description, tags=dict(tags))


def build_deployment(endpoint_name: str, deployment_name: str, *, model_id: str, instance_type: str,
                     instance_count: int) -> Any:
    """The notebook's deployment (step 8): the registered model on `instance_type`, liveness probe after 600 s
    (MLflow chat models load slowly), 90 s request timeout."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    return ManagedOnlineDeployment(name=deployment_name, endpoint_name=endpoint_name, model=model_id,
                                   instance_type=instance_type, instance_count=instance_count,
                                   liveness_probe=ProbeSettings(initial_delay=600),
                                   request_settings=OnlineRequestSettings(request_timeout_ms=90000))


def base_model_from_entity(model: Any, registry: str, today: date | None = None) -> BaseModel:
    """The port's BaseModel from the registry's `Model`; an archived one is refused (PermanentError)."""
    tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
    reason = archive_reason(getattr(model, "stage", None), tags, today or datetime.now(timezone.utc).date())
    if reason:
        raise archived_model_error(model.name, registry, reason)
    return BaseModel(name=model.name, version=str(model.version), id=model.id, tags=tags)


def compute_from_entities(compute: Any, sizes: Iterable[Any], base_model_tags: Mapping[str, Any] | None,
                          gpus: int | None = None) -> Compute:
    """The notebook's compute checks (step 3) on the workspace's compute entity; the GPUs per node are `gpus`
    when known (the table or AML_COMPUTE_GPUS), else read from the VM size entities `sizes`."""
    vm_size = getattr(compute, "size", None)
    if not vm_size:
        raise PermanentError(f"compute {compute.name} has no VM size; fine-tuning needs a GPU compute cluster")
    check_finetune_compute(compute.name, vm_size, compute.provisioning_state, base_model_tags)
    if gpus is None:
        gpus = gpus_per_node(compute.name, vm_size, ((s.name, s.gpus) for s in sizes))
    return Compute(name=compute.name, vm_size=vm_size, gpus_per_node=gpus)


def job_error_summary(job: Any) -> str:
    """One line on why a job failed or was canceled: its error if the entity has one, else an error-looking
    property, else where to look in the studio."""
    error = getattr(job, "error", None)
    text = getattr(error, "message", None) or (error if isinstance(error, str) else "")
    if not text:
        for key, value in (getattr(job, "properties", None) or {}).items():
            if "error" in key.lower() and value:
                text = str(value)
                break
    if not text and getattr(job, "studio_url", None):
        text = f"see {job.studio_url}"
    return _one_line(text)


def requests_total(results: Iterable[Any]) -> int:
    """Sum of the `Total` aggregation over every series of Azure Monitor metrics query results."""
    return int(sum(point.total or 0 for result in results for metric in result.metrics
                   for series in metric.timeseries for point in series.data))


def endpoint_from_entity(endpoint: Any) -> Endpoint:
    return Endpoint(name=endpoint.name, provisioning_state=str(endpoint.provisioning_state or ""),
                    scoring_uri=endpoint.scoring_uri or "", tags=dict(endpoint.tags or {}),
                    traffic={k: int(v) for k, v in (endpoint.traffic or {}).items()},
                    mirror_traffic={k: int(v) for k, v in (getattr(endpoint, "mirror_traffic", None) or {}).items()})


def deployment_from_entity(endpoint_name: str, deployment: Any) -> Deployment:
    model = getattr(deployment, "model", None)
    return Deployment(endpoint_name=endpoint_name, name=deployment.name,
                      provisioning_state=str(deployment.provisioning_state or ""),
                      model_id=model if isinstance(model, str) else str(getattr(model, "id", "") or ""))


def with_traffic(endpoint: Any, *, traffic: Mapping[str, int] | None = None,
                 mirror: Mapping[str, int] | None = None) -> Any:
    """The `ManagedOnlineEndpoint` with its live or mirrored traffic replaced, as the Learn safe rollout walkthrough
    sets them (`endpoint.traffic = {"blue": 90, "green": 10}`, `endpoint.mirror_traffic = {"green": 10}`, then
    `online_endpoints.begin_create_or_update(endpoint)`). The other map is kept as the service has it."""
    if traffic is not None:
        endpoint.traffic = dict(traffic)
    if mirror is not None:
        endpoint.mirror_traffic = {k: v for k, v in mirror.items() if v}
    return endpoint


# The tokenizer inside a registry model's files. A registry model's `path` is the blob URI of its folder; the catalog's
# models hold an MLflow model there: `mlflow_model_folder/components/tokenizer/` for MLflow's transformers flavor
# (mlflow/transformers/model_io.py: _COMPONENTS_BINARY_DIR_NAME = "components"), `mlflow_model_folder/data/tokenizer/`
# for azureml's hftransformersv2 flavor (azureml-assets models/system/phi-3-mini-4k-instruct/MLmodel: `model_data:
# data`); the serving image looks in both (azureml-assets foundation-model-inference/context/score.py,
# DEFAULT_TOKENIZER_PATH and DEPRECATED_MLFLOW_TOKENIZER_PATH).
TOKENIZER_DIRS = ("components/tokenizer", "data/tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# More than any tokenizer's files (Phi-3's tokenizer.json: 1.9 MB; large-vocabulary ones about 35 MB): a folder
# over it is not a tokenizer, and the app never reads a model's weights by mistake.
MAX_TOKENIZER_BYTES = 64 << 20
# Registry tag stating the model's context length (azureml-assets spec.yaml tags; Phi-3-mini-4k-instruct: 4096).
CONTEXT_WINDOW_TAG = "textContextWindow"


def artifact_prefix(model_path: str, container_name: str) -> str:
    """The blob name prefix of a registry model's folder: its `path` (a blob URI, `https://<account>.blob.core.
    windows.net/<container>/<folder>`, or an emulator's `http://host/<account>/<container>/<folder>`) after the
    container the data reference grants. PermanentError when the path is not in that container."""
    from urllib.parse import unquote, urlparse

    path = unquote(urlparse(model_path).path)
    marker = f"/{container_name}/"
    at = path.find(marker)
    if at < 0:
        if path.rstrip("/").endswith(f"/{container_name}"):
            return ""
        raise PermanentError(f"the model's path {model_path} is not in the container {container_name} the registry "
                             f"granted")
    return path[at + len(marker):].strip("/")


def tokenizer_blobs(blobs: Iterable[tuple[str, int | None]], what: str) -> dict[str, str]:
    """The tokenizer's files among a model's blobs (`(name, size)`): file name -> blob name, from the folder holding a
    `tokenizer.json`, preferring TOKENIZER_DIRS, then the shallowest. NotFound when none holds one; PermanentError
    when the files exceed MAX_TOKENIZER_BYTES."""
    listed = {name: size or 0 for name, size in blobs}
    folders = {name.rsplit("/", 1)[0] if "/" in name else "" for name in listed
               if name.rsplit("/", 1)[-1] == "tokenizer.json"}
    if not folders:
        raise NotFound(f"{what} holds no tokenizer.json (looked in every folder, {' and '.join(TOKENIZER_DIRS)} "
                       f"first)")

    def rank(folder: str) -> tuple[int, int, str]:
        preferred = next((i for i, d in enumerate(TOKENIZER_DIRS) if folder == d or folder.endswith("/" + d)),
                         len(TOKENIZER_DIRS))
        return preferred, folder.count("/"), folder

    folder = min(folders, key=rank)
    chosen = {f: f"{folder}/{f}" if folder else f for f in TOKENIZER_FILES if (f"{folder}/{f}" if folder else f)
              in listed}
    total = sum(listed[b] for b in chosen.values())
    if total > MAX_TOKENIZER_BYTES:
        raise PermanentError(f"{what}: the tokenizer files in {folder} are {total} bytes, more than the "
                             f"{MAX_TOKENIZER_BYTES} a tokenizer takes")
    return chosen


def tokenizer_cache_dir(registry: str, name: str, version: str) -> Path:
    """Where a registry model version's tokenizer files are kept on this machine (its temp folder: Azure Functions
    gives each instance one; the files are a few MB and never change for a version)."""
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in (registry, name, version)]
    return Path(tempfile.gettempdir(), "chatft-tokenizers", *safe)


def fetch_tokenizer(container_url: str, model_path: str, target: Path, what: str) -> Path:
    """Read only the tokenizer's files of the model folder at `model_path` from the container `container_url` (a
    container URL with its SAS: azure-storage-blob `ContainerClient.from_container_url`, as azure-ai-ml's
    `_artifacts/_blob_storage_helper.py` does for `models.download`) into `target`, written whole or not at all."""
    from azure.storage.blob import ContainerClient

    try:
        container = ContainerClient.from_container_url(container_url)
    except ValueError:  # the URL holds the SAS: never in a message
        raise PermanentError(f"{what}: the registry answered a storage URL that is not a container's") from None
    prefix = artifact_prefix(model_path, container.container_name)
    with azure_call(f"listing the files of {what}", not_found=f"{what}: its files are gone from the registry"):
        listed = [(b.name, b.size) for b in container.list_blobs(name_starts_with=f"{prefix}/" if prefix else None)]
    chosen = tokenizer_blobs([(n[len(prefix):].lstrip("/"), size) for n, size in listed], what)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fetching-", dir=target.parent))
    try:
        for file_name, blob_name in chosen.items():
            full = f"{prefix}/{blob_name}" if prefix else blob_name
            with azure_call(f"reading {blob_name} of {what}"):
                data = container.download_blob(full).readall()
            (scratch / file_name).write_bytes(data)
        try:
            os.replace(scratch, target)  # whole or not at all; another worker's copy is as good
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------- error mapping


def _one_line(text: Any, limit: int = 300) -> str:
    first = str(text or "").strip().splitlines()
    return first[0][:limit] if first else ""


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


class Conflict(PermanentError):
    """Azure answered 409: what was being created exists already (another attempt made it)."""


def translate(exc: BaseException, what: str, not_found: str | None = None) -> Exception:
    """The port's error for an exception an Azure call raised; other exceptions are returned unchanged."""
    from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError,
                                       ResourceExistsError, ResourceNotFoundError, ServiceRequestError,
                                       ServiceResponseError)

    from ..retry import is_transient_status

    detail = _one_line(getattr(exc, "message", None) or exc)
    status = _status(exc)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFound(not_found or f"{what}: not found")
    if isinstance(exc, ResourceExistsError) or status == 409:
        return Conflict(f"{what}: it exists already ({detail})")
    if type(exc).__name__ == "AssetPathException" and type(exc).__module__.startswith("azure.ai.ml"):
        # A PUT of a model version another registration took, with another path: the service answers "(UserError)
        # Asset paths cannot be updated." and azure-ai-ml 1.35.2 raises AssetPathException for it
        # (operations/_model_operations.py:292, create_or_update). That version exists already: a conflict.
        return Conflict(f"{what}: it exists already with another path ({detail})")
    if isinstance(exc, ClientAuthenticationError):
        return PermanentError(f"{what}: Azure refused the app's credentials ({detail}); check the identity and its "
                              f"role assignments on the workspace and registry")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"{what}: network error ({detail})")
    if isinstance(exc, HttpResponseError):
        if status is None or is_transient_status(status):  # the one list: shared/retry.py
            return TransientError(f"{what}: Azure answered {status or 'no status'} ({detail})")
        return PermanentError(f"{what}: Azure answered {status} ({detail})")
    if type(exc).__module__.startswith("azure.ai.ml"):  # SDK validation: bad input that retrying cannot fix
        return PermanentError(f"{what}: {detail}")
    if isinstance(exc, AzureError):
        return TransientError(f"{what}: {detail}")
    return exc


@contextlib.contextmanager
def azure_call(what: str, not_found: str | None = None) -> Iterator[None]:
    """Run Azure calls, raising the port's errors (`what` names the call in the message)."""
    try:
        yield
    except MLBackendError:
        raise
    except Exception as exc:
        mapped = translate(exc, what, not_found)
        if mapped is exc:
            raise
        raise mapped from exc


# ------------------------------------------------------------------------------------------ adapter


class AzureMLBackend:
    """`MLBackend` over an Azure ML workspace and registry. Clients are created on first use and reused."""

    def __init__(self, settings: Settings, credential: Any = None, ml_client: Any = None,
                 registry_client: Any = None):
        self.settings = settings
        self._credential = credential
        self._workspace = ml_client
        self._registry = registry_client
        self._component: Any = None
        self._hints: ModelHints | None = None
        self._latest: dict[str, Any] = {}  # base model name -> the registry's latest version entity
        self._tokenizers: dict[str, str] = {}  # base model name -> its tokenizer's directory
        self._lock = threading.Lock()

    # --- clients

    @property
    def credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                from ..identity import default_credential

                self._credential = default_credential()
            return self._credential

    @property
    def workspace(self) -> Any:
        if self._workspace is None:
            credential = self.credential
            with self._lock, azure_call(f"connecting to workspace {self.settings.aml_workspace}"):
                if self._workspace is None:
                    from azure.ai.ml import MLClient

                    s = self.settings
                    self._workspace = MLClient(credential, subscription_id=s.azure_subscription_id,
                                               resource_group_name=s.azure_resource_group,
                                               workspace_name=s.aml_workspace)
        return self._workspace

    @property
    def registry(self) -> Any:
        if self._registry is None:
            credential = self.credential
            with self._lock, azure_call(f"connecting to registry {self.settings.aml_registry}"):
                if self._registry is None:
                    from azure.ai.ml import MLClient

                    self._registry = MLClient(credential, registry_name=self.settings.aml_registry)
        return self._registry

    def pipeline_component(self) -> Any:
        """The registry's fine-tuning pipeline component at AML_PIPELINE_COMPONENT_VERSION (fetched once per
        worker): pinned, so a new registry version cannot change what a run does under it."""
        if self._component is None:
            s = self.settings
            name, version, registry = s.aml_pipeline_component, s.aml_pipeline_component_version, s.aml_registry
            with azure_call(f"getting pipeline component {name} version {version}",
                            not_found=f"pipeline component {name} version {version} not found in registry "
                                      f"{registry}; check AML_PIPELINE_COMPONENT and AML_PIPELINE_COMPONENT_VERSION"):
                self._component = self.registry.components.get(name=name, version=version)
        return self._component

    def latest_pipeline_component_version(self) -> str:
        """The version the registry labels latest (for `chatft doctor --azure`: is a newer one offered?)."""
        name = self.settings.aml_pipeline_component
        with azure_call(f"getting pipeline component {name} (label latest)"):
            return str(self.registry.components.get(name=name, label="latest").version)

    # --- base model and compute

    def resolve_base_model(self, name: str) -> BaseModel:
        registry = self.settings.aml_registry
        with azure_call(f"getting base model {name}",
                        not_found=f"base model {name} not found in registry {registry} (misspelled, or archived "
                                  f"there); set BASE_MODEL (or the upload's base_model) to another model"):
            model = self.registry.models.get(name, label="latest")
        return base_model_from_entity(model, registry)

    def _latest_model(self, name: str) -> Any:
        """The registry's entity of the base model's latest version, asked once per process (token counts only)."""
        if name not in self._latest:
            with azure_call(f"getting base model {name}",
                            not_found=f"base model {name} not found in registry {self.settings.aml_registry}"):
                self._latest[name] = self.registry.models.get(name, label="latest")
        return self._latest[name]

    def data_hints(self) -> ModelHints:
        """The base model's `model_specific_defaults` and stated context window, for token counts at ingestion (one
        registry call per process). Its tokenizer is `base_model_tokenizer`'s, which `shared.model_hints` asks."""
        if self._hints is None:
            from .training_params import MODEL_DEFAULTS_TAG, tag_literal

            tags = dict(self._latest_model(self.settings.base_model).tags or {})
            defaults = tag_literal(tags, MODEL_DEFAULTS_TAG)
            window = str(tags.get(CONTEXT_WINDOW_TAG, "")).strip()
            self._hints = ModelHints("", defaults if isinstance(defaults, dict) else {}, "",
                                     int(window) if window.isdigit() else None)
        return self._hints

    def base_model_tokenizer(self, name: str) -> str:
        """See the port. Only the tokenizer's files are read, never the weights: the registry grants read access to
        the model's folder through a data reference, the request azure-ai-ml's `models.download` makes
        (`_utils/_registry_utils.get_storage_details_for_registry_assets`: POST .../registries/{registry}/datarefs/
        {name}/versions/{version}, api-version 2021-10-01-dataplanepreview, answered with a container SAS URI), and
        the files are read with that SAS. Kept per version in the machine's temp folder, and per process here."""
        if name in self._tokenizers:
            return self._tokenizers[name]
        model = self._latest_model(name)
        registry, version = self.settings.aml_registry, str(model.version)
        what = f"base model {name} version {version} of registry {registry}"
        target = tokenizer_cache_dir(registry, name, version)
        if not (target / "tokenizer.json").is_file():
            fetch_tokenizer(self._model_files_url(model, registry), str(model.path or ""), target, what)
        self._tokenizers[name] = str(target)
        return self._tokenizers[name]

    def _model_files_url(self, model: Any, registry: str) -> str:
        """A container URL with a SAS that reads the registry model's files (the data reference's
        `blobReferenceForConsumption.credential.sasUri`)."""
        from azure.ai.ml._utils._registry_utils import get_storage_details_for_registry_assets

        what = f"model {model.name} version {model.version}"
        # The registry's data-plane client and resource group, as ModelOperations.download hands them on
        # (azure-ai-ml 1.35.2 operations/_model_operations.py, download): no public call reads them.
        ops = self.registry.models
        client, group = getattr(ops, "_registry_service_client", None), getattr(ops, "_resource_group_name", None)
        if client is None or not group or not model.path:
            raise PermanentError(f"reading the files of {what}: this azure-ai-ml offers no registry data reference")
        with azure_call(f"asking registry {registry} for read access to the files of {what} (datarefs)",
                        not_found=f"registry {registry} has no files for {what}"):
            url, _kind = get_storage_details_for_registry_assets(
                service_client=client, asset_type="models", asset_name=model.name, asset_version=str(model.version),
                rg_name=group, reg_name=registry, uri=model.path)
        return url

    def check_compute(self, compute_name: str, base_model: BaseModel) -> Compute:
        ws = self.workspace
        with azure_call(f"getting compute {compute_name}",
                        not_found=f"compute {compute_name} not found in workspace {self.settings.aml_workspace}; "
                                  f"create a GPU cluster of that name or set AML_COMPUTE"):
            compute = ws.compute.get(compute_name)
        vm_size = getattr(compute, "size", None) or ""
        gpus = known_gpus_per_node(vm_size, self.settings.aml_compute_gpus)
        sizes: list[Any] = []
        if gpus is None and vm_size:  # a size outside the table: ask Azure, which needs a subscription-scope read
            try:
                with azure_call("listing the VM sizes of the workspace's region"):
                    sizes = list(ws.compute.list_sizes())
            except PermanentError as exc:
                if _status(exc.__cause__) != 403:
                    raise
                raise unknown_gpus_error(compute_name, vm_size, "it is not in the app's table and listing VM sizes "
                                         "needs Microsoft.MachineLearningServices/locations/vmsizes/read at the "
                                         "subscription, which the app's identity does not hold") from exc
        return compute_from_entities(compute, sizes, base_model.tags, gpus=gpus)

    # --- jobs

    def submit_job(self, request: JobRequest) -> str:
        # Names and the deployment's instance type were checked by `shared.ml.checked` before this call.
        existing = self._find_job(request.job_name)
        if existing is not None:  # a resubmission (after a crash or a redelivery) finds the job it made
            return existing.name
        train_uri, test_uri = training_data_uris(self.settings, request.train_path, request.test_path)
        job = build_pipeline_job(
            self.pipeline_component(), model_id=request.base_model.id, model_tags=request.base_model.tags,
            compute=request.compute.name, gpus_per_node=request.compute.gpus_per_node, train_path=train_uri,
            test_path=test_uri, params=request.params, job_name=request.job_name,
            experiment_name=request.experiment_name, model_name=request.base_model.name,
            dataset=request.run_id.rsplit("-", 1)[0] or "upload",
            tags={TAG_APP: self.settings.app_id, TAG_RUN: request.run_id, TAG_BASE_MODEL: request.base_model.id})
        try:
            with azure_call(f"submitting job {request.job_name}"):
                created = self.workspace.jobs.create_or_update(job, experiment_name=request.experiment_name)
        except Conflict:
            return self.get_job(request.job_name).name  # another submission won the race
        return created.name

    def submit_evaluation(self, request: EvaluationRequest) -> str:
        existing = self._find_job(request.job_name)
        if existing is not None:
            return existing.name
        tags = {TAG_APP: self.settings.app_id, TAG_RUN: request.run_id, TAG_BASE_MODEL: request.base_model.id}
        with tempfile.TemporaryDirectory(prefix="chatft-evaluation-") as scratch:
            job = build_evaluation_job(request, code=evaluation_code_dir(Path(scratch)),
                                       environment=self.settings.aml_evaluation_environment,
                                       datastore=self.settings.aml_datastore, tags=tags)
            try:
                # The code snapshot is uploaded by this call, so the folder lives until it returns.
                with azure_call(f"submitting evaluation job {request.job_name}"):
                    created = self.workspace.jobs.create_or_update(job, experiment_name=request.experiment_name)
            except Conflict:
                return self.get_job(request.job_name).name
        return created.name

    def _find_job(self, job_name: str) -> Any | None:
        try:
            with azure_call(f"getting job {job_name}"):
                return self.workspace.jobs.get(job_name)
        except NotFound:
            return None

    def get_job(self, job_name: str) -> JobStatus:
        job = self._find_job(job_name)
        if job is None:
            raise NotFound(f"job {job_name} not found in workspace {self.settings.aml_workspace}")
        status = job.status or "NotStarted"
        error = job_error_summary(job) if status in ("Failed", "Canceled") else ""
        return JobStatus(name=job.name, status=status, error=error)

    def cancel_job(self, job_name: str) -> None:
        if self.get_job(job_name).status in JOB_DONE:
            return
        with azure_call(f"canceling job {job_name}"):
            self.workspace.jobs.begin_cancel(job_name)  # not waited on

    # --- models

    def register_model(self, job_name: str, name: str, version: str | None = None, description: str = "",
                       tags: dict[str, str] | None = None) -> RegisteredModel:
        """See the port. Without `version`, the job's own version is looked up by the model's `chatft-job` tag and
        otherwise the next integer after the name's versions (archived ones included) is registered. Why not a
        version derived from the run (a hash, or the notebook's timestamp): two runs' models may share a name (one
        dataset, uploaded twice), and a derived number can collide or outgrow what the service takes, while the
        tag lookup finds a redelivered registration's version whatever number it got. Two registrations racing for
        the same number meet Azure's 409 on the second: it then finds the first one's version by the tag (same
        job) or takes the next number (another job). Input and the job's completion: `shared.ml.checked`."""
        if version is not None:
            existing = self._find_model(name, version)
            if existing is not None:
                return existing
        else:
            existing, _ = self._model_of_job(name, job_name)
            if existing is not None:
                return existing
        job = self._find_job(job_name)  # its tags name the base model
        if job is None:
            raise NotFound(f"job {job_name} not found; there is no trained model to register")
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        model_tags = {**(tags or {}), TAG_JOB: job_name}
        if (job.tags or {}).get(TAG_BASE_MODEL):
            model_tags[TAG_BASE_MODEL] = job.tags[TAG_BASE_MODEL]
        for _attempt in range(3):
            number = version or naming.next_model_version(self._model_of_job(name, job_name)[1])
            model = Model(path=f"azureml://jobs/{job_name}/outputs/trained_model", type=AssetTypes.MLFLOW_MODEL,
                          name=name, version=number, description=description, tags=model_tags)
            try:
                with azure_call(f"registering model {name} version {number}"):
                    created = self.workspace.models.create_or_update(model)
            except Conflict:  # registered meanwhile by another attempt (this job's, or another's under that number)
                registered = self._find_model(name, number) if version else self._model_of_job(name, job_name)[0]
                if registered is not None:
                    return registered
                if version:
                    raise
                continue
            return RegisteredModel(name=created.name, version=str(created.version), id=created.id)
        raise TransientError(f"registering model {name}: its next version kept being taken by other registrations")

    def _model_of_job(self, name: str, job_name: str) -> tuple[RegisteredModel | None, list[str]]:
        """The version of model `name` registered from `job_name` (its `chatft-job` tag), and every version of the
        name (archived ones too, since they keep their numbers)."""
        from azure.ai.ml.constants import ListViewType

        try:
            with azure_call(f"listing the versions of model {name}"):
                listed = list(self.workspace.models.list(name=name, list_view_type=ListViewType.ALL))
        except NotFound:
            return None, []
        ours = [m for m in listed if (m.tags or {}).get(TAG_JOB) == job_name]
        first = min(ours, key=lambda m: int(m.version) if str(m.version).isdigit() else 0, default=None)
        found = RegisteredModel(name=first.name, version=str(first.version), id=first.id) if first else None
        return found, [str(m.version) for m in listed]

    def _find_model(self, name: str, version: str) -> RegisteredModel | None:
        try:
            with azure_call(f"getting model {name} version {version}"):
                model = self.workspace.models.get(name=name, version=version)
        except NotFound:
            return None
        return RegisteredModel(name=model.name, version=str(model.version), id=model.id)

    def _base_model_tags(self, model: RegisteredModel) -> dict[str, str] | None:
        """The tags of the base model `model` was fine-tuned from, or None where that cannot be told."""
        with azure_call(f"getting model {model.name} version {model.version}",
                        not_found=f"model {model.name} version {model.version} not found in workspace "
                                  f"{self.settings.aml_workspace}"):
            registered = self.workspace.models.get(name=model.name, version=model.version)
        match = _REGISTRY_MODEL_ID.fullmatch((registered.tags or {}).get(TAG_BASE_MODEL, ""))
        if not match or match.group("registry") != self.settings.aml_registry:
            return None
        try:
            with azure_call(f"getting base model {match.group('name')}"):
                base = self.registry.models.get(match.group("name"), version=match.group("version"))
        except NotFound:
            log.warning("base model %s of %s is gone from the registry; instance type not checked",
                        match.group("name"), model.name)
            return None
        return dict(base.tags or {})

    # --- endpoints and deployments

    def begin_create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> None:
        tags = {TAG_APP: self.settings.app_id, **tags}
        existing = self.get_endpoint(name)
        if existing is not None:
            # create_or_update would update the existing endpoint and re-tag it: only the run that made it may repeat
            # the call, anyone else would take over another run's endpoint.
            if naming.same_owner(existing.tags, tags):
                return
            raise NameTaken(f"endpoint name {name} is taken by another endpoint of workspace "
                            f"{self.settings.aml_workspace} (run {existing.tags.get(TAG_RUN) or 'none'})")
        endpoint = build_endpoint(name, tags=tags, description=description)
        try:
            with azure_call(f"creating endpoint {name}"):
                self.workspace.online_endpoints.begin_create_or_update(endpoint)  # not waited on
        except PermanentError as exc:
            # Names are unique per region: the service answers "There is already an endpoint with this name,
            # Endpoint name needs to be unique within a region" (azureml-examples PR 1931).
            if isinstance(exc, Conflict) or "unique within a region" in f"{exc} {exc.__cause__}":
                raise NameTaken(f"endpoint name {name} is taken elsewhere in the region: {exc}") from exc
            raise

    def get_endpoint(self, name: str) -> Endpoint | None:
        try:
            with azure_call(f"getting endpoint {name}"):
                return endpoint_from_entity(self.workspace.online_endpoints.get(name))
        except NotFound:
            return None

    def begin_create_deployment(self, endpoint_name: str, deployment_name: str, model: RegisteredModel,
                                instance_type: str, instance_count: int) -> None:
        # That the endpoint has Succeeded and has no such deployment yet was asked by `shared.ml.checked`.
        instance_type = resolve_inference_instance_type(instance_type, self._base_model_tags(model))
        deployment = build_deployment(endpoint_name, deployment_name, model_id=model.id or
                                      f"azureml:{model.name}:{model.version}", instance_type=instance_type,
                                      instance_count=instance_count)
        with azure_call(f"creating deployment {deployment_name} on endpoint {endpoint_name}",
                        not_found=f"endpoint {endpoint_name} not found"):
            self.workspace.online_deployments.begin_create_or_update(deployment)  # not waited on

    def get_deployment(self, endpoint_name: str, deployment_name: str) -> Deployment | None:
        try:
            with azure_call(f"getting deployment {deployment_name} of endpoint {endpoint_name}"):
                found = self.workspace.online_deployments.get(name=deployment_name, endpoint_name=endpoint_name)
        except NotFound:
            return None
        return deployment_from_entity(endpoint_name, found)

    def list_deployments(self, endpoint_name: str) -> list[Deployment]:
        with azure_call(f"listing the deployments of endpoint {endpoint_name}",
                        not_found=f"endpoint {endpoint_name} not found"):
            found = list(self.workspace.online_deployments.list(endpoint_name=endpoint_name))
        return [deployment_from_entity(endpoint_name, d) for d in found]

    def _endpoint_entity(self, endpoint_name: str) -> Any:
        with azure_call(f"getting endpoint {endpoint_name}", not_found=f"endpoint {endpoint_name} not found"):
            return self.workspace.online_endpoints.get(endpoint_name)

    # The service checks traffic only once the update runs, asynchronously: `shared.ml.checked` refuses bad shares
    # before these calls, with the service's rules (`naming.check_traffic`, `naming.check_mirror_traffic`).
    def set_traffic(self, endpoint_name: str, traffic: dict[str, int]) -> None:
        endpoint = self._endpoint_entity(endpoint_name)
        with azure_call(f"setting traffic of endpoint {endpoint_name}"):
            self.workspace.online_endpoints.begin_create_or_update(with_traffic(endpoint, traffic=traffic))

    def set_mirror_traffic(self, endpoint_name: str, mirror: dict[str, int]) -> None:
        endpoint = self._endpoint_entity(endpoint_name)
        with azure_call(f"setting mirrored traffic of endpoint {endpoint_name}"):
            self.workspace.online_endpoints.begin_create_or_update(with_traffic(endpoint, mirror=mirror))

    def begin_delete_deployment(self, endpoint_name: str, deployment_name: str) -> None:
        # A deployment that still takes traffic is refused by `shared.ml.checked`.
        try:
            with azure_call(f"deleting deployment {deployment_name} of endpoint {endpoint_name}"):
                self.workspace.online_deployments.begin_delete(name=deployment_name,
                                                               endpoint_name=endpoint_name)  # not waited on
        except NotFound:
            pass

    def get_scoring_target(self, endpoint_name: str) -> ScoringTarget:
        not_found = f"endpoint {endpoint_name} not found"
        with azure_call(f"getting endpoint {endpoint_name}", not_found=not_found):
            endpoint = self.workspace.online_endpoints.get(endpoint_name)
        with azure_call(f"getting the keys of endpoint {endpoint_name}", not_found=not_found):
            keys = self.workspace.online_endpoints.get_keys(endpoint_name)
        key = getattr(keys, "primary_key", None)
        if not key:
            raise PermanentError(f"endpoint {endpoint_name} does not use key authentication")
        traffic = endpoint.traffic or {}
        return ScoringTarget(endpoint_name=endpoint_name, scoring_uri=endpoint.scoring_uri or "", key=key,
                             deployment_name=max(traffic, key=traffic.get) if traffic else "")

    def list_endpoints(self) -> list[Endpoint]:
        with azure_call("listing endpoints"):
            return [endpoint_from_entity(e) for e in self.workspace.online_endpoints.list()]

    def begin_delete_endpoint(self, name: str) -> None:
        try:
            with azure_call(f"deleting endpoint {name}"):
                self.workspace.online_endpoints.begin_delete(name=name)  # not waited on
        except NotFound:
            pass

    def requests_since(self, endpoint_name: str, since_iso: str) -> int | None:
        """Total `RequestsPerMinute` over the window from Azure Monitor, when CLEANUP_CHECK_METRICS is on."""
        if not self.settings.cleanup_check_metrics:
            return None
        try:
            with azure_call(f"getting endpoint {endpoint_name}"):
                endpoint = self.workspace.online_endpoints.get(endpoint_name)
        except NotFound:
            return None
        from azure.monitor.querymetrics import MetricAggregationType, MetricsClient

        since = datetime.fromisoformat(since_iso.replace("Z", "+00:00"))
        client = MetricsClient(f"https://{endpoint.location}.metrics.monitor.azure.com", self.credential)
        with azure_call(f"reading the request metrics of endpoint {endpoint_name}"):
            results = client.query_resources(
                resource_ids=[endpoint.id], metric_namespace=ENDPOINT_METRICS_NAMESPACE,
                metric_names=["RequestsPerMinute"], timespan=(since, datetime.now(timezone.utc)),
                granularity=timedelta(hours=1), aggregations=[MetricAggregationType.TOTAL])
        return requests_total(results)
