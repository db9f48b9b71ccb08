"""Every Azure operation the app's identities perform, with the RBAC action Azure checks and the scope it is
requested at: one table read by tests/test_permissions.py (every SDK call in the adapters has an entry; every entry
is granted by a role infra/ assigns to that identity at that scope or a parent) and by `chatft doctor` (the roles
the app's identity must hold). Pure data: no SDK import.

To add an operation: append one `Operation` to OPERATIONS with the adapter call exactly as the scan finds it
(`<module>:<receiver>.<method>`, `self.` dropped), the identity that makes it, the action (ARM) or data action, the
scope, and its source: for an Azure ML call the REST request builder in azure-ai-ml 1.35.2
(`azure/ai/ml/_restclient/arm_ml_service/operations/_operations.py`), whose URL template is `path` and decides the
scope. If no role infra/ assigns grants it, assign one (infra/app/rbac.bicep or ml.bicep) or name the `fallback`
that handles Azure's 403.
"""

from __future__ import annotations

from dataclasses import dataclass

ML = "Microsoft.MachineLearningServices/workspaces"
REG = "Microsoft.MachineLearningServices/registries"
BLOB = "Microsoft.Storage/storageAccounts/blobServices/containers"
TABLE = "Microsoft.Storage/storageAccounts/tableServices/tables"
QUEUE = "Microsoft.Storage/storageAccounts/queueServices/queues"
ARM_BUILDERS = "azure/ai/ml/_restclient/arm_ml_service/operations/_operations.py"

# Scopes, each with its parent (a role assigned at a parent covers its children; never the reverse).
SCOPE_PARENTS = {
    "subscription": None,
    "resource-group": "subscription", "storage": "resource-group", "runs-container": "storage",
    "servicebus": "resource-group", "appinsights": "resource-group",
    "event-topic": "resource-group", "key-vault": "resource-group",
    "ml-resource-group": "subscription", "workspace": "ml-resource-group", "ml-storage": "ml-resource-group",
    "ml-registry": "ml-resource-group",  # the workspace's container registry (ACR)
    "registry": None,  # the public `azureml` system registry, in Microsoft's subscription
}

# Modules that call Azure SDK clients: tests/test_permissions.py scans them, and fails on a module of shared/ that
# imports an Azure SDK client package without being listed here.
ADAPTERS = ("shared/ml/azureml.py", "shared/storage.py", "shared/messaging.py", "shared/run_store.py",
            "shared/ingestion.py")
# SDK methods that make no request of their own (closing, building a client): the scan skips them.
NO_REQUEST_METHODS = frozenset({"close", "from_connection_string", "from_container_url"})
# Functions of the SDKs (not client methods) that make requests: the scan finds calls of these names too.
SDK_FUNCTIONS = ("azure.ai.ml._utils._registry_utils:get_storage_details_for_registry_assets",)


@dataclass(frozen=True)
class Operation:
    call: str  # "<module>:<receiver>.<method>" as the scan finds it; "" for what the Functions host does itself
    identity: str  # "app" | "compute" | "workspace" | "endpoint"
    actions: tuple[str, ...]  # ARM actions (control plane)
    scope: str  # a key of SCOPE_PARENTS
    source: str  # SDK builder "<file>:<function>" or the documentation page
    data_actions: tuple[str, ...] = ()
    path: str = ""  # the REST URL template the builder makes (Azure ML calls)
    when: str = ""  # the Bicep condition under which it happens (e.g. cleanupCheckMetrics); "" always
    fallback: str = ""  # what handles a 403 instead of a role (a dotted name in shared/)
    granted_by: str = ""  # set where Azure grants it without a role assignment of the template, with the source


_W = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.MachineLearningServices" \
     "/workspaces/{workspaceName}"
_R = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.MachineLearningServices" \
     "/registries/{registryName}"
_PUBLIC = ("Learn, concept-machine-learning-registries-mlops.md: the `azureml` system registry holds the model "
           "catalog's models and components, readable by every Azure ML user")
_WS_GET = Operation("", "app", (f"{ML}/read",), "workspace", f"{ARM_BUILDERS}:build_workspaces_get_request",
                    path=_W)


def _ml(call: str, action: str, builder: str, path: str, *, scope: str = "workspace", **kw) -> Operation:
    return Operation(f"shared/ml/azureml.py:{call}", "app", (action,), scope, f"{ARM_BUILDERS}:{builder}",
                     path=path, **kw)


OPERATIONS: tuple[Operation, ...] = (
    # --- Azure ML registry reads (the public azureml registry)
    _ml("registry.components.get", f"{REG}/components/versions/read", "build_registry_component_versions_get_request",
        _R + "/components/{componentName}/versions/{version}", scope="registry", granted_by=_PUBLIC),
    _ml("registry.models.get", f"{REG}/models/versions/read", "build_registry_model_versions_get_request",
        _R + "/models/{modelName}/versions/{version}", scope="registry", granted_by=_PUBLIC),
    # The base model's tokenizer files (shared.ml.azureml.AzureMLBackend.base_model_tokenizer): the registry's data
    # reference for the model's folder, the request azure-ai-ml's `models.download` makes (azure-ai-ml 1.35.2
    # _utils/_registry_utils.py:get_storage_details_for_registry_assets, POST _R + /datarefs/{name}/versions/{version}
    # on the registry's data plane, api-version 2021-10-01-dataplanepreview; not an ARM builder, so no `path`). The
    # action Azure checks there is not published: a private registry grants it through AzureML Registry User
    # (`registries/assets/*`); the public registry grants every user, like its model reads above.
    Operation("shared/ml/azureml.py:get_storage_details_for_registry_assets", "app", (f"{REG}/assets/read",),
              "registry", "azure/ai/ml/_utils/_registry_utils.py:get_storage_details_for_registry_assets",
              granted_by=_PUBLIC),
    # ... then the files are listed and read with the SAS that reference answers (a container SAS URI): the SAS is the
    # authorization, no role is checked (Learn, storage/common/storage-sas-overview.md).
    Operation("shared/ml/azureml.py:container.list_blobs", "app", (), "registry", "Learn: List Blobs",
              data_actions=(f"{BLOB}/blobs/read",), granted_by="the registry's SAS (datarefs answer)"),
    Operation("shared/ml/azureml.py:container.download_blob", "app", (), "registry", "Learn: Get Blob",
              data_actions=(f"{BLOB}/blobs/read",), granted_by="the registry's SAS (datarefs answer)"),
    # --- Azure ML workspace control plane
    _ml("ws.compute.get", f"{ML}/computes/read", "build_compute_get_request", _W + "/computes/{computeName}"),
    # list_sizes first GETs the workspace for its location (operations/_compute_operations.py, list_sizes), then
    # asks the subscription-scope vmSizes list, which no workspace role grants: the adapter calls it only for a
    # size outside VM_SIZE_GPUS, and a 403 there becomes an error naming AML_COMPUTE_GPUS.
    _ml("ws.compute.list_sizes", "Microsoft.MachineLearningServices/locations/vmsizes/read",
        "build_virtual_machine_sizes_list_request",
        "/subscriptions/{subscriptionId}/providers/Microsoft.MachineLearningServices/locations/{location}/vmSizes",
        scope="subscription", fallback="shared.ml.training_params.VM_SIZE_GPUS"),
    _ml("workspace.jobs.get", f"{ML}/jobs/read", "build_jobs_get_request", _W + "/jobs/{id}"),
    _ml("workspace.jobs.create_or_update", f"{ML}/jobs/write", "build_jobs_create_or_update_request",
        _W + "/jobs/{id}"),
    _ml("workspace.jobs.begin_cancel", f"{ML}/jobs/cancel/action", "build_jobs_cancel_request",
        _W + "/jobs/{id}/cancel"),
    _ml("workspace.models.create_or_update", f"{ML}/models/versions/write",
        "build_model_versions_create_or_update_request", _W + "/models/{name}/versions/{version}"),
    _ml("workspace.models.list", f"{ML}/models/versions/read", "build_model_versions_list_request",
        _W + "/models/{name}/versions"),
    _ml("workspace.models.get", f"{ML}/models/versions/read", "build_model_versions_get_request",
        _W + "/models/{name}/versions/{version}"),
    # --- endpoints, deployments and keys
    _ml("workspace.online_endpoints.begin_create_or_update", f"{ML}/onlineEndpoints/write",
        "build_online_endpoints_create_or_update_request", _W + "/onlineEndpoints/{endpointName}"),
    # begin_create_or_update of an endpoint or a deployment first GETs the workspace for its location
    # (operations/_online_endpoint_operations.py:228, _online_deployment_operations.py:188): `workspaces/read`,
    # which AzureML Data Scientist's `workspaces/*/read` does not match.
    _WS_GET,
    _ml("workspace.online_endpoints.get", f"{ML}/onlineEndpoints/read", "build_online_endpoints_get_request",
        _W + "/onlineEndpoints/{endpointName}"),
    _ml("workspace.online_endpoints.list", f"{ML}/onlineEndpoints/read", "build_online_endpoints_list_request",
        _W + "/onlineEndpoints"),
    _ml("workspace.online_endpoints.get_keys", f"{ML}/onlineEndpoints/listKeys/action",
        "build_online_endpoints_list_keys_request", _W + "/onlineEndpoints/{endpointName}/listKeys"),
    _ml("workspace.online_endpoints.begin_delete", f"{ML}/onlineEndpoints/delete",
        "build_online_endpoints_delete_request", _W + "/onlineEndpoints/{endpointName}"),
    _ml("workspace.online_deployments.begin_create_or_update", f"{ML}/onlineEndpoints/deployments/write",
        "build_online_deployments_create_or_update_request",
        _W + "/onlineEndpoints/{endpointName}/deployments/{deploymentName}"),
    _ml("workspace.online_deployments.get", f"{ML}/onlineEndpoints/deployments/read",
        "build_online_deployments_get_request", _W + "/onlineEndpoints/{endpointName}/deployments/{deploymentName}"),
    # A model line's endpoint holds several deployments: listed for the rollout, the old one deleted after it.
    _ml("workspace.online_deployments.list", f"{ML}/onlineEndpoints/deployments/read",
        "build_online_deployments_list_request", _W + "/onlineEndpoints/{endpointName}/deployments"),
    _ml("workspace.online_deployments.begin_delete", f"{ML}/onlineEndpoints/deployments/delete",
        "build_online_deployments_delete_request",
        _W + "/onlineEndpoints/{endpointName}/deployments/{deploymentName}"),
    # --- metrics (cleanup, only with CLEANUP_CHECK_METRICS): the batch metrics API checks metrics/read on the
    # resource (Learn, azure-monitor/essentials/migrate-to-batch-api.md)
    Operation("shared/ml/azureml.py:client.query_resources", "app", ("Microsoft.Insights/metrics/read",),
              "workspace", "Learn: Azure Monitor metrics batch API (metrics:getBatch), needs Monitoring Reader",
              when="cleanupCheckMetrics"),
    # --- blob (uploads, run files, reports) and the host's own storage
    Operation("shared/storage.py:service.get_container_client", "app", (), "storage", "no request (a client)"),
    Operation("shared/storage.py:client.create_container", "app", (f"{BLOB}/write",), "storage",
              "Learn: Put Container, Microsoft.Storage/.../containers/write"),
    Operation("shared/storage.py:container(...).get_blob_client", "app", (), "storage", "no request (a client)"),
    Operation("shared/storage.py:blob(...).upload_blob", "app", (), "storage", "Learn: Put Blob",
              data_actions=(f"{BLOB}/blobs/write",)),
    Operation("shared/storage.py:blob(...).download_blob", "app", (), "storage", "Learn: Get Blob",
              data_actions=(f"{BLOB}/blobs/read",)),
    Operation("shared/storage.py:blob_client.download_blob", "app", (), "storage", "Learn: Get Blob",
              data_actions=(f"{BLOB}/blobs/read",)),
    Operation("shared/storage.py:blob_client.get_blob_properties", "app", (), "storage", "Learn: Get Blob Properties",
              data_actions=(f"{BLOB}/blobs/read",)),
    Operation("shared/ingestion.py:blob_client.get_blob_properties", "app", (), "storage",
              "Learn: Get Blob Properties", data_actions=(f"{BLOB}/blobs/read",)),
    Operation("shared/storage.py:_blob.commit_block_list", "app", (), "storage", "Learn: Put Block List",
              data_actions=(f"{BLOB}/blobs/write",)),
    Operation("shared/storage.py:_blob.stage_block", "app", (), "storage", "Learn: Put Block",
              data_actions=(f"{BLOB}/blobs/write",)),
    Operation("", "app", (), "storage", "Functions host: AzureWebJobsStorage leases, receipts, deployment package",
              data_actions=(f"{BLOB}/blobs/read", f"{BLOB}/blobs/write", f"{BLOB}/blobs/delete")),
    # --- table (the run table)
    Operation("shared/run_store.py:table.create_table", "app", (f"{TABLE}/write",), "storage", "Learn: Create Table"),
    Operation("shared/run_store.py:_client().create_entity", "app", (), "storage", "Learn: Insert Entity",
              data_actions=(f"{TABLE}/entities/add/action",)),
    Operation("shared/run_store.py:_client().get_entity", "app", (), "storage", "Learn: Query Entities",
              data_actions=(f"{TABLE}/entities/read",)),
    Operation("shared/run_store.py:table.query_entities", "app", (), "storage", "Learn: Query Entities",
              data_actions=(f"{TABLE}/entities/read",)),
    Operation("shared/run_store.py:_client().update_entity", "app", (), "storage", "Learn: Update Entity",
              data_actions=(f"{TABLE}/entities/update/action",)),
    Operation("shared/run_store.py:_client().query_entities", "app", (), "storage", "Learn: Query Entities",
              data_actions=(f"{TABLE}/entities/read",)),
    # --- queue (MESSAGING=storage-queue; the blob trigger's own queues)
    Operation("shared/messaging.py:client.create_queue", "app", (f"{QUEUE}/write",), "storage", "Learn: Create Queue"),
    Operation("shared/messaging.py:_client().send_message", "app", (), "storage", "Learn: Put Message",
              data_actions=(f"{QUEUE}/messages/write",)),
    Operation("", "app", (), "storage", "Functions host: blob trigger work and poison queues",
              data_actions=(f"{QUEUE}/messages/read", f"{QUEUE}/messages/process/action")),
    # --- Service Bus
    Operation("shared/messaging.py:local.client.get_queue_sender", "app", (), "servicebus",
              "no request (the link opens on send)"),
    Operation("shared/messaging.py:sender.send_messages", "app", (), "servicebus", "Learn: Service Bus data actions",
              data_actions=("Microsoft.ServiceBus/namespaces/messages/send/action",)),
    Operation("", "app", (), "servicebus", "Functions host: Service Bus trigger and scale controller",
              data_actions=("Microsoft.ServiceBus/namespaces/messages/receive/action",)),
    # --- run events (shared/notifications.py): the Event Grid topic, and the webhook secret's Key Vault reference
    Operation("", "app", (), "event-topic", "Learn: publish to an Event Grid topic with Microsoft Entra ID "
              "(EventGridPublisherClient.send)", data_actions=("Microsoft.EventGrid/events/send/action",)),
    Operation("", "app", (), "key-vault", "Learn: Key Vault references (the platform reads the secret with the app's "
              "identity)", data_actions=("Microsoft.KeyVault/vaults/secrets/getSecret/action",), when="storeSecret"),
    # --- telemetry
    Operation("", "app", (), "appinsights", "Functions host: Entra-authenticated Application Insights",
              data_actions=("Microsoft.Insights/Telemetry/Write",)),
    # --- the compute cluster's identity (the fine-tuning job's steps)
    Operation("", "compute", (), "runs-container", "the pipeline reads train/test through the identity datastore",
              data_actions=(f"{BLOB}/blobs/read",)),
    Operation("", "compute", (), "ml-storage", "Learn, how-to-disable-local-auth-storage.md: jobs with a model "
              "output need Storage Blob Data Contributor for the cluster's user-assigned identity",
              data_actions=(f"{BLOB}/blobs/read", f"{BLOB}/blobs/write"), when="createWorkspace"),
    Operation("", "compute", ("Microsoft.ContainerRegistry/registries/pull/read",), "ml-registry",
              "Learn, how-to-identity-based-service-authentication.md: with ACR admin off, compute pulls by identity",
              when="createWorkspace"),
    # --- the workspace's identity (datastore validation, previews)
    Operation("", "workspace", (), "runs-container", "serviceDataAccessAuthIdentity WorkspaceSystemAssignedIdentity",
              data_actions=(f"{BLOB}/blobs/read",)),
    # --- the endpoint's system-assigned identity: Azure ML grants it itself
    Operation("", "endpoint", (), "ml-storage", "reads the registered model", data_actions=(f"{BLOB}/blobs/read",),
              granted_by="Learn, concept-endpoints-online-auth.md: with a system-assigned identity Azure ML assigns "
                         "Storage Blob Data Reader on the workspace storage and AcrPull on its registry"),
)


# The roles that grant the app's OPERATIONS, with the kind of resource each is held on: `chatft doctor` checks the
# app's identity holds them, and tests/test_permissions.py checks they are exactly the roles infra/ assigns the app
# and that together they grant every entry above.
APP_ROLES: dict[str, str] = {
    "Storage Blob Data Owner": "Microsoft.Storage/storageAccounts",
    "Storage Queue Data Contributor": "Microsoft.Storage/storageAccounts",
    "Storage Table Data Contributor": "Microsoft.Storage/storageAccounts",
    "Azure Service Bus Data Owner": "Microsoft.ServiceBus/namespaces",
    "Monitoring Metrics Publisher": "Microsoft.Insights/components",
    "AzureML Data Scientist": "Microsoft.MachineLearningServices/workspaces",
    "Reader": "Microsoft.MachineLearningServices/workspaces",
    "EventGrid Data Sender": "Microsoft.EventGrid/topics",
}
APP_ROLES_WITH_METRICS = {"Monitoring Reader": "Microsoft.MachineLearningServices/workspaces"}
# Only with NOTIFY_WEBHOOK_SECRET (infra/app/notifications.bicep `storeSecret`): the secret's Key Vault reference.
APP_ROLES_WITH_WEBHOOK_SECRET = {"Key Vault Secrets User": "Microsoft.KeyVault/vaults"}


def operations_of(identity: str) -> tuple[Operation, ...]:
    return tuple(op for op in OPERATIONS if op.identity == identity)
