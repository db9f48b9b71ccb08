"""Every setting of the app, in one place, with a default that works locally.

Settings come from app settings in Azure and from the environment locally (the local host loads
`local.settings.json` into the environment). `SETTINGS` is the single table: the README's settings table and
`local.settings.json.example` list exactly these names, and a test keeps them in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

AZURITE_CONNECTION = "UseDevelopmentStorage=true"


class SettingError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    kind: str  # "str" | "int" | "float" | "bool" | "choice"
    doc: str
    choices: tuple[str, ...] = ()
    secret: bool = False


def _parse(setting: Setting, raw: str) -> Any:
    raw = raw.strip()
    try:
        if setting.kind == "int":
            return int(raw)
        if setting.kind == "float":
            return float(raw)
        if setting.kind == "bool":
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if setting.kind == "choice":
            if raw.lower() not in setting.choices:
                raise ValueError(raw)
            return raw.lower()
        return raw
    except ValueError:
        expected = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "choice": "one of " + ", ".join(setting.choices),
        }.get(setting.kind, "a string")
        shown = "<hidden>" if setting.secret else repr(raw)
        raise SettingError(f"setting {setting.env} must be {expected}, got {shown}") from None


# name -> Setting. Attribute names on `Settings` are the lower-cased env names.
SETTINGS: dict[str, Setting] = {
    s.env: s
    for s in [
        # Storage and messaging
        Setting("AzureWebJobsStorage", AZURITE_CONNECTION, "str",
                "Storage connection for triggers, the run table, run files and reports. Azurite locally.",
                secret=True),
        Setting("AzureWebJobsStorage__accountName", "", "str",
                "Azure: the storage account's name for an identity-based connection (the app's managed identity); "
                "when set, it is used instead of the AzureWebJobsStorage connection string."),
        Setting("TRAINING_CONTAINER", "training-data", "str",
                "Watched container: a `.jsonl` upload here starts a run."),
        Setting("RUNS_CONTAINER", "runs", "str",
                "Per-run files: `<run_id>/train.jsonl`, `test.jsonl`, `validation.json`; cleanup reports."),
        Setting("RUNS_TABLE", "runs", "str", "Table Storage table holding one entity per run."),
        Setting("RUNS_QUEUE", "runs", "str", "Queue of validated runs waiting for submission (`submit`)."),
        Setting("DEPLOY_QUEUE", "deployments", "str",
                "Queue of scheduled deployment checks (`deployments`)."),
        Setting("MESSAGING", "storage-queue", "choice",
                "How the app sends messages: `servicebus` in Azure, `storage-queue` locally (Azurite queues "
                "stand in for Service Bus).", choices=("servicebus", "storage-queue")),
        Setting("ServiceBusConnection__fullyQualifiedNamespace", "", "str",
                "Service Bus namespace (`<name>.servicebus.windows.net`), identity-based. Azure only."),
        # ML backend
        Setting("ML_BACKEND", "local", "choice",
                "`azureml` for Azure Machine Learning, `local` for the local ML workspace.",
                choices=("azureml", "local")),
        Setting("AZURE_SUBSCRIPTION_ID", "", "str", "Azure ML workspace subscription. Azure only."),
        Setting("AZURE_RESOURCE_GROUP", "", "str", "Azure ML workspace resource group. Azure only."),
        Setting("AML_WORKSPACE", "", "str", "Azure ML workspace name. Azure only."),
        Setting("AML_REGISTRY", "azureml", "str", "Registry holding base models and the pipeline component."),
        Setting("AML_COMPUTE", "gpu-cluster", "str", "GPU compute cluster for fine-tuning jobs."),
        Setting("AML_DATASTORE", "workspaceblobstore", "str",
                "Datastore over RUNS_CONTAINER's account; train/test files are passed as its paths."),
        Setting("AML_PIPELINE_COMPONENT", "chat_completion_pipeline", "str",
                "Registry pipeline component used for fine-tuning (label latest)."),
        Setting("BASE_MODEL", "Phi-3-mini-4k-instruct", "str",
                "Base model name in the registry. Archived models are refused up front: Phi-3-mini-4k-instruct "
                "is archived in today's azureml registry; set another (for example a Phi-4 model)."),
        Setting("EXPERIMENT_NAME", "", "str",
                "Experiment for jobs; empty means `chat_completion_<BASE_MODEL>` as in the notebook."),
        Setting("INFERENCE_INSTANCE_TYPE", "Standard_NC6s_v3", "str",
                "Instance type of online deployments (checked against `inference_compute_allow_list`)."),
        Setting("INFERENCE_INSTANCE_COUNT", 1, "int", "Instances per online deployment."),
        Setting("DEPLOYMENT_NAME", "demo", "str", "Name of the deployment created on each endpoint."),
        Setting("APP_ID", "chatft", "str",
                "Ownership tag value: endpoints carrying it were created by this app and may be cleaned up."),
        # Validation and data
        Setting("VALIDATION_MAX_INVALID_FRACTION", 0.0, "float",
                "Largest fraction of invalid records an upload may have; invalid records are then left out."),
        Setting("VALIDATION_MAX_RECORD_BYTES", 1048576, "int", "Longest accepted line (bytes)."),
        Setting("VALIDATION_REPORT_MAX_ISSUES", 100, "int",
                "Errors and warnings listed in a report; beyond it only counts per code are kept."),
        Setting("TEST_FRACTION", 0.1, "float",
                "Fraction of valid records split into `test.jsonl` (stable hash of prompt_id, else the record)."),
        # Deployment follow-up and cleanup
        Setting("MAX_DELIVERY_COUNT", 10, "int",
                "Deliveries of a queue message before it is dead-lettered: the Service Bus queue's "
                "maxDeliveryCount (host.json `extensions.queues.maxDequeueCount` locally). A dead-lettered "
                "message's run is marked Failed with the reason."),
        Setting("DEPLOY_CHECK_SECONDS", 5, "int", "First delay of a deployment check; doubles up to 5 minutes."),
        Setting("DEPLOY_TIMEOUT_MINUTES", 90, "int",
                "A deployment not ready after this is Failed and its endpoint deleted."),
        Setting("ENDPOINT_IDLE_HOURS", 24.0, "float",
                "An owned endpoint older than this with no scoring request in this window is deleted."),
        Setting("CLEANUP_SCHEDULE", "0 0 2 * * *", "str", "NCRONTAB (seconds first) of the idle cleanup timer."),
        Setting("CLEANUP_DRY_RUN", False, "bool", "Report what cleanup would delete without deleting."),
        Setting("CLEANUP_CHECK_METRICS", False, "bool",
                "Azure only: also require zero `RequestsPerMinute` on the endpoint over the idle window."),
        # HTTP
        Setting("MAX_REQUEST_BYTES", 1048576, "int", "Largest accepted HTTP request body (413 beyond)."),
        Setting("SCORE_TIMEOUT_SECONDS", 90.0, "float",
                "Upstream timeout of a scoring request (the deployment's request timeout)."),
        # Local runtime
        Setting("CHATFT_STATE_DIR", ".chatft", "str",
                "Local state: Azurite data, function keys, blob receipts, the local ML workspace."),
        Setting("CHATFT_HOST_PORT", 7071, "int", "Port of the local Functions host on 127.0.0.1."),
        Setting("LOCAL_BASE_MODEL", "", "str",
                "Local Hugging Face causal-LM directory to fine-tune; empty builds the small stand-in model."),
        Setting("LOCAL_EVENTS_URL", "", "str",
                "Where the local workspace posts job events; empty means the local host's Event Grid webhook."),
        # Reliability: retries of transient faults, the reconciler, fault injection
        Setting("RETRY_WINDOW_MINUTES", 60.0, "float",
                "How long `submit` and `deployments` retry a step that keeps failing transiently (throttling, 5xx, "
                "network) before the run is Failed with the last error."),
        Setting("RETRY_BASE_SECONDS", 10.0, "float",
                "Delay of the first retry of a transient fault; doubles per retry (with jitter) up to 5 minutes."),
        Setting("RECONCILE_SCHEDULE", "0 */5 * * * *", "str",
                "NCRONTAB (seconds first) of the `reconcile` timer, which drives runs whose events or messages "
                "were lost."),
        Setting("RECONCILE_AFTER_MINUTES", 15.0, "float",
                "A run in progress (Submitted to Deploying) with no progress for this long is reconciled with the "
                "backend's word on its job or endpoint."),
        Setting("LOCAL_FAULTS", "", "str",
                "Local testing aid: make port methods of the local workspace fail, e.g. "
                "`submit_job=transient:3,register_model=transient:2,begin_create_endpoint=permanent:1`. Empty."),
    ]
}


# Settings whose names follow the Functions host's connection conventions get plainer attribute names.
_ATTRS = {"ServiceBusConnection__fullyQualifiedNamespace": "servicebusconnection",
          "AzureWebJobsStorage__accountName": "storage_account_name"}


def _attr(env: str) -> str:
    return _ATTRS.get(env, env.lower())


@dataclass(frozen=True)
class Settings:
    """Typed settings. Build with `Settings.from_env()`; tests pass overrides as keyword arguments."""

    azurewebjobsstorage: str = AZURITE_CONNECTION
    storage_account_name: str = ""
    training_container: str = "training-data"
    runs_container: str = "runs"
    runs_table: str = "runs"
    runs_queue: str = "runs"
    deploy_queue: str = "deployments"
    messaging: str = "storage-queue"
    servicebusconnection: str = ""
    ml_backend: str = "local"
    azure_subscription_id: str = ""
    azure_resource_group: str = ""
    aml_workspace: str = ""
    aml_registry: str = "azureml"
    aml_compute: str = "gpu-cluster"
    aml_datastore: str = "workspaceblobstore"
    aml_pipeline_component: str = "chat_completion_pipeline"
    base_model: str = "Phi-3-mini-4k-instruct"
    experiment_name: str = ""
    inference_instance_type: str = "Standard_NC6s_v3"
    inference_instance_count: int = 1
    deployment_name: str = "demo"
    app_id: str = "chatft"
    validation_max_invalid_fraction: float = 0.0
    validation_max_record_bytes: int = 1048576
    validation_report_max_issues: int = 100
    test_fraction: float = 0.1
    max_delivery_count: int = 10
    deploy_check_seconds: int = 5
    deploy_timeout_minutes: int = 90
    endpoint_idle_hours: float = 24.0
    cleanup_schedule: str = "0 0 2 * * *"
    cleanup_dry_run: bool = False
    cleanup_check_metrics: bool = False
    max_request_bytes: int = 1048576
    score_timeout_seconds: float = 90.0
    chatft_state_dir: str = ".chatft"
    chatft_host_port: int = 7071
    local_base_model: str = ""
    local_events_url: str = ""
    retry_window_minutes: float = 60.0
    retry_base_seconds: float = 10.0
    reconcile_schedule: str = "0 */5 * * * *"
    reconcile_after_minutes: float = 15.0
    local_faults: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every setting from `env` (default `os.environ`); malformed values raise `SettingError`."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                values[_attr(name)] = _parse(setting, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field checks, each naming the setting at fault."""
        if not 0.0 <= self.validation_max_invalid_fraction <= 1.0:
            raise SettingError("setting VALIDATION_MAX_INVALID_FRACTION must be between 0 and 1")
        if not 0.0 <= self.test_fraction < 1.0:
            raise SettingError("setting TEST_FRACTION must be at least 0 and below 1")
        for name in ("validation_max_record_bytes", "deploy_check_seconds", "deploy_timeout_minutes",
                     "max_request_bytes", "inference_instance_count"):
            if getattr(self, name) <= 0:
                raise SettingError(f"setting {name.upper()} must be positive")
        for name in ("retry_window_minutes", "retry_base_seconds", "reconcile_after_minutes"):
            if getattr(self, name) <= 0:
                raise SettingError(f"setting {name.upper()} must be positive")
        if self.local_faults:
            from .ml.faults import parse_faults

            parse_faults(self.local_faults)  # raises SettingError naming LOCAL_FAULTS
        if self.messaging == "servicebus" and not self.servicebusconnection:
            raise SettingError("setting ServiceBusConnection__fullyQualifiedNamespace is required when "
                               "MESSAGING=servicebus")
        if self.ml_backend == "azureml":
            missing = [n for n in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AML_WORKSPACE")
                       if not getattr(self, n.lower())]
            if missing:
                raise SettingError("ML_BACKEND=azureml needs setting(s) " + ", ".join(missing))

    @property
    def storage_connection(self) -> str:
        return self.azurewebjobsstorage

    def binding_values(self) -> dict[str, str]:
        """Values for `%NAME%` binding expressions, as the Functions host resolves them from app settings."""
        out = {}
        for name in SETTINGS:
            value = getattr(self, _attr(name))
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def settings_attr(env_name: str) -> str:
    """Attribute of `Settings` holding the setting named `env_name`."""
    return _attr(env_name)


assert {f.name for f in fields(Settings)} == {_attr(n) for n in SETTINGS}, "Settings and SETTINGS disagree"

_cached: Settings | None = None


def get_settings(reload: bool = False) -> Settings:
    """The worker's settings, read once."""
    global _cached
    if _cached is None or reload:
        _cached = Settings.from_env()
    return _cached

