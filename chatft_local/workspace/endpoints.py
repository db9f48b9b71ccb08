"""Local online endpoints: records on disk, and one model server process per deployment.

Layout under `<workspace>/endpoints/`:
    <endpoint>/endpoint.json             name, description, tags, state, traffic, mirror_traffic, created
    <endpoint>/key                       the endpoint key (mode 0600)
    <endpoint>/deployments/<name>/deployment.json   model, port, state, the server's pid and instance token
    <endpoint>/deployments/<name>/server.log        the model server's log (its last line explains a failure)
    .deleting/                           endpoints being torn down (their servers are stopping)
    .lock                                serialises changes between threads and processes (flock)

An endpoint is Creating for `provision_seconds`, then Succeeded. A deployment is Creating until its server's
liveness route answers, Succeeded from then on, Failed if the server dies (or never answers) while starting.
`reconcile()` (the supervisor's pass) starts servers that are due and restarts those that died. A server is
recognised by its instance token (in its command line and its liveness answer), never by pid alone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from shared.ml import naming
from shared.ml.port import Deployment, Endpoint, NameTaken, NotFound, RegisteredModel, ScoringTarget
from .files import file_lock, read_json, write_json

log = logging.getLogger("chatft.workspace")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRASH = ".deleting"
STOP_GRACE_SECONDS = 10.0
STARTUP_GRACE_SECONDS = 5.0  # a Creating deployment whose process is not seen is declared Failed only after this
MAX_RESTART_DELAY_SECONDS = 60.0
# Keep hub look-ups out of a model server: this machine reaches nothing beyond 127.0.0.1.
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}

_children: dict[int, subprocess.Popen] = {}  # servers this process started, so their exit is seen (and reaped)
_children_lock = threading.Lock()


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid endpoint or deployment name (Azure's rule, `shared.ml.naming`), else InvalidInput.
    Names become folder names, so nothing else gets through."""
    return (naming.DEPLOYMENT if kind == "deployment" else naming.ENDPOINT).check(name)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only a listener makes a port taken
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def probe(port: int, instance: str, timeout: float = 0.5) -> str | None:
    """"ready" or "loading" when the server of `instance` answers on `port`; None when nothing (or another
    process) answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = json.loads(response.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if not isinstance(body, dict) or body.get("instance") != instance:
        return None
    return "ready" if response.status == 200 else "loading"


def _process(record: dict[str, Any]) -> Any:
    """The psutil process of the record's server, or None when it is gone (or the pid now belongs to another)."""
    import psutil

    pid, instance = record.get("pid"), record.get("instance")
    if not pid or not instance:
        return None
    with _children_lock:
        child = _children.get(pid)
        if child is not None and child.poll() is not None:  # reaps our own exited server
            del _children[pid]
            return None
    try:
        process = psutil.Process(pid)
        if child is not None:  # our own running child: no need to recognise it by its command line
            return process
        if process.status() == psutil.STATUS_ZOMBIE or instance not in process.cmdline():
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def server_alive(record: dict[str, Any]) -> bool:
    """Whether the record's model server process is running (loaded or not)."""
    return _process(record) is not None


def _signal(record: dict[str, Any], sig: int) -> bool:
    process = _process(record)
    if process is None:
        return False
    with contextlib.suppress(Exception):
        process.send_signal(sig)
    return True


def _stop_all(records: list[dict[str, Any]], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the servers, wait up to `grace` seconds, then SIGKILL what is left."""
    running = [r for r in records if _signal(r, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [r for r in running if server_alive(r)]
    for record in running:
        _signal(record, signal.SIGKILL)


def last_log_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (progress bars' carriage-return updates folded), or ""."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in tail.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:limit] if lines else ""


class EndpointStore:
    """Endpoints and deployments of one local workspace. Every method returns at once."""

    def __init__(self, root: Path, *, max_request_bytes: int = 1024 * 1024, provision_seconds: float = 1.0,
                 startup_timeout: float = 600.0, python: str = sys.executable):
        self.root = Path(root)
        self.max_request_bytes = max_request_bytes
        self.provision_seconds = provision_seconds
        self.startup_timeout = startup_timeout
        self.python = python

    # ------------------------------------------------------------------ paths and locking

    def _dir(self, endpoint: str) -> Path:
        return self.root / check_name("endpoint", endpoint)

    def _deployment_dir(self, endpoint: str, deployment: str) -> Path:
        return self._dir(endpoint) / "deployments" / check_name("deployment", deployment)

    def key_path(self, endpoint: str) -> Path:
        return self._dir(endpoint) / "key"

    def _locked(self) -> contextlib.AbstractContextManager:
        return file_lock(self.root / ".lock")

    def _endpoint_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / "endpoint.json").is_file())

    def _deployment_records(self, endpoint_dir: Path) -> list[dict[str, Any]]:
        folder = endpoint_dir / "deployments"
        records = [read_json(p / "deployment.json") for p in folder.iterdir()] if folder.is_dir() else []
        return sorted((r for r in records if r), key=lambda r: r["created"])

    # ------------------------------------------------------------------ endpoints

    def create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> bool:
        """Create the endpoint with a fresh key; False (and nothing changed) if this caller made it already (same app
        and run tags), NameTaken if the name, compared without case as Azure compares names, is another's."""
        folder = self._dir(name)
        with self._locked():
            for existing in self._endpoint_names():
                if existing.lower() != name.lower():
                    continue
                record = read_json(self.root / existing / "endpoint.json") or {}
                if existing == name and naming.same_owner(record.get("tags"), tags):
                    return False
                raise NameTaken(f"endpoint name {name} is taken by another endpoint of this workspace ({existing})")
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / "key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            os.chmod(folder / "key", 0o600)
            write_json(folder / "endpoint.json", {
                "name": name, "description": description, "tags": {str(k): str(v) for k, v in tags.items()},
                "state": "Creating", "traffic": {}, "created": time.time()})
        return True

    def endpoint(self, name: str) -> Endpoint | None:
        folder = self._dir(name)
        record = read_json(folder / "endpoint.json")
        if record is None:
            return None
        if record["state"] == "Creating" and time.time() - record["created"] >= self.provision_seconds:
            with self._locked():
                record = read_json(folder / "endpoint.json")
                if record is None:
                    return None
                if record["state"] == "Creating":
                    record["state"] = "Succeeded"
                    write_json(folder / "endpoint.json", record)
        return self._endpoint_view(folder, record)

    def _endpoint_view(self, folder: Path, record: dict[str, Any]) -> Endpoint:
        traffic = {k: int(v) for k, v in record["traffic"].items()}
        deployments = self._deployment_records(folder)
        serving = max(traffic, key=traffic.get) if any(traffic.values()) else None
        chosen = next((d for d in deployments if d["name"] == serving), deployments[0] if deployments else None)
        return Endpoint(name=record["name"], provisioning_state=record["state"],
                        scoring_uri=f"http://127.0.0.1:{chosen['port']}/score" if chosen else "",
                        tags=dict(record["tags"]), traffic=traffic,
                        mirror_traffic={k: int(v) for k, v in (record.get("mirror_traffic") or {}).items()})

    def endpoints(self) -> list[Endpoint]:
        found = [self.endpoint(name) for name in self._endpoint_names()]
        return [e for e in found if e is not None]

    def set_traffic(self, name: str, traffic: dict[str, int], *, mirror: bool = False) -> None:
        """Set the endpoint's live traffic (or, with `mirror`, its mirrored traffic), as checked against Azure's rules
        by `shared.ml.checked`; the model servers read it on every request. Deployments not named get none."""
        folder = self._dir(name)
        with self._locked():
            record = read_json(folder / "endpoint.json")
            if record is None:
                raise NotFound(f"endpoint {name} not found")
            known = {d["name"] for d in self._deployment_records(folder)}
            # Only the endpoint's deployments: one deleted since the check takes nothing (its server is stopping).
            shares = {str(k): int(v) for k, v in traffic.items() if k in known}
            if mirror:
                record["mirror_traffic"] = {k: v for k, v in shares.items() if v}
            else:
                record["traffic"] = shares
            write_json(folder / "endpoint.json", record)

    def deployments(self, endpoint: str) -> list[Deployment]:
        """The endpoint's deployments, oldest first; NotFound if the endpoint is gone."""
        folder = self._dir(endpoint)
        if not (folder / "endpoint.json").is_file():
            raise NotFound(f"endpoint {endpoint} not found")
        found = [self.deployment(endpoint, r["name"]) for r in self._deployment_records(folder)]
        return [d for d in found if d is not None]

    def delete_deployment(self, endpoint: str, name: str) -> None:
        """Remove one deployment at once (its server stops in the background); a no-op if it is gone. The app moves
        its traffic away first (`shared.ml.checked` refuses the deletion otherwise)."""
        folder = self._deployment_dir(endpoint, name)
        with self._locked():
            record = read_json(self._dir(endpoint) / "endpoint.json")
            if record is None or not (folder / "deployment.json").is_file():
                return
            trash = self.root / TRASH / f"{endpoint}-{name}-{uuid.uuid4().hex[:8]}"
            # Shaped as an endpoint folder, so `reconcile` finishes it like a deleted endpoint if this process dies.
            (trash / "deployments").mkdir(parents=True, exist_ok=True)
            os.rename(folder, trash / "deployments" / name)
            record["traffic"] = {k: v for k, v in (record.get("traffic") or {}).items() if k != name}
            write_json(self._dir(endpoint) / "endpoint.json", record)
        records = self._deployment_records(trash)
        for r in records:
            _signal(r, signal.SIGTERM)
        threading.Thread(target=self._finish_delete, args=(trash, records), name=f"delete-{endpoint}-{name}",
                         daemon=True).start()

    def scoring_target(self, name: str) -> ScoringTarget:
        endpoint = self.endpoint(name)
        if endpoint is None:
            raise NotFound(f"endpoint {name} not found")
        try:
            key = self.key_path(name).read_text().strip()
        except FileNotFoundError:
            raise NotFound(f"endpoint {name} not found") from None
        traffic = endpoint.traffic
        return ScoringTarget(endpoint_name=name, scoring_uri=endpoint.scoring_uri, key=key,
                             deployment_name=max(traffic, key=traffic.get) if any(traffic.values()) else "")

    def delete_endpoint(self, name: str) -> None:
        """Remove the endpoint at once (it is gone for every reader); its servers stop in the background."""
        folder = self._dir(name)
        with self._locked():
            if not (folder / "endpoint.json").is_file():
                return
            trash = self.root / TRASH / f"{name}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(exist_ok=True)
            os.rename(folder, trash)
        records = self._deployment_records(trash)
        for record in records:
            _signal(record, signal.SIGTERM)
        threading.Thread(target=self._finish_delete, args=(trash, records), name=f"delete-{name}",
                         daemon=True).start()

    def _finish_delete(self, trash: Path, records: list[dict[str, Any]]) -> None:
        _stop_all(records)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ deployments

    def create_deployment(self, endpoint: str, name: str, model: RegisteredModel, model_dir: Path,
                          instance_type: str, instance_count: int) -> bool:
        """Start the deployment's model server; False (and nothing changed) if the deployment exists."""
        folder = self._deployment_dir(endpoint, name)
        with self._locked():
            record = read_json(self._dir(endpoint) / "endpoint.json")
            if record is None:
                raise NotFound(f"endpoint {endpoint} not found")
            if (folder / "deployment.json").is_file():
                return False
            folder.mkdir(parents=True, exist_ok=True)
            deployment = {"name": name, "endpoint": endpoint, "created": time.time(), "state": "Creating",
                          "error": "", "model": {"name": model.name, "version": model.version, "id": model.id},
                          "model_dir": str(model_dir), "instance_type": instance_type,
                          "instance_count": instance_count, "port": None, "pid": None, "instance": "",
                          "started": None, "restarts": 0, "failures": 0, "next_start": 0.0, "stopped": False}
            self._start_server(folder, deployment)
        return True

    def deployment(self, endpoint: str, name: str) -> Deployment | None:
        folder = self._deployment_dir(endpoint, name)
        record = read_json(folder / "deployment.json")
        if record is None:
            return None
        if record["state"] == "Creating":
            record = self._observe(folder) or record
        return Deployment(endpoint_name=endpoint, name=name, provisioning_state=record["state"],
                          error=record["error"], model_id=str((record.get("model") or {}).get("id") or ""))

    def _observe(self, folder: Path, restart: bool = False) -> dict[str, Any] | None:
        """Bring the record up to date with its server: Creating -> Succeeded/Failed; with `restart`, start a
        server that is due (not started yet, stopped by the host, or dead after it had succeeded)."""
        with self._locked():
            record = read_json(folder / "deployment.json")
            if record is None:
                return None
            before = dict(record)
            status = probe(record["port"], record["instance"]) if record["port"] else None
            now = time.time()
            if status == "ready":
                record.update(failures=0, next_start=0.0)
                if record["state"] == "Creating":
                    record["state"] = "Succeeded"
                    log.info("deployment %s of endpoint %s is serving on port %s", record["name"],
                             record["endpoint"], record["port"])
            elif record["state"] in ("Creating", "Succeeded"):
                alive = status == "loading" or server_alive(record)
                if alive and record["state"] == "Creating" and now - (record["started"] or now) > self.startup_timeout:
                    _stop_all([record], grace=2.0)
                    record.update(state="Failed", pid=None,
                                  error=f"the model server did not answer its liveness probe within "
                                        f"{self.startup_timeout:.0f} s")
                elif not alive and record["state"] == "Creating" and now - (record["started"] or 0) < STARTUP_GRACE_SECONDS:
                    pass  # a process just spawned may not be observable yet: look again at the next check
                elif not alive and record["state"] == "Creating" and not record["stopped"] and record["pid"]:
                    record.update(state="Failed", pid=None,
                                  error=last_log_line(folder / "server.log") or "the model server exited")
                    log.warning("deployment %s of endpoint %s failed: %s", record["name"], record["endpoint"],
                                record["error"])
                elif not alive and restart and now >= record["next_start"]:
                    if record["state"] == "Succeeded" and not record["stopped"]:
                        record["restarts"] += 1
                        log.warning("model server of deployment %s (endpoint %s) is gone; restarting it",
                                    record["name"], record["endpoint"])
                    self._start_server(folder, record)
                    return record
            if record != before:
                write_json(folder / "deployment.json", record)
            return record

    def _start_server(self, folder: Path, record: dict[str, Any]) -> None:
        """Spawn the deployment's model server (its port kept while free) and save the record."""
        endpoint_dir = folder.parent.parent
        taken = {d["port"] for ep in self._endpoint_names() for d in self._deployment_records(self.root / ep)
                 if d["port"] and d["name"] != record["name"]}
        port = record["port"]
        if not port or port in taken or not port_free(port):
            port = free_port(taken)
        instance = uuid.uuid4().hex
        with open(folder / "server.log", "ab") as logfile:
            logfile.write(f"--- starting model server on port {port} (instance {instance})\n".encode())
            logfile.flush()
            command = [self.python, "-m", "chatft_local.workspace.model_server", "--model-dir", record["model_dir"],
                       "--port", str(port), "--key-file", str(endpoint_dir / "key"), "--deployment", record["name"],
                       "--endpoint-dir", str(endpoint_dir), "--instance", instance,
                       "--max-request-bytes", str(self.max_request_bytes)]
            env = {**os.environ, **SERVER_ENV,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
            # A session of its own: the server outlives a host that is killed, and the next host adopts it.
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(PROJECT_ROOT), start_new_session=True)
        with _children_lock:
            _children[child.pid] = child
        failures = record["failures"] + (1 if record["state"] == "Succeeded" and not record["stopped"] else 0)
        record.update(port=port, pid=child.pid, instance=instance, started=time.time(), stopped=False,
                      failures=failures, next_start=time.time() + min(MAX_RESTART_DELAY_SECONDS, 2.0 ** failures))
        write_json(folder / "deployment.json", record)

    # ------------------------------------------------------------------ supervision

    def reconcile(self) -> None:
        """One supervisor pass: settle every deployment, (re)start servers that are due, finish deletions."""
        for endpoint in self._endpoint_names():
            try:
                deployments = sorted((self.root / endpoint / "deployments").iterdir())
            except FileNotFoundError:  # no deployment yet, or the endpoint deleted since it was listed
                continue
            for deployment in deployments:
                try:
                    self._observe(deployment, restart=True)
                except Exception:
                    log.exception("supervising deployment %s of endpoint %s failed", deployment.name, endpoint)
        trash = self.root / TRASH
        for leftover in sorted(trash.iterdir()) if trash.is_dir() else []:
            records = self._deployment_records(leftover)
            if not any(server_alive(r) for r in records):
                shutil.rmtree(leftover, ignore_errors=True)
            elif time.time() - leftover.stat().st_mtime > STOP_GRACE_SECONDS:
                for record in records:
                    _signal(record, signal.SIGKILL)

    def stop_servers(self) -> None:
        """Stop every running model server (the host is shutting down); the next `reconcile` starts them again."""
        records: list[dict[str, Any]] = []
        with self._locked():
            for endpoint in self._endpoint_names():
                for record in self._deployment_records(self.root / endpoint):
                    if record["state"] in ("Creating", "Succeeded") and server_alive(record):
                        records.append(dict(record))
                        record.update(stopped=True, failures=0, next_start=0.0)
                        write_json(self._deployment_dir(endpoint, record["name"]) / "deployment.json", record)
        _stop_all(records)

    def deployment_record(self, endpoint: str, name: str) -> dict[str, Any] | None:
        """The deployment's raw record (port, pid, instance, state): for tests and diagnostics."""
        return read_json(self._deployment_dir(endpoint, name) / "deployment.json")
