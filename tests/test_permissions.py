"""Every Azure call the app's identities make is in shared/permissions.py, and every entry there is granted by a
role that infra/ assigns to that identity at that scope or a parent (built-in role definitions: tests/data), or is
covered by a named fallback or by a grant Azure makes itself. Offline: the SDK's own request builders and the
Bicep read by tree-sitter."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

from shared import permissions
from shared.permissions import ADAPTERS, OPERATIONS, SCOPE_PARENTS, Operation
from tests.bicep import load

ROOT = Path(__file__).resolve().parent.parent
ROLES = json.loads((ROOT / "tests" / "data" / "builtin_roles.json").read_text())["roles"]
SDK_PACKAGES = ("azure.storage", "azure.data", "azure.servicebus", "azure.ai.ml", "azure.monitor")
# The client classes the adapters hold; their public methods are what counts as an SDK call.
SDK_CLASSES = ("azure.storage.blob:BlobServiceClient", "azure.storage.blob:ContainerClient",
               "azure.storage.blob:BlobClient", "azure.data.tables:TableClient", "azure.storage.queue:QueueClient",
               "azure.servicebus:ServiceBusClient", "azure.servicebus:ServiceBusSender",
               "azure.monitor.querymetrics:MetricsClient",
               "azure.ai.ml.operations:ComputeOperations", "azure.ai.ml.operations:JobOperations",
               "azure.ai.ml.operations:ModelOperations", "azure.ai.ml.operations:OnlineEndpointOperations",
               "azure.ai.ml.operations:OnlineDeploymentOperations", "azure.ai.ml.operations:ComponentOperations")
ML_GROUPS = {"compute", "jobs", "models", "online_endpoints", "online_deployments", "components"}
PLAIN = set(dir(dict)) | set(dir(list)) | set(dir(str)) | set(dir(set))


def sdk_methods() -> set[str]:
    names = set()
    for spec in SDK_CLASSES:
        module, cls = spec.split(":")
        names |= {n for n, _ in inspect.getmembers(getattr(importlib.import_module(module), cls), callable)
                  if not n.startswith("_")}
    return names


def sdk_calls(source: str, module: str, methods: set[str]) -> set[str]:
    """`module:receiver.method` of each call in `source` whose method is an SDK client's; a name that dicts or lists
    also have (get, update) counts only on an Azure ML operations group (`ws.compute.get`)."""
    found = set()
    methods = methods - permissions.NO_REQUEST_METHODS
    functions = {spec.split(":")[1] for spec in permissions.SDK_FUNCTIONS}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            found.add(f"{module}:{node.func.id}")
        if isinstance(node, ast.Call):  # a bound method handed to a thread pool is a call too
            for arg in node.args:
                if isinstance(arg, ast.Attribute) and arg.attr in methods - PLAIN:
                    found.add(f"{module}:{ast.unparse(arg).removeprefix('self.')}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods:
            receiver = node.func.value
            if node.func.attr in PLAIN and not (isinstance(receiver, ast.Attribute) and receiver.attr in ML_GROUPS):
                continue
            text = re.sub(r"\(.+\)", "(...)", ast.unparse(node.func)).removeprefix("self.")
            text = text.replace("_client(...)", "_client()")
            found.add(f"{module}:{text}")
    return found


@pytest.fixture(scope="module")
def methods():
    return sdk_methods()


def scanned(methods) -> set[str]:
    return {c for m in ADAPTERS for c in sdk_calls((ROOT / m).read_text(), m, methods)}


# --- every call has an entry ----------------------------------------------------------------------------------

def test_every_sdk_call_in_the_adapters_has_an_entry(methods):
    calls = scanned(methods)
    assert "shared/ml/azureml.py:ws.compute.list_sizes" in calls and len(calls) > 30  # the scan sees the calls
    declared = {op.call for op in OPERATIONS if op.call}
    assert sorted(calls - declared) == []
    assert sorted(declared - calls) == [], "entries for calls no adapter makes any more"


def test_a_call_added_without_an_entry_is_caught(methods):
    source = (ROOT / "shared/ml/azureml.py").read_text() + "\n\ndef extra(ws):\n    ws.online_endpoints.begin_regenerate_keys('e')\n"
    declared = {op.call for op in OPERATIONS if op.call}
    new = sdk_calls(source, "shared/ml/azureml.py", methods) - declared
    assert new == {"shared/ml/azureml.py:ws.online_endpoints.begin_regenerate_keys"}


def test_the_sdk_functions_exist_and_a_function_call_without_an_entry_is_caught(methods):
    for spec in permissions.SDK_FUNCTIONS:
        module, name = spec.split(":")
        assert callable(getattr(importlib.import_module(module), name)), spec
    source = "def extra(c):\n    get_storage_details_for_registry_assets(service_client=c)\n"
    assert sdk_calls(source, "shared/x.py", methods) == {"shared/x.py:get_storage_details_for_registry_assets"}


def test_every_module_that_imports_an_azure_sdk_client_is_scanned():
    for path in sorted((ROOT / "shared").rglob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        if any(m.startswith(SDK_PACKAGES) for m in imported):
            assert str(path.relative_to(ROOT)) in ADAPTERS, path


def test_each_azure_ml_entry_names_the_sdk_builder_of_its_url_and_its_scope_follows_from_it():
    builders = importlib.import_module("azure.ai.ml._restclient.arm_ml_service.operations._operations")
    for op in OPERATIONS:
        if not op.path:
            continue
        file, name = op.source.split(":")
        assert file == permissions.ARM_BUILDERS
        assert f'_url = "{op.path}"' in inspect.getsource(getattr(builders, name)), op
        kind = ("registry" if "/registries/" in op.path else "workspace" if "/workspaces/" in op.path
                else "subscription")
        assert op.scope == kind, op


# --- every entry is granted -----------------------------------------------------------------------------------

PRINCIPALS = {"appPrincipalId": "app", "computePrincipalId": "compute", "computeIdentity.properties.principalId":
              "compute", "workspacePrincipalId": "workspace"}
SCOPES = {"workspace": "workspace", "mlStorage": "ml-storage", "storage": "storage", "namespace": "servicebus",
          "storage::blobService::runsContainer": "runs-container", "applicationInsights": "appinsights",
          "subscription()": "subscription", "registry": "ml-registry", "topic": "event-topic", "vault": "key-vault"}


def assignments(files=("app/ml.bicep", "app/rbac.bicep", "app/notifications.bicep")) -> list[tuple[str, str, str, str]]:
    """(identity, scope, role definition id, condition) of each role assignment infra/ makes."""
    out = []
    for name in files:
        bicep = load(name)
        roles = bicep.variables().get("roles", {})
        src = bicep.src.decode()
        for r in bicep.resources():
            if not r.type.startswith("Microsoft.Authorization/roleAssignments") or r.existing:
                continue
            role = re.search(r"roles\.(\w+)", r.body["properties"]["roleDefinitionId"]).group(1)
            condition = ""
            if r.conditional:
                m = re.search(rf"resource {r.symbol} [^=]+= if \((.+?)\) \{{", src)
                condition = m.group(1)
            out.append((PRINCIPALS[r.body["properties"]["principalId"]], SCOPES[r.body["scope"]], roles[role],
                        condition))
    return out


def _matches(pattern: str, action: str) -> bool:
    # Azure matches actions case-insensitively; `*` stands for any run of characters, slashes included (Learn,
    # role-based-access-control/role-definitions.md, "Actions": "Microsoft.Compute/*/read").
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), action, re.IGNORECASE) is not None


def allows(role: dict, action: str, data: bool) -> bool:
    grant, deny = ("dataActions", "notDataActions") if data else ("actions", "notActions")
    return any(_matches(p, action) for p in role[grant]) and not any(_matches(p, action) for p in role[deny])


def _covers(held: str, wanted: str) -> bool:
    while wanted is not None:
        if held == wanted:
            return True
        wanted = SCOPE_PARENTS[wanted]
    return False


def ungranted(ops=OPERATIONS, held=None) -> list[str]:
    held = assignments() if held is None else held
    missing = []
    for op in ops:
        if op.granted_by or op.fallback:
            continue
        for action, data in [*((a, False) for a in op.actions), *((a, True) for a in op.data_actions)]:
            if not any(ident == op.identity and _covers(scope, op.scope) and cond in ("", op.when)
                       and allows(ROLES[role_id], action, data) for ident, scope, role_id, cond in held):
                missing.append(f"{op.identity} {action} at {op.scope} ({op.call or op.source})")
    return missing


def test_every_entry_is_granted_by_a_role_the_template_assigns():
    assert ungranted() == []


def test_fallbacks_exist_and_the_list_sizes_entry_has_one():
    for op in OPERATIONS:
        if op.fallback:
            module, name = op.fallback.rsplit(".", 1)
            assert getattr(importlib.import_module(module), name), op
    (sizes,) = [op for op in OPERATIONS if op.call.endswith("compute.list_sizes")]
    without = dataclasses.replace(sizes, fallback="")
    assert ungranted([without]) == [f"app Microsoft.MachineLearningServices/locations/vmsizes/read at subscription "
                                    f"({sizes.call})"], "no workspace role may grant a subscription-scope read"


def test_removing_a_role_assignment_fails_the_check():
    held = assignments()
    reader = [a for a in held if ROLES[a[2]]["roleName"] == "Reader"]
    assert reader and ungranted(held=[a for a in held if a not in reader])
    owner = [a for a in held if ROLES[a[2]]["roleName"] == "Storage Blob Data Owner"]
    assert any("blobs/write" in m for m in ungranted(held=[a for a in held if a not in owner]))


def test_the_wildcards_match_as_azure_does():
    ds = next(r for r in ROLES.values() if r["roleName"] == "AzureML Data Scientist")
    ml = "Microsoft.MachineLearningServices"
    assert allows(ds, f"{ml}/workspaces/onlineEndpoints/deployments/write", False)
    assert allows(ds, f"{ml.lower()}/WORKSPACES/jobs/read", False)
    assert not allows(ds, f"{ml}/workspaces/read", False)  # `workspaces/*/read` needs a segment in between
    assert not allows(ds, f"{ml}/workspaces/computes/gpu/write", False)  # notActions win
    assert not allows(ds, f"{ml}/locations/vmsizes/read", False)


def test_the_identities_of_jobs_and_endpoints_are_covered():
    assert {op.identity for op in OPERATIONS} == {"app", "compute", "workspace", "endpoint"}


def test_doctor_checks_exactly_the_roles_the_template_assigns_the_app():
    from chatft_local.doctor import APP_ROLES, APP_ROLES_WITH_METRICS, APP_ROLES_WITH_WEBHOOK_SECRET

    assert APP_ROLES is permissions.APP_ROLES
    held = assignments()
    assert set(APP_ROLES) == {ROLES[r]["roleName"] for i, _s, r, c in held if i == "app" and not c}
    assert set(APP_ROLES_WITH_METRICS) | set(APP_ROLES_WITH_WEBHOOK_SECRET) == {
        ROLES[r]["roleName"] for i, _s, r, c in held if i == "app" and c}
