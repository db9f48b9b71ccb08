"""The app's Azure identity: one DefaultAzureCredential per worker (managed identity in Azure; no browser).

With a user-assigned identity (what `azd up` creates) the credential must be told which one: AZURE_CLIENT_ID
holds its client id. DefaultAzureCredential reads that variable itself; it is passed explicitly too so the
dependence is visible here (azure-identity docs: DefaultAzureCredential, managed_identity_client_id)."""

from __future__ import annotations

import threading
from typing import Any

_credential: Any = None
_lock = threading.Lock()


def default_credential() -> Any:
    """The worker's credential, created on first use (azure.identity is imported only then)."""
    global _credential
    with _lock:
        if _credential is None:
            import os

            from azure.identity import DefaultAzureCredential

            _credential = DefaultAzureCredential(exclude_interactive_browser_credential=True,
                                                 managed_identity_client_id=os.environ.get("AZURE_CLIENT_ID") or None)
        return _credential
