"""`chatft doctor`'s view of a real deployment (implements `chatft_local.doctor.Cloud`). Read-only.

Function App, Event Grid and role facts come from the Azure CLI (`az`, logged in), which already knows how to
page and authenticate those management APIs; Azure ML facts come from the app's own Azure ML adapter (the same
base-model and compute checks `submit` makes) and azure-ai-ml; queue facts from azure-servicebus's administration
client. All of these are the app's own dependencies (requirements.txt) or the CLI azd needs anyway, so the doctor
adds none. Nothing here is imported by the Function App.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

from chatft_local.doctor import Datastore, EventTopic, Queue, RoleAssignment, Subscription
from shared.config import Settings


class AzCliError(RuntimeError):
    """An `az` command failed; the message carries its stderr (never the command's secrets)."""


def az(*args: str, timeout: float = 60) -> Any:
    """Run `az ... -o json` and return its parsed output (None for empty output)."""
    exe = shutil.which("az")
    if exe is None:
        raise AzCliError("the Azure CLI (az) is not installed; install it and `az login`")
    done = subprocess.run([exe, *args, "-o", "json"], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AzCliError(done.stderr.strip()[:400] or f"az {args[0]} failed")
    return json.loads(done.stdout) if done.stdout.strip() else None


def _not_found(exc: Exception) -> bool:
    text = str(exc).lower()
    return "not found" in text or "could not be found" in text or "resourcenotfound" in text


@dataclass
class Deployment:
    """Where an `azd up` deployment lives: azd's outputs (infra/main.bicep), read from `azd env get-values`."""

    resource_group: str
    function_app: str
    storage_topic: str
    ml_resource_group: str
    ml_topic: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Deployment | None":
        values = {k: env.get(k, "") for k in ("RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME",
                                              "STORAGE_SYSTEM_TOPIC_NAME", "ML_RESOURCE_GROUP", "ML_SYSTEM_TOPIC_NAME")}
        if not values["RESOURCE_GROUP"] or not values["AZURE_FUNCTION_APP_NAME"]:
            return None
        return cls(values["RESOURCE_GROUP"], values["AZURE_FUNCTION_APP_NAME"], values["STORAGE_SYSTEM_TOPIC_NAME"],
                   values["ML_RESOURCE_GROUP"] or values["RESOURCE_GROUP"], values["ML_SYSTEM_TOPIC_NAME"])


class AzureCloud:
    """Facts about one deployment, read from Azure."""

    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self._settings: dict[str, str] | None = None

    def _app_settings_obj(self) -> Settings:
        return Settings.from_env(self.app_settings() or {})

    def app_settings(self) -> dict[str, str] | None:
        if self._settings is None:
            d = self.deployment
            try:
                rows = az("functionapp", "config", "appsettings", "list", "-g", d.resource_group, "-n", d.function_app)
            except AzCliError as exc:
                if _not_found(exc):
                    return None
                raise
            self._settings = {row["name"]: row.get("value") or "" for row in rows or []}
        return self._settings

    def app_principal_id(self) -> str | None:
        d = self.deployment
        site = az("functionapp", "identity", "show", "-g", d.resource_group, "-n", d.function_app) or {}
        for identity in (site.get("userAssignedIdentities") or {}).values():
            client_id = (self.app_settings() or {}).get("AZURE_CLIENT_ID")
            if not client_id or identity.get("clientId") == client_id:
                return identity.get("principalId")
        return site.get("principalId")

    def _backend(self):
        from shared.ml.azureml import AzureMLBackend

        return AzureMLBackend(self._app_settings_obj())

    def base_model(self, name: str):
        return self._backend().resolve_base_model(name)

    def compute(self, name: str, base_model):
        return self._backend().check_compute(name, base_model)

    def pipeline_component_versions(self, name: str) -> tuple[list[str], str]:
        backend = self._backend()
        versions = [str(c.version) for c in backend.registry.components.list(name=name)]
        return versions, backend.latest_pipeline_component_version()

    def datastore(self, name: str) -> Datastore | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            found = self._backend().workspace.datastores.get(name)
        except ResourceNotFoundError:
            return None
        credentials = getattr(found, "credentials", None)
        kind = "None" if credentials is None else type(credentials).__name__.replace("Configuration", "")
        return Datastore(found.name, getattr(found, "account_name", ""), getattr(found, "container_name", ""), kind)

    def queue(self, name: str) -> Queue | None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.servicebus.management import ServiceBusAdministrationClient

        from shared.identity import default_credential

        namespace = self._app_settings_obj().servicebusconnection
        with ServiceBusAdministrationClient(namespace, default_credential()) as admin:
            try:
                q = admin.get_queue(name)
            except ResourceNotFoundError:
                return None
        return Queue(q.name, bool(q.requires_duplicate_detection), int(q.max_delivery_count or 0),
                     q.lock_duration.total_seconds() if q.lock_duration else 0.0)

    def subscription(self, name: str) -> Subscription | None:
        d = self.deployment
        group, topic = ((d.resource_group, d.storage_topic) if name == "ingest-blob-created"
                        else (d.ml_resource_group, d.ml_topic))
        if not topic:
            return None
        try:
            found = az("eventgrid", "system-topic", "event-subscription", "show", "-g", group,
                       "--system-topic-name", topic, "-n", name, "--include-full-endpoint-url", "true")
            source = az("eventgrid", "system-topic", "show", "-g", group, "-n", topic)
        except AzCliError as exc:
            if _not_found(exc):
                return None
            raise
        return subscription_from_arm(name, source.get("topicType", ""), found)

    def event_topic(self, endpoint: str) -> EventTopic | None:
        rows = az("eventgrid", "topic", "list", "-g", self.deployment.resource_group) or []
        for row in rows:
            if (row.get("endpoint") or "").rstrip("/").lower() == endpoint.rstrip("/").lower():
                return EventTopic(row.get("name", ""), row.get("endpoint", ""), row.get("inputSchema", ""),
                                  bool(row.get("disableLocalAuth")))
        return None

    def role_assignments(self, principal_id: str) -> list[RoleAssignment]:
        rows = az("role", "assignment", "list", "--assignee", principal_id, "--all") or []
        return [RoleAssignment(r.get("roleDefinitionName", ""), r.get("scope", "")) for r in rows]


def subscription_from_arm(name: str, topic_type: str, found: Mapping[str, Any]) -> Subscription:
    """A `Subscription` from an event subscription's ARM JSON (as `az ... show` prints it). The key in the
    endpoint URL is read only to drop it: it never leaves this function."""
    destination = found.get("destination") or {}
    url = urlsplit(destination.get("endpointUrl") or destination.get("endpointBaseUrl") or "")
    function = (parse_qs(url.query).get("functionName") or [""])[0]
    flt = found.get("filter") or {}
    advanced = tuple((f.get("key", ""), f.get("operatorType", ""), tuple(f.get("values") or ()))
                     for f in flt.get("advancedFilters") or ())
    return Subscription(name, topic_type, url.path, function, tuple(flt.get("includedEventTypes") or ()),
                        subject_begins_with=flt.get("subjectBeginsWith") or "",
                        subject_ends_with=flt.get("subjectEndsWith") or "", advanced_filters=advanced,
                        schema=found.get("eventDeliverySchema") or "")
