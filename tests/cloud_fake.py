"""A fake Azure deployment for `chatft doctor` (implements `chatft_local.doctor.Cloud`), at the cloud boundary.

It holds what `azd up` would have made and enforces the Azure rules the doctor's checks rely on, so a test cannot
build a deployment Azure would refuse:
- Service Bus queues: duplicate detection is fixed at creation (requiresDuplicateDetection cannot be updated);
  maxDeliveryCount at least 1; lockDuration at most 5 minutes (Service Bus quotas).
- Azure ML datastore names: letters, digits and underscores (az ml datastore docs); an identity-based blob
  datastore has credentials "None".
- Event Grid: a system topic offers only its source's event types (storage: Microsoft.Storage.*, Azure ML:
  Microsoft.MachineLearningServices.*); at most 25 advanced filters; webhook endpoints are HTTPS.
- Event Grid custom topics: the input schema is one of EventGridSchema, CustomEventSchema, CloudEventSchemaV1_0
  and cannot be changed once the topic exists; the endpoint is `https://<name>.<region>-1.eventgrid.azure.net/api/events`.
- Role assignments name built-in roles that exist.
- Base models: an archived one (stage Archived or past FinetuneRetirementDate) is refused with the app's message;
  compute: the notebook's checks via shared.ml.training_params (GPUs from the VM size table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date

from chatft_local.doctor import (APP_ROLES, APP_ROLES_WITH_METRICS, APP_ROLES_WITH_WEBHOOK_SECRET, Datastore,
                                 EventTopic, Queue, RoleAssignment, Subscription, azure_required_settings,
                                 binding_settings, expected_subscriptions)
from shared.config import SETTINGS, Settings
from shared.ml.port import BaseModel, Compute, PermanentError
from shared.ml.training_params import archive_reason, archived_model_error, check_finetune_compute, gpus_per_node

SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
RG = f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-chatft/providers"
SCOPES = {
    "Microsoft.Storage/storageAccounts": f"{RG}/Microsoft.Storage/storageAccounts/stchatft",
    "Microsoft.ServiceBus/namespaces": f"{RG}/Microsoft.ServiceBus/namespaces/sb-chatft",
    "Microsoft.Insights/components": f"{RG}/Microsoft.Insights/components/appi-chatft",
    "Microsoft.MachineLearningServices/workspaces": f"{RG}/Microsoft.MachineLearningServices/workspaces/mlw-chatft",
    "Microsoft.EventGrid/topics": f"{RG}/Microsoft.EventGrid/topics/evgt-runs-chatft",
    "Microsoft.KeyVault/vaults": f"{RG}/Microsoft.KeyVault/vaults/kvn-chatft",
}
TOPIC_ENDPOINT = "https://evgt-runs-chatft.eastus2-1.eventgrid.azure.net/api/events"
TOPIC_SCHEMAS = ("EventGridSchema", "CustomEventSchema", "CloudEventSchemaV1_0")
BUILT_IN_ROLES = {*APP_ROLES, *APP_ROLES_WITH_METRICS, *APP_ROLES_WITH_WEBHOOK_SECRET, "Storage Blob Data Reader", "Storage Blob Data Contributor",
                  "Contributor", "Reader"}
# VM sizes the fake workspace offers: (name, GPUs).
VM_SIZES = {"Standard_NC24ads_A100_v4": 1, "Standard_NC48ads_A100_v4": 2, "Standard_DS3_v2": 0}
TOPIC_EVENT_PREFIX = {"Microsoft.Storage.StorageAccounts": "Microsoft.Storage.",
                      "Microsoft.MachineLearningServices.Workspaces": "Microsoft.MachineLearningServices."}


class AzureRefused(ValueError):
    """What Azure would answer with a 400 to the same request."""


@dataclass
class FakeCloud:
    settings: dict[str, str] = field(default_factory=dict)
    principal_id: str | None = "11111111-1111-1111-1111-111111111111"
    models: dict[str, tuple[str | None, dict[str, str]]] = field(default_factory=dict)  # name -> (stage, tags)
    computes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (vm size, provisioning state)
    datastores: dict[str, Datastore] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    roles: list[RoleAssignment] = field(default_factory=list)
    topics: dict[str, EventTopic] = field(default_factory=dict)  # endpoint -> topic
    today: date = date(2026, 11, 29)
    app_exists: bool = True
    component_versions: list[str] = field(default_factory=lambda: ["0.0.81", "0.0.82"])  # the registry's, in order

    # --- what a deployment does (Azure's rules enforced) --------------------------------------------------------

    def create_queue(self, name: str, *, requires_duplicate_detection: bool, max_delivery_count: int,
                     lock_duration_seconds: float = 60) -> None:
        if max_delivery_count < 1:
            raise AzureRefused("maxDeliveryCount must be at least 1")
        if not 5 <= lock_duration_seconds <= 300:
            raise AzureRefused("lockDuration must be between 5 seconds and 5 minutes")
        existing = self.queues.get(name)
        if existing and existing.requires_duplicate_detection != requires_duplicate_detection:
            raise AzureRefused("requiresDuplicateDetection cannot be changed on an existing queue")
        self.queues[name] = Queue(name, requires_duplicate_detection, max_delivery_count, lock_duration_seconds)

    def register_datastore(self, name: str, account: str, container: str, credentials: str = "None") -> None:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise AzureRefused(f"datastore name {name!r}: only letters, digits and underscores")
        self.datastores[name] = Datastore(name, account, container, credentials)

    def subscribe(self, sub: Subscription) -> None:
        prefix = TOPIC_EVENT_PREFIX[sub.topic_type]
        wrong = [t for t in sub.included_event_types if not t.startswith(prefix)]
        if wrong:
            raise AzureRefused(f"event types {wrong} are not offered by a {sub.topic_type} topic")
        if len(sub.advanced_filters) > 25:
            raise AzureRefused("at most 25 advanced filters")
        self.subscriptions[sub.name] = sub

    def create_topic(self, name: str, region: str, *, input_schema: str, disable_local_auth: bool) -> str:
        if input_schema not in TOPIC_SCHEMAS:
            raise AzureRefused(f"inputSchema {input_schema!r} is not one of {TOPIC_SCHEMAS}")
        endpoint = f"https://{name}.{region}-1.eventgrid.azure.net/api/events"
        existing = self.topics.get(endpoint)
        if existing and existing.input_schema != input_schema:
            raise AzureRefused("the input schema of an existing topic cannot be changed")
        self.topics[endpoint] = EventTopic(name, endpoint, input_schema, disable_local_auth)
        return endpoint

    def assign(self, role: str, kind: str) -> None:
        if role not in BUILT_IN_ROLES:
            raise AzureRefused(f"role definition {role!r} does not exist")
        self.roles.append(RoleAssignment(role, SCOPES[kind]))

    # --- Cloud ----------------------------------------------------------------------------------------------

    def app_settings(self) -> dict[str, str] | None:
        return dict(self.settings) if self.app_exists else None

    def app_principal_id(self) -> str | None:
        return self.principal_id

    def pipeline_component_versions(self, name: str) -> tuple[list[str], str]:
        return list(self.component_versions), (self.component_versions[-1] if self.component_versions else "")

    def base_model(self, name: str) -> BaseModel:
        registry = self.settings.get("AML_REGISTRY", "azureml")
        if name not in self.models:
            raise PermanentError(f"base model {name} not found in registry {registry}; set BASE_MODEL")
        stage, tags = self.models[name]
        reason = archive_reason(stage, tags, self.today)
        if reason:
            raise archived_model_error(name, registry, reason)
        return BaseModel(name=name, version="1", id=f"azureml://registries/{registry}/models/{name}/versions/1",
                         tags=tags)

    def compute(self, name: str, base_model: BaseModel) -> Compute:
        if name not in self.computes:
            raise PermanentError(f"compute {name} not found in the workspace; create a GPU cluster of that name or "
                                 f"set AML_COMPUTE")
        vm_size, state = self.computes[name]
        check_finetune_compute(name, vm_size, state, base_model.tags)
        return Compute(name=name, vm_size=vm_size, gpus_per_node=gpus_per_node(name, vm_size, VM_SIZES.items()))

    def datastore(self, name: str) -> Datastore | None:
        return self.datastores.get(name)

    def queue(self, name: str) -> Queue | None:
        return self.queues.get(name)

    def subscription(self, name: str) -> Subscription | None:
        return self.subscriptions.get(name)

    def role_assignments(self, principal_id: str) -> list[RoleAssignment]:
        return list(self.roles) if principal_id == self.principal_id else []

    def event_topic(self, endpoint: str) -> EventTopic | None:
        return self.topics.get(endpoint)


def azure_app_settings() -> dict[str, str]:
    """The app settings infra/main.bicep gives the Function App, as values (outputs filled in)."""
    values = {name: str(SETTINGS[name].default).lower() if isinstance(SETTINGS[name].default, bool)
              else str(SETTINGS[name].default) for name in azure_required_settings()}
    names, connections = binding_settings()
    values.update({n: values.get(n, "x") for n in names})
    values.update({
        "ML_BACKEND": "azureml", "MESSAGING": "servicebus", "BASE_MODEL": "Phi-4",
        "AzureWebJobsStorage__accountName": "stchatft",
        "ServiceBusConnection__fullyQualifiedNamespace": "sb-chatft.servicebus.windows.net",
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION_ID, "AZURE_RESOURCE_GROUP": "rg-chatft", "AML_WORKSPACE": "mlw-chatft",
        "AZURE_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
        "EVENTGRID_TOPIC_ENDPOINT": TOPIC_ENDPOINT,
    })
    for prefix in connections:
        values[f"{prefix}__credential"] = "managedidentity"
        values[f"{prefix}__clientId"] = values["AZURE_CLIENT_ID"]
    return values


def healthy_cloud() -> FakeCloud:
    """What `azd up` and the postdeploy hook leave: every check of `chatft doctor` passes."""
    cloud = FakeCloud(settings=azure_app_settings())
    s = Settings.from_env(cloud.settings)
    cloud.models["Phi-4"] = (None, {"finetune_compute_allow_list": "['Standard_NC24ads_A100_v4']",
                                    "inference_compute_allow_list": "['Standard_NC24ads_A100_v4']"})
    cloud.computes[s.aml_compute] = ("Standard_NC24ads_A100_v4", "Succeeded")
    cloud.register_datastore(s.aml_datastore, s.storage_account_name, s.runs_container)
    for q in (s.runs_queue, s.deploy_queue, s.notify_queue):
        cloud.create_queue(q, requires_duplicate_detection=True, max_delivery_count=s.max_delivery_count,
                           lock_duration_seconds=120)
    for sub in expected_subscriptions(s).values():
        cloud.subscribe(sub)
    cloud.create_topic("evgt-runs-chatft", "eastus2", input_schema="CloudEventSchemaV1_0", disable_local_auth=True)
    for role, kind in APP_ROLES.items():
        cloud.assign(role, kind)
    return cloud


def with_setting(cloud: FakeCloud, name: str, value: str | None) -> FakeCloud:
    """The same deployment with one app setting changed (None removes it)."""
    settings = dict(cloud.settings)
    if value is None:
        settings.pop(name, None)
    else:
        settings[name] = value
    return replace(cloud, settings=settings)
