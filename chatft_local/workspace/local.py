"""`LocalWorkspace`: the ML backend port on this machine, with no Azure account.

State lives under `<CHATFT_STATE_DIR>/workspace/`: `jobs/` (fine-tuning jobs, see `jobs.py`), `mlflow.db` (the
model registry), `endpoints/` (online endpoints; a deployment is a model server process on 127.0.0.1).

Local stand-ins for Azure things:
- Base model: there is one, LOCAL_BASE_MODEL or the small stand-in. It answers to the name BASE_MODEL gives (and to
  its own name), so the app's flow is the same; other names are NotFound. Names listed one per line in
  `<workspace>/archived-base-models`, a `chatft-archived` file in the model's folder, or a past
  `FinetuneRetirementDate` tag make it archived (refused as Azure refuses an archived model).
- Compute: this machine, named by AML_COMPUTE (or "local"); `local-cuda` with its CUDA devices, else `local-cpu`
  with one device (the pipeline's `number_of_gpu_to_use_finetuning` is at least 1).
- Events: jobs post Event Grid events to LOCAL_EVENTS_URL, else the URL the running local host published
  (`events_url_file`), else the local host's webhook on CHATFT_HOST_PORT with its function key.
- Metrics: none, so `requests_since` is None.

The port's input rules (names, versions, tags, traffic, completed jobs) are checked before each call by
`shared.ml.checked` (the app's composition root wraps every backend). The stores below still refuse a name that is
not safe as a folder name or inside an MLflow filter string: that guards this machine's files, not Azure's rules.
"""

from __future__ import annotations

import functools
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.ml import naming
from shared.ml.port import (JOB_DONE, BaseModel, Compute, Deployment, Endpoint, EvaluationRequest, JobRequest,
                            JobStatus, NotFound,
                            PermanentError, RegisteredModel, ScoringTarget, TransientError)
from shared.ml.training_params import (archive_reason, archived_model_error, finetune_parameters,
                                       resolve_inference_instance_type)

from .endpoints import EndpointStore
from .registry import ModelRegistry

if TYPE_CHECKING:
    from .supervisor import Supervisor

REGISTRY_NAME = "local"
LOCAL_COMPUTE = "local"
# What a deployment records as its instance type when INFERENCE_INSTANCE_TYPE is empty: it runs on this machine.
LOCAL_INSTANCE_TYPE = "local"
EVENTS_FUNCTION = "job_events"
ARCHIVED_LIST = "archived-base-models"
ARCHIVED_MARKER = "chatft-archived"
LOCAL_MODEL_TAG = "chatft-local-model"


def host_events_url(port: int, state_dir: Path) -> str:
    """The local host's Event Grid webhook for job events: its port and the function key kept in its state folder."""
    from chatft_local.hosting.http import EVENTGRID_PATH
    from chatft_local.hosting.keys import function_key

    return f"http://127.0.0.1:{port}{EVENTGRID_PATH}?functionName={EVENTS_FUNCTION}&code={function_key(state_dir)}"


@functools.lru_cache(maxsize=1)
def cuda_devices() -> int:
    """CUDA devices torch can use here; 0 without an NVIDIA driver (then torch is not even imported)."""
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidia0")):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class LocalWorkspace:
    """The local ML workspace (implements `shared.ml.port.MLBackend`). Every call returns promptly."""

    # Deployments are model servers on this machine: a base model without an inference allow-list needs no VM size
    # (`shared.ml.checked` reads this when INFERENCE_INSTANCE_TYPE is empty).
    instance_type_fallback = LOCAL_INSTANCE_TYPE

    def __init__(self, settings: Any, *, provision_seconds: float = 1.0, startup_timeout: float = 600.0):
        self.settings = settings
        self.state_dir = Path(settings.chatft_state_dir).resolve()
        self.root = self.state_dir / "workspace"
        self.registry = ModelRegistry(self.root)
        self.endpoints = EndpointStore(self.root / "endpoints", max_request_bytes=settings.max_request_bytes,
                                       provision_seconds=provision_seconds, startup_timeout=startup_timeout)

    # ------------------------------------------------------------------ events

    @property
    def events_url_file(self) -> Path:
        return self.root / "events-url"

    def publish_events_url(self, url: str) -> None:
        """Record where the running local host takes job events (owner-only: the URL holds its key)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.events_url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(url + "\n")

    def retract_events_url(self) -> None:
        self.events_url_file.unlink(missing_ok=True)

    def events_url(self) -> str:
        """Where job processes post their events (see the module docstring for the order)."""
        if self.settings.local_events_url:
            return self.settings.local_events_url
        try:
            published = self.events_url_file.read_text().strip()
        except FileNotFoundError:
            published = ""
        return published or host_events_url(self.settings.chatft_host_port, self.state_dir)

    # ------------------------------------------------------------------ base model and compute

    def data_hints(self) -> tuple[str, dict]:
        """(tokenizer directory or "", default training parameters) of the local base model, for token counts
        at ingestion (optional part of the backend: `shared.ingestion` asks for it when the backend has it)."""
        from .base_model import base_model_hints

        return base_model_hints(self.state_dir, self.settings.local_base_model)

    def base_model_tokenizer(self, name: str) -> str:
        """See the port: the local base model's own folder (LOCAL_BASE_MODEL's, or the stand-in's once built; the
        local workspace has one base model, whatever the name). Nothing is built here: NotFound says why."""
        from .base_model import TINY_NAME, base_model_hints

        own = Path(self.settings.local_base_model).expanduser().name if self.settings.local_base_model else TINY_NAME
        if name not in (self.settings.base_model, own):
            raise NotFound(f"base model {name} not found in the local workspace: it fine-tunes {own} under the name "
                           f"BASE_MODEL gives it ({self.settings.base_model})")
        directory, _ = base_model_hints(self.state_dir, self.settings.local_base_model)
        if directory:
            return directory
        if self.settings.local_base_model:
            raise NotFound(f"LOCAL_BASE_MODEL {self.settings.local_base_model} has no tokenizer.json")
        raise NotFound("the local stand-in base model is not built yet (the first local fine-tuning or `chatft demo` "
                       "builds it)")

    def archived_base_models(self) -> set[str]:
        """Names the local workspace treats as archived (one per line in `<workspace>/archived-base-models`)."""
        try:
            lines = (self.root / ARCHIVED_LIST).read_text().splitlines()
        except FileNotFoundError:
            return set()
        return {line.strip() for line in lines if line.strip() and not line.startswith("#")}

    def resolve_base_model(self, name: str) -> BaseModel:
        from .base_model import BaseModelError, ensure_base_model

        if name in self.archived_base_models():
            raise archived_model_error(name, REGISTRY_NAME, f"listed in {self.root / ARCHIVED_LIST}")
        try:
            info = ensure_base_model(self.state_dir, self.settings.local_base_model)
        except BaseModelError as e:
            raise PermanentError(str(e)) from None
        if name not in (self.settings.base_model, info.name):
            raise NotFound(f"base model {name} not found in the local workspace: it fine-tunes {info.name} (set by "
                           f"LOCAL_BASE_MODEL, else the stand-in) under the name BASE_MODEL gives it "
                           f"({self.settings.base_model}); set BASE_MODEL (or the upload's base_model) to that name")
        tags = {str(k): str(v) for k, v in (info.tags or {}).items()}
        path = Path(info.path)
        reason = (f"its folder has a {ARCHIVED_MARKER} file" if (path / ARCHIVED_MARKER).exists()
                  else archive_reason(None, tags, datetime.now(timezone.utc).date()))
        if reason:
            raise archived_model_error(name, REGISTRY_NAME, reason)
        return BaseModel(name=name, version=str(info.version), id=str(path), tags={**tags, LOCAL_MODEL_TAG: info.name})

    def check_compute(self, compute_name: str, base_model: BaseModel) -> Compute:
        # The notebook's VM-size allow-lists name Azure SKUs; this machine is the only compute, so they do not apply.
        if compute_name not in (self.settings.aml_compute, LOCAL_COMPUTE):
            raise NotFound(f"compute {compute_name} not found: locally the compute is this machine, named by "
                           f"AML_COMPUTE ({self.settings.aml_compute}) or {LOCAL_COMPUTE!r}")
        gpus = cuda_devices()
        return Compute(name=compute_name, vm_size="local-cuda" if gpus else "local-cpu", gpus_per_node=max(1, gpus))

    # ------------------------------------------------------------------ jobs

    def submit_job(self, request: JobRequest) -> str:
        from . import jobs

        name = request.job_name  # a folder name: `jobs.job_dir` refuses anything else
        if jobs.job_exists(self.state_dir, name):
            return name
        params = finetune_parameters(request.base_model.tags, request.params)
        inputs = jobs.job_dir(self.state_dir, name) / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        train = self._download(request.train_path, inputs / "train.jsonl")
        test = self._download(request.test_path, inputs / "test.jsonl") if request.test_path else None
        spec = {"job_name": name, "run_id": request.run_id, "experiment_name": request.experiment_name,
                "base_model": request.base_model.id, "base_model_name": request.base_model.name,
                "train_file": str(train), "test_file": str(test) if test else "", "params": params,
                "max_running": self.settings.local_max_jobs,
                "events_url": self.events_url(),
                # A job outlives its host: before each delivery it reads where the host now listens.
                "events_url_file": "" if self.settings.local_events_url else str(self.events_url_file)}
        return jobs.submit(self.state_dir, spec)

    def submit_evaluation(self, request: EvaluationRequest) -> str:
        """An evaluation job (`jobs.py`, kind evaluation) on the training job's model; its report goes to
        `report_path` in RUNS_CONTAINER."""
        from . import jobs

        name = request.job_name
        if jobs.job_exists(self.state_dir, name):
            return name
        champion = ""
        if request.champion is not None:  # a model line's version in service, from the registry (else NotFound)
            champion = str(self.registry.model_dir(request.champion))
        inputs = jobs.job_dir(self.state_dir, name) / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        test = self._download(request.test_path, inputs / "test.jsonl")
        spec = {"kind": jobs.EVALUATION, "job_name": name, "run_id": request.run_id,
                "experiment_name": request.experiment_name, "base_model": request.base_model.id,
                "tuned_model": str(jobs.model_dir(self.state_dir, request.training_job)), "test_file": str(test),
                "champion_model": champion,
                "champion": {"run_id": request.champion_run_id,
                             "model_id": request.champion.id if request.champion else ""},
                "limits": {"max_records": request.max_records, "samples": request.samples,
                           "max_new_tokens": request.max_new_tokens},
                "max_running": self.settings.local_max_jobs,  # the same slots as fine-tuning jobs
                # job.json is owner-only: the connection (Azurite's well-known key locally) stays private.
                "report": {"connection": self.settings.storage_connection,
                           "container": self.settings.runs_container, "blob": request.report_path},
                "events_url": self.events_url(),
                "events_url_file": "" if self.settings.local_events_url else str(self.events_url_file)}
        return jobs.submit(self.state_dir, spec)

    def _download(self, blob_path: str, target: Path) -> Path:
        """Copy a run file from RUNS_CONTAINER to `target` (streamed; replaced whole, never half-written)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError
        from azure.storage.blob import BlobClient

        container = self.settings.runs_container
        client = BlobClient.from_connection_string(self.settings.storage_connection, container, blob_path)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")  # concurrent submits never share it
        try:
            with open(partial, "wb") as f:
                for chunk in client.download_blob(max_concurrency=1).chunks():
                    f.write(chunk)
        except ResourceNotFoundError:
            partial.unlink(missing_ok=True)
            raise PermanentError(f"training file {blob_path} not found in container {container}") from None
        except AzureError as e:
            partial.unlink(missing_ok=True)
            raise TransientError(f"downloading {blob_path} from container {container} failed: "
                                 f"{type(e).__name__}") from None
        os.replace(partial, target)
        return target

    def get_job(self, job_name: str) -> JobStatus:
        from . import jobs

        if not naming.JOB.ok(job_name) or not jobs.job_exists(self.state_dir, job_name):  # a name is a folder
            raise NotFound(f"job {job_name} not found in the local workspace")
        try:
            status = jobs.read_status(self.state_dir, job_name)
        except jobs.JobNotFound:
            raise NotFound(f"job {job_name} not found in the local workspace") from None
        return JobStatus(name=job_name, status=status["status"], error=status.get("error") or "",
                         metrics=dict(status.get("metrics") or {}))

    def cancel_job(self, job_name: str) -> None:
        from . import jobs

        if self.get_job(job_name).status in JOB_DONE:
            return
        try:
            jobs.cancel(self.state_dir, job_name)
        except jobs.JobNotFound:
            raise NotFound(f"job {job_name} not found in the local workspace") from None

    # ------------------------------------------------------------------ models

    def register_model(self, job_name: str, name: str, version: str | None = None, description: str = "",
                       tags: dict[str, str] | None = None) -> RegisteredModel:
        from . import jobs

        existing = self.registry.find(name, version) if version else self.registry.find_job(name, job_name)
        if existing is not None:
            return existing
        return self.registry.register(job_name, jobs.model_dir(self.state_dir, job_name), name, version,
                                      description=description, tags=tags)

    # ------------------------------------------------------------------ endpoints and deployments

    def begin_create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> None:
        """Create the endpoint with exactly `tags` (an empty dict makes an endpoint the app does not own); a no-op when
        this caller made it, NameTaken when another did (`EndpointStore.create_endpoint`)."""
        self.endpoints.create_endpoint(name, tags, description)

    def get_endpoint(self, name: str) -> Endpoint | None:
        return self.endpoints.endpoint(name)

    def begin_create_deployment(self, endpoint_name: str, deployment_name: str, model: RegisteredModel,
                                instance_type: str, instance_count: int) -> None:
        if self.endpoints.deployment(endpoint_name, deployment_name) is not None:
            return
        instance_type = resolve_inference_instance_type(instance_type, None, fallback=LOCAL_INSTANCE_TYPE)
        self.endpoints.create_deployment(endpoint_name, deployment_name, model, self.registry.model_dir(model),
                                         instance_type, instance_count)

    def get_deployment(self, endpoint_name: str, deployment_name: str) -> Deployment | None:
        if self.endpoints.endpoint(endpoint_name) is None:
            return None
        return self.endpoints.deployment(endpoint_name, deployment_name)

    def list_deployments(self, endpoint_name: str) -> list[Deployment]:
        return self.endpoints.deployments(endpoint_name)

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int]) -> None:
        self.endpoints.set_traffic(endpoint_name, traffic)

    def set_mirror_traffic(self, endpoint_name: str, mirror: dict[str, int]) -> None:
        self.endpoints.set_traffic(endpoint_name, mirror, mirror=True)

    def begin_delete_deployment(self, endpoint_name: str, deployment_name: str) -> None:
        if self.endpoints.endpoint(endpoint_name) is None:
            return
        self.endpoints.delete_deployment(endpoint_name, deployment_name)

    def get_scoring_target(self, endpoint_name: str) -> ScoringTarget:
        return self.endpoints.scoring_target(endpoint_name)

    def list_endpoints(self) -> list[Endpoint]:
        return self.endpoints.endpoints()

    def begin_delete_endpoint(self, name: str) -> None:
        self.endpoints.delete_endpoint(name)

    def requests_since(self, endpoint_name: str, since_iso: str) -> int | None:
        return None

    # ------------------------------------------------------------------ supervision

    def supervisor(self, interval: float = 2.0) -> "Supervisor":
        """A supervisor (not started) keeping this workspace's model servers running."""
        from .supervisor import Supervisor

        return Supervisor(self.endpoints, interval=interval)

