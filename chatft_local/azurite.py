"""Azurite (blob, queue, table) for the local host and the tests: reuse one that listens, else start ours."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.config import AZURITE_CONNECTION

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PORTS = {"blob": 10000, "queue": 10001, "table": 10002}


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def azurite_binary() -> Path:
    path = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        raise FileNotFoundError(f"Azurite is not installed at {path}: run `npm ci` (make does it for you)")
    return path


@dataclass
class Azurite:
    """A running Azurite: `process` is None when an already-listening one was reused."""

    connection_string: str
    process: subprocess.Popen | None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def ensure_azurite(state_dir: str | os.PathLike, timeout: float = 30.0) -> Azurite:
    """Reuse an Azurite listening on the default ports, or start one with data under `state_dir/azurite`."""
    up = [_listening(p) for p in PORTS.values()]
    if all(up):
        return Azurite(AZURITE_CONNECTION, None)
    if any(up):
        busy = [name for (name, port), u in zip(PORTS.items(), up) if u]
        raise RuntimeError(f"ports of Azurite's {', '.join(busy)} service are taken by something else; "
                           "stop it or start a full Azurite")
    data = Path(state_dir) / "azurite"
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "azurite.log", "ab")
    node = shutil.which("node")
    args = [str(azurite_binary()), "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose",
            "--location", str(data), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1",
            "--tableHost", "127.0.0.1"]
    if node:  # run the script with node directly: one process to stop
        args = [node, *args]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with {proc.returncode}; see {data / 'azurite.log'}")
        if all(_listening(p) for p in PORTS.values()):
            return Azurite(AZURITE_CONNECTION, proc)
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"Azurite did not listen within {timeout:.0f}s; see {data / 'azurite.log'}")


# Azurite's one well-known development account (https://learn.microsoft.com/azure/storage/common/
# storage-use-azurite, "Well-known storage account and key"): public by design, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(ports: dict[str, int]) -> str:
    """The connection string of an Azurite listening on 127.0.0.1 at `ports` (blob, queue, table)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{ports['blob']}/{DEV_ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{ports['queue']}/{DEV_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{ports['table']}/{DEV_ACCOUNT};")


def start_private_azurite(data_dir: str | os.PathLike, ports: dict[str, int], timeout: float = 30.0) -> Azurite:
    """Start an Azurite of our own on `ports` with its data in `data_dir` (never the shared one on the default
    ports): tests that stop and restart storage use it. Starting it again on the same folder keeps the data."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "azurite.log", "ab")
    args = [str(azurite_binary()), "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose",
            "--location", str(data), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost",
            "127.0.0.1", "--blobPort", str(ports["blob"]), "--queuePort", str(ports["queue"]), "--tablePort",
            str(ports["table"])]
    node = shutil.which("node")
    proc = subprocess.Popen([node, *args] if node else args, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with {proc.returncode}; see {data / 'azurite.log'}")
        if all(_listening(p) for p in ports.values()):
            return Azurite(connection_string(ports), proc)
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"Azurite did not listen within {timeout:.0f}s; see {data / 'azurite.log'}")
