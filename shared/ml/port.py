"""The ML backend port: what the app's functions need from a machine-learning workspace.

Two adapters implement it: `shared.ml.azureml.AzureMLBackend` (Azure Machine Learning) and
`chatft_local.workspace.LocalWorkspace` (this machine). Every method returns at once: long-running work is
begun, and its progress read later (`get_job`, `get_endpoint`, `get_deployment`). No SDK import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Azure ML job statuses the app acts on (RunStatusChanged `runStatus` uses the same words).
JOB_DONE = frozenset({"Completed", "Failed", "Canceled"})

# Provisioning states of endpoints and deployments.
PROVISIONING_DONE = frozenset({"Succeeded", "Failed", "Canceled"})

# Every status word the app compares, in the casing the code uses. Event Grid's synthetic samples write
# `"runStatus": "failed"` and ARM's provisioning states arrive in whatever casing the service chose, so each status
# is put into this casing where it enters the port (`canonical_status`) and every comparison then ignores case.
_CANONICAL = {s.lower(): s for s in (*JOB_DONE, *PROVISIONING_DONE, "NotStarted", "Queued", "Preparing",
                                      "Provisioning", "Starting", "Running", "Finalizing", "CancelRequested",
                                      "Creating", "Updating", "Deleting")}


def canonical_status(status: Any) -> str:
    """`status` in the casing of the constants above ("failed" -> "Failed"); an unknown word unchanged."""
    text = str(status or "")
    return _CANONICAL.get(text.lower(), text)

# Tags that mark an endpoint as this app's (values: APP_ID setting, run id, ISO created-at).
TAG_APP = "chatft-app"
TAG_RUN = "chatft-run"
TAG_CREATED = "chatft-created"
TAG_KEEP = "chatft-keep"
# On a model line's endpoint (and its runs' models): the line it serves (`shared.ml.naming.line_name`). A line's
# endpoint outlives the run that created it, so its owner is the app and the line, not the run.
TAG_LINE = "chatft-line"
# On a registered model: the job it came from, so a repeated registration finds the version it made.
TAG_JOB = "chatft-job"


class MLBackendError(Exception):
    """A backend call failed; the subclass says whether retrying can help (`TransientError`, `PermanentError`)."""


class TransientError(MLBackendError):
    """Worth retrying: throttling, a network blip, a service hiccup."""


class PermanentError(MLBackendError):
    """Retrying will not help: bad configuration, an archived model, a refused compute size, bad input."""


class NotFound(PermanentError):
    """The named job, model, endpoint or deployment does not exist."""


class InvalidInput(PermanentError):
    """Azure ML would refuse the input: a name, model version or tags outside its rules (`shared.ml.naming`).
    Every backend raises it before creating anything, so a refusal costs nothing and reads the same everywhere."""


class NameTaken(PermanentError):
    """The endpoint name belongs to another endpoint: of another run in this workspace, or elsewhere in the region
    (online endpoint names are unique per Azure region)."""


@dataclass(frozen=True)
class BaseModel:
    name: str
    version: str
    id: str  # what the pipeline's `mlflow_model_path` takes (an azureml:// registry id, or a local path)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Compute:
    name: str
    vm_size: str
    gpus_per_node: int


@dataclass(frozen=True)
class JobRequest:
    """One fine-tuning job. `params` are the upload's overrides, keyed by pipeline parameter name; the backend
    merges them over the notebook's defaults and the base model's `model_specific_defaults`, types them and drops
    keys the pipeline does not take (`shared.ml.training_params.finetune_parameters`)."""

    job_name: str
    run_id: str
    experiment_name: str
    base_model: BaseModel
    compute: Compute
    train_path: str  # path inside RUNS_CONTAINER, e.g. "<run_id>/train.jsonl"
    test_path: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationRequest:
    """One evaluation of a fine-tune against its base model (and a model line's version in service: `champion`)
    (`evaluation/`), after its fine-tuning job Completed: the job scores the models on `test_path` and writes the report (`shared.protocol.EvaluationReport`) to
    `report_path`; both paths are inside RUNS_CONTAINER."""

    job_name: str
    run_id: str
    experiment_name: str
    base_model: BaseModel
    training_job: str  # the fine-tuning job whose `mlflow_model_folder` is the tuned model
    compute: str
    test_path: str  # e.g. "<run_id>/test.jsonl"
    report_path: str  # e.g. "<run_id>/evaluation.json"
    max_records: int = 500
    samples: int = 50
    max_new_tokens: int = 128
    # A new version of a model line: the line's version in service (its registered model), scored beside the base
    # and tuned models on the same records; None for a line's first version or an upload at the container's root.
    champion: "RegisteredModel | None" = None
    champion_run_id: str = ""


@dataclass(frozen=True)
class JobStatus:
    name: str
    status: str  # NotStarted, Queued, Running, Completed, Failed, Canceled, ...
    error: str = ""  # a one-line summary when Failed/Canceled
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", canonical_status(self.status))

    @property
    def done(self) -> bool:
        return self.status in JOB_DONE


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    id: str


@dataclass(frozen=True)
class Endpoint:
    name: str
    provisioning_state: str  # Creating, Updating, Succeeded, Failed, Deleting
    scoring_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)  # live traffic, percent per deployment
    error: str = ""
    mirror_traffic: dict[str, int] = field(default_factory=dict)  # copies of live requests, answers discarded

    def __post_init__(self) -> None:
        object.__setattr__(self, "provisioning_state", canonical_status(self.provisioning_state))


@dataclass(frozen=True)
class Deployment:
    endpoint_name: str
    name: str
    provisioning_state: str
    error: str = ""
    model_id: str = ""  # the registered model it serves, where the backend says

    def __post_init__(self) -> None:
        object.__setattr__(self, "provisioning_state", canonical_status(self.provisioning_state))


@dataclass(frozen=True)
class ScoringTarget:
    """Where and how to send a scoring request. The key is a secret: never log it, never persist it."""

    endpoint_name: str
    scoring_uri: str
    key: str
    deployment_name: str = ""

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return (f"ScoringTarget(endpoint_name={self.endpoint_name!r}, scoring_uri={self.scoring_uri!r}, "
                f"deployment_name={self.deployment_name!r}, key=<hidden>)")


@runtime_checkable
class MLBackend(Protocol):
    """What the app needs from an ML workspace. All calls return promptly."""

    def resolve_base_model(self, name: str) -> BaseModel:
        """The base model by name, latest version. Raises NotFound, or PermanentError if archived."""

    def check_compute(self, compute_name: str, base_model: BaseModel) -> Compute:
        """The training compute, checked as the notebook does; PermanentError says what is wrong."""

    def base_model_tokenizer(self, name: str) -> str:
        """A local directory holding the named base model's tokenizer files (`tokenizer.json`, and
        `tokenizer_config.json` where the model has one), without its weights; the same directory on every call of
        the process. Raises NotFound (no such model, or its files hold no tokenizer), PermanentError (its files
        cannot be read, e.g. a 403) or TransientError: the caller then estimates token counts, saying why."""

    def submit_job(self, request: JobRequest) -> str:
        """Submit (or find, when a job of that name exists) the fine-tuning job; returns its name."""

    def get_job(self, job_name: str) -> JobStatus:
        """The job's status; NotFound if no such job."""

    def cancel_job(self, job_name: str) -> None:
        """Ask the job to stop; no-op if it is done."""

    def submit_evaluation(self, request: EvaluationRequest) -> str:
        """Submit (or find, when a job of that name exists) the evaluation job; returns its name. Its status is
        `get_job`'s; once Completed, `request.report_path` in RUNS_CONTAINER holds the report. Raises InvalidInput
        (job name), NotFound (the training job, or the `champion` model), PermanentError (the training job is not
        Completed)."""

    def register_model(self, job_name: str, name: str, version: str | None = None, description: str = "",
                       tags: dict[str, str] | None = None) -> RegisteredModel:
        """Register the job's trained MLflow model; the returned version is a positive integer (as a string).

        Without `version`, the version registered from `job_name` under `name` is returned if there is one, else the
        next free integer is registered: a repeated or duplicated registration never makes a second version. An
        explicit `version` must be a positive integer; registering it again returns the existing one. Raises
        InvalidInput (name, version, tags), NotFound (job), PermanentError (job not Completed)."""

    def begin_create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> None:
        """Begin creating a key-auth online endpoint; no-op if this caller's endpoint exists (same TAG_APP and
        TAG_RUN). Raises InvalidInput (name, tags) and NameTaken (the name belongs to another endpoint)."""

    def get_endpoint(self, name: str) -> Endpoint | None:
        """The endpoint, or None if it does not exist (or is gone)."""

    def begin_create_deployment(self, endpoint_name: str, deployment_name: str, model: RegisteredModel,
                                instance_type: str, instance_count: int) -> None:
        """Begin creating the deployment of `model` on the endpoint; no-op if it exists."""

    def get_deployment(self, endpoint_name: str, deployment_name: str) -> Deployment | None:
        """The deployment, or None."""

    def list_deployments(self, endpoint_name: str) -> list[Deployment]:
        """Every deployment of the endpoint, oldest first; NotFound if the endpoint is gone."""

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int]) -> None:
        """Begin routing live traffic: whole percentages per deployment of the endpoint, adding up to 100 (or 0);
        deployments left out get none. Raises NotFound (endpoint) and InvalidInput (`naming.check_traffic`: an
        unknown deployment, a bad share or sum) before changing anything."""

    def set_mirror_traffic(self, endpoint_name: str, mirror: dict[str, int]) -> None:
        """Begin copying a share of live requests to one deployment (answers discarded); `{}` stops it. Raises
        NotFound and InvalidInput (`naming.check_mirror_traffic`: more than one deployment, over 50%)."""

    def begin_delete_deployment(self, endpoint_name: str, deployment_name: str) -> None:
        """Begin deleting one deployment; no-op if it (or the endpoint) is gone. InvalidInput while it still has
        live or mirrored traffic (set it to 0 first)."""

    def get_scoring_target(self, endpoint_name: str) -> ScoringTarget:
        """Scoring URI and primary key; NotFound if the endpoint is gone. A request sent there without the
        `azureml-model-deployment` header is split by the endpoint's traffic; with it, it goes to that deployment
        whatever its share (0% included)."""

    def list_endpoints(self) -> list[Endpoint]:
        """Every endpoint of the workspace with its tags (the idle policy decides which are this app's)."""

    def begin_delete_endpoint(self, name: str) -> None:
        """Begin deleting the endpoint and its deployments; no-op if it is gone."""

    def requests_since(self, endpoint_name: str, since_iso: str) -> int | None:
        """Scoring requests the endpoint served since then per its metrics, or None where unknown."""
