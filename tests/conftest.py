"""Shared fixtures: one real Azurite for the session, and per-test names so tests never share state."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = PROJECT_ROOT.parent / "shared" / "reference"


def pytest_configure(config):
    """With pytest-xdist (`-n`), the controller starts one Azurite for all workers (unless one already listens)
    and stops it at the end; each worker's `azurite` fixture then reuses it rather than racing to start its own."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    import tempfile

    from chatft_local.azurite import ensure_azurite

    config._chatft_azurite = ensure_azurite(tempfile.mkdtemp(prefix="chatft-azurite-"))


def pytest_unconfigure(config):
    instance = getattr(config, "_chatft_azurite", None)
    if instance is not None:
        instance.stop()


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


def settings_for(unique: str, tmp_path: Path, connection: str):
    """Settings pointing every container, queue and table at names of this test only. The quality gate is off:
    service tests of the steps after a job complete only the jobs they name (the fake writes no evaluation
    report); the gate's own tests turn it on (`eval_gate="enforce"`), and the hosts of end-to-end tests run it."""
    from shared.config import Settings

    return Settings.from_env(
        env={},
        azurewebjobsstorage=connection,
        training_container=f"{unique}-training",
        runs_container=f"{unique}-runs",
        runs_table=f"{unique}runs",
        runs_queue=f"{unique}-runs",
        deploy_queue=f"{unique}-deploy",
        chatft_state_dir=str(tmp_path / "state"),
        eval_gate="off",
    )


@pytest.fixture
def settings(azurite, unique, tmp_path):
    """Settings of this test's own containers, queues and table on the running Azurite."""
    return settings_for(unique, tmp_path, azurite)


@pytest.fixture
def offline_settings(unique, tmp_path):
    """The same settings for service-level tests, which keep runs and messages in memory: nothing contacts
    storage, so they need no Azurite."""
    from chatft_local.azurite import connection_string

    # Azurite's well-known account on a port nothing listens on: a test that reached for storage would fail at
    # once rather than quietly use a running Azurite.
    nowhere = connection_string({"blob": 9, "queue": 9, "table": 9})
    return settings_for(unique, tmp_path, nowhere)


@pytest.fixture(scope="session", autouse=True)
def local_runtime():
    """Tests run the app as the local runtime does: with the local ML workspace registered for ML_BACKEND=local."""
    from chatft_local.runtime import use_local_workspace

    use_local_workspace()
