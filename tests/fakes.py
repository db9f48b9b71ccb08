"""An in-memory ML backend for service tests: it keeps the port's contract (tests/test_ml_contract.py checks it
with the same suite as the real backends) and lets a test drive the scenario.

The port's input rules (Azure ML's names, versions, tags and traffic rules, registration and evaluation of completed
jobs only: `shared.ml.naming`, each rule with its source there) are `shared.ml.checked`'s, which wraps this fake as it
wraps every backend (`FakeHarness.backend`, and `shared.bootstrap` for service tests). The fake itself refuses what
needs its state: an endpoint name already taken (`NameTaken`: by another run's endpoint here, compared without case as
Azure compares resource names, or elsewhere in the region), an instance type outside the base model's allow-list
(the model's base model is the fake's to know).

Scenario controls: `start_job` / `complete_job` / `fail_job` / `cancel` (via the port), `set_endpoint_state`,
`set_deployment_state`, `add_endpoint` (an endpoint the app did not create), `take_endpoint_name` (a name used
elsewhere in the region), `set_requests`, `fail_next`
(make the next call(s) of a method raise, a TransientError by default), `add_base_model` / `set_compute`.
Observations: `created` (a Counter of jobs, models, endpoints, deployments actually created), `job_creations`
(per job name), `calls` (method names in call order), `jobs[name].request` and `.params` (the typed parameters
the job was called with).
"""

from __future__ import annotations

import os

import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from shared.ml import naming
from shared.ml.checked import checked
from shared.ml.port import (JOB_DONE, TAG_RUN, BaseModel, Compute, Deployment, Endpoint, EvaluationRequest,
                            JobRequest, JobStatus,
                            MLBackendError, NameTaken, NotFound, RegisteredModel, ScoringTarget,
                            TransientError)
from shared.ml.training_params import (archive_reason, archived_model_error, check_finetune_compute,
                                       finetune_parameters, gpus_per_node,
                                       resolve_inference_instance_type)

REGISTRY = "fake-registry"

# Tags as the azureml registry publishes them (strings holding Python literals).
PHI3_MINI_TAGS = {
    "finetune_compute_allow_list": "['Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4', "
                                   "'Standard_NC96ads_A100_v4', 'Standard_ND96asr_v4', 'Standard_ND96amsr_A100_v4']",
    "inference_compute_allow_list": "['Standard_NC6s_v3', 'Standard_NC12s_v3', 'Standard_NC24s_v3', "
                                    "'Standard_NC24ads_A100_v4', 'Standard_NC48ads_A100_v4', "
                                    "'Standard_NC96ads_A100_v4']",
    "model_specific_defaults": "{'apply_deepspeed': 'true', 'deepspeed_stage': 2, 'apply_lora': 'true', "
                               "'precision': 16, 'num_train_epochs': 1, 'learning_rate': 5e-06, "
                               "'learning_rate_max': 5e-05, 'save_total_limit': 1}",
}
# The catalogue: Phi-3-mini-4k-instruct (BASE_MODEL's default, with its registry tags) and Phi-4 are active, so
# service tests run on default settings (in today's azureml registry Phi-3-mini is archived: the Azure contract run
# checks that); ARCHIVED_EXAMPLE carries the retirement tag the registry gives retired models.
ARCHIVED_EXAMPLE = "Phi-3.5-mini-instruct"
# Sizes the workspace offers (name, GPUs per node).
VM_SIZES = [("Standard_DS3_v2", 0), ("Standard_NC6", 1), ("Standard_NC6s_v3", 1),
            ("Standard_NC24ads_A100_v4", 1), ("Standard_NC48ads_A100_v4", 2), ("Standard_ND96asr_v4", 8)]


@dataclass
class FakeJob:
    request: JobRequest | EvaluationRequest
    params: dict[str, Any]
    status: str = "NotStarted"
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Compute:
    vm_size: str
    provisioning_state: str = "Succeeded"


@dataclass
class _Endpoint:
    endpoint: Endpoint
    key: str
    deployments: dict[str, Deployment] = field(default_factory=dict)
    instance: dict[str, tuple[str, int, RegisteredModel]] = field(default_factory=dict)


class FakeMLBackend:
    """`MLBackend` in memory. Jobs wait for `complete_job`/`fail_job`; endpoints and deployments stay Creating
    until `set_endpoint_state`/`set_deployment_state`, unless built with `instant_provisioning=True`."""

    def __init__(self, *, instant_provisioning: bool = False):
        self.instant_provisioning = instant_provisioning
        self.base_models: dict[str, BaseModel] = {}
        self.base_model_stage: dict[str, str] = {}
        self.computes: dict[str, _Compute] = {"gpu-cluster": _Compute("Standard_NC24ads_A100_v4")}
        self.vm_sizes = list(VM_SIZES)
        self.jobs: dict[str, FakeJob] = {}
        self.models: dict[tuple[str, str], tuple[RegisteredModel, str]] = {}  # -> (model, job name)
        self.endpoints: dict[str, _Endpoint] = {}
        self.requests: dict[str, int] = {}
        self.taken_in_region: set[str] = set()  # endpoint names (lower case) used by other workspaces in the region
        self.created: Counter[str] = Counter()
        self.job_creations: Counter[str] = Counter()  # job name -> jobs created under it (1 when idempotent)
        self.calls: list[str] = []
        self.tokenizers: dict[str, str] = {}  # base model name -> its tokenizer's folder (`set_tokenizer`)
        self._failures: dict[str, list[MLBackendError]] = {}
        self._lock = threading.RLock()
        self.add_base_model("Phi-3-mini-4k-instruct", tags=PHI3_MINI_TAGS)
        self.add_base_model("Phi-4")
        self.add_base_model(ARCHIVED_EXAMPLE, tags={"FinetuneRetirementDate": "2025-08-30"})

    # ------------------------------------------------------------------ scenario controls

    def add_base_model(self, name: str, *, version: str = "1", tags: dict[str, str] | None = None,
                       stage: str = "") -> BaseModel:
        model = BaseModel(name=name, version=version, id=f"fake://{REGISTRY}/models/{name}/versions/{version}",
                          tags=dict(tags or {}))
        self.base_models[name] = model
        self.base_model_stage[name] = stage
        return model

    def set_tokenizer(self, name: str, directory: str) -> None:
        """The folder holding base model `name`'s tokenizer files; without one its files hold no tokenizer."""
        self.tokenizers[name] = directory

    def set_compute(self, name: str, vm_size: str, provisioning_state: str = "Succeeded") -> None:
        self.computes[name] = _Compute(vm_size, provisioning_state)

    def start_job(self, name: str) -> None:
        self._set_job(name, "Running")

    def complete_job(self, name: str, metrics: dict[str, Any] | None = None) -> None:
        self._set_job(name, "Completed", metrics=dict(metrics or {}))

    def fail_job(self, name: str, error: str = "the job failed", status: str = "Failed") -> None:
        self._set_job(name, status, error=error)

    def set_endpoint_state(self, name: str, state: str, error: str = "") -> None:
        with self._lock:
            ep = self._endpoint(name)
            ep.endpoint = replace(ep.endpoint, provisioning_state=state, error=error)

    def set_deployment_state(self, endpoint_name: str, deployment_name: str, state: str, error: str = "") -> None:
        with self._lock:
            ep = self._endpoint(endpoint_name)
            if deployment_name not in ep.deployments:
                raise NotFound(f"deployment {deployment_name} of endpoint {endpoint_name} not found")
            ep.deployments[deployment_name] = replace(ep.deployments[deployment_name], provisioning_state=state,
                                                      error=error)

    def add_endpoint(self, name: str, tags: dict[str, str] | None = None, state: str = "Succeeded") -> Endpoint:
        """An endpoint that exists without the app having created it (for cleanup scenarios)."""
        with self._lock:
            endpoint = Endpoint(name=name, provisioning_state=state, scoring_uri=self._uri(name), tags=dict(tags or {}))
            self.endpoints[name] = _Endpoint(endpoint, key=f"fake-key-{name}")
            return endpoint

    def take_endpoint_name(self, name: str) -> None:
        """Another workspace in the region has an endpoint of this name (names are unique per region)."""
        self.taken_in_region.add(name.lower())

    def set_requests(self, endpoint_name: str, count: int | None) -> None:
        self.requests[endpoint_name] = count

    def fail_next(self, method: str, error: MLBackendError | None = None, times: int = 1) -> None:
        """Make the next `times` calls of `method` raise `error` (default: a TransientError)."""
        if not callable(getattr(self, method, None)):
            raise AttributeError(method)
        err = error or TransientError(f"injected transient failure of {method}")
        self._failures.setdefault(method, []).extend([err] * times)

    # ------------------------------------------------------------------ port

    def resolve_base_model(self, name: str) -> BaseModel:
        self._enter("resolve_base_model")
        model = self.base_models.get(name)
        if model is None:
            raise NotFound(f"base model {name} not found in registry {REGISTRY}")
        reason = archive_reason(self.base_model_stage.get(name), model.tags, _today())
        if reason:
            raise archived_model_error(name, REGISTRY, reason)
        return model

    def base_model_tokenizer(self, name: str) -> str:
        self._enter("base_model_tokenizer")
        if name not in self.base_models:
            raise NotFound(f"base model {name} not found in registry {REGISTRY}")
        if name not in self.tokenizers:
            raise NotFound(f"base model {name}'s files in registry {REGISTRY} hold no tokenizer.json")
        return self.tokenizers[name]

    def check_compute(self, compute_name: str, base_model: BaseModel) -> Compute:
        self._enter("check_compute")
        compute = self.computes.get(compute_name)
        if compute is None:
            raise NotFound(f"compute {compute_name} not found")
        check_finetune_compute(compute_name, compute.vm_size, compute.provisioning_state, base_model.tags)
        gpus = gpus_per_node(compute_name, compute.vm_size, self.vm_sizes)
        return Compute(name=compute_name, vm_size=compute.vm_size, gpus_per_node=gpus)

    def submit_job(self, request: JobRequest) -> str:
        self._enter("submit_job")
        with self._lock:
            if request.job_name in self.jobs:
                return request.job_name
            params = finetune_parameters(request.base_model.tags, request.params)
            self.jobs[request.job_name] = FakeJob(request=request, params=params)
            self.created["job"] += 1
            self.job_creations[request.job_name] += 1
            return request.job_name

    def get_job(self, job_name: str) -> JobStatus:
        self._enter("get_job")
        job = self._job(job_name)
        return JobStatus(name=job_name, status=job.status, error=job.error, metrics=dict(job.metrics))

    def cancel_job(self, job_name: str) -> None:
        self._enter("cancel_job")
        with self._lock:
            job = self._job(job_name)
            if job.status not in JOB_DONE:
                job.status, job.error = "Canceled", "canceled on request"

    def submit_evaluation(self, request: EvaluationRequest) -> str:
        """As Azure: the evaluation job takes the training job's output, so that job must exist and be Completed.
        The fake writes no report: a test writes `report_path` itself before `complete_job`."""
        self._enter("submit_evaluation")
        with self._lock:
            if request.job_name in self.jobs:
                return request.job_name
            self._job(request.training_job)
            champion = request.champion
            if champion is not None and (champion.name, champion.version) not in self.models:
                # Azure resolves a job's `azureml:<name>:<version>` input when the job is created.
                raise NotFound(f"model {champion.name}:{champion.version} (the line's version in service) not found")
            self.jobs[request.job_name] = FakeJob(request=request, params={})
            self.created["evaluation"] += 1
            self.job_creations[request.job_name] += 1
            return request.job_name

    def register_model(self, job_name: str, name: str, version: str | None = None, description: str = "",
                       tags: dict[str, str] | None = None) -> RegisteredModel:
        self._enter("register_model")
        with self._lock:
            if version is not None and (name, version) in self.models:
                return self.models[(name, version)][0]
            if version is None:  # the version this job already has under this name, if any
                for (model_name, _), (model, source_job) in self.models.items():
                    if model_name == name and source_job == job_name:
                        return model
            self._job(job_name)
            version = version or naming.next_model_version(v for (n, v) in self.models if n == name)
            model = RegisteredModel(name=name, version=version, id=f"fake://models/{name}/versions/{version}")
            self.models[(name, version)] = (model, job_name)
            self.created["model"] += 1
            return model

    def begin_create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> None:
        self._enter("begin_create_endpoint")
        with self._lock:
            if name.lower() in self.taken_in_region:
                raise NameTaken(f"endpoint name {name} is taken: there is already an endpoint with this name in the "
                                f"region (endpoint names are unique within a region)")
            existing = next((ep for key, ep in self.endpoints.items() if key.lower() == name.lower()), None)
            if existing is not None:
                # Azure's create_or_update would update (and re-tag) the existing endpoint: only the caller that
                # made it may repeat the call; anyone else would take over another run's endpoint.
                if existing.endpoint.name == name and naming.same_owner(existing.endpoint.tags, tags):
                    return
                raise NameTaken(f"endpoint name {name} is taken by another endpoint of this workspace "
                                f"({existing.endpoint.name}, run {existing.endpoint.tags.get(TAG_RUN) or 'none'})")
            state = "Succeeded" if self.instant_provisioning else "Creating"
            self.endpoints[name] = _Endpoint(Endpoint(name=name, provisioning_state=state,
                                                      scoring_uri=self._uri(name), tags=dict(tags)),
                                             key=f"fake-key-{len(self.endpoints)}-{name}")
            self.created["endpoint"] += 1

    def get_endpoint(self, name: str) -> Endpoint | None:
        self._enter("get_endpoint")
        ep = self.endpoints.get(name)
        return ep.endpoint if ep else None

    def begin_create_deployment(self, endpoint_name: str, deployment_name: str, model: RegisteredModel,
                                instance_type: str, instance_count: int) -> None:
        self._enter("begin_create_deployment")
        with self._lock:
            ep = self._endpoint(endpoint_name)
            if deployment_name in ep.deployments:  # the wrapper asked first; this holds under the lock
                return
            registered = self.models.get((model.name, model.version))
            if registered is None:
                raise NotFound(f"model {model.name} version {model.version} not found")
            base_tags = self.jobs[registered[1]].request.base_model.tags
            instance_type = resolve_inference_instance_type(instance_type, base_tags)
            state = "Succeeded" if self.instant_provisioning else "Creating"
            ep.deployments[deployment_name] = Deployment(endpoint_name, deployment_name, state, model_id=model.id)
            ep.instance[deployment_name] = (instance_type, instance_count, model)
            self.created["deployment"] += 1

    def get_deployment(self, endpoint_name: str, deployment_name: str) -> Deployment | None:
        self._enter("get_deployment")
        ep = self.endpoints.get(endpoint_name)
        return ep.deployments.get(deployment_name) if ep else None

    def list_deployments(self, endpoint_name: str) -> list[Deployment]:
        self._enter("list_deployments")
        with self._lock:
            return list(self._endpoint(endpoint_name).deployments.values())

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int]) -> None:
        self._enter("set_traffic")
        with self._lock:
            ep = self._endpoint(endpoint_name)
            ep.endpoint = replace(ep.endpoint, traffic=dict(traffic))

    def set_mirror_traffic(self, endpoint_name: str, mirror: dict[str, int]) -> None:
        self._enter("set_mirror_traffic")
        with self._lock:
            ep = self._endpoint(endpoint_name)
            ep.endpoint = replace(ep.endpoint, mirror_traffic={k: v for k, v in mirror.items() if v})

    def begin_delete_deployment(self, endpoint_name: str, deployment_name: str) -> None:
        self._enter("begin_delete_deployment")
        with self._lock:
            ep = self.endpoints.get(endpoint_name)
            if ep is None or deployment_name not in ep.deployments:
                return
            del ep.deployments[deployment_name]
            ep.instance.pop(deployment_name, None)
            ep.endpoint = replace(ep.endpoint, traffic={k: v for k, v in ep.endpoint.traffic.items()
                                                        if k != deployment_name})

    def get_scoring_target(self, endpoint_name: str) -> ScoringTarget:
        self._enter("get_scoring_target")
        ep = self._endpoint(endpoint_name)
        traffic = ep.endpoint.traffic
        return ScoringTarget(endpoint_name=endpoint_name, scoring_uri=ep.endpoint.scoring_uri, key=ep.key,
                             deployment_name=max(traffic, key=traffic.get) if traffic else "")

    def list_endpoints(self) -> list[Endpoint]:
        self._enter("list_endpoints")
        return [ep.endpoint for ep in self.endpoints.values()]

    def begin_delete_endpoint(self, name: str) -> None:
        self._enter("begin_delete_endpoint")
        with self._lock:
            self.endpoints.pop(name, None)

    def requests_since(self, endpoint_name: str, since_iso: str) -> int | None:
        self._enter("requests_since")
        return self.requests.get(endpoint_name)

    # ------------------------------------------------------------------ helpers

    def _enter(self, method: str) -> None:
        with self._lock:
            self.calls.append(method)
            pending = self._failures.get(method)
            if pending:
                raise pending.pop(0)

    def _set_job(self, name: str, status: str, **changes: Any) -> None:
        with self._lock:
            job = self._job(name)
            job.status = status
            for key, value in changes.items():
                setattr(job, key, value)

    def _job(self, name: str) -> FakeJob:
        job = self.jobs.get(name)
        if job is None:
            raise NotFound(f"job {name} not found")
        return job

    def _endpoint(self, name: str) -> _Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            raise NotFound(f"endpoint {name} not found")
        return ep

    @staticmethod
    def _uri(name: str) -> str:
        return f"https://{name}.fake.inference.ml.azure.com/score"


def _today():
    return datetime.now(timezone.utc).date()


def write_word_tokenizer(directory: "str | os.PathLike", words: str = "alpha beta gamma delta") -> None:
    """A tokenizer.json in `directory` whose tokens are whitespace-separated words (unknown words: one [UNK] each):
    counts a test can compute by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words.split())}},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(os.path.join(directory, "tokenizer.json"))


class FakeHarness:
    """The contract suite's harness over a FakeMLBackend (see tests/test_ml_contract.py)."""

    supports_lifecycle = True
    base_model_name = "Phi-3-mini-4k-instruct"
    archived_base_model_name = ARCHIVED_EXAMPLE
    compute_name = "gpu-cluster"
    instance_type = "Standard_NC6s_v3"
    job_params: dict[str, Any] = {}
    timeout = 5.0

    has_base_model_tokenizer = True

    def __init__(self) -> None:
        self.raw = FakeMLBackend()
        self.backend = checked(self.raw)  # as shared.bootstrap wraps every backend
        self._tokenizer_dir: str | None = None

    def give_base_model_a_tokenizer(self) -> None:
        """Put a small word-level tokenizer.json in the base model's files (the contract's tokenizer test)."""
        import tempfile

        self._tokenizer_dir = tempfile.mkdtemp(prefix="fake-tokenizer-")
        write_word_tokenizer(self._tokenizer_dir)
        self.raw.set_tokenizer(self.base_model_name, self._tokenizer_dir)

    def prepare_training_data(self, run_id: str) -> tuple[str, str]:
        return f"{run_id}/train.jsonl", f"{run_id}/test.jsonl"

    def wait_for_job(self, job_name: str, timeout: float) -> JobStatus:
        self.backend.complete_job(job_name)
        return self.backend.get_job(job_name)

    def wait_for_endpoint(self, name: str, timeout: float) -> Endpoint:
        self.backend.set_endpoint_state(name, "Succeeded")
        return self.backend.get_endpoint(name)

    def wait_for_deployment(self, endpoint_name: str, deployment_name: str, timeout: float) -> Deployment:
        self.backend.set_deployment_state(endpoint_name, deployment_name, "Succeeded")
        return self.backend.get_deployment(endpoint_name, deployment_name)

    def count_jobs(self, job_name: str) -> int:
        return self.backend.job_creations[job_name]

    def close(self) -> None:
        if self._tokenizer_dir:
            import shutil

            shutil.rmtree(self._tokenizer_dir, ignore_errors=True)


class RecordingSender:
    """The messaging port in memory for service-level tests: records `(queue, message, message_id, delay_seconds)`
    of every send, in order. (Delivery itself, delays included, is tested against Azurite in test_host.py.)"""

    def __init__(self):
        self.sent: list[tuple[str, Any, str, float]] = []

    def send(self, queue, message, delay_seconds=0):
        self.sent.append((queue, message, message.message_id, delay_seconds))


@dataclass(frozen=True)
class RawMessage:
    """A queue message with any JSON body and any id: for tests of the transport itself, and for copies of a
    message sent under ids of their own (which duplicate detection lets through)."""

    body: Any
    message_id: str

    @classmethod
    def copy_of(cls, message: Any, message_id: str) -> "RawMessage":
        """`message` (of shared.messages) under another id."""
        import json

        return cls(json.loads(message.to_json()), message_id)

    def to_json(self) -> str:
        import json

        return json.dumps(self.body, separators=(",", ":"))
