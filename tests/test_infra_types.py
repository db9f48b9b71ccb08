"""infra/ checked against the resource providers' published types (issue 23, "What to build" 3): each resource's
`type@apiVersion` against Azure/bicep-types-az's generated types for that version, vendored trimmed in
tests/data/bicep_types/types.json (made by tests/data/bicep_types/trim.py, from the commit recorded there).
The checker is tests/bicep_types.py; here it passes on infra/ and fails on edited copies of infra/ files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.bicep import INFRA, BicepFile, files
from tests.bicep_types import DATA, check, used_types, vendored

# Preview API versions infra/ may use: `type@apiVersion` -> why no GA version will do. Preview versions retire,
# and a retired one stops `azd up` (issue 23, finding 7), so each needs a reason.
ALLOWED_PREVIEWS: dict[str, str] = {}

# Literals outside an open enum's listed values (bicep-types-az writes `modelAsString` enums as a union of the
# known literals and string) that infra/ means: (property path suffix, value) -> why.
OPEN_VALUES: dict[tuple[str, str], str] = {}


def _check(*paths: Path, **kwargs) -> list[str]:
    kwargs.setdefault("allowed_previews", ALLOWED_PREVIEWS)
    kwargs.setdefault("open_values", OPEN_VALUES)
    return check([BicepFile(p) for p in paths], **kwargs)


def _edited(tmp_path: Path, relative: str, old: str, new: str) -> Path:
    """A copy of infra/<relative> with `old` replaced once by `new` (it must be there)."""
    text = (INFRA / relative).read_text()
    assert old in text, f"{old!r} not in {relative}: the test's edit no longer applies"
    copy = tmp_path / Path(relative).name
    copy.write_text(text.replace(old, new, 1))
    return copy


# --- infra/ as it is --------------------------------------------------------------------------------------------

def test_infra_matches_the_published_types():
    assert check(files(), allowed_previews=ALLOWED_PREVIEWS, open_values=OPEN_VALUES) == []


def test_the_vendored_types_are_those_infra_uses_with_their_source():
    data = vendored()
    source = data["source"]
    assert source["repository"] == "https://github.com/Azure/bicep-types-az"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["not_found"] == []
    used = used_types(files())
    assert len(used) >= 20  # the walk finds nested children too (e.g. Microsoft.Web/sites/config)
    assert "Microsoft.Web/sites/config@2024-04-01" in used and "Microsoft.KeyVault/vaults/secrets@2023-07-01" in used
    # Exactly the types and versions infra/ declares: a version bump without a refresh fails here.
    assert set(data["resources"]) == used == set(source["files"])
    for type_and_version, path in source["files"].items():
        namespace, version = type_and_version.split("/")[0].lower(), type_and_version.rpartition("@")[2]
        assert re.fullmatch(rf"generated/[a-z0-9_]+/{re.escape(namespace)}/{re.escape(version)}/types\.json", path)


def test_every_allow_list_entry_says_why_and_is_used():
    declared = used_types(files())
    for type_and_version, reason in ALLOWED_PREVIEWS.items():
        assert type_and_version in declared and len(reason.split()) >= 3, type_and_version
    assert all(len(reason.split()) >= 3 for reason in OPEN_VALUES.values())


# --- edited copies: each mistake is caught, and said where ----------------------------------------------------

MISTAKES = [
    # A misspelt property, at several depths: under `properties`, deeper, at the top, in a discriminated variant.
    ("app/storage.bicep", "allowSharedKeyAccess: false", "allowSharedKeyAcess: false",
     "storage.bicep:19: storage.properties.allowSharedKeyAcess: unknown property 'allowSharedKeyAcess'"
     " of StorageAccountPropertiesCreateParametersOrStorageAccountProperties; did you mean 'allowSharedKeyAccess'?"),
    ("app/storage.bicep", "defaultAction: 'Allow'\n      bypass", "defaultAction: 'Allow'\n      bypas",
     "storage.properties.networkAcls.bypas: unknown property 'bypas' of NetworkRuleSet; did you mean 'bypass'?"),
    ("app/function.bicep", "instanceMemoryMB: instanceMemoryMB", "instanceMemoryMb: instanceMemoryMB",
     "app.properties.functionAppConfig.scaleAndConcurrency.instanceMemoryMb: unknown property 'instanceMemoryMb'"),
    ("app/ml.bicep", "nodeIdleTimeBeforeScaleDown: 'PT15M'", "nodeIdleTimeBeforeScaledown: 'PT15M'",
     "compute.properties.properties.scaleSettings.nodeIdleTimeBeforeScaledown: unknown property"),
    ("app/monitoring.bicep", "  tags: tags\n  kind: 'web'", "  tag: tags\n  kind: 'web'",
     "applicationInsights.tag: unknown property 'tag' of Microsoft.Insights/components; did you mean 'tags'?"),
    # ... in a nested child resource (`resource secret 'secrets'` inside the vault).
    ("app/notifications.bicep", "contentType: 'Standard", "contenttype: 'Standard",
     "secret.properties.contenttype: unknown property 'contenttype' of SecretProperties; did you mean 'contentType'?"),
    # A wrong enum literal: a closed enum, an open one, a discriminator, a child's name (Microsoft.Web/sites/config
    # is discriminated by its name), and an enum under a role assignment.
    ("app/storage.bicep", "defaultAction: 'Allow'", "defaultAction: 'Alow'",
     "storage.properties.networkAcls.defaultAction: 'Alow' is not one of ['Allow', 'Deny']; did you mean 'Allow'?"),
    ("app/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS12'",
     "storage.properties.minimumTlsVersion: 'TLS12' is not one of ['TLS1_0', 'TLS1_1', 'TLS1_2', 'TLS1_3'] (an open enum"),
    ("app/storage.bicep", "properties: { publicAccess: 'None' }", "properties: { publicAccess: 'none' }",
     "deploymentContainer.properties.publicAccess: 'none' is not one of ['Blob', 'Container', 'None']; did you mean 'None'?"),
    ("app/ml.bicep", "computeType: 'AmlCompute'", "computeType: 'AMLCompute'",
     "compute.properties.computeType: 'AMLCompute' is not one of"),
    ("app/ml.bicep", "systemDatastoresAuthMode: 'Identity'", "systemDatastoresAuthMode: 'identity'",
     "newWorkspace.properties.systemDatastoresAuthMode: 'identity' is not one of ['AccessKey', 'Identity', 'UserDelegationSAS']"),
    ("app/function.bicep", "name: 'appsettings'", "name: 'appSettings'",
     "settings.name: 'appSettings' is not one of"),
    ("app/rbac.bicep", "principalType: 'ServicePrincipal'", "principalType: 'Service'",
     "appBlobOwner.properties.principalType: 'Service' is not one of"),
    # A required property missing, a read-only one set, a literal of the wrong kind.
    ("app/eventgrid.bicep", "topicType: 'Microsoft.Storage.StorageAccounts'\n", "\n",
     None),  # topicType is optional for system topics: no problem (the check is not over-eager)
    ("app/ml.bicep", "        maxNodeCount: gpuMaxNodes\n", "",
     "compute.properties.properties.scaleSettings: required property 'maxNodeCount' is missing"),
    ("app/notifications.bicep", "    principalId: appPrincipalId\n", "",
     "appEventSender.properties: required property 'principalId' is missing"),
    ("app/monitoring.bicep", "DisableLocalAuth: true", "DisableLocalAuth: true\n    InstrumentationKey: 'k'",
     "applicationInsights.properties.InstrumentationKey: read-only property"),
    ("app/notifications.bicep", "disableLocalAuth: true", "disableLocalAuth: 'true'",
     "topic.properties.disableLocalAuth: 'true' where bool is expected"),
    ("app/servicebus.bicep", "disableLocalAuth: true", "disableLocalAuth: 1", "1 where bool is expected"),
]


@pytest.mark.parametrize("relative,old,new,expected", MISTAKES, ids=[f"{m[0]}:{m[2][:28]}" for m in MISTAKES])
def test_an_edited_copy_is_caught(tmp_path, relative, old, new, expected):
    problems = _check(_edited(tmp_path, relative, old, new))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems


def test_literals_are_checked_in_loops_conditions_and_both_branches_of_a_ternary(tmp_path):
    loop = ("resource more 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = "
            "[for name in ['a', 'b']: if (!empty(name)) {\n  parent: blobService\n  name: name\n"
            "  properties: { publicAccess: empty(name) ? 'None' : 'Public', metaData: {} }\n}]\n")
    copy = _edited(tmp_path, "app/storage.bicep", "output id string", loop + "output id string")
    problems = _check(copy)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "more.properties.publicAccess: 'Public' is not one of ['Blob', 'Container', 'None']",
        "more.properties.metaData: unknown property 'metaData' of ContainerProperties; did you mean 'metadata'?"]


def test_existing_resources_skip_the_required_check_but_not_the_names(tmp_path):
    # rbac.bicep's storage account is `existing` with only a name: Azure requires sku, kind and location to create one.
    created = _check(_edited(tmp_path, "app/rbac.bicep", "storageAccounts@2023-05-01' existing", "storageAccounts@2023-05-01'"))
    assert sorted(p.rsplit(" ", 3)[-3] for p in created) == ["'kind'", "'location'", "'sku'"]
    misspelt = _check(_edited(tmp_path, "app/rbac.bicep", "  name: storageAccountName", "  nme: storageAccountName"))
    assert any("storage.nme: unknown property" in p for p in misspelt)


def test_expressions_are_not_checked(tmp_path):
    # A parameter, a call and an interpolated string where an enum is expected: only Azure can judge those.
    copy = _edited(tmp_path, "app/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: '${name}x'")
    assert _check(copy) == []


def test_a_preview_version_fails_unless_listed_with_a_reason(tmp_path):
    preview = "Microsoft.EventGrid/systemTopics@2023-12-15-preview"
    copy = _edited(tmp_path, "app/eventgrid.bicep", "systemTopics@2022-06-15", "systemTopics@2023-12-15-preview")
    problems = _check(copy)
    assert any(f"preview API version {preview}: use a GA one, or list it with a reason" in p for p in problems)
    # Listed, the preview is allowed; its types must still be vendored (trim.py), like any version's.
    allowed = _check(copy, allowed_previews={preview: "the only version with the property we need"})
    assert not any("preview" in p and "GA" in p for p in allowed)
    assert allowed == [f"eventgrid.bicep:12: storageTopic: no vendored types for {preview}: refresh them with "
                       "tests/data/bicep_types/trim.py (or the version is not in bicep-types-az)"]


def test_an_open_enum_literal_can_be_accepted_with_a_reason(tmp_path):
    copy = _edited(tmp_path, "app/storage.bicep", "minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_4'")
    assert len(_check(copy)) == 1
    assert _check(copy, open_values={("minimumTlsVersion", "TLS1_4"): "a newer version than the types list"}) == []
    # A closed enum is never widened.
    closed = _edited(tmp_path, "app/storage.bicep", "defaultAction: 'Allow'", "defaultAction: 'Alow'")
    assert len(_check(closed, open_values={("defaultAction", "Alow"): "not possible for a closed enum"})) == 1


# --- trim.py, on a tiny bicep-types-az of our own ---------------------------------------------------------------

def test_trim_keeps_what_the_check_needs_and_records_the_commit(tmp_path):
    from tests.data.bicep_types.trim import trim

    literal = lambda v: {"$type": "StringLiteralType", "value": v}  # noqa: E731
    types = [
        {"$type": "StringType", "pattern": "^x$"},                                                          # 0
        literal("Microsoft.Foo/bars"), literal("A"), literal("B"),                                          # 1-3
        {"$type": "UnionType", "elements": [{"$ref": "#/2"}, {"$ref": "#/3"}]},                              # 4
        {"$type": "ObjectType", "name": "BarProperties", "properties": {
            "mode": {"type": {"$ref": "#/4"}, "flags": 1, "description": "required enum"},
            "state": {"type": {"$ref": "#/6"}, "flags": 2, "description": "read-only: its type is dropped"}}},  # 5
        {"$type": "ObjectType", "name": "State", "properties": {"deep": {"type": {"$ref": "#/0"}, "flags": 0}}},  # 6
        {"$type": "ObjectType", "name": "Microsoft.Foo/bars", "properties": {
            "name": {"type": {"$ref": "#/0"}, "flags": 9}, "type": {"type": {"$ref": "#/1"}, "flags": 10},
            "properties": {"type": {"$ref": "#/5"}, "flags": 0},
            "tags": {"type": {"$ref": "#/8"}, "flags": 0}}},                                                 # 7
        {"$type": "ObjectType", "name": "Tags", "properties": {}, "additionalProperties": {"$ref": "#/0"}},  # 8
        {"$type": "ResourceType", "name": "Microsoft.Foo/bars@2024-01-01", "body": {"$ref": "#/7"}},        # 9
    ]
    repo = tmp_path / "bicep-types-az"
    folder = repo / "generated" / "foo" / "microsoft.foo" / "2024-01-01"
    folder.mkdir(parents=True)
    (folder / "types.json").write_text(json.dumps(types))
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "types")
    data = trim(repo, "HEAD", {"Microsoft.Foo/bars@2024-01-01", "Microsoft.Foo/gone@2024-01-01"})
    assert data["source"]["commit"] == git("rev-parse", "HEAD").strip()
    assert data["source"]["files"] == {"Microsoft.Foo/bars@2024-01-01": "generated/foo/microsoft.foo/2024-01-01/types.json"}
    assert data["source"]["not_found"] == ["Microsoft.Foo/gone@2024-01-01"]
    body = data["types"][data["resources"]["Microsoft.Foo/bars@2024-01-01"]]
    props = data["types"][body["properties"]["properties"]["type"]]["properties"]
    assert props["state"] == {"readOnly": True, "type": None}
    assert "State" not in json.dumps(data["types"]) and "description" not in json.dumps(data["types"])
    # ... and the trimmed data checks a Bicep file.
    bicep = tmp_path / "bar.bicep"
    bicep.write_text("resource bar 'Microsoft.Foo/bars@2024-01-01' = {\n  name: 'b'\n  tags: { any: 'x' }\n"
                     "  properties: { mode: 'C', state: {} }\n}\n")
    assert [p.split(": ", 2)[2] for p in check([BicepFile(bicep)], data=data)] == [
        "'C' is not one of ['A', 'B']", "read-only property: Azure sets it"]
    bicep.write_text("resource bar 'Microsoft.Foo/bars@2024-01-01' = {\n  name: 'b'\n  properties: {}\n}\n")
    assert check([BicepFile(bicep)], data=data) == ["bar.bicep:3: bar.properties: required property 'mode' is missing"]


def test_the_data_file_is_what_trim_writes():
    # One type per line (small diffs on a refresh), as trim.py's _dumps writes it.
    from tests.data.bicep_types.trim import _dumps

    assert DATA.read_text() == _dumps(json.loads(DATA.read_text()))
