"""Every setting of the app, in one place, with a default that works locally.

Settings come from app settings in Azure and from the environment locally (the local host loads
`local.settings.json` into the environment). Each setting is declared once, as a field of `Settings` (its app
setting name, default and description); pydantic-settings reads and converts them. `SETTINGS` is derived from those
declarations: the README's settings table and `local.settings.json.example` are checked against it by a test.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, get_args, get_origin

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

AZURITE_CONNECTION = "UseDevelopmentStorage=true"
# The identity-based datastore over RUNS_CONTAINER that infra/ creates (infra/app/ml.bicep, param runsDatastoreName).
DEFAULT_DATASTORE = "chatft_runs"
# The version of ../shared/reference/chat_completion_pipeline.spec.yaml, the spec this app was checked against.
PIPELINE_COMPONENT_VERSION = "0.0.82"
# azureml-assets assets/training/finetune_acft_hf_nlp/environments/acpt/asset.yaml names it `acft-hf-nlp-gpu`; its
# context/requirements.txt holds transformers, peft, rouge-score 0.1.2 and sacrebleu 2.4.0 (torch from the ACPT image).
# Its version numbers are assigned at publication, so the label is used; pin `versions/<n>` to freeze it.
EVALUATION_ENVIRONMENT = "azureml://registries/azureml/environments/acft-hf-nlp-gpu/labels/latest"


class SettingError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _setting(env: str, default: Any, doc: str, *, secret: bool = False) -> Any:
    """One setting: `env` is its app setting (environment variable) name."""
    return Field(default, validation_alias=env, description=doc, json_schema_extra={"secret": secret})


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


_LOWER = BeforeValidator(_lower)  # choices are case-insensitive


def _metric_name(value: Any) -> Any:
    from .quality_gate import METRICS

    if isinstance(value, str):
        return {m.lower(): m for m in METRICS}.get(value.strip().lower(), value)
    return value


_BY_NAME = BeforeValidator(_metric_name)  # metric names keep their case (rougeL) but match without it
# When set, `Settings` reads only its keyword arguments (a mapping given to `from_env`), not `os.environ`.
_ONLY_GIVEN: ContextVar[bool] = ContextVar("_ONLY_GIVEN", default=False)


class Settings(BaseSettings):
    """Typed settings. Build with `Settings.from_env()`; tests pass overrides as keyword arguments (field names)."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, case_sensitive=True, env_ignore_empty=True,
                                      str_strip_whitespace=True, extra="ignore")

    azurewebjobsstorage: str = _setting("AzureWebJobsStorage", AZURITE_CONNECTION,
        "Storage connection for triggers, the run table, run files and reports. Azurite locally.", secret=True)
    storage_account_name: str = _setting("AzureWebJobsStorage__accountName", "",
        "Azure: the storage account's name for an identity-based connection (the app's managed "
        "identity); when set, it is used instead of the AzureWebJobsStorage connection string.")
    azure_client_id: str = _setting("AZURE_CLIENT_ID", "",
        "Azure: client id of the app's user-assigned managed identity (DefaultAzureCredential reads it). "
        "The host's connections also need `<conn>__credential=managedidentity` and `<conn>__clientId`.")
    training_container: str = _setting("TRAINING_CONTAINER", "training-data",
        "Watched container: a `.jsonl` upload here starts a run.")
    runs_container: str = _setting("RUNS_CONTAINER", "runs",
        "Per-run files: `<run_id>/train.jsonl`, `test.jsonl`, `validation.json`; cleanup reports.")
    runs_table: str = _setting("RUNS_TABLE", "runs",
        "Table Storage table holding one entity per run.")
    runs_queue: str = _setting("RUNS_QUEUE", "runs",
        "Queue of validated runs waiting for submission (`submit`).")
    deploy_queue: str = _setting("DEPLOY_QUEUE", "deployments",
        "Queue of scheduled deployment checks (`deployments`).")
    notify_queue: str = _setting("NOTIFY_QUEUE", "notifications",
        "Queue of webhook and Event Grid deliveries of run events, one message per event and destination "
        "(`notify`).")
    messaging: Annotated[Literal["servicebus", "storage-queue"], _LOWER] = _setting("MESSAGING", "storage-queue",
        "How the app sends messages: `servicebus` in Azure, `storage-queue` locally (Azurite queues "
        "stand in for Service Bus).")
    servicebusconnection: str = _setting("ServiceBusConnection__fullyQualifiedNamespace", "",
        "Service Bus namespace (`<name>.servicebus.windows.net`), identity-based. Azure only.")
    ml_backend: Annotated[Literal["azureml", "local"], _LOWER] = _setting("ML_BACKEND", "local",
        "`azureml` for Azure Machine Learning, `local` for the local ML workspace.")
    azure_subscription_id: str = _setting("AZURE_SUBSCRIPTION_ID", "",
        "Azure ML workspace subscription. Azure only.")
    azure_resource_group: str = _setting("AZURE_RESOURCE_GROUP", "",
        "Azure ML workspace resource group. Azure only.")
    aml_workspace: str = _setting("AML_WORKSPACE", "",
        "Azure ML workspace name. Azure only.")
    aml_registry: str = _setting("AML_REGISTRY", "azureml",
        "Registry holding base models and the pipeline component.")
    aml_compute: str = _setting("AML_COMPUTE", "gpu-cluster",
        "GPU compute cluster for fine-tuning jobs.")
    aml_compute_gpus: int = _setting("AML_COMPUTE_GPUS", 0,
        "GPUs per node of AML_COMPUTE's VM size; 0 takes the count from the app's table of the sizes Azure ML "
        "fine-tuning allows (shared/ml/training_params.py VM_SIZE_GPUS). Set it for a size the table lacks.")
    aml_datastore: str = _setting("AML_DATASTORE", DEFAULT_DATASTORE,
        "Datastore over RUNS_CONTAINER (identity-based); train/test files are passed as its paths. The "
        "default is the datastore `azd up` creates (infra/); `workspaceblobstore` would not hold them.")
    aml_pipeline_component: str = _setting("AML_PIPELINE_COMPONENT", "chat_completion_pipeline",
        "Registry pipeline component used for fine-tuning, at AML_PIPELINE_COMPONENT_VERSION.")
    aml_pipeline_component_version: str = _setting("AML_PIPELINE_COMPONENT_VERSION", PIPELINE_COMPONENT_VERSION,
        "Version of the pipeline component the app runs (pinned, so what a run does cannot change under it); "
        "`chatft doctor --azure` says when the registry offers a newer one.")
    aml_evaluation_environment: str = _setting("AML_EVALUATION_ENVIRONMENT", EVALUATION_ENVIRONMENT,
        "Azure ML environment of the evaluation job (a curated registry environment with torch, transformers, "
        "peft, rouge-score and sacrebleu).")
    base_model: str = _setting("BASE_MODEL", "Phi-3-mini-4k-instruct",
        "Base model name in the registry. Archived models are refused up front: Phi-3-mini-4k-instruct "
        "is archived in today's azureml registry; set another (for example a Phi-4 model).")
    experiment_name: str = _setting("EXPERIMENT_NAME", "",
        "Experiment for jobs; empty means `chat_completion_<BASE_MODEL>` as in the notebook.")
    inference_instance_type: str = _setting("INFERENCE_INSTANCE_TYPE", "",
        "Instance type of online deployments; empty means the first (not retired) entry of the base "
        "model's `inference_compute_allow_list` tag. A value is checked against that list.")
    inference_instance_count: int = _setting("INFERENCE_INSTANCE_COUNT", 1,
        "Instances per online deployment.")
    deployment_name: str = _setting("DEPLOYMENT_NAME", "demo",
        "Name of the deployment created on each endpoint.")
    app_id: str = _setting("APP_ID", "chatft",
        "Ownership tag value: endpoints carrying it were created by this app and may be cleaned up.")
    validation_max_invalid_fraction: float = _setting("VALIDATION_MAX_INVALID_FRACTION", 0.0,
        "Largest fraction of invalid records an upload may have; invalid records are then left out.")
    validation_max_record_bytes: int = _setting("VALIDATION_MAX_RECORD_BYTES", 1048576,
        "Longest accepted line (bytes).")
    validation_report_max_issues: int = _setting("VALIDATION_REPORT_MAX_ISSUES", 100,
        "Errors and warnings listed in a report; beyond it only counts per code are kept.")
    tokenizer_dir: str = _setting("TOKENIZER_DIR", "",
        "Directory holding the base model's `tokenizer.json` (and `tokenizer_config.json`), for token counts in "
        "validation reports; empty means the base model's own tokenizer (the local model's, or in Azure the "
        "registry model's tokenizer files, fetched without the weights), else a characters/4 estimate.")
    test_fraction: float = _setting("TEST_FRACTION", 0.1,
        "Fraction of valid records split into `test.jsonl` (stable hash of prompt_id, else the record).")
    max_delivery_count: int = _setting("MAX_DELIVERY_COUNT", 10,
        "Deliveries of a queue message before it is dead-lettered: the Service Bus queue's "
        "maxDeliveryCount (host.json `extensions.queues.maxDequeueCount` locally). A dead-lettered "
        "message's run is marked Failed with the reason.")
    deploy_check_seconds: int = _setting("DEPLOY_CHECK_SECONDS", 5,
        "First delay of a deployment check; doubles up to 5 minutes.")
    deploy_timeout_minutes: int = _setting("DEPLOY_TIMEOUT_MINUTES", 90,
        "A deployment not ready after this is Failed and its endpoint deleted.")
    rollout_canary_percent: int = _setting("ROLLOUT_CANARY_PERCENT", 10,
        "Share of a model line's live traffic (whole percent, 0-100) a new version takes while its canary is "
        "watched; 0 switches all traffic to it at once.")
    rollout_canary_minutes: float = _setting("ROLLOUT_CANARY_MINUTES", 30.0,
        "How long a new version of a model line serves its canary share before it takes all traffic.")
    rollout_max_error_rate: float = _setting("ROLLOUT_MAX_ERROR_RATE", 0.05,
        "A canary whose errors (5xx, timeouts, unreachable) exceed this fraction of max(its requests, "
        "ROLLOUT_MIN_REQUESTS) is rolled back.")
    rollout_min_requests: int = _setting("ROLLOUT_MIN_REQUESTS", 20,
        "Fewest requests an error rate is taken over: below it, errors are counted against this many (one error "
        "of one request does not decide).")
    rollout_keep_previous_hours: float = _setting("ROLLOUT_KEEP_PREVIOUS_HOURS", 24.0,
        "How long a model line's previous deployment is kept at 0% after a rollout (for a one-call rollback) "
        "before it is deleted.")
    endpoint_idle_hours: float = _setting("ENDPOINT_IDLE_HOURS", 24.0,
        "An owned endpoint older than this with no scoring request in this window is deleted.")
    cleanup_schedule: str = _setting("CLEANUP_SCHEDULE", "0 0 2 * * *",
        "NCRONTAB (seconds first) of the idle cleanup timer.")
    cleanup_dry_run: bool = _setting("CLEANUP_DRY_RUN", False,
        "Report what cleanup would delete without deleting.")
    cleanup_check_metrics: bool = _setting("CLEANUP_CHECK_METRICS", False,
        "Azure only: also require zero `RequestsPerMinute` on the endpoint over the idle window.")
    max_request_bytes: int = _setting("MAX_REQUEST_BYTES", 1048576,
        "Largest accepted HTTP request body (413 beyond).")
    score_timeout_seconds: float = _setting("SCORE_TIMEOUT_SECONDS", 90.0,
        "Upstream timeout of a scoring request (the deployment's request timeout).")
    # The quality gate (shared/quality_gate.py) and the evaluation it decides on (evaluation/)
    eval_gate: Annotated[Literal["enforce", "report", "off"], _LOWER] = _setting("EVAL_GATE", "enforce",
        "`enforce`: deploy a fine-tune only when the evaluation shows it better than its base model, else the run "
        "is Held; `report`: evaluate and deploy anyway; `off`: no evaluation.")
    eval_metric: Annotated[Literal["eval_loss", "perplexity", "rougeL", "chrf"], _BY_NAME] = _setting(
        "EVAL_METRIC", "eval_loss",
        "Metric the gate decides on: `eval_loss` or `perplexity` (lower is better), `rougeL` or `chrf` "
        "(higher is better).")
    eval_min_improvement: float = _setting("EVAL_MIN_IMPROVEMENT", 0.0,
        "The improvement's lower 95% bound must be above this (in the metric's units) for a deployment.")
    eval_min_records: int = _setting("EVAL_MIN_RECORDS", 20,
        "Fewer paired test records than this and the gate cannot decide: it says so, and holds under "
        "`enforce` only when the point estimate is worse.")
    eval_max_records: int = _setting("EVAL_MAX_RECORDS", 500,
        "Test records the evaluation scores by loss (the first ones of `test.jsonl`).")
    eval_samples: int = _setting("EVAL_SAMPLES", 50,
        "Test prompts both models answer greedily, scored by ROUGE-L and chrF.")
    eval_max_new_tokens: int = _setting("EVAL_MAX_NEW_TOKENS", 128,
        "Longest greedy answer of the evaluation (tokens).")
    # Reliability: retries of transient faults, the reconciler, fault injection
    retry_window_minutes: float = _setting("RETRY_WINDOW_MINUTES", 60.0,
        "How long `submit` and `deployments` retry a step that keeps failing transiently (throttling, 5xx, "
        "network) before the run is Failed with the last error.")
    retry_base_seconds: float = _setting("RETRY_BASE_SECONDS", 10.0,
        "Delay of the first retry of a transient fault; doubles per retry (with jitter) up to 5 minutes.")
    reconcile_schedule: str = _setting("RECONCILE_SCHEDULE", "0 */5 * * * *",
        "NCRONTAB (seconds first) of the `reconcile` timer, which drives runs whose events or messages "
        "were lost.")
    reconcile_after_minutes: float = _setting("RECONCILE_AFTER_MINUTES", 15.0,
        "A run in progress (Submitted to Deploying) with no progress for this long is reconciled with the "
        "backend's word on its job or endpoint.")
    # Telling people when a run ends (shared/notifications.py)
    notify_webhook_urls: str = _setting("NOTIFY_WEBHOOK_URLS", "",
        "Comma-separated URLs that receive each run event as a signed webhook (Standard Webhooks). https only; "
        "http only to 127.0.0.1/localhost (local). Empty: no webhooks.")
    notify_webhook_secret: str = _setting("NOTIFY_WEBHOOK_SECRET", "",
        "Signing secret of the webhooks, `whsec_<base64>` (Standard Webhooks); required with "
        "NOTIFY_WEBHOOK_URLS. In Azure a Key Vault reference.", secret=True)
    notify_retry_hours: float = _setting("NOTIFY_RETRY_HOURS", 24.0,
        "How long a delivery a receiver does not accept (not 2xx, not 410) is retried, with the backoff of "
        "RETRY_BASE_SECONDS, before it is dead-lettered.")
    eventgrid_topic_endpoint: str = _setting("EVENTGRID_TOPIC_ENDPOINT", "",
        "Event Grid custom topic (CloudEvents 1.0 schema) that receives each run event, identity-based "
        "(`https://<topic>.<region>-1.eventgrid.azure.net/api/events`). Empty: not published.")
    chatft_state_dir: str = _setting("CHATFT_STATE_DIR", ".chatft",
        "Local state: Azurite data, function keys, blob receipts, the local ML workspace.")
    chatft_host_port: int = _setting("CHATFT_HOST_PORT", 7071,
        "Port of the local Functions host on 127.0.0.1.")
    local_base_model: str = _setting("LOCAL_BASE_MODEL", "",
        "Local Hugging Face causal-LM directory to fine-tune; empty builds the small stand-in model.")
    local_max_jobs: int = _setting("LOCAL_MAX_JOBS", 0,
        "Fine-tuning jobs the local workspace runs at once (an Azure ML cluster's `max_instances`); more wait "
        "Queued. 0: no limit.")
    local_events_url: str = _setting("LOCAL_EVENTS_URL", "",
        "Where the local workspace posts job events; empty means the local host's Event Grid webhook.")
    local_faults: str = _setting("LOCAL_FAULTS", "",
        "Local testing aid: make port methods of the local workspace fail, e.g. "
        "`submit_job=transient:3,register_model=transient:2,begin_create_endpoint=permanent:1`. Empty.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,) if _ONLY_GIVEN.get() else (init_settings, env_settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Read every setting from `env` (default `os.environ`); overrides are by field name. Blank values mean
        the default. Malformed values raise `SettingError` naming the setting and what it must be."""
        token = _ONLY_GIVEN.set(env is not None)
        try:
            given = {name: value for name, value in (env or {}).items()
                     if name in SETTINGS and isinstance(value, str) and value.strip()}
            settings = cls(**given, **overrides)
        except ValidationError as exc:
            raise SettingError(_describe(exc)) from None
        finally:
            _ONLY_GIVEN.reset(token)
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
        for name in ("eval_min_records", "eval_max_records", "eval_max_new_tokens"):
            if getattr(self, name) <= 0:
                raise SettingError(f"setting {name.upper()} must be positive")
        if self.eval_samples < 0:
            raise SettingError("setting EVAL_SAMPLES must be at least 0")
        if self.local_max_jobs < 0:
            raise SettingError("setting LOCAL_MAX_JOBS must be at least 0")
        for name in ("retry_window_minutes", "retry_base_seconds", "reconcile_after_minutes"):
            if getattr(self, name) <= 0:
                raise SettingError(f"setting {name.upper()} must be positive")
        if self.local_faults:
            from .ml.faults import parse_faults

            parse_faults(self.local_faults)  # raises SettingError naming LOCAL_FAULTS
        if not 0 <= self.rollout_canary_percent <= 100:
            raise SettingError("setting ROLLOUT_CANARY_PERCENT must be a whole percentage from 0 to 100")
        if not 0.0 <= self.rollout_max_error_rate <= 1.0:
            raise SettingError("setting ROLLOUT_MAX_ERROR_RATE must be between 0 and 1")
        for name in ("rollout_canary_minutes", "rollout_min_requests", "rollout_keep_previous_hours"):
            if getattr(self, name) <= 0:
                raise SettingError(f"setting {name.upper()} must be positive")
        if self.notify_retry_hours <= 0:
            raise SettingError("setting NOTIFY_RETRY_HOURS must be positive")
        from .notifications import check_webhook_settings

        check_webhook_settings(self)  # raises SettingError naming NOTIFY_WEBHOOK_URLS or NOTIFY_WEBHOOK_SECRET
        if self.messaging == "servicebus" and not self.servicebusconnection:
            raise SettingError("setting ServiceBusConnection__fullyQualifiedNamespace is required when "
                               "MESSAGING=servicebus")
        if self.ml_backend == "azureml":
            missing = [n for n in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AML_WORKSPACE")
                       if not getattr(self, n.lower())]
            if missing:
                raise SettingError("ML_BACKEND=azureml needs setting(s) " + ", ".join(missing))

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes` (field names), validated and checked like `from_env`."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        token = _ONLY_GIVEN.set(True)
        try:
            settings = type(self)(**values)
        except ValidationError as exc:
            raise SettingError(_describe(exc)) from None
        finally:
            _ONLY_GIVEN.reset(token)
        settings.check()
        return settings

    @property
    def storage_connection(self) -> str:
        return self.azurewebjobsstorage

    def binding_values(self) -> dict[str, str]:
        """Values for `%NAME%` binding expressions, as the Functions host resolves them from app settings."""
        out = {}
        for name, setting in SETTINGS.items():
            value = getattr(self, setting.attr)
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


@dataclass(frozen=True)
class Setting:
    """What the README and `local.settings.json.example` say of a setting, derived from its declaration."""

    env: str
    attr: str
    default: Any
    doc: str
    secret: bool
    choices: tuple[str, ...] = ()


def _declared() -> dict[str, Setting]:
    out = {}
    for attr, info in Settings.model_fields.items():
        extra = info.json_schema_extra or {}
        choices = tuple(get_args(info.annotation)) if get_origin(info.annotation) is Literal else ()
        out[info.validation_alias] = Setting(info.validation_alias, attr, info.default, info.description or "",
                                             bool(extra.get("secret")), choices)
    return out


# app setting name -> Setting, in declaration order.
SETTINGS: dict[str, Setting] = _declared()

_EXPECTED = {"int_parsing": "an integer", "int_from_float": "an integer", "float_parsing": "a number",
             "bool_parsing": "true or false"}


def _describe(exc: ValidationError) -> str:
    """The first error, in the settings' own words: `setting NAME must be <what>, got <value>`."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else "?"
    setting = SETTINGS.get(name) or next((s for s in SETTINGS.values() if s.attr == name), None)
    if setting is not None:
        name = setting.env
    if setting is not None and setting.choices:
        expected = "one of " + ", ".join(setting.choices)
    else:
        expected = _EXPECTED.get(err["type"], err["msg"])
    shown = "<hidden>" if setting is not None and setting.secret else repr(err.get("input"))
    return f"setting {name} must be {expected}, got {shown}"


_cached: Settings | None = None


def get_settings(reload: bool = False) -> Settings:
    """The worker's settings, read once."""
    global _cached
    if _cached is None or reload:
        _cached = Settings.from_env()
    return _cached


# --- Running in Azure with local-only values ------------------------------------------------------------------

# App Service sets WEBSITE_INSTANCE_ID on every instance it runs (Kudu wiki "Azure runtime environment"); Linux
# consumption-style plans may leave it out, so WEBSITE_SITE_NAME together with FUNCTIONS_EXTENSION_VERSION (both
# set by the platform for every Function App) also counts, as OpenTelemetry's Azure Functions resource detector
# does. Core Tools and this project's local host set neither WEBSITE_INSTANCE_ID nor WEBSITE_SITE_NAME.
def running_in_azure(env: Mapping[str, str] | None = None) -> bool:
    """Whether the platform's own environment variables say this process runs in Azure App Service/Functions."""
    env = os.environ if env is None else env
    return bool(env.get("WEBSITE_INSTANCE_ID")) or (
        bool(env.get("WEBSITE_SITE_NAME")) and bool(env.get("FUNCTIONS_EXTENSION_VERSION")))


class MisconfiguredForAzure(SettingError):
    """Running in Azure with settings that only work locally. `problems` is a list of (setting, fix) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("running in Azure with local-only settings: "
                         + "; ".join(f"{name}: {fix}" for name, fix in problems))


def _is_development_storage(connection: str) -> bool:
    low = connection.lower()
    return "usedevelopmentstorage=true" in low or "devstoreaccount1" in low or "127.0.0.1" in low


def local_only_problems(settings: Settings, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The settings that hold a local-only value, each with what to set it to in Azure (empty: none)."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    if settings.ml_backend == "local":
        problems.append(("ML_BACKEND", "is 'local' (the local ML workspace); set ML_BACKEND=azureml"))
    if settings.messaging == "storage-queue":
        problems.append(("MESSAGING", "is 'storage-queue' (no function reads those queues in Azure); set "
                                      "MESSAGING=servicebus"))
    if not settings.servicebusconnection:
        problems.append(("ServiceBusConnection__fullyQualifiedNamespace",
                         "is empty; set it to <namespace>.servicebus.windows.net"))
    if not settings.storage_account_name and _is_development_storage(settings.storage_connection):
        problems.append(("AzureWebJobsStorage__accountName", "is empty and AzureWebJobsStorage is development "
                                                             "storage (Azurite); set it to the storage account's "
                                                             "name (identity-based connection)"))
    for name in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AML_WORKSPACE"):
        if not getattr(settings, name.lower()):
            problems.append((name, "is empty; set it to the Azure ML workspace's coordinate"))
    if not settings.aml_datastore or settings.aml_datastore == "workspaceblobstore":
        problems.append(("AML_DATASTORE", f"is {settings.aml_datastore or 'empty'!s}, which does not hold "
                                          f"RUNS_CONTAINER's files; set it to the datastore registered over "
                                          f"RUNS_CONTAINER ({DEFAULT_DATASTORE} with azd up)"))
    from .notifications import local_webhook_urls

    if local_webhook_urls(settings):
        problems.append(("NOTIFY_WEBHOOK_URLS", "holds http URLs (allowed only to 127.0.0.1 locally); use https"))
    # Every LOCAL_* setting is a local testing aid (including ones other modules add later).
    for name in sorted(n for n in env if n.startswith("LOCAL_") and str(env[n]).strip()):
        problems.append((name, "is a local-only aid; remove it from the app settings"))
    return problems


def check_runtime(settings: Settings, env: Mapping[str, str] | None = None) -> None:
    """Raise `MisconfiguredForAzure` when running in Azure (see `running_in_azure`) with local-only settings.
    The one check behind `GET /api/health` and `shared.bootstrap.services()`, so every trigger gets it."""
    if running_in_azure(env):
        problems = local_only_problems(settings, env)
        if problems:
            raise MisconfiguredForAzure(problems)
