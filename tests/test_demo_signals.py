"""`chatft demo` stopped with SIGTERM, for real: the demo runs in a child process (`python -m chatft_local demo
--keep --json`), trains, deploys and scores, then serves; SIGTERM must stop it like Ctrl-C: exit, print the JSON
summary, and leave none of the processes it started (model servers) nor its HTTP port behind.

The shared Azurite is running, so the demo's host reuses it and starts none of its own: stopping an Azurite the host
started is `LocalHost.stop`'s part, the same on SIGTERM as on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def server_pids(state_dir: Path) -> list[int]:
    records = (state_dir / "workspace" / "endpoints").glob("*/deployments/*/deployment.json")
    return [json.loads(p.read_text())["pid"] for p in records if json.loads(p.read_text()).get("pid")]


class Lines:
    """The child's stdout, line by line, read on a thread so the test can wait for a line with a deadline."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def start_demo(state_dir: Path, port: int) -> tuple[subprocess.Popen, Lines]:
    u = "d" + uuid.uuid4().hex[:8]
    env = {**os.environ, "TRAINING_CONTAINER": f"{u}-training", "RUNS_CONTAINER": f"{u}-runs",
           "RUNS_TABLE": f"{u}runs", "RUNS_QUEUE": f"{u}-runs", "DEPLOY_QUEUE": f"{u}-deploy",
           "CHATFT_STATE_DIR": str(state_dir), "ML_BACKEND": "local", "MESSAGING": "storage-queue",
           "DEPLOY_CHECK_SECONDS": "1", "AzureWebJobsStorage": "UseDevelopmentStorage=true",
           "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "chatft_local", "demo", "--keep", "--json", "--port", str(port),
                              "--timeout", str(RUN_TIMEOUT)], cwd=PROJECT_ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return child, Lines(child.stdout)


def test_sigterm_while_the_host_starts_stops_it_and_prints_the_summary(tmp_path):
    port = free_port()
    child, out = start_demo(tmp_path / "state", port)
    try:
        assert out.wait_for("starting the local host", 60), "\n".join(out.lines)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 128 + signal.SIGTERM, "\n".join(out.lines[-30:])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out.wait_for("total_seconds", 5)
    summary = json.loads(out.lines[-1])
    assert summary["interrupted"] == "SIGTERM" and summary["run_id"] is None
    assert not any("Traceback" in line for line in out.lines), "\n".join(out.lines)
    assert not listening(port)


def test_sigterm_stops_a_kept_demo_and_prints_its_summary(tmp_path):
    state_dir, port = tmp_path / "state", free_port()
    child, out = start_demo(state_dir, port)
    try:
        assert out.wait_for("host left running", RUN_TIMEOUT + 60), "\n".join(out.lines[-30:])
        servers = server_pids(state_dir)
        assert servers and all(alive(pid) for pid in servers)  # the model server the demo deployed
        assert listening(port)

        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=90) == 0, "\n".join(out.lines[-30:])  # the demo itself went well
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    out.wait_for("total_seconds", 5)
    summary = json.loads(out.lines[-1])
    assert summary["state"] == "Deployed" and summary["score_status"] == 200
    assert summary["stopped_by"] == "SIGTERM" and summary["total_seconds"] > 0
    deadline = time.monotonic() + 15  # the host stops its servers before it exits; allow the OS to reap them
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in servers if alive(pid)], "model servers left running"
    assert not listening(port)
