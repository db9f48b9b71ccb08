"""Shared fixtures: one real Azurite for the session, and per-test names so tests never share state."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Connection string of a running Azurite (reused if one listens; else started and stopped here)."""
    from chatft_local.azurite import ensure_azurite

    instance = ensure_azurite(tmp_path_factory.mktemp("azurite-state"))
    yield instance.connection_string
    instance.stop()


@pytest.fixture
def unique():
    """A short unique lower-case name fragment, valid in container, queue and table names."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(azurite, unique, tmp_path):
    """Settings pointing every container, queue and table at names of this test only."""
    from shared.config import Settings

    return Settings.from_env(
        env={},
        azurewebjobsstorage=azurite,
        training_container=f"{unique}-training",
        runs_container=f"{unique}-runs",
        runs_table=f"{unique}runs",
        runs_queue=f"{unique}-runs",
        deploy_queue=f"{unique}-deploy",
        chatft_state_dir=str(tmp_path / "state"),
    )


@pytest.fixture(scope="session", autouse=True)
def local_runtime():
    """Tests run the app as the local runtime does: with the local ML workspace registered for ML_BACKEND=local."""
    from chatft_local.runtime import use_local_workspace

    use_local_workspace()
