"""The ML backend port's contract: one suite, run against every implementation through a `harness` fixture.

Implementations (fixture params):
- "fake": `tests/fakes.py` FakeMLBackend (through `FakeHarness`).
- "local": `tests/harness_local.py` (the local ML workspace); skipped while that module does not exist.
- "azureml": `AzureMLBackend` on a real workspace; skipped unless AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and
  AML_WORKSPACE are set. It runs only calls that cost nothing and return at once (resolve base models, check the
  compute, look up unknown names, list endpoints): `supports_lifecycle` is False.

A harness module provides `make_harness(request) -> harness` (`request` is pytest's, so it can use fixtures such
as `settings` or `tmp_path` through `request.getfixturevalue`). A harness has:
- `backend`: the `MLBackend` under test.
- `base_model_name`: resolves to an active base model; `archived_base_model_name`: resolves to an archived one
  (None where none is known).
- `compute_name`: a compute that passes `check_compute` for that base model; `instance_type`: an instance type the
  base model allows for deployments.
- `supports_lifecycle`: whether jobs, models, endpoints and deployments may really be created.
- `job_params`: upload overrides that make a job short on this backend (e.g. {"num_train_epochs": 1}).
- `timeout`: seconds the lifecycle waits allow.
- `prepare_training_data(run_id) -> (train_path, test_path)`: writes small valid chat JSONL where the backend reads
  training data, and returns the paths a JobRequest carries.
- `wait_for_job(job_name, timeout) -> JobStatus` (the fake completes the job), `wait_for_endpoint(name, timeout)
  -> Endpoint` and `wait_for_deployment(endpoint_name, deployment_name, timeout) -> Deployment` (the fake marks
  them Succeeded): each returns once the thing is done (or the timeout passed) with its latest state.
- optional `count_jobs(job_name) -> int`: how many jobs the backend created under that name.
- optional `read_report(path) -> dict`: the evaluation report at `path` in RUNS_CONTAINER (backends that really
  evaluate; the fake writes none).
- optional `has_base_model_tokenizer`: True where the base model's files hold a tokenizer (with optional
  `give_base_model_a_tokenizer()` to put one there first), False where they hold none; absent: either.
- optional `close()`: called after the test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
import uuid
from typing import Any, Callable

import pytest

from shared.ml.port import (TAG_APP, TAG_CREATED, TAG_LINE, TAG_RUN, BaseModel, Compute, Endpoint, EvaluationRequest,
                            InvalidInput, JobRequest,
                            MLBackend, NameTaken, NotFound, PermanentError, RegisteredModel, TransientError)
from shared.runs import endpoint_name_for, evaluation_job_name_for, iso, job_name_for, utcnow
from tests.fakes import FakeHarness, FakeMLBackend

AZURE_SETTINGS = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AML_WORKSPACE")


class AzureHarness:
    """Cost-free calls on a real Azure ML workspace (BASE_MODEL if set, else Phi-4; AML_COMPUTE)."""

    supports_lifecycle = False
    archived_base_model_name = "Phi-3-mini-4k-instruct"  # archived in today's azureml registry
    job_params: dict[str, Any] = {}
    timeout = 0.0

    def __init__(self) -> None:
        from shared.config import Settings
        from shared.ml.azureml import AzureMLBackend
        from shared.ml.checked import checked

        settings = Settings.from_env(ml_backend="azureml")
        self.backend = checked(AzureMLBackend(settings), inference_instance_type=settings.inference_instance_type)
        self.base_model_name = os.environ.get("BASE_MODEL") or "Phi-4"
        self.compute_name = settings.aml_compute
        self.instance_type = settings.inference_instance_type


@pytest.fixture(params=["fake", pytest.param("local", marks=pytest.mark.slow),
                        pytest.param("azureml", marks=pytest.mark.azure)])
def harness(request):
    if request.param == "fake":
        h = FakeHarness()
    elif request.param == "local":
        if importlib.util.find_spec("tests.harness_local") is None:
            pytest.skip("tests/harness_local.py (the local workspace's harness) does not exist yet")
        from tests.harness_local import make_harness

        h = make_harness(request)
    else:
        missing = [name for name in AZURE_SETTINGS if not os.environ.get(name)]
        if missing:
            pytest.skip(f"Azure ML contract run needs {', '.join(missing)} in the environment")
        h = AzureHarness()
    yield h
    close = getattr(h, "close", None)
    if close:
        close()


def lifecycle(h) -> None:
    if not h.supports_lifecycle:
        pytest.skip("this backend's harness runs only calls that cost nothing")


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + max(timeout, 1.0)
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.2)


def unknown(kind: str) -> str:
    return f"nosuch{kind}{uuid.uuid4().hex[:8]}"


def new_run_id() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def submit(h, run_id: str, **params: Any) -> JobRequest:
    backend = h.backend
    base = backend.resolve_base_model(h.base_model_name)
    compute = backend.check_compute(h.compute_name, base)
    train, test = h.prepare_training_data(run_id)
    request = JobRequest(job_name=job_name_for(run_id), run_id=run_id, experiment_name="chatft-contract",
                         base_model=base, compute=compute, train_path=train, test_path=test,
                         params={**h.job_params, **params})
    assert backend.submit_job(request) == request.job_name
    return request


# ------------------------------------------------------------------ every backend (cost-free calls)


def test_backend_implements_the_port(harness):
    assert isinstance(harness.backend, MLBackend)


def test_resolves_the_base_model_by_name(harness):
    model = harness.backend.resolve_base_model(harness.base_model_name)
    assert isinstance(model, BaseModel)
    assert model.name == harness.base_model_name
    assert model.version and model.id
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in model.tags.items())


def test_an_archived_base_model_is_refused_with_a_way_out(harness):
    if harness.archived_base_model_name is None:
        pytest.skip("no archived base model known to this backend")
    with pytest.raises(PermanentError) as caught:
        harness.backend.resolve_base_model(harness.archived_base_model_name)
    assert harness.archived_base_model_name in str(caught.value)
    assert "BASE_MODEL" in str(caught.value)


def test_an_unknown_base_model_is_not_found(harness):
    with pytest.raises(NotFound):
        harness.backend.resolve_base_model(unknown("model"))


def test_checks_the_training_compute(harness):
    backend = harness.backend
    compute = backend.check_compute(harness.compute_name, backend.resolve_base_model(harness.base_model_name))
    assert isinstance(compute, Compute)
    assert compute.name == harness.compute_name and compute.vm_size
    assert compute.gpus_per_node >= 1


def test_an_unknown_compute_is_not_found(harness):
    backend = harness.backend
    with pytest.raises(NotFound):
        backend.check_compute(unknown("compute"), backend.resolve_base_model(harness.base_model_name))


def test_the_base_models_tokenizer_is_a_folder_of_its_files_or_the_ports_error_saying_why(harness):
    from shared.tokens import TokenizerCounter

    backend, expected = harness.backend, getattr(harness, "has_base_model_tokenizer", None)
    if expected and hasattr(harness, "give_base_model_a_tokenizer"):
        harness.give_base_model_a_tokenizer()
    try:
        directory = backend.base_model_tokenizer(harness.base_model_name)
    except (NotFound, PermanentError, TransientError) as exc:
        assert expected is not True, f"the base model's tokenizer was expected: {exc}"
        assert str(exc), "the error says why (the report repeats it)"
    else:
        assert expected is not False
        assert TokenizerCounter(directory).count(["alpha"])[0] >= 1, "loadable by the validator's counter"
        assert backend.base_model_tokenizer(harness.base_model_name) == directory, "the same folder every call"
    with pytest.raises(NotFound):
        backend.base_model_tokenizer(unknown("model"))


def test_unknown_job_is_not_found(harness):
    with pytest.raises(NotFound):
        harness.backend.get_job(f"chatft-{unknown('job')}")


def test_unknown_endpoint_is_absent(harness):
    backend, name = harness.backend, unknown("ep")
    assert backend.get_endpoint(name) is None
    assert backend.get_deployment(name, "demo") is None
    with pytest.raises(NotFound):
        backend.get_scoring_target(name)


def test_lists_endpoints_with_their_tags(harness):
    endpoints = harness.backend.list_endpoints()
    assert isinstance(endpoints, list)
    for endpoint in endpoints:
        assert isinstance(endpoint, Endpoint) and endpoint.name
        assert isinstance(endpoint.tags, dict)


# ------------------------------------------------------------------ Azure ML's rules (refused before anything is made)

BAD_ENDPOINT_NAMES = ["ab", "x" * 33, "1starts-with-a-digit", "ends-with-a-hyphen-", "has_underscore", "has.dot",
                      "has space", "ünïcode-name", "", "-leading"]
BAD_JOB_NAMES = ["-leading-hyphen", "_leading", "has.dot", "has space", "x" * 256, "", "日本語", "a/b"]
BAD_EXPERIMENT_NAMES = ["_leading", "has/slash", "has.dot", "x" * 257, "", "sp ace"]
BAD_MODEL_NAMES = ["has.dot", "-leading", "_leading", "x" * 256, "", "sp ace", "ünïcode"]
BAD_MODEL_VERSIONS = ["0", "-1", "01", "1.0", "abc", "0123456789ab", "", " 1", "1e3"]
BAD_TAGS = [{"a/b": "x"}, {"a<b": "x"}, {"k": "v" * 257}, {"k" * 513: "v"}, {"": "v"},
            {f"t{i}": "v" for i in range(51)}]


@pytest.mark.parametrize("name", BAD_ENDPOINT_NAMES)
def test_refuses_endpoint_names_azure_refuses(harness, name):
    with pytest.raises(InvalidInput):
        harness.backend.begin_create_endpoint(name, tags={TAG_APP: "chatft-contract"})
    assert name not in [e.name for e in harness.backend.list_endpoints()]


@pytest.mark.parametrize("tags", BAD_TAGS, ids=range(len(BAD_TAGS)))
def test_refuses_endpoint_tags_beyond_azures_limits(harness, tags):
    name = unknown("ep")
    with pytest.raises(InvalidInput):
        harness.backend.begin_create_endpoint(name, tags=tags)
    assert harness.backend.get_endpoint(name) is None


@pytest.mark.parametrize("name", BAD_ENDPOINT_NAMES)
def test_refuses_deployment_names_azure_refuses(harness, name):
    model = RegisteredModel(name="contract-model", version="1", id="")
    with pytest.raises(InvalidInput):
        harness.backend.begin_create_deployment(unknown("ep"), name, model, harness.instance_type, 1)


@pytest.mark.parametrize("version", BAD_MODEL_VERSIONS)
def test_refuses_model_versions_that_are_not_positive_integers(harness, version):
    with pytest.raises(InvalidInput):
        harness.backend.register_model(f"chatft-{unknown('job')}", "contract-model", version)


@pytest.mark.parametrize("name", BAD_MODEL_NAMES)
def test_refuses_model_names_azure_refuses(harness, name):
    with pytest.raises(InvalidInput):
        harness.backend.register_model(f"chatft-{unknown('job')}", name, "1")


@pytest.mark.parametrize("tags", BAD_TAGS, ids=range(len(BAD_TAGS)))
def test_refuses_model_tags_beyond_azures_limits(harness, tags):
    with pytest.raises(InvalidInput):
        harness.backend.register_model(f"chatft-{unknown('job')}", "contract-model", tags=tags)


def _job_request(h, job_name: str, experiment_name: str = "chatft-contract") -> JobRequest:
    backend = h.backend
    base = backend.resolve_base_model(h.base_model_name)
    compute = backend.check_compute(h.compute_name, base)
    run_id = new_run_id()
    return JobRequest(job_name=job_name, run_id=run_id, experiment_name=experiment_name, base_model=base,
                      compute=compute, train_path=f"{run_id}/train.jsonl", test_path=f"{run_id}/test.jsonl")


@pytest.mark.parametrize("name", BAD_JOB_NAMES)
def test_refuses_job_names_azure_refuses(harness, name):
    with pytest.raises(InvalidInput):
        harness.backend.submit_job(_job_request(harness, name))


@pytest.mark.parametrize("name", BAD_EXPERIMENT_NAMES)
def test_refuses_experiment_names_azure_refuses(harness, name):
    job_name = f"chatft-{unknown('job')}"
    with pytest.raises(InvalidInput):
        harness.backend.submit_job(_job_request(harness, job_name, experiment_name=name))
    with pytest.raises(NotFound):
        harness.backend.get_job(job_name)


# ------------------------------------------------------------------ lifecycle (backends that may create things)


def test_lifecycle_from_job_to_deleted_endpoint(harness):
    lifecycle(harness)
    h, backend, run_id = harness, harness.backend, new_run_id()
    endpoint_name, deployment = endpoint_name_for(run_id), "demo"
    try:
        # Submitting twice finds the first job; app-level keys in the overrides never reach the pipeline.
        request = submit(h, run_id, keep=True, base_model=h.base_model_name)
        assert backend.submit_job(request) == request.job_name
        if hasattr(h, "count_jobs"):
            assert h.count_jobs(request.job_name) == 1
        assert backend.get_job(request.job_name).name == request.job_name

        status = h.wait_for_job(request.job_name, h.timeout)
        assert status.status == "Completed", status.error
        job = backend.get_job(request.job_name)
        assert job.status == "Completed" and job.done and job.error == ""

        # No version given: the backend numbers it (a positive integer), and a repeated registration of the same
        # job finds that version instead of making a second one.
        model = backend.register_model(request.job_name, f"contract-{run_id[-6:]}", description="contract",
                                       tags={TAG_RUN: run_id})
        assert model.version.isdigit() and int(model.version) >= 1 and model.id
        again = backend.register_model(request.job_name, model.name, description="contract", tags={TAG_RUN: run_id})
        assert (again.name, again.version, again.id) == (model.name, model.version, model.id)
        same = backend.register_model(request.job_name, model.name, model.version, description="contract")
        assert (same.name, same.version, same.id) == (model.name, model.version, model.id)

        tags = {TAG_APP: "chatft-contract", TAG_RUN: run_id, TAG_CREATED: iso(utcnow())}
        backend.begin_create_endpoint(endpoint_name, tags=tags, description="contract")
        backend.begin_create_endpoint(endpoint_name, tags=tags, description="contract")
        assert [e.name for e in backend.list_endpoints()].count(endpoint_name) == 1
        # The same name from another run is refused: create_or_update would take over the first run's endpoint.
        with pytest.raises(NameTaken):
            backend.begin_create_endpoint(endpoint_name, tags={**tags, TAG_RUN: new_run_id()}, description="x")
        listed = next(e for e in backend.list_endpoints() if e.name == endpoint_name)
        assert {k: listed.tags.get(k) for k in tags} == tags
        assert h.wait_for_endpoint(endpoint_name, h.timeout).provisioning_state == "Succeeded"

        backend.begin_create_deployment(endpoint_name, deployment, model, h.instance_type, 1)
        backend.begin_create_deployment(endpoint_name, deployment, model, h.instance_type, 1)
        assert h.wait_for_deployment(endpoint_name, deployment, h.timeout).provisioning_state == "Succeeded"
        assert backend.get_deployment(endpoint_name, deployment).provisioning_state == "Succeeded"

        backend.set_traffic(endpoint_name, {deployment: 100})
        eventually(lambda: backend.get_endpoint(endpoint_name).traffic.get(deployment) == 100, h.timeout,
                   "traffic 100% to the deployment")

        target = backend.get_scoring_target(endpoint_name)
        assert target.endpoint_name == endpoint_name
        assert target.scoring_uri.startswith("http") and target.key
        assert target.key not in repr(target) and target.key not in str(target)
        used = backend.requests_since(endpoint_name, iso(utcnow()))
        assert used is None or used >= 0

        backend.begin_delete_endpoint(endpoint_name)
        eventually(lambda: backend.get_endpoint(endpoint_name) is None, h.timeout, "endpoint deletion")
        backend.begin_delete_endpoint(endpoint_name)  # gone: a no-op
        assert endpoint_name not in [e.name for e in backend.list_endpoints()]
        with pytest.raises(NotFound):
            backend.get_scoring_target(endpoint_name)
    finally:
        backend.begin_delete_endpoint(endpoint_name)


def test_evaluation_runs_after_the_completed_job_and_writes_its_report(harness):
    lifecycle(harness)
    h, backend, run_id = harness, harness.backend, new_run_id()
    request = submit(h, run_id)
    evaluation = EvaluationRequest(job_name=evaluation_job_name_for(run_id), run_id=run_id,
                                   experiment_name=request.experiment_name, base_model=request.base_model,
                                   training_job=request.job_name, compute=request.compute.name,
                                   test_path=request.test_path, report_path=f"{run_id}/evaluation.json",
                                   max_records=20, samples=2, max_new_tokens=8)
    # The tuned model is the job's output: there is none to evaluate before the job completes.
    if backend.get_job(request.job_name).status != "Completed":
        with pytest.raises(PermanentError, match="only a completed job's model can be evaluated"):
            backend.submit_evaluation(evaluation)
    assert h.wait_for_job(request.job_name, h.timeout).status == "Completed"
    with pytest.raises(InvalidInput):
        backend.submit_evaluation(dataclasses.replace(evaluation, job_name="bad name!"))
    with pytest.raises(NotFound):
        backend.submit_evaluation(dataclasses.replace(evaluation, job_name=evaluation.job_name + "x",
                                                      training_job=unknown("job")))
    assert backend.submit_evaluation(evaluation) == evaluation.job_name
    assert backend.submit_evaluation(evaluation) == evaluation.job_name
    if hasattr(h, "count_jobs"):
        assert h.count_jobs(evaluation.job_name) == 1
    status = h.wait_for_job(evaluation.job_name, h.timeout)
    assert status.status == "Completed", status.error
    if hasattr(h, "read_report"):
        from shared.protocol import EvaluationReport

        report = EvaluationReport.model_validate(h.read_report(evaluation.report_path), strict=False)
        assert report.run_id == run_id and 0 < report.records <= 20 and report.sampled <= 2
        loss = report.metrics["eval_loss"]
        assert loss.base is not None and loss.tuned is not None and not loss.higher_is_better
        assert len(report.per_record["eval_loss"].base) == report.records == len(report.per_record["eval_loss"].tuned)
        assert {"rougeL", "chrf", "perplexity"} <= set(report.metrics)
        assert report.champion is None and report.per_record["eval_loss"].champion is None

    # A new version of a model line: the line's version in service (a registered model) is scored in the same job,
    # on the same records. Here the champion is this very fine-tune, registered: its scores must be the tuned ones.
    champion = backend.register_model(request.job_name, f"contract-{run_id[-6:]}", description="contract champion",
                                      tags={TAG_RUN: run_id})
    challenge = dataclasses.replace(evaluation, job_name=evaluation.job_name + "-vs",
                                    report_path=f"{run_id}/evaluation-vs.json", champion=champion,
                                    champion_run_id=run_id)
    with pytest.raises(NotFound):
        backend.submit_evaluation(dataclasses.replace(
            challenge, job_name=evaluation.job_name + "-nosuch",
            champion=RegisteredModel(name=unknown("model"), version="1", id="")))
    assert backend.submit_evaluation(challenge) == challenge.job_name
    assert backend.submit_evaluation(challenge) == challenge.job_name
    if hasattr(h, "count_jobs"):
        assert h.count_jobs(challenge.job_name) == 1
    status = h.wait_for_job(challenge.job_name, h.timeout)
    assert status.status == "Completed", status.error
    if hasattr(h, "read_report"):
        report = EvaluationReport.model_validate(h.read_report(challenge.report_path), strict=False)
        assert report.champion is not None and report.champion.run_id == run_id
        assert report.champion.model_id == champion.id
        loss = report.per_record["eval_loss"]
        assert len(loss.champion) == len(loss.tuned) == len(loss.base) == report.records > 0
        assert loss.champion == pytest.approx(loss.tuned, rel=1e-4, abs=1e-5)
        assert report.metrics["eval_loss"].champion == pytest.approx(report.metrics["eval_loss"].tuned, rel=1e-4)
        assert len(report.per_record["rougeL"].champion) == report.sampled
        assert all(sample.champion is not None for sample in report.samples)


def test_several_deployments_on_one_endpoint_under_azures_traffic_rules(harness):
    """A model line's endpoint: a second deployment beside the first, a canary split, mirrored traffic, a switch,
    and the previous deployment deleted once it takes nothing; every rule Azure enforces is refused before any
    change (sum 100 or 0, only existing deployments, mirror to one deployment at most 50%, no deletion with
    traffic)."""
    lifecycle(harness)
    h, backend, run_id = harness, harness.backend, new_run_id()
    endpoint_name = f"ln-contract-{run_id[-8:]}"
    try:
        request = submit(h, run_id)
        assert h.wait_for_job(request.job_name, h.timeout).status == "Completed"
        model = backend.register_model(request.job_name, f"contract-{run_id[-6:]}", description="contract")
        backend.begin_create_endpoint(endpoint_name, tags={TAG_APP: "chatft-contract", TAG_LINE: "contract",
                                                           TAG_RUN: run_id})
        # A later run of the same line repeats the create: the app and the line own the endpoint, not the run.
        backend.begin_create_endpoint(endpoint_name, tags={TAG_APP: "chatft-contract", TAG_LINE: "contract",
                                                           TAG_RUN: new_run_id()})
        with pytest.raises(NameTaken):
            backend.begin_create_endpoint(endpoint_name, tags={TAG_APP: "chatft-contract", TAG_LINE: "other",
                                                               TAG_RUN: run_id})
        assert h.wait_for_endpoint(endpoint_name, h.timeout).provisioning_state == "Succeeded"
        assert backend.list_deployments(endpoint_name) == []
        for name in ("v01", "v02"):
            backend.begin_create_deployment(endpoint_name, name, model, h.instance_type, 1)
        for name in ("v01", "v02"):
            assert h.wait_for_deployment(endpoint_name, name, h.timeout).provisioning_state == "Succeeded"
        listed = backend.list_deployments(endpoint_name)
        assert sorted(d.name for d in listed) == ["v01", "v02"]
        assert all(d.endpoint_name == endpoint_name and d.provisioning_state == "Succeeded" for d in listed)

        backend.set_traffic(endpoint_name, {"v01": 100})
        for bad in ({"v01": 90}, {"v01": 90, "v02": 20}, {"v01": 90, "v03": 10}, {"v01": 95.0, "v02": 5}):
            with pytest.raises(InvalidInput):
                backend.set_traffic(endpoint_name, bad)
        assert backend.get_endpoint(endpoint_name).traffic.get("v01") == 100  # nothing changed
        backend.set_traffic(endpoint_name, {"v01": 90, "v02": 10})
        eventually(lambda: {k: v for k, v in backend.get_endpoint(endpoint_name).traffic.items() if v}
                   == {"v01": 90, "v02": 10}, h.timeout, "a 90/10 split")

        for bad in ({"v02": 51}, {"v01": 10, "v02": 10}, {"v03": 10}):
            with pytest.raises(InvalidInput):
                backend.set_mirror_traffic(endpoint_name, bad)
        backend.set_mirror_traffic(endpoint_name, {"v02": 50})
        eventually(lambda: backend.get_endpoint(endpoint_name).mirror_traffic == {"v02": 50}, h.timeout,
                   "mirrored traffic to v02")
        backend.set_mirror_traffic(endpoint_name, {})
        eventually(lambda: not backend.get_endpoint(endpoint_name).mirror_traffic, h.timeout, "mirroring stopped")

        with pytest.raises(InvalidInput, match="set them to 0"):
            backend.begin_delete_deployment(endpoint_name, "v01")
        backend.set_traffic(endpoint_name, {"v01": 0, "v02": 100})
        eventually(lambda: backend.get_endpoint(endpoint_name).traffic.get("v02") == 100, h.timeout, "the switch")
        backend.begin_delete_deployment(endpoint_name, "v01")
        eventually(lambda: backend.get_deployment(endpoint_name, "v01") is None, h.timeout, "v01 deleted")
        backend.begin_delete_deployment(endpoint_name, "v01")  # gone: a no-op
        backend.begin_delete_deployment(unknown("ep"), "v01")  # no endpoint: a no-op
        assert [d.name for d in backend.list_deployments(endpoint_name)] == ["v02"]
        assert backend.get_deployment(endpoint_name, "v02").provisioning_state == "Succeeded"
        with pytest.raises(NotFound):
            backend.list_deployments(unknown("ep"))
        with pytest.raises(NotFound):
            backend.set_mirror_traffic(unknown("ep"), {})
    finally:
        backend.begin_delete_endpoint(endpoint_name)


def test_cancel_stops_a_job_and_is_a_no_op_once_done(harness):
    lifecycle(harness)
    h, backend = harness, harness.backend
    request = submit(h, new_run_id())
    backend.cancel_job(request.job_name)
    done = eventually(lambda: (lambda s: s if s.done else None)(backend.get_job(request.job_name)), h.timeout,
                      "the canceled job finishing")
    assert done.status in ("Canceled", "Completed")
    backend.cancel_job(request.job_name)
    assert backend.get_job(request.job_name).status == done.status


def test_unknown_names_in_lifecycle_calls(harness):
    lifecycle(harness)
    backend = harness.backend
    job, endpoint = f"chatft-{unknown('job')}", unknown("ep")
    with pytest.raises(NotFound):
        backend.cancel_job(job)
    with pytest.raises(NotFound):
        backend.register_model(job, unknown("model"), "1")
    with pytest.raises(NotFound):
        backend.set_traffic(endpoint, {"demo": 100})
    backend.begin_delete_endpoint(endpoint)  # a no-op
    assert backend.get_endpoint(endpoint) is None


# ------------------------------------------------------------------ the fake's scenario controls


@pytest.fixture
def fake():
    return FakeHarness()


def test_fake_failed_job_reports_its_error_and_cancel_is_then_a_no_op(fake):
    request = submit(fake, new_run_id())
    fake.backend.start_job(request.job_name)
    assert fake.backend.get_job(request.job_name).status == "Running"
    fake.backend.fail_job(request.job_name, "CUDA out of memory")
    fake.backend.cancel_job(request.job_name)
    status = fake.backend.get_job(request.job_name)
    assert (status.status, status.error, status.done) == ("Failed", "CUDA out of memory", True)


def test_fake_refuses_to_register_an_unfinished_job(fake):
    request = submit(fake, new_run_id())
    with pytest.raises(PermanentError, match="NotStarted"):
        fake.backend.register_model(request.job_name, "m", "1")
    assert fake.backend.created["model"] == 0


def test_fake_types_and_filters_job_parameters_as_the_component_wants(fake):
    request = submit(fake, new_run_id(), keep=True, learning_rate=1e-5, apply_lora="false", lora_r=16)
    params = fake.backend.jobs[request.job_name].params
    # model_specific_defaults (PHI3_MINI_TAGS) over the notebook, upload overrides over both.
    assert params["deepspeed_stage"] == "2" and params["precision"] == "16" and params["num_train_epochs"] == 1
    assert params["learning_rate"] == 1e-5 and params["apply_lora"] == "false" and params["lora_r"] == 16
    assert "keep" not in params and "learning_rate_max" not in params


def test_fake_injected_transient_failure_happens_once(fake):
    fake.backend.fail_next("submit_job")
    with pytest.raises(TransientError):
        submit(fake, "contract-retry")
    request = submit(fake, "contract-retry")
    assert fake.backend.job_creations[request.job_name] == 1
    with pytest.raises(AttributeError):
        fake.backend.fail_next("no_such_method")


def test_fake_endpoint_and_deployment_states_are_the_tests_to_set(fake):
    backend = fake.backend
    request = submit(fake, new_run_id())
    backend.complete_job(request.job_name)
    model = backend.register_model(request.job_name, "m", "1")
    backend.begin_create_endpoint("ep-1", tags={TAG_APP: "chatft"})
    assert backend.get_endpoint("ep-1").provisioning_state == "Creating"
    with pytest.raises(TransientError, match="Creating"):
        backend.begin_create_deployment("ep-1", "demo", model, "Standard_NC6s_v3", 1)
    backend.set_endpoint_state("ep-1", "Succeeded")
    with pytest.raises(PermanentError, match="INFERENCE_INSTANCE_TYPE"):
        backend.begin_create_deployment("ep-1", "demo", model, "Standard_DS3_v2", 1)
    backend.begin_create_deployment("ep-1", "demo", model, "standard_nc6s_v3", 1)
    backend.set_deployment_state("ep-1", "demo", "Failed", "liveness probe failed")
    deployment = backend.get_deployment("ep-1", "demo")
    assert (deployment.provisioning_state, deployment.error) == ("Failed", "liveness probe failed")
    with pytest.raises(PermanentError):
        backend.set_traffic("ep-1", {"other": 100})
    backend.set_endpoint_state("ep-1", "Failed", "quota exceeded")
    assert backend.get_endpoint("ep-1").error == "quota exceeded"
    assert backend.created == {"job": 1, "model": 1, "endpoint": 1, "deployment": 1}


def test_fake_instant_provisioning_and_foreign_endpoints():
    backend = FakeMLBackend(instant_provisioning=True)
    backend.begin_create_endpoint("ep-2", tags={})
    assert backend.get_endpoint("ep-2").provisioning_state == "Succeeded"
    backend.add_endpoint("someone-elses", tags={"team": "x"})
    backend.set_requests("someone-elses", 7)
    assert {e.name for e in backend.list_endpoints()} == {"ep-2", "someone-elses"}
    assert backend.requests_since("someone-elses", "2025-01-01T00:00:00Z") == 7
    assert backend.requests_since("ep-2", "2025-01-01T00:00:00Z") is None
    assert backend.created["endpoint"] == 1


@pytest.mark.parametrize("vm_size, state, message", [
    ("Standard_NC24ads_A100_v4", "Failed", "failed provisioning state"),
    ("Standard_NC6s_v3", "Succeeded", "does not allow"),  # Phi-3-mini's allow-list
])
def test_fake_compute_checks_are_the_notebooks(fake, vm_size, state, message):
    fake.backend.set_compute("gpu-cluster", vm_size, state)
    base = fake.backend.resolve_base_model(fake.base_model_name)
    with pytest.raises(PermanentError, match=message):
        fake.backend.check_compute("gpu-cluster", base)


def test_fake_refuses_k80_sizes_when_the_model_has_no_allow_list(fake):
    fake.backend.set_compute("k80", "Standard_NC6")
    with pytest.raises(PermanentError, match="K80"):
        fake.backend.check_compute("k80", fake.backend.resolve_base_model("Phi-4"))
    fake.backend.set_compute("cpu", "Standard_DS3_v2")
    with pytest.raises(PermanentError, match="no GPU"):
        fake.backend.check_compute("cpu", fake.backend.resolve_base_model("Phi-4"))


def test_fake_endpoint_names_are_unique_in_the_region_without_regard_to_case(fake):
    backend = fake.backend
    tags = {TAG_APP: "chatft", TAG_RUN: "run-a"}
    backend.begin_create_endpoint("ft-shared-name", tags=tags)
    with pytest.raises(NameTaken):
        backend.begin_create_endpoint("FT-Shared-Name", tags=tags)  # Azure compares resource names without case
    backend.take_endpoint_name("ft-elsewhere")
    with pytest.raises(NameTaken, match="region"):
        backend.begin_create_endpoint("ft-elsewhere", tags=tags)
    assert backend.created["endpoint"] == 1


def test_fake_numbers_model_versions_per_name_and_never_twice_per_job(fake):
    backend = fake.backend
    first, second = submit(fake, new_run_id()), submit(fake, new_run_id())
    for request in (first, second):
        backend.complete_job(request.job_name)
    a = backend.register_model(first.job_name, "chat-model")
    b = backend.register_model(second.job_name, "chat-model")
    assert (a.version, b.version) == ("1", "2")
    assert backend.register_model(first.job_name, "chat-model").version == "1"
    assert backend.register_model(second.job_name, "other-model").version == "1"
    assert backend.created["model"] == 3


def test_fake_duplicated_registrations_at_once_make_one_version(fake):
    import threading

    backend = fake.backend
    request = submit(fake, new_run_id())
    backend.complete_job(request.job_name)
    results, start = [], threading.Barrier(8)

    def register() -> None:
        start.wait()
        results.append(backend.register_model(request.job_name, "chat-model"))

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {m.version for m in results} == {"1"} and backend.created["model"] == 1


# ------------------------------------------------------------------ the port's rules are one wrapper's


def test_every_backend_the_app_builds_is_behind_the_ports_rules(settings):
    """shared.bootstrap wraps whatever backend it builds or is given, once; the adapters hold no copy of the rules,
    so a backend with no checks of its own refuses what Azure refuses through the app."""
    from shared.bootstrap import bootstrap
    from shared.ml.checked import CheckedBackend, checked
    from shared.run_store import InMemoryRunStore

    raw = FakeMLBackend()
    svc = bootstrap(settings, ml=raw, runs=InMemoryRunStore())
    assert isinstance(svc.ml, CheckedBackend) and svc.ml.backend is raw
    assert checked(svc.ml) is svc.ml, "wrapped once, however often it is handed on"
    assert bootstrap(settings, ml=svc.ml, runs=InMemoryRunStore()).ml is svc.ml
    with pytest.raises(InvalidInput):
        svc.ml.begin_create_endpoint("has_underscore", tags={})
    raw.begin_create_endpoint("has_underscore", tags={})  # the raw fake keeps no copy of the rule
    assert svc.ml.created == raw.created, "scenario controls and observations are the backend's"
