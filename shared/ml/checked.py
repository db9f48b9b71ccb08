"""The ML port's input rules, enforced once for every backend: `checked(backend)`.

Azure ML checks names, versions, tags and traffic on the service side, often after the expensive part has begun
(a pipeline uploaded, a job queued for hours). So the app refuses such input before any backend is called, with the
port's `InvalidInput` and one wording, whatever the backend: the Azure adapter, the local workspace and the
cloud fake implement only what is specific to them (how a thing is made, found and named in their store), and
`shared.bootstrap` wraps every backend it builds. The rules and their sources are in `shared.ml.naming` and
`shared.ml.training_params`; this module only says which call each rule guards.

Rules that need the backend's state are asked through the port itself: whether the job to register or evaluate is
Completed (`get_job`), whether an endpoint exists and has Succeeded before a deployment is added, and whether that
deployment is there already (`get_endpoint`, `get_deployment`), which deployments
an endpoint has before traffic names them (`list_deployments`), and the endpoint's live and mirrored traffic before a
deployment is deleted (`get_endpoint`). A read and the write it guards are two calls: in Azure the service checks
the write again; the app never races itself there (one run owns a deployment's traffic at a time).

Left to the adapters, because only they know it: the base model a registered model was tuned from (so the instance
type of a deployment is checked against that model's `inference_compute_allow_list` inside `begin_create_deployment`),
whether a registration or submission repeats an earlier one, and endpoint name ownership (`NameTaken`).
"""

from __future__ import annotations

from typing import Any

from . import naming
from .port import (BaseModel, Compute, Deployment, Endpoint, EvaluationRequest, InvalidInput, JobRequest, JobStatus,
                   MLBackend, NotFound, PermanentError, RegisteredModel, ScoringTarget, TransientError)
from .training_params import resolve_inference_instance_type


def checked(backend: MLBackend, *, inference_instance_type: str | None = None) -> "CheckedBackend":
    """`backend` behind the port's input rules (once: a checked backend is returned as it is).

    `inference_instance_type` is the INFERENCE_INSTANCE_TYPE setting: with it, a job is refused at submission when
    the base model would not allow its deployment (`resolve_inference_instance_type`), before hours of training
    are spent; None skips that check (a backend used outside the app, e.g. by a contract test)."""
    if isinstance(backend, CheckedBackend):
        return backend
    return CheckedBackend(backend, inference_instance_type=inference_instance_type)


class CheckedBackend:
    """An `MLBackend` that checks each call's input, then hands it to `backend`. Attributes that are not port methods
    (a fake's scenario controls, the local workspace's `root` and `settings`) are the backend's."""

    def __init__(self, backend: MLBackend, *, inference_instance_type: str | None = None):
        self.backend = backend
        self.inference_instance_type = inference_instance_type

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"checked({self.backend!r})"

    # --- base model and compute: nothing the caller names is checked beyond the backend's own look-up

    def resolve_base_model(self, name: str) -> BaseModel:
        return self.backend.resolve_base_model(name)

    def check_compute(self, compute_name: str, base_model: BaseModel) -> Compute:
        return self.backend.check_compute(compute_name, base_model)

    def base_model_tokenizer(self, name: str) -> str:
        return self.backend.base_model_tokenizer(name)

    # --- jobs

    def submit_job(self, request: JobRequest) -> str:
        naming.check_job_name(request.job_name)
        naming.check_experiment_name(request.experiment_name)
        if self.inference_instance_type is not None:
            # A backend that serves on its own machine (the local workspace) needs no VM size from the model's tags.
            resolve_inference_instance_type(self.inference_instance_type, request.base_model.tags,
                                            fallback=getattr(self.backend, "instance_type_fallback", ""))
        return self.backend.submit_job(request)

    def get_job(self, job_name: str) -> JobStatus:
        return self.backend.get_job(_job_name(job_name))

    def cancel_job(self, job_name: str) -> None:
        self.backend.cancel_job(_job_name(job_name))

    def submit_evaluation(self, request: EvaluationRequest) -> str:
        naming.check_job_name(request.job_name)
        naming.check_experiment_name(request.experiment_name)
        # The tuned model is the training job's output: there is none before that job Completed (Azure would fail
        # the evaluation job once it runs). A Completed job stays Completed, so a resubmission passes too.
        _completed(self.get_job(request.training_job), "evaluated")
        return self.backend.submit_evaluation(request)

    # --- models

    def register_model(self, job_name: str, name: str, version: str | None = None, description: str = "",
                       tags: dict[str, str] | None = None) -> RegisteredModel:
        naming.check_model_name(name)
        if version is not None:
            naming.check_model_version(version)
        naming.check_tags(tags, f"model {name}")
        _completed(self.get_job(job_name), "registered")
        return self.backend.register_model(job_name, name, version, description, tags)

    # --- endpoints and deployments

    def begin_create_endpoint(self, name: str, tags: dict[str, str], description: str = "") -> None:
        naming.check_endpoint_name(name)
        naming.check_tags(tags, f"endpoint {name}")
        self.backend.begin_create_endpoint(name, tags, description)

    def get_endpoint(self, name: str) -> Endpoint | None:
        return self.backend.get_endpoint(name)

    def begin_create_deployment(self, endpoint_name: str, deployment_name: str, model: RegisteredModel,
                                instance_type: str, instance_count: int) -> None:
        naming.check_deployment_name(deployment_name)
        endpoint = self.backend.get_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_name} not found; a deployment is made on an existing endpoint")
        if self.backend.get_deployment(endpoint_name, deployment_name) is not None:
            return  # made already: a repeated begin is a no-op (Azure's create_or_update would update it instead)
        if endpoint.provisioning_state in ("Creating", "Updating"):
            # The service's own refusal: "Cannot create a deployment in endpoint <name> because it is in Updating
            # provisioning state." (quoted in Azure/azure-sdk-for-net issue 36961). The endpoint gets there on its
            # own (a traffic change of a line's rollout, its creation), so the step is tried again later.
            raise TransientError(f"endpoint {endpoint_name} is {endpoint.provisioning_state}; a deployment can be "
                                 f"created once it has Succeeded")
        if endpoint.provisioning_state != "Succeeded":  # Failed, Deleting: waiting does not help
            raise PermanentError(f"endpoint {endpoint_name} is {endpoint.provisioning_state}; a deployment can be "
                                 f"created only on an endpoint that has Succeeded")
        self.backend.begin_create_deployment(endpoint_name, deployment_name, model, instance_type, instance_count)

    def get_deployment(self, endpoint_name: str, deployment_name: str) -> Deployment | None:
        return self.backend.get_deployment(endpoint_name, deployment_name)

    def list_deployments(self, endpoint_name: str) -> list[Deployment]:
        return self.backend.list_deployments(endpoint_name)

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int]) -> None:
        shares = naming.check_traffic(endpoint_name, traffic, self._deployment_names(endpoint_name))
        self.backend.set_traffic(endpoint_name, shares)

    def set_mirror_traffic(self, endpoint_name: str, mirror: dict[str, int]) -> None:
        shares = naming.check_mirror_traffic(endpoint_name, mirror, self._deployment_names(endpoint_name))
        self.backend.set_mirror_traffic(endpoint_name, {k: v for k, v in shares.items() if v})

    def begin_delete_deployment(self, endpoint_name: str, deployment_name: str) -> None:
        naming.check_deployment_name(deployment_name)
        endpoint = self.backend.get_endpoint(endpoint_name)
        if endpoint is None:
            return  # gone with its endpoint: a no-op, as the port says
        refusal = naming.deletion_refusal(endpoint_name, deployment_name, endpoint.traffic, endpoint.mirror_traffic)
        if refusal:
            raise InvalidInput(refusal)
        self.backend.begin_delete_deployment(endpoint_name, deployment_name)

    def get_scoring_target(self, endpoint_name: str) -> ScoringTarget:
        return self.backend.get_scoring_target(endpoint_name)

    def list_endpoints(self) -> list[Endpoint]:
        return self.backend.list_endpoints()

    def begin_delete_endpoint(self, name: str) -> None:
        self.backend.begin_delete_endpoint(name)

    def requests_since(self, endpoint_name: str, since_iso: str) -> int | None:
        return self.backend.requests_since(endpoint_name, since_iso)

    def _deployment_names(self, endpoint_name: str) -> list[str]:
        return [d.name for d in self.backend.list_deployments(endpoint_name)]  # NotFound: the endpoint is gone


def _job_name(job_name: str) -> str:
    """`job_name` if a job could have it; otherwise no job does (NotFound), and the backend is not asked (locally a
    job name becomes a folder name)."""
    if not naming.JOB.ok(job_name):
        raise NotFound(f"job {str(job_name)[:60]!r} not found: it is not a valid Azure ML job name")
    return job_name


def _completed(status: JobStatus, what: str) -> None:
    if status.status != "Completed":
        raise PermanentError(f"job {status.name} is {status.status}; only a completed job's model can be {what}")
