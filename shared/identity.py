"""The app's Azure identity: one DefaultAzureCredential per worker (managed identity in Azure; no browser)."""

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
            from azure.identity import DefaultAzureCredential

            _credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return _credential
