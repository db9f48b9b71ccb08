"""The local model registry: MLflow's Model Registry on a SQLite store in the workspace (`mlflow.db`).

MLflow numbers versions itself (1, 2, ...), as Azure ML numbers workspace models: a registration without a version
gets MLflow's. The job a model came from is kept in the `chatft_job` tag, so a second registration of the same job
finds the first; an explicit version (a positive integer, `shared.ml.naming`) is kept in the `chatft_version` tag. A model's id
is `models:/<name>/<mlflow version>`; its files stay where the job wrote them (the version's source).
MLflow is imported on first use only (it costs over a second).
"""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Any, Iterator

from shared.ml import naming
from shared.ml.port import NotFound, PermanentError, RegisteredModel, TransientError

from .files import file_lock

TAG_JOB = "chatft_job"
TAG_VERSION = "chatft_version"
_MODEL_ID = re.compile(r"models:/(?P<name>[^/]+)/(?P<version>\d+)")


class ModelRegistry:
    """Registered fine-tuned models of one local workspace."""

    def __init__(self, workspace_dir: Path):
        self.workspace_dir = Path(workspace_dir)
        self.uri = f"sqlite:///{self.workspace_dir / 'mlflow.db'}"
        self._client: Any = None
        self._lock = threading.Lock()

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                self.workspace_dir.mkdir(parents=True, exist_ok=True)
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            return self._client

    def _exclusive(self) -> contextlib.AbstractContextManager:
        """Registrations one at a time, across threads and processes, so a job is never registered twice."""
        return file_lock(self.workspace_dir / "registry.lock")

    @staticmethod
    @contextlib.contextmanager
    def _calling(what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"{what}: not found") from None
            raise TransientError(f"{what} failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") \
                from None

    def _search(self, filter_string: str) -> RegisteredModel | None:
        with self._calling("searching the model registry"):
            found = self._mlflow().search_model_versions(filter_string)
        if not found:
            return None
        first = min(found, key=lambda v: int(v.version))
        return RegisteredModel(name=first.name, version=first.tags.get(TAG_VERSION, str(first.version)),
                               id=f"models:/{first.name}/{first.version}")

    def find(self, name: str, version: str) -> RegisteredModel | None:
        """The model registered under `name` with the app's `version`, or None."""
        _check(name, version)
        return self._search(f"name = '{name}' and tag.{TAG_VERSION} = '{version}'")

    def find_job(self, name: str, job_name: str) -> RegisteredModel | None:
        """The model registered under `name` from `job_name`, or None."""
        _check(name, None)
        naming.check_job_name(job_name)
        return self._search(f"name = '{name}' and tag.{TAG_JOB} = '{job_name}'")

    def register(self, job_name: str, model_dir: Path, name: str, version: str | None = None, description: str = "",
                 tags: dict[str, str] | None = None) -> RegisteredModel:
        """Register the MLflow model folder of `job_name`; the same name and version, or the same job under the
        same name, returns what is registered already. Without `version` the model gets MLflow's number."""
        _check(name, version)
        if not (Path(model_dir) / "MLmodel").is_file():
            raise PermanentError(f"job {job_name} left no MLflow model to register (no MLmodel in its output)")
        with self._exclusive():
            existing = (version and self.find(name, version)) or self.find_job(name, job_name)
            if existing is not None:
                return existing
            client = self._mlflow()
            from mlflow.exceptions import MlflowException

            with self._calling(f"registering model {name}"):
                try:
                    client.create_registered_model(name)
                except MlflowException as e:
                    if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                        raise
                own = {TAG_JOB: job_name, **({TAG_VERSION: version} if version else {})}
                created = client.create_model_version(
                    name, source=str(Path(model_dir).resolve()), description=description,
                    tags={**{str(k): str(v) for k, v in (tags or {}).items()}, **own})
        return RegisteredModel(name=name, version=version or str(created.version),
                               id=f"models:/{name}/{created.version}")

    def model_dir(self, model: RegisteredModel) -> Path:
        """Where the registered model's files are; NotFound if it is not registered, PermanentError if its files
        are gone."""
        match = _MODEL_ID.fullmatch(model.id or "")
        if match:
            with self._calling(f"getting model {model.id}"):
                source = self._mlflow().get_model_version(match["name"], match["version"]).source
        else:
            found = self.find(model.name, model.version)
            if found is None:
                raise NotFound(f"model {model.name} version {model.version} not found in the local registry")
            return self.model_dir(found)
        path = Path(source.removeprefix("file://"))
        if not (path / "MLmodel").is_file():
            raise PermanentError(f"the files of model {model.name} version {model.version} are gone from {path}")
        return path


def _check(name: str, version: str | None) -> None:
    """Azure's rules (`shared.ml.naming`); they also keep names and versions safe inside MLflow's filter strings."""
    naming.check_model_name(name)
    if version is not None:
        naming.check_model_version(version)
