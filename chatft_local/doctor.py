"""`chatft doctor`'s checks: read-only, one result per check, each failure with the fix.

Local checks talk to the real things (Azurite, the local host, the key file, the local ML workspace's state).
Azure checks ask a `Cloud` (the port below) for facts about a deployment made by `azd up` (infra/) and compare
them with what the app needs; `chatft_local.azure_cloud.AzureCloud` reads them from Azure, and tests use a fake
that enforces the same facts (tests/cloud_fake.py). Nothing here creates, changes or deletes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from shared.config import SETTINGS, Settings, SettingError, local_only_problems
from shared.uploads import event_grid_subject_filter

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Settings only the local runtime reads: never needed on the Function App.
LOCAL_RUNTIME_SETTINGS = frozenset({"CHATFT_STATE_DIR", "CHATFT_HOST_PORT"})


def azure_required_settings() -> list[str]:
    """Settings (shared/config.py) the Function App must carry in Azure: all but the local runtime's, LOCAL_*
    aids, and the AzureWebJobsStorage connection string (identity-based: `AzureWebJobsStorage__accountName`)."""
    return [name for name in SETTINGS
            if name not in LOCAL_RUNTIME_SETTINGS and not name.startswith("LOCAL_") and name != "AzureWebJobsStorage"]


_EXPRESSION = re.compile(r"%([A-Za-z0-9_]+)%")
_CONNECTION = re.compile(r"""connection\s*=\s*["']([A-Za-z0-9_]+)["']""")


def binding_settings(functions_dir: Path = PROJECT_ROOT / "functions") -> tuple[set[str], set[str]]:
    """(`%NAME%` settings, connection prefixes) used by the trigger modules in `functions_dir`: scanned from the
    source so triggers added later are covered without a list to keep in step."""
    names: set[str] = set()
    connections: set[str] = set()
    for path in sorted(functions_dir.glob("*.py")):
        text = path.read_text()
        names.update(_EXPRESSION.findall(text))
        connections.update(_CONNECTION.findall(text))
    return names, connections


def connection_problems(prefix: str, app: Mapping[str, str]) -> list[str]:
    """What an identity-based connection `prefix` with a user-assigned identity lacks in the app settings
    (Learn: "Identity-based connections": `__credential=managedidentity` and `__clientId`, plus the address)."""
    missing = []
    if app.get(f"{prefix}__credential", "").lower() != "managedidentity":
        missing.append(f"{prefix}__credential=managedidentity")
    if not app.get(f"{prefix}__clientId"):
        missing.append(f"{prefix}__clientId=<the identity's client id>")
    address = ("__fullyQualifiedNamespace", "__accountName", "__blobServiceUri", "__serviceUri")
    if not any(app.get(prefix + a) for a in address):
        missing.append(f"{prefix}__fullyQualifiedNamespace or {prefix}__accountName")
    return missing


# --- What a correct deployment holds (infra/ and scripts/postdeploy.* make exactly this) ------------------------

JOB_EVENT_TYPES = ("Microsoft.MachineLearningServices.RunStatusChanged",
                   "Microsoft.MachineLearningServices.RunCompleted")
PIPELINE_RUN_TYPE = "azureml.PipelineRun"
# The quality gate's evaluation is a command job: the run history's type of those (azure-ai-ml v1's
# ScriptRun.RUN_TYPE). Not observed on a live workspace; the reconciler covers it should the events not come.
COMMAND_RUN_TYPE = "azureml.scriptrun"
APP_TAG_FILTER_KEY = "data.runTags.chatft-app"  # shared.ml.port.TAG_APP on every job the app submits


@dataclass(frozen=True)
class Subscription:
    """An Event Grid subscription as deployed: where it sends, what it lets through."""

    name: str
    topic_type: str  # "Microsoft.Storage.StorageAccounts" | "Microsoft.MachineLearningServices.Workspaces"
    endpoint_path: str  # e.g. "/runtime/webhooks/blobs" (no host, no key)
    function: str  # the functionName query value
    included_event_types: tuple[str, ...]
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    advanced_filters: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (key, operator, values)
    schema: str = "EventGridSchema"


def expected_subscriptions(settings: Settings) -> dict[str, Subscription]:
    """The two subscriptions the postdeploy hook makes, by name."""
    uploads = event_grid_subject_filter(settings.training_container)
    return {
        "ingest-blob-created": Subscription(
            "ingest-blob-created", "Microsoft.Storage.StorageAccounts", "/runtime/webhooks/blobs",
            "Host.Functions.ingest", ("Microsoft.Storage.BlobCreated",),
            subject_begins_with=uploads["subjectBeginsWith"], subject_ends_with=uploads["subjectEndsWith"]),
        "job-events": Subscription(
            "job-events", "Microsoft.MachineLearningServices.Workspaces", "/runtime/webhooks/EventGrid",
            "job_events", JOB_EVENT_TYPES,
            advanced_filters=(("data.runType", "StringIn", (PIPELINE_RUN_TYPE, COMMAND_RUN_TYPE)),
                              (APP_TAG_FILTER_KEY, "StringIn", (settings.app_id,)))),
    }


# Roles the app's identity needs, from the one table of its operations (shared/permissions.py), which
# tests/test_permissions.py proves against infra/.
from shared.permissions import APP_ROLES, APP_ROLES_WITH_METRICS, APP_ROLES_WITH_WEBHOOK_SECRET  # noqa: E402

# The run-events topic infra/app/notifications.bicep makes (Learn: Microsoft.EventGrid/topics).
CLOUD_EVENTS_SCHEMA = "CloudEventSchemaV1_0"


@dataclass(frozen=True)
class EventTopic:
    """An Event Grid custom topic as deployed."""

    name: str
    endpoint: str
    input_schema: str  # "CloudEventSchemaV1_0" | "EventGridSchema" | "CustomEventSchema"
    local_auth_disabled: bool


@dataclass(frozen=True)
class Queue:
    name: str
    requires_duplicate_detection: bool
    max_delivery_count: int
    lock_duration_seconds: float


@dataclass(frozen=True)
class Datastore:
    name: str
    account_name: str
    container_name: str
    credentials_type: str  # "None" for identity-based


@dataclass(frozen=True)
class RoleAssignment:
    role: str  # role definition name, e.g. "Storage Blob Data Owner"
    scope: str  # ARM id of the resource it is held on


class Cloud(Protocol):
    """Read-only facts about one deployment. Each lookup returns None when the thing does not exist; the ML
    lookups raise `shared.ml.port.MLBackendError` subclasses whose message says what to fix."""

    def app_settings(self) -> dict[str, str] | None: ...
    def app_principal_id(self) -> str | None: ...
    def base_model(self, name: str): ...  # -> shared.ml.port.BaseModel
    def compute(self, name: str, base_model) : ...  # -> shared.ml.port.Compute
    def datastore(self, name: str) -> Datastore | None: ...
    def pipeline_component_versions(self, name: str) -> tuple[list[str], str]: ...  # (versions, label latest's)
    def queue(self, name: str) -> Queue | None: ...
    def subscription(self, name: str) -> Subscription | None: ...
    def role_assignments(self, principal_id: str) -> list[RoleAssignment]: ...
    def event_topic(self, endpoint: str) -> EventTopic | None: ...


# --- Results --------------------------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"✔ {self.name}" + (f": {self.detail}" if self.detail else "")
        return f"✘ {self.name}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "", fix: str = "") -> Check:
        check = Check(name, ok, detail, fix)
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def _guard(report: Report, name: str, fix: str, probe: Callable[[], tuple[bool, str, str]]) -> bool:
    """Run one probe; an exception is a failed check with its message (never a traceback)."""
    try:
        ok, detail, specific_fix = probe()
    except Exception as exc:  # a check reports every failure as a line; nothing propagates
        ok, detail, specific_fix = False, f"{type(exc).__name__}: {str(exc)[:300]}", ""
    report.add(name, ok, detail, specific_fix or ("" if ok else fix))
    return ok


# --- Local checks ---------------------------------------------------------------------------------------------

def local_checks(settings: Settings, report: Report, *, timeout: float = 3.0) -> None:
    """Azurite reachable, host up, function key present (and accepted), local ML workspace state readable."""
    import requests

    from chatft_local.hosting.keys import key_path

    def azurite() -> tuple[bool, str, str]:
        from azure.core.exceptions import AzureError, ServiceRequestError
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(settings.storage_connection, connection_timeout=timeout,
                                                          read_timeout=timeout, retry_total=0)
        try:
            client.get_service_properties()
        except AzureError as exc:
            if "connect" in str(exc).lower() or isinstance(exc, ServiceRequestError):
                return False, f"nothing answers at {client.url.split('?')[0]}", ""
            raise
        return True, client.url.split("?")[0], ""

    _guard(report, "Azurite reachable", "start it: `chatft host` starts Azurite, or run "
           "`node_modules/.bin/azurite --skipApiVersionCheck --disableTelemetry --location .chatft/azurite`",
           azurite)

    base = f"http://127.0.0.1:{settings.chatft_host_port}"

    def host() -> tuple[bool, str, str]:
        try:
            r = requests.get(f"{base}/api/health", timeout=timeout)
        except requests.ConnectionError:
            return False, f"nothing answers at {base}", ""
        if r.status_code != 200:
            return False, f"GET /api/health answered {r.status_code}: {r.text[:200]}", "fix the settings it names"
        return True, base, ""

    host_up = _guard(report, "local host up", "start it: `chatft host` (or `chatft demo --keep`)", host)

    def key() -> tuple[bool, str, str]:
        path = key_path(settings.chatft_state_dir)
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            return False, f"no function key at {path}", "`chatft key` (or `chatft host`) creates it"
        if host_up:
            r = requests.get(f"{base}/api/openapi.json", headers={"x-functions-key": value}, timeout=timeout)
            if r.status_code != 200:
                return False, f"the host refused the key in {path} ({r.status_code})", \
                    "restart `chatft host` with the same CHATFT_STATE_DIR"
        return True, str(path), ""

    _guard(report, "function key present", "`chatft key` creates it", key)

    def workspace() -> tuple[bool, str, str]:
        from chatft_local.workspace.local import LocalWorkspace

        ws = LocalWorkspace(settings)
        endpoints = ws.list_endpoints()  # reads every endpoint record: a corrupt one raises
        return True, f"{ws.root} ({len(endpoints)} endpoint(s))", ""

    _guard(report, "local ML workspace state readable",
           f"move the damaged folder under {Path(settings.chatft_state_dir) / 'workspace'} aside", workspace)


# --- Azure checks ---------------------------------------------------------------------------------------------

def azure_checks(cloud: Cloud, report: Report, *, functions_dir: Path = PROJECT_ROOT / "functions",
                 gpu_vm_size: str = "") -> None:
    """Checks a deployment through `cloud`: the app's settings, then each resource they name. `gpu_vm_size` (azd's
    GPU_VM_SIZE) is the size infra/ declares for the cluster: an existing cluster of another size is never
    updated by `azd up` (Azure ML cannot change a cluster's VM size), so a difference is reported."""
    app = _guard_value(report, "Function App found", "run `azd up`, or set AZURE_FUNCTION_APP_NAME and "
                       "RESOURCE_GROUP (azd sets both)", cloud.app_settings)
    if app is None:
        return
    names, connections = binding_settings(functions_dir)
    missing = [n for n in [*azure_required_settings(), *sorted(names)] if n not in app]
    problems = []
    try:
        settings = Settings.from_env(app)
        problems = [f"{n} {fix}" for n, fix in local_only_problems(settings, app)]
    except SettingError as exc:
        report.add("app settings valid", False, str(exc), "fix the setting it names (azd env set, then azd provision)")
        return
    for prefix in sorted(connections):
        problems += [f"connection {prefix} needs {m}" for m in connection_problems(prefix, app)]
    if missing:
        problems.insert(0, "not set: " + ", ".join(dict.fromkeys(missing)))
    report.add("app settings complete, none local-only", not problems, "; ".join(problems) or f"{len(app)} set",
               "" if not problems else "set them on the Function App (infra/main.bicep sets all; `azd provision`)")

    base_model = _guard_value(report, f"base model {settings.base_model} found and not archived",
                              "set BASE_MODEL to a model offered for chat-completion fine-tuning (e.g. Phi-4)",
                              lambda: cloud.base_model(settings.base_model))
    if base_model is not None:
        compute = _guard_value(report, f"compute {settings.aml_compute} exists and has GPUs",
                               "create a GPU cluster of that name (azd up does) or set AML_COMPUTE",
                               lambda: cloud.compute(settings.aml_compute, base_model))
        if compute is not None and gpu_vm_size:
            same = compute.vm_size.lower() == gpu_vm_size.lower()
            report.add(f"compute {settings.aml_compute} has GPU_VM_SIZE", same,
                       compute.vm_size if same else f"it is {compute.vm_size}, GPU_VM_SIZE is {gpu_vm_size}",
                       "" if same else "delete the cluster and run `azd provision` (a cluster's size cannot be "
                                       "changed), or set GPU_VM_SIZE to its size")

    def component() -> tuple[bool, str, str]:
        name, pinned = settings.aml_pipeline_component, settings.aml_pipeline_component_version
        versions, latest = cloud.pipeline_component_versions(name)
        if pinned not in versions:
            return False, f"version {pinned} not in registry {settings.aml_registry} (it offers {latest or 'none'})", \
                "set AML_PIPELINE_COMPONENT_VERSION to a version the registry offers, after reading its spec"
        if latest and _version_key(latest) > _version_key(pinned):
            # Not a failure: the pinned version still runs. Moving on is a choice to make after reading the spec.
            return True, f"pinned at {pinned}; the registry offers a newer one, {latest}: read its spec, then set " \
                         f"AML_PIPELINE_COMPONENT_VERSION={latest} to move", ""
        return True, f"pinned at {pinned}, the registry's latest", ""

    _guard(report, f"pipeline component {settings.aml_pipeline_component} at its pinned version", "", component)

    def datastore() -> tuple[bool, str, str]:
        found = cloud.datastore(settings.aml_datastore)
        if found is None:
            return False, f"no datastore {settings.aml_datastore}", \
                "register an identity-based blob datastore over RUNS_CONTAINER (azd up does) or set AML_DATASTORE"
        want = (settings.storage_account_name, settings.runs_container)
        if (found.account_name, found.container_name) != want:
            return False, f"points at {found.account_name}/{found.container_name}, not {want[0]}/{want[1]}", \
                "point it at the app's storage account and RUNS_CONTAINER"
        if found.credentials_type.lower() != "none":
            return False, f"uses {found.credentials_type} credentials", "make it identity-based (credentials None)"
        return True, f"{found.account_name}/{found.container_name}, identity-based", ""

    _guard(report, f"datastore {settings.aml_datastore} points at RUNS_CONTAINER", "", datastore)

    for queue_name in (settings.runs_queue, settings.deploy_queue, settings.notify_queue):
        def queue(queue_name: str = queue_name) -> tuple[bool, str, str]:
            found = cloud.queue(queue_name)
            if found is None:
                return False, "not found", f"create Service Bus queue {queue_name} (azd up does)"
            wrong = []
            if not found.requires_duplicate_detection:
                wrong.append("duplicate detection is off (it can only be set when the queue is created)")
            if found.max_delivery_count != settings.max_delivery_count:
                wrong.append(f"maxDeliveryCount {found.max_delivery_count} ≠ MAX_DELIVERY_COUNT "
                             f"{settings.max_delivery_count}")
            if wrong:
                return False, "; ".join(wrong), "recreate the queue as infra/app/servicebus.bicep declares it"
            return True, f"duplicate detection on, maxDeliveryCount {found.max_delivery_count}", ""

        _guard(report, f"queue {queue_name}", "", queue)

    for want in expected_subscriptions(settings).values():
        def subscription(want: Subscription = want) -> tuple[bool, str, str]:
            found = cloud.subscription(want.name)
            if found is None:
                return False, "not found", "run the postdeploy hook: `azd hooks run postdeploy`"
            diffs = [f"{f}: {getattr(found, f)!r}, want {getattr(want, f)!r}"
                     for f in ("topic_type", "endpoint_path", "function", "included_event_types",
                               "subject_begins_with", "advanced_filters", "schema")
                     if _norm(getattr(found, f)) != _norm(getattr(want, f))]
            if diffs:
                return False, "; ".join(diffs), "run the postdeploy hook again: `azd hooks run postdeploy`"
            return True, f"{want.endpoint_path}?functionName={want.function}", ""

        _guard(report, f"Event Grid subscription {want.name}", "", subscription)

    def topic() -> tuple[bool, str, str]:
        if not settings.eventgrid_topic_endpoint:
            return False, "EVENTGRID_TOPIC_ENDPOINT is empty", "set it to the run-events topic's endpoint (azd up does)"
        found = cloud.event_topic(settings.eventgrid_topic_endpoint)
        if found is None:
            return False, f"no topic at {settings.eventgrid_topic_endpoint}", \
                "create it as infra/app/notifications.bicep declares it (`azd provision`)"
        wrong = []
        if found.input_schema != CLOUD_EVENTS_SCHEMA:
            wrong.append(f"input schema {found.input_schema}, not {CLOUD_EVENTS_SCHEMA} (fixed at creation)")
        if not found.local_auth_disabled:
            wrong.append("local (key) auth is on")
        if wrong:
            return False, "; ".join(wrong), "recreate the topic as infra/app/notifications.bicep declares it"
        return True, f"{found.name}: CloudEvents 1.0, identity only", ""

    _guard(report, "Event Grid topic for run events", "", topic)

    def roles() -> tuple[bool, str, str]:
        principal = cloud.app_principal_id()
        if not principal:
            return False, "the app has no managed identity", "give it the user-assigned identity (azd up does)"
        held = cloud.role_assignments(principal)
        needed = dict(APP_ROLES, **(APP_ROLES_WITH_METRICS if settings.cleanup_check_metrics else {}),
                      **(APP_ROLES_WITH_WEBHOOK_SECRET if app.get("NOTIFY_WEBHOOK_SECRET", "").startswith(
                          "@Microsoft.KeyVault(") else {}))
        lacking = [f"{role} on a {kind.split('/')[-1][:-1]}" for role, kind in needed.items()
                   if not any(a.role == role and _scope_kind(a.scope) == kind.lower() for a in held)]
        if lacking:
            return False, "lacks " + ", ".join(lacking), \
                "assign them (infra/app/rbac.bicep, ml.bicep, notifications.bicep; `azd provision`)"
        return True, f"{len(needed)} roles held", ""

    _guard(report, "app identity holds its roles", "", roles)


def _version_key(version: str) -> tuple:
    """Registry component versions are dotted numbers (0.0.82); anything else sorts first."""
    return tuple(int(p) if p.isdigit() else -1 for p in str(version).split("."))


def _norm(value):
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, (tuple, list)):
        return tuple(sorted((_norm(v) for v in value), key=repr))
    return value


def _scope_kind(scope: str) -> str:
    """'microsoft.storage/storageaccounts' for an ARM id that ends at a storage account."""
    parts = scope.strip("/").split("/")
    try:
        i = max(i for i, p in enumerate(parts) if p.lower() == "providers")
    except ValueError:
        return ""
    rest = parts[i + 1:]
    return f"{rest[0]}/{rest[1]}".lower() if len(rest) == 3 else ""


def _guard_value(report: Report, name: str, fix: str, fetch: Callable[[], object]):
    """A check whose probe returns a value (None = not found); the value is handed back when it passed."""
    try:
        value = fetch()
    except Exception as exc:  # the message of an MLBackendError already says what to fix
        report.add(name, False, str(exc)[:400], fix)
        return None
    if value is None:
        report.add(name, False, "not found", fix)
        return None
    report.add(name, True)
    return value


def render(report: Report) -> Iterable[str]:
    for check in report.checks:
        yield check.line()
    failed = sum(not c.ok for c in report.checks)
    yield "all checks passed" if report.ok else f"{failed} of {len(report.checks)} checks failed"
