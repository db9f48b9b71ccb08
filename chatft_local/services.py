"""Background services of the local host: the local ML workspace's supervisor.

The local host calls `start(settings, host)` once Azurite is up and its port is bound, and `stop()` when it shuts
down. While it runs, job events go to this host's Event Grid webhook, and the workspace's model servers are kept
running; at shutdown they are stopped, to come back on the next start.
"""

from __future__ import annotations

import logging
from typing import Any

from chatft_local.runtime import use_local_workspace
from chatft_local.workspace.local import EVENTS_FUNCTION, LocalWorkspace

log = logging.getLogger("chatft.workspace")

_running: tuple[LocalWorkspace, Any] | None = None


def start(settings: Any, host: Any = None) -> None:
    """Start supervising the workspace under the host's state folder (else CHATFT_STATE_DIR)."""
    global _running
    stop()
    _forget_app_state()
    state_dir = getattr(host, "state_dir", None)
    if state_dir is not None:
        settings = settings.replace(chatft_state_dir=str(state_dir))
    use_local_workspace()
    workspace = LocalWorkspace(settings)
    eventgrid_url = getattr(host, "eventgrid_url", None)
    if eventgrid_url and getattr(host, "port", None):
        workspace.publish_events_url(f"{eventgrid_url}&functionName={EVENTS_FUNCTION}")
    _running = (workspace, workspace.supervisor().start())
    log.info("local ML workspace: %s (model servers supervised)", workspace.root)


def stop() -> None:
    """Stop supervising and stop the model servers; forget the published events URL."""
    global _running
    if _running is None:
        return
    workspace, supervisor = _running
    _running = None
    supervisor.stop(stop_servers=True)
    workspace.retract_events_url()
    _forget_app_state()


def _forget_app_state() -> None:
    """The app caches settings and services per worker: a host (re)started in this process must not inherit them."""
    from shared.bootstrap import override_services
    from shared.config import get_settings

    override_services(None)
    get_settings(reload=True)
