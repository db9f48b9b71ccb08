"""The contract suite's harness over the local ML workspace (see tests/test_ml_contract.py), and helpers the local
workspace's own tests share: a tiny MLflow chat model, an Event Grid sink, polling."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from shared.ml.port import JOB_DONE, PROVISIONING_DONE, Deployment, Endpoint, JobStatus, MLBackendError

ARCHIVED_EXAMPLE = "Phi-3.5-mini-instruct"

# The notebook's scoring request (seed workflow, step 9).
NOTEBOOK_PARAMETERS = {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}


def notebook_request(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"input_data": {"input_string": messages, "parameters": dict(NOTEBOOK_PARAMETERS)}, "params": {}}


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """`check()` once it is truthy, else its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def build_chat_model(target: Path, state_dir: Path) -> Path:
    """Save the local stand-in base model as an MLflow transformers model at `target` (what a job outputs)."""
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatft_local.workspace.base_model import ensure_base_model

    base = ensure_base_model(state_dir)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(target), task="llm/v1/chat",
                                   pip_requirements=["torch", "transformers"])
    return target


class EventSink:
    """An Event Grid webhook stand-in on 127.0.0.1 that keeps what it receives (job events in tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                    sink.events.extend(payload if isinstance(payload, list) else [payload])
                except ValueError:
                    pass
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=job_events"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LocalHarness:
    """The local workspace under the contract suite: real jobs (tiny model, CPU), real model servers."""

    supports_lifecycle = True
    archived_base_model_name = ARCHIVED_EXAMPLE
    compute_name: str
    instance_type: str
    job_params: dict[str, Any] = {"num_train_epochs": 1}
    timeout = 240.0

    def __init__(self, settings: Any) -> None:
        from chatft_local.workspace.local import ARCHIVED_LIST, LocalWorkspace
        from shared.ml.checked import checked

        self.events = EventSink()
        self.settings = settings.replace(local_events_url=self.events.url)
        # As the app's composition root builds it: the port's input rules around the workspace.
        self.backend = checked(LocalWorkspace(self.settings),
                               inference_instance_type=self.settings.inference_instance_type)
        self.base_model_name = self.settings.base_model
        self.compute_name = self.settings.aml_compute
        self.instance_type = self.settings.inference_instance_type
        self.backend.root.mkdir(parents=True, exist_ok=True)
        (self.backend.root / ARCHIVED_LIST).write_text(ARCHIVED_EXAMPLE + "\n")

    def prepare_training_data(self, run_id: str) -> tuple[str, str]:
        from azure.storage.blob import BlobServiceClient

        from chatft_local.sample_data import sample_records

        records = sample_records(30)
        service = BlobServiceClient.from_connection_string(self.settings.storage_connection)
        container = service.get_container_client(self.settings.runs_container)
        if not container.exists():
            container.create_container()
        paths = (f"{run_id}/train.jsonl", f"{run_id}/test.jsonl")
        for path, rows in zip(paths, (records[:24], records[24:])):
            container.upload_blob(path, "".join(json.dumps(r) + "\n" for r in rows).encode(), overwrite=True)
        return paths

    def read_report(self, path: str) -> dict:
        from azure.storage.blob import BlobClient

        blob = BlobClient.from_connection_string(self.settings.storage_connection, self.settings.runs_container, path)
        return json.loads(blob.download_blob().readall())

    def wait_for_job(self, job_name: str, timeout: float) -> JobStatus:
        return poll(lambda: (lambda s: s if s.status in JOB_DONE else None)(self.backend.get_job(job_name)),
                    timeout, 0.5) or self.backend.get_job(job_name)

    def wait_for_endpoint(self, name: str, timeout: float) -> Endpoint | None:
        done = poll(lambda: (lambda e: e if e and e.provisioning_state in PROVISIONING_DONE else None)(
            self.backend.get_endpoint(name)), timeout)
        return done or self.backend.get_endpoint(name)

    def wait_for_deployment(self, endpoint_name: str, deployment_name: str, timeout: float) -> Deployment | None:
        done = poll(lambda: (lambda d: d if d and d.provisioning_state in PROVISIONING_DONE else None)(
            self.backend.get_deployment(endpoint_name, deployment_name)), timeout, 0.5)
        return done or self.backend.get_deployment(endpoint_name, deployment_name)

    def close(self) -> None:
        """Delete what the test left (endpoints stop their servers) and stop its unfinished jobs."""
        for endpoint in self.backend.list_endpoints():
            self.backend.begin_delete_endpoint(endpoint.name)
        jobs = self.backend.root / "jobs"
        for job in sorted(jobs.iterdir()) if jobs.is_dir() else []:
            try:
                self.backend.cancel_job(job.name)
            except MLBackendError:  # a half-made job folder has nothing to stop
                pass
        self.events.close()


def make_harness(request: Any) -> LocalHarness:
    return LocalHarness(request.getfixturevalue("settings"))
