"""What the local runtime provides to the app: the app's composition root (`shared.bootstrap`) never imports the
local runtime; the local host and the `chatft` commands register it there."""

from __future__ import annotations

from typing import Any


def _local_workspace(settings: Any) -> Any:
    from chatft_local.workspace.faults import with_faults  # imported when a backend is first built
    from chatft_local.workspace.local import LocalWorkspace

    return with_faults(LocalWorkspace(settings), settings.local_faults)


def use_local_workspace() -> None:
    """Serve `ML_BACKEND=local` with the local ML workspace."""
    from shared.bootstrap import register_ml_backend

    register_ml_backend("local", _local_workspace)
